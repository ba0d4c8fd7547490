"""What every cloud's `foresight marketplace <cloud>` commands share: connecting to the deployment and the
listing, the register/meter/reconcile commands themselves, serving the pages, and printing for people or
scripts (one JSON object with --json; one error line and the documented exit code otherwise).

The commands act on the deployment `foresight tenants` acts on (VAULT_ADDR/VAULT_TOKEN and
FORESIGHT_ADMIN_URL/FORESIGHT_ADMIN_TOKEN, or the local one) and read the listing from FORESIGHT_<CLOUD>_MP_*;
each cloud's own credentials come from its SDK's standard variables. Exit codes: docs/marketplace-aws.md.
"""

import errno
import json
import socket
import ssl
import sys
import time  # no `from __future__ import annotations`: typer must see saas_commands' argument help at def time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from onboarding import output
from onboarding.context import resolve
from onboarding.errors import EXIT_FAILURE, InvalidInput, OnboardingError
from onboarding.tenants import Onboarder

Json = Annotated[bool, output.JsonOption]
AdminUrl = Annotated[
    str | None,
    typer.Option("--admin-url", envvar="FORESIGHT_ADMIN_URL", help="Service admin API (default: the local one)."),
]
TlsCert = Annotated[Path, typer.Option("--tls-cert", help="PEM certificate chain for the pages.")]
TlsKey = Annotated[Path, typer.Option("--tls-key", help="PEM private key of --tls-cert.")]
Host = Annotated[str, typer.Option(help="Address of this machine to listen on (0.0.0.0: all of them).")]
Port = Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one (printed at start).")]
Once = Annotated[bool, typer.Option("--once", help="Handle one batch and exit (for cron or a test).")]
EventsJson = Annotated[bool, typer.Option(
    "--json", help="With --once, one JSON object. Without it, JSON Lines: one object per event as it is handled, "
                   "and a failure or interruption as the last line.",
)]
Connect = Callable[[str | None], AbstractContextManager[Any]]
Problem = tuple[str, str]  # (the variable to fix, why)
PLAN_MAP_EXAMPLE = '{"starter": "starter", "pro": "pro"}'


def environment_help(settings_model: Any, prefix: str, credentials: str, docs: str) -> str:
    """The help's epilog: the variables a command cannot run without (the required ones read from the settings
    model, so the help cannot drift from it)."""
    required = [prefix + name.upper() for name, field in settings_model.model_fields.items() if field.is_required()]
    return (f"Needs {', '.join(required)}; {credentials}; and the deployment, as for `foresight tenants`: "
            "VAULT_ADDR, VAULT_TOKEN, FORESIGHT_ADMIN_URL, FORESIGHT_ADMIN_TOKEN (without them, the local one). "
            f"Every variable: {docs}.")


@contextmanager
def connected(settings_model: Any, prefix: str, marketplace: Callable[[Any, Onboarder], Any],
              admin_url: str | None, credentials: Callable[[], list[Problem]] = list) -> Iterator[Any]:
    """The cloud's marketplace object on the deployment. Every setting to fix (and a missing credential the
    cloud's SDK would refuse next) is named in one error, so one run lists all of them."""
    settings = _settings(settings_model, prefix, credentials())
    onboarder = Onboarder.connect(resolve(admin_url=admin_url))
    try:
        connection = marketplace(settings, onboarder)
        try:
            yield connection
        finally:
            connection.close()
    finally:
        onboarder.close()


def _settings(settings_model: Any, prefix: str, problems: list[Problem]) -> Any:
    try:
        settings = settings_model()
    except ValidationError as err:
        problems = [_problem(prefix, error) for error in err.errors()] + problems
    except SettingsError as err:  # a value pydantic-settings itself could not parse
        problems = [(prefix + "*", str(err)), *problems]
    if not problems:
        return settings
    if len(problems) == 1:
        raise InvalidInput(*problems[0])
    raise InvalidInput(f"{len(problems)} settings to fix", "; ".join(f"{name}: {why}" for name, why in problems))


def _problem(prefix: str, error: Any) -> Problem:
    """The variable a pydantic error is about, and why, in the words of the docs' settings table."""
    field, *inside = error["loc"] or ("*",)
    cause = (error.get("ctx") or {}).get("error")
    if error["type"] == "missing":
        why = "required, not set"
    elif isinstance(cause, json.JSONDecodeError):
        why = f"not JSON ({cause}); expected an object such as {PLAN_MAP_EXAMPLE}"
    elif error["type"] == "dict_type":
        why = f"expected a JSON object such as {PLAN_MAP_EXAMPLE}"
    else:
        why = str(error["msg"]).removeprefix("Value error, ")
    return prefix + str(field).upper(), ": ".join([*(str(part) for part in inside), why])


