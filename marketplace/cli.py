"""`foresight marketplace`: build every listing's launch artifacts; `aws`, `azure` and `gcp` run each
marketplace's SaaS fulfilment and metering (marketplace/<cloud>/cli.py, on marketplace/commands.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from marketplace.aws.cli import app as aws
from marketplace.azure.cli import app as azure
from marketplace.commands import Json
from marketplace.gcp.cli import app as gcp
from onboarding import output
from onboarding.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(aws, name="aws")
app.add_typer(azure, name="azure")
app.add_typer(gcp, name="gcp")


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the artifacts into.")] = Path(
        "dist/marketplace"
    ),
    as_json: Json = False,
) -> None:
    """Write every listing's launch artifacts, generated from the same spec as the stacks.

    aws/foresight.template.json (AMI with CloudFormation), aws/eventbridge-pattern.json (the rule that feeds
    lifecycle events to the fulfilment queue); azure/mainTemplate.json, azure/createUiDefinition.json and
    azure/app.zip (the managed application package Partner Center takes); gcp/ (the Terraform VM solution
    module with its blueprint metadata and test tfvars).
    """
    with output.reported(as_json):
        try:  # the templates are built from the stacks' parts, which need the stacks extra (Pulumi)
            from marketplace.aws.events import EVENT_PATTERN
            from marketplace.aws.template import render
            from marketplace.azure.template import package
            from marketplace.gcp.template import package as gcp_package
            from marketplace.gcp.template import stray_files
        except ModuleNotFoundError as err:
            why = f"{err.name} is not installed: pip install 'foresight[stacks]'"
            raise InvalidInput("foresight[stacks]", why) from None
        _check_out(out)
        if stray := stray_files(out / "gcp"):
            raise InvalidInput(f"--out {out}", f"gcp/ holds {', '.join(stray)}, which the module does not have "
                               "(Terraform would load a stray .tf with it); remove it, or build into another --out")
        try:
            paths = [
                _write_json(out / "aws/foresight.template.json", render()),
                _write_json(out / "aws/eventbridge-pattern.json", EVENT_PATTERN),
            ]
            archive = package(out / "azure")
            paths += [str(archive.parent / name) for name in ("mainTemplate.json", "createUiDefinition.json")]
            paths.append(str(archive))
            gcp_dir = gcp_package(out / "gcp")
            paths += sorted(str(path) for path in gcp_dir.iterdir())
        except OSError as err:  # full disk, a file where a cloud's directory goes, permissions changed under us
            raise InvalidInput(f"--out {out}", f"cannot write {err.filename or 'into it'}: {err.strerror}") from None
        if as_json:
            output.emit_json({"written": paths})
        else:
            for path_text in paths:
                output.out.print(f"wrote {path_text}", markup=False)


def _check_out(out: Path) -> None:
    """--out is a directory this process can create and write, checked before anything is built."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InvalidInput(f"--out {out}", "not a directory") from None
    except NotADirectoryError:
        raise InvalidInput(f"--out {out}", "a part of the path is a file, not a directory") from None
    except OSError as err:
        raise InvalidInput(f"--out {out}", f"cannot create it: {err.strerror}") from None
    if not out.is_dir():
        raise InvalidInput(f"--out {out}", "not a directory")
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidInput(f"--out {out}", "not writable")


def _write_json(path: Path, document: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)  # never a half-written template where the old one was
    return str(path)
