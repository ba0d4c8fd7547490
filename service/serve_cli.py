"""`foresight serve`: run the service in the foreground."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer


def serve(
    dev: Annotated[
        bool, typer.Option("--dev", help="Local trial: 127.0.0.1 only, plain TCP, tenant 'default', no AUTH.")
    ] = False,
    resp_port: Annotated[int | None, typer.Option(help="RESP port (default 6380; 0 picks a free port).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8443; 0 picks a free port).")] = None,
    bind: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    origin: Annotated[
        str | None, typer.Option(help="Read-through origin: a directory or fsspec URL (s3://b/p).")
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
        run(settings)
    except ConfigError as err:
        typer.echo(f"foresight serve: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        logging.getLogger(__name__).info("interrupted")
        sys.exit(130)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