def saas_commands(app: typer.Typer, connect: Connect, *, argument_help: str, meter: Callable[[Any], Any],
                  reconciler: Callable[[Any], Callable[[str], Any]], environment: str) -> None:
    """register, meter and reconcile on `app`; the cloud supplies how to connect, meter and reconcile, and the
    variables its commands need (`environment`, the help's epilog)."""

    @app.command(epilog=environment)
    def register(
        token: Annotated[str, typer.Argument(help=argument_help + " `-` reads it from stdin (a command line is "
                                             "visible in `ps` and shell history). Otherwise put `--` before it, after "
                                             "every option: a token may begin with '-'.")],
        admin_url: AdminUrl = None, as_json: Json = False,
    ) -> None:
        """Turn a purchase into a tenant with its plan and first API key (what the registration page does)."""
        with output.reported(as_json), connect(admin_url) as marketplace:
            if token == "-":  # noqa: S105 - the stdin placeholder, not a password
                token = sys.stdin.readline().strip()
                if not token:
                    raise InvalidInput("TOKEN", "`-` read no token from stdin")
            with output.progress("registering the purchase", as_json):
                body = marketplace.register(token).to_json()
            _print_registration(body, as_json)

    @app.command("meter", epilog=environment)
    def meter_(admin_url: AdminUrl = None, as_json: Json = False) -> None:
        """Report the last hour's usage of every purchase; run it hourly, a few minutes past. Safe to re-run."""
        with output.reported(as_json), connect(admin_url) as marketplace:
            _print_metering(meter(marketplace).run(), as_json)

    @app.command(epilog=environment)
    def reconcile(admin_url: AdminUrl = None, as_json: Json = False) -> None:
        """Make every purchase's tenant match what the marketplace says now (after an outage, or daily)."""
        with output.reported(as_json), connect(admin_url) as marketplace:
            _reconcile_all(reconciler(marketplace), marketplace.records.tenants(), as_json)


def events_reported(as_json: bool, once: bool) -> AbstractContextManager[None]:
    """How `events` reports a failure: as every command does, except that `--json` without `--once` is a
    stream (JSON Lines), so the failure is one more line of it."""
    return _reported_as_line() if as_json and not once else output.reported(as_json)


@contextmanager
def _reported_as_line() -> Iterator[None]:
    with output.reported(False):  # the `error:` line on stderr and the exit code
        try:
            yield
        except OnboardingError as failure:
            _json_line({"error": str(failure), "exit_code": failure.exit_code})
            raise
        except KeyboardInterrupt:
            _json_line({"error": "interrupted", "exit_code": 130})
            raise
        except (typer.Exit, typer.Abort):
            raise
        except Exception as unexpected:
            _json_line({"error": f"unexpected {type(unexpected).__name__}: {unexpected}", "exit_code": EXIT_FAILURE})
            raise


