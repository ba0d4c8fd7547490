"""`foresight kubernetes render`: the workload's manifests as YAML (or JSON) for kubectl and GitOps users.

    foresight kubernetes render --config workload.yaml                  # one multi-document YAML on stdout
    foresight kubernetes render --config workload.yaml --out manifests/ # one file per manifest, in apply order
    foresight kubernetes render --config workload.yaml --json           # a kubectl `List` on stdout

The config holds WorkloadSpec's keys in camelCase (stacks/kubernetes/example.yaml). An invalid config gives
one line naming the key to fix, and exit status 2.
"""

from __future__ import annotations

import json
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


@app.command("render")
def render_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML or JSON file of WorkloadSpec keys (camelCase).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write one file per manifest into this directory.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
) -> None:
    """Render the workload's manifests from a spec file.

    The spec's keys are WorkloadSpec's (docs/kubernetes.md; stacks/kubernetes/example.yaml is a complete one).
    Nothing in it or in the output is a secret. Exit 2 names the key to fix. For example:

        foresight kubernetes render -c workload.yaml -o manifests/ && kubectl apply -f manifests/
    """
    try:
        manifests = render(load_spec(config))
    except SpecError as err:
        typer.echo(f"foresight kubernetes render: {config}: {err}", err=True)
        raise typer.Exit(2) from None
    if out is None:
        listing = {"apiVersion": "v1", "kind": "List", "items": manifests}
        typer.echo(to_json(listing) if as_json else to_yaml(manifests), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    suffix = "json" if as_json else "yaml"
    for index, manifest in enumerate(manifests, start=1):
        text = to_json(manifest) if as_json else to_yaml([manifest])
        (out / file_name(index, manifest, suffix)).write_text(text)
    typer.echo(f"wrote {len(manifests)} manifests to {out}", err=True)
