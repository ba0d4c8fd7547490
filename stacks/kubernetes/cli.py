"""`foresight kubernetes render`: the workload's manifests as YAML (or JSON) for kubectl and GitOps users.

    foresight kubernetes render --config workload.yaml                  # one multi-document YAML on stdout
    foresight kubernetes render --config workload.yaml --out manifests/ # one file per manifest, in apply order
    foresight kubernetes render --config workload.yaml --out manifests/ --replace  # after a spec change
    foresight kubernetes render --config workload.yaml --json           # a kubectl `List` on stdout

The config holds WorkloadSpec's keys in camelCase (stacks/kubernetes/example.yaml). An invalid config gives
one line naming the key to fix, and exit status 2.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from stacks.kubernetes.manifests import Manifest, render
from stacks.kubernetes.spec import SpecError, load_spec

app = typer.Typer(help="The scale-out workload's Kubernetes manifests.", no_args_is_help=True)


@app.callback()
def kubernetes() -> None:
    """The scale-out workload's Kubernetes manifests (a group, so `render` keeps its name when used alone)."""


class _PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: a value the renderer shares between two objects is written out in both."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(manifests: list[Manifest]) -> str:
    return yaml.dump_all(manifests, Dumper=_PlainDumper, sort_keys=False, width=1000)


def to_json(manifest: Manifest) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def file_name(index: int, manifest: Manifest, suffix: str) -> str:
    """`03-service-foresight.yaml`: the number keeps `kubectl apply -f DIR` in apply order."""
    return f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.{suffix}"


RENDERED = re.compile(r"\d{2}-[a-z]+-[a-z0-9.-]+\.(yaml|json)")  # what `file_name` writes


class OutError(Exception):
    """`--out` cannot take the manifests; nothing was written."""


def write_manifests(out: Path, files: dict[str, str], replace: bool) -> None:
    """Write `files` into `out`, each whole (a temporary file renamed). `kubectl apply -f out` applies every file
    there, so a directory holding anything else is refused; with `replace`, an earlier render's files (named as
    `file_name` names them) are removed first, and anything else is still refused."""
    if out.exists() and not out.is_dir():
        raise OutError("not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        present = {entry.name for entry in out.iterdir()}
    except OSError as err:
        raise OutError(err.strerror or str(err)) from None
    earlier = {name for name in present if RENDERED.fullmatch(name)} - set(files)
    foreign = sorted(present - earlier - set(files)) if replace else sorted(present - set(files))
    if foreign:
        hint = "" if replace else " (--replace removes an earlier render's files)"
        raise OutError(f"holds other files, which `kubectl apply -f` would apply too: {', '.join(foreign[:3])}"
                       f"{' ...' if len(foreign) > 3 else ''}{hint}")
    try:
        for name, text in files.items():
            staging = out / f".{name}.tmp"
            staging.write_text(text)
            os.replace(staging, out / name)
        for name in earlier:
            (out / name).unlink()
    except OSError as err:
        raise OutError(err.strerror or str(err)) from None


@app.command("render")
def render_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML or JSON file of WorkloadSpec keys (camelCase).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write one file per manifest into this directory.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="With --out: remove an earlier render's files there first.")
    ] = False,
) -> None:
    """Render the workload's manifests from a spec file.

    The spec's keys are WorkloadSpec's (docs/kubernetes.md; stacks/kubernetes/example.yaml is a complete one).
    Nothing in it or in the output is a secret. Exit 2 names the key to fix. For example:

        foresight kubernetes render -c workload.yaml -o manifests/ && kubectl apply -f manifests/
    """
    try:
        manifests = render(load_spec(config))
    except SpecError as err:
        typer.echo(f"error: {config}: {err}", err=True)
        raise typer.Exit(2) from None
    if out is None:
        listing = {"apiVersion": "v1", "kind": "List", "items": manifests}
        typer.echo(to_json(listing) if as_json else to_yaml(manifests), nl=False)
        return
    suffix = "json" if as_json else "yaml"
    files = {file_name(index, manifest, suffix): to_json(manifest) if as_json else to_yaml([manifest])
             for index, manifest in enumerate(manifests, start=1)}
    try:
        write_manifests(out, files, replace)
    except OutError as err:
        typer.echo(f"error: --out {out}: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {len(manifests)} manifests to {out}", err=True)