def _json_line(value: Any) -> None:
    sys.stdout.write(json.dumps(value, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def consume(poll: Callable[[], Iterable[Any]], once: bool, as_json: bool) -> None:
    """Handle batches until interrupted (or one with --once); pulls that find nothing pause a second. Every
    event is printed, and flushed, as soon as it is handled (with --json and no --once, as one JSON line), so
    stopping the loop, even halfway through a batch, loses no line of an event done; --json --once prints one
    object."""
    handled: list[dict[str, Any]] = []
    while True:
        batch = 0
        for item in poll():
            batch += 1
            if as_json and once:
                handled.append(asdict(item))
            elif as_json:
                _json_line(asdict(item))
            else:
                actions = "; ".join(f"{o.tenant} {o.action}" for o in item.outcomes) or "no known tenant"
                output.out.print(f"{item.event}: {item.error or actions}", markup=False)
        if once:
            break
        if not batch:
            time.sleep(1)
    if as_json:  # --once
        output.emit_json({"handled": handled})


def serve(app_: Any, tls_cert: Path, tls_key: Path, host: str, port: int) -> None:
    """HTTPS only: the pages carry purchase tokens and the buyer's first key. No access log: Azure puts the
    purchase token in the landing page's query string, which an access log would keep."""
    import uvicorn

    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if not path.is_file():
            raise InvalidInput(option, f"{path} is not a file")
    config = uvicorn.Config(app_, ssl_certfile=str(tls_cert), ssl_keyfile=str(tls_key), log_level="info",
                            access_log=False)
    try:
        config.load()
    except (ssl.SSLError, OSError) as err:
        raise InvalidInput("--tls-cert/--tls-key", f"cannot load them as a PEM certificate and key ({err})") from None
    listeners = _listen(host, port)
    bound = listeners[0].getsockname()[1]
    output.err.print(f"Serving https://{f'[{host}]' if ':' in host else host}:{bound} (Ctrl-C stops)", markup=False)
    uvicorn.Server(config).run(sockets=listeners)


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on every address `host` names, bound here rather than by uvicorn so that a busy port
    or a foreign address is one clear error, and the port --port 0 got is known (as asyncio does, an address
    whose family this machine lacks is skipped, and IPv6 sockets are IPv6 only)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise InvalidInput(f"--host {host}", f"cannot resolve it ({err.strerror})") from None
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            if listeners and not port:  # every address on the one port the first was given
                address = (address[0], listeners[0].getsockname()[1], *address[2:])
            listener = socket.socket(family, kind, proto)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind(address)
                listener.listen(2048)
            except OSError as err:
                listener.close()
                if err.errno != errno.EADDRNOTAVAIL:
                    raise
                continue
            listeners.append(listener)
        if not listeners:
            raise OSError(errno.EADDRNOTAVAIL, "no address of this machine")
    except OSError as err:
        for listener in listeners:
            listener.close()
        raise _cannot_listen(host, port, err) from None
    return listeners


def _cannot_listen(host: str, port: int, err: OSError) -> OnboardingError:
    from marketplace.errors import CannotListen

    if err.errno == errno.EADDRNOTAVAIL:
        return InvalidInput(f"--host {host}", "not an address of this machine; pass one of its addresses, 0.0.0.0 "
                            "for all of them, or 127.0.0.1")
    where = f"listen on {host}:{port}"
    if err.errno == errno.EADDRINUSE:
        return CannotListen(where, "the port is busy: stop what listens there, or pass another --port (0 picks a "
                            "free one)")
    if err.errno == errno.EACCES:
        return CannotListen(where, "permission denied: a port below 1024 needs root or CAP_NET_BIND_SERVICE; "
                            "or pass a port above 1023")
    return CannotListen(where, err.strerror or str(err))


def _print_registration(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(body)
        return
    output.warn(body["warnings"])
    output.out.print(f"Tenant [bold]{body['tenant']}[/] (plan {body['plan']}).")
    if body["api_key"]:
        output.out.print("API key (shown once; store it now):")
        output.out.print(body["api_key"], markup=False)


def _print_metering(report: Any, as_json: bool) -> None:
    from marketplace.errors import MarketplaceFailure

    if as_json:
        output.emit_json({"metered": [asdict(m) for m in report.metered], "skipped": report.skipped,
                          "errors": report.errors})
    else:
        for m in report.metered:
            output.out.print(f"{m.tenant} {m.timestamp:%Y-%m-%dT%H:%M:%SZ} {m.quantity} {m.status}", markup=False)
        for tenant, why in report.skipped.items():
            output.out.print(f"{tenant} skipped: {why}", markup=False)
    _fail_on(report.errors, MarketplaceFailure("meter usage", "; ".join(report.errors)), as_json)


def _reconcile_all(reconcile: Callable[[str], Any], tenants: list[str], as_json: bool) -> None:
    """Every tenant, even when one fails (its error is reported and the exit code says so)."""
    from marketplace.errors import MarketplaceFailure

    outcomes, errors = [], {}
    for tenant in tenants:
        try:
            outcomes.append(asdict(reconcile(tenant)))
        except OnboardingError as err:
            errors[tenant] = str(err)
    if as_json:
        output.emit_json({"reconciled": outcomes, "errors": errors})
    else:
        for outcome in outcomes:
            output.out.print(f"{outcome['tenant']} {outcome['action']}", markup=False)
    failure = MarketplaceFailure("reconcile", "; ".join(f"{t}: {why}" for t, why in errors.items()))
    _fail_on(bool(errors), failure, as_json)


def _fail_on(failed: object, failure: Exception, as_json: bool) -> None:
    """Exit with the failure's code; with --json the object already printed holds the errors (one object)."""
    if not failed:
        return
    if as_json:
        raise typer.Exit(getattr(failure, "exit_code", 1))
    raise failure
