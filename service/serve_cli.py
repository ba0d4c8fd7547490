"""`foresight serve`: run the service in the foreground."""

from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

# FORESIGHT_* variables other Foresight tools read, often from the same environment as the service (the VMs' env
# file and the Kubernetes ConfigMap carry fetch_tls.py's; an operator's shell the onboarding commands'): no typos.
_OTHER_TOOLS = ("FORESIGHT_STATE_DIR", "FORESIGHT_ADMIN_URL", "FORESIGHT_ADMIN_TOKEN", "FORESIGHT_ADMIN_CA",
                "FORESIGHT_AWS_MP_", "FORESIGHT_GCP_MP_", "FORESIGHT_AZURE_MP_", "FORESIGHT_TLS_NODE_PKI_ROLE",
                "FORESIGHT_VAULT_GCP_METADATA_URL", "FORESIGHT_IMDS_ENDPOINT", "FORESIGHT_METADATA_ENDPOINT",
                "FORESIGHT_SECRET_MANAGER_ENDPOINT")


def serve(
    dev: Annotated[
        bool, typer.Option("--dev", help="Local trial: 127.0.0.1 only, plain TCP, tenant 'default', no AUTH.")
    ] = False,
    resp_port: Annotated[int | None, typer.Option(help="RESP port (default 6380; 0 picks a free port).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8443; 0 picks a free port).")] = None,
    bind: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    origin: Annotated[
        str | None, typer.Option(help="Read-through origin: a directory or fsspec URL (s3://b/p); each tenant reads "
                                  "ORIGIN/<tenant>/<key>, and --dev's one tenant ORIGIN/<key>.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML or JSON settings file.")] = None,
) -> None:
    """Serve the Redis protocol and the HTTP API until SIGINT/SIGTERM.

    Every setting can also come from a FORESIGHT_* environment variable (e.g. FORESIGHT_TLS_CERT_FILE) or
    the --config file; flags win over the environment, which wins over the file. Outside --dev the service
    refuses to start without TLS and a key source.
    """
    from service.config import ConfigError, load_settings
    from service.logs import setup_logging
    from service.server import run

    try:
        settings = load_settings(config, dev=dev or None, resp_port=resp_port, http_port=http_port, bind=bind,
                                 origin=origin)
        setup_logging(settings.log_level)
        for warning in unknown_variables(os.environ):
            logging.getLogger(__name__).warning(warning)
        run(settings)
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        sys.exit(130)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per FORESIGHT_* variable that is no setting (pydantic-settings ignores them), with the closest
    setting's name: FORESIGHT_VAULT_TOKEN, a natural guess, would otherwise do nothing without a word."""
    from service.config import Settings

    settings = list(Settings.model_fields)
    warnings = []
    for name in sorted(environ):
        setting = name.removeprefix("FORESIGHT_").lower()
        if not name.startswith("FORESIGHT_") or setting in settings or name.startswith(_OTHER_TOOLS):
            continue
        close = difflib.get_close_matches(setting, settings, n=1, cutoff=0.75)
        hint = f"; did you mean FORESIGHT_{close[0].upper()}?" if close else ""
        warnings.append(f"{name} is not a setting of foresight serve and is ignored{hint}")
    return warnings


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
