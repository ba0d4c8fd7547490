"""Resuming a `bench report`: which cells in its `results.jsonl` a new run may reuse, and appending the rest.

A cell is reused only where every setting that defines it matches this run's: the ones its unit ran with (the
report's `unit_settings`, recorded in each cell: the trace file by path and size, request limit, policy,
prefetcher, lead, budget, `--new-keys`, and the engine's device, seed, threshold and table size) and its cache
size. Each of them changes the numbers, and a table that mixes in cells of other settings looks no different from
a right one, so a cell that differs in any one, or lacks one (written before cells recorded them), is not reused:
it is run again. Size is all that is checked of the trace's content, so an edit that keeps a file's size is not
seen.

Lines not reused are counted in the run's log (stderr, from the CLI), with the first of each kind, and kept:
`results.jsonl` may hold other runs' cells, and a resumed run only appends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

Unit = TypeVar("Unit", bound=Hashable)  # the report's (trace, lead, prefetcher); any key that names a unit's cells


def open_cells(cells_file: Path, append: bool) -> TextIO:
    """`cells_file` to write cells to: emptied, or appended to after a newline where a stopped run left half a
    line (which would otherwise swallow the first new cell)."""
    if not append:
        return cells_file.open("w")
    sink = cells_file.open("a")
    if sink.tell() > 0:
        with cells_file.open("rb") as written:
            written.seek(-1, os.SEEK_END)
            if written.read(1) != b"\n":
                sink.write("\n")
    return sink


def reusable_cells(
    cells_file: Path,
    settings: Mapping[Unit, dict[str, Any]],
    fracs: tuple[float, ...],
    fields: Mapping[str, type],
    log: Callable[[str], None],
) -> dict[tuple[Unit, float], dict[str, Any]]:
    """The cells in `cells_file` that this run would compute, by (unit, cache_frac): those holding every one of
    `fields` with its type, and whose settings are one unit's in `settings` and whose cache size is in `fracs`.
    The other lines are counted on `log`, with the first line of each kind, and left out."""
    wanted = list(settings.values())
    by_settings = {_settings_text(values, values): unit for unit, values in settings.items()}
    try:
        lines = cells_file.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    found: dict[tuple[Unit, float], dict[str, Any]] = {}
    unreadable: list[int] = []
    repeated: list[int] = []
    other: list[int] = []
    why = ""
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not _is_cell(row, fields):
            unreadable.append(number)
            continue
        unit = by_settings.get(_settings_text(row, wanted[0]))
        if unit is None or row["cache_frac"] not in fracs:
            why = why or _mismatch(row, wanted, fracs)
            other.append(number)
        elif (unit, row["cache_frac"]) in found:
            repeated.append(number)
        else:
            found[unit, row["cache_frac"]] = row
    for numbers, kind in ((unreadable, "not a whole cell (unreadable JSON or a field missing or of the wrong type)"),
                          (other, f"from other settings ({why})"),
                          (repeated, "a cell an earlier line has")):
        if numbers:
            log(f"resume: ignored {len(numbers)} line(s) of {cells_file}, first line {numbers[0]}: {kind}")
    return found


def _settings_text(row: dict[str, Any], names: dict[str, Any]) -> str:
    """A cell's values of the settings `names` has, comparable across rows (absent ones as null)."""
    return json.dumps({name: row.get(name) for name in names}, sort_keys=True)


def _is_cell(row: object, fields: Mapping[str, type]) -> bool:
    """Whether a parsed line holds every one of `fields`, each of its type (a number where a number belongs)."""
    if not isinstance(row, dict):
        return False
    for name, kind in fields.items():
        value = row.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            return False
    return True


def _mismatch(row: dict[str, Any], wanted: list[dict[str, Any]], fracs: tuple[float, ...]) -> str:
    """What sets a cell of another run apart: the settings it lacks, or its values this run has none of."""
    missing = [name for name in wanted[0] if name not in row]
    if missing:
        return f"no {', '.join(missing)}: written before cells recorded them"
    differ = [f"{name} {row[name]!r}" for name in wanted[0] if all(row[name] != w[name] for w in wanted)]
    if row["cache_frac"] not in fracs:
        differ.append(f"cache_frac {row['cache_frac']!r}")
    return f"{', '.join(differ)}, which this run has not" if differ else "a combination this run has not"
