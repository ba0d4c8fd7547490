"""`foresight metrics-token rotate`: mint the bearer token Prometheus scrapes /metrics with, into the deployment's
Vault (exit codes: docs/onboarding.md).

The token goes to the KV v2 secret `deployments/<stack>/metrics` (the path `stacks.vault.VaultLayout.metrics_path`
names and the node's policy reads; with `--path`, a Kubernetes workload's own `metricsVaultPath`) of the KV mount
FORESIGHT_VAULT_KV_MOUNT names, else the local deployment's, else with `--stack` the stack's own
(`foresight-<stack>`), written with check-and-set so that of two rotations at once one fails instead of both
printing a token. The service reads it again within `FORESIGHT_VAULT_METRICS_REFRESH_S`. It is printed once, on
stdout, or written to `--output` only once Vault holds it, and never logged or audited: the audit line names the
path and the version written.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Annotated, BinaryIO

import hvac
import hvac.exceptions
import requests
import typer

from onboarding import output
from onboarding.auditing import OnboardingAudit
from onboarding.context import Target, resolve, with_local_hint
from onboarding.errors import EXIT_FAILURE, Conflict, InvalidInput, NotFound, OnboardingError, VaultFailure
from onboarding.tenants_cli import Json, StateDir
from service.http.scrape_token import VAULT_FIELD, new_token
from service.security.envelope import EnvelopeError, atomic_output
from service.security.vault_keys import is_cas_conflict

app = typer.Typer(cls=output.UsageErrorGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)

_ACTION = "metrics-token.rotate"
# The stacks' project (Pulumi.yaml's `name`): a stack's KV mount is `<project>-<stack>` (stacks.spec.StackSpec.name,
# stacks.vault.VaultLayout.kv_mount).
STACKS_PROJECT = "foresight"
_STACK_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# A KV path as a Kubernetes workload's metricsVaultPath may name it (stacks.kubernetes.spec checks the same form).
_KV_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
# The mount's own records, which --path must never overwrite: the tenants and their keys
# (service.security.vault_keys: tenants/<tenant>/..., keyids/<key id>) and the stacks' secrets
# (stacks.vault.VaultLayout.metrics_path: deployments/<stack>/metrics, written with --stack).
_RESERVED = {
    "tenants": "the tenants' records",
    "keyids": "the API keys' index",
    "deployments": "the stacks' scrape-token secrets (for deployments/<stack>/metrics use --stack)",
}


def vault_path(stack: str) -> str:
    """The scrape token's path inside the KV mount: `stacks.vault.VaultLayout.metrics_path` for `stack`."""
    if not _STACK_NAME.fullmatch(stack) or stack in (".", ".."):
        raise InvalidInput(f"--stack {stack!r}", "expected the Pulumi stack name: letters, digits, '-', '_', '.'")
    return f"deployments/{stack}/metrics"


def _target_path(stack: str | None, path: str | None) -> str:
    """Where the token goes: the stack's secret, or the path given (exactly one of the two)."""
    if (stack is None) == (path is None):
        raise InvalidInput("--stack/--path", "give one: --stack <stack> for deployments/<stack>/metrics, or --path "
                           "for a Kubernetes workload's metricsVaultPath")
    if stack is not None:
        return vault_path(stack)
    assert path is not None
    if not _KV_PATH.fullmatch(path) or ".." in path:
        raise InvalidInput(f"--path {path!r}", "expected a path inside the KV mount such as foresight/eks/metrics "
                           "(letters, digits, '-', '_', '.', separated by '/'; no leading '/', no '..')")
    top = path.split("/", 1)[0]
    if top in _RESERVED:
        raise InvalidInput(f"--path {path!r}", f"{top}/ is reserved for {_RESERVED[top]}; give the workload's "
                           "own metricsVaultPath outside tenants/, keyids/ and deployments/")
    return path


def kv_mount(target: Target, stack: str | None) -> tuple[str, str]:
    """The KV mount to write to and where that came from: FORESIGHT_VAULT_KV_MOUNT or the local deployment's, else
    the stack's own. A --path without either names a workload's mount nobody said: InvalidInput."""
    if not target.kv_mount_default:
        return target.kv_mount, ("the local deployment's" if target.local_vault and not os.environ.get(
            "FORESIGHT_VAULT_KV_MOUNT") else "FORESIGHT_VAULT_KV_MOUNT")
    if stack is not None:
        return f"{STACKS_PROJECT}-{stack}", "the stack's; FORESIGHT_VAULT_KV_MOUNT names another"
    raise InvalidInput("FORESIGHT_VAULT_KV_MOUNT", "not set: with --path, set it to the workload's KV mount "
                       "(its vaultKvMount)")


def _token_file(path: Path, cleanup: contextlib.ExitStack) -> BinaryIO:
    """A temporary file beside `path`, made before Vault is touched (a directory that cannot take it stops the
    rotation), renamed over `path` when `cleanup` closes: Prometheus reads the old token or the new, never an empty
    or half-written file. It keeps the replaced file's mode and owner (Prometheus's user must still read it after
    a rotation run as root); a new file is 0600."""
    path = path.expanduser()
    try:
        like = path.stat()
    except FileNotFoundError:
        like = None
    except OSError as err:
        raise InvalidInput(f"--output {path}", f"cannot read it ({err.strerror})") from None
    try:
        return cleanup.enter_context(atomic_output(path, like=like))
    except OSError as err:
        raise InvalidInput(f"--output {path}", f"cannot write there ({err.strerror})") from None
    except EnvelopeError as err:  # the replaced file's owner cannot be kept by this user
        raise InvalidInput(f"--output {path}", str(err)) from None


@app.callback()
def _group() -> None:
    """The bearer token Prometheus scrapes /metrics with, kept in the deployment's Vault."""


@app.command(
    epilog="Vault is VAULT_ADDR and VAULT_TOKEN (or the local deployment's OpenBao), as for `foresight tenants`; the "
    "mount is FORESIGHT_VAULT_KV_MOUNT, else the local deployment's, else with --stack the stack's (foresight-"
    "<stack>); with --path, set FORESIGHT_VAULT_KV_MOUNT to the workload's vaultKvMount. The nodes read the "
    "secret at FORESIGHT_VAULT_METRICS_PATH=deployments/<stack>/metrics (or a Kubernetes workload's "
    "metricsVaultPath, which --path names).\n\n"
    "Prometheus reads the token from a file: write it there with --output (e.g. `foresight metrics-token rotate "
    "--stack aws-prod --output /etc/prometheus/foresight-metrics-token`: a new file is 0600, a replaced one keeps "
    "its mode and owner; replaced only once the new token is in Vault) and point the scrape job at it:\n\n"
    "  scrape_configs:\n"
    "    - job_name: foresight\n"
    "      scheme: https\n"
    "      authorization:\n"
    "        credentials_file: /etc/prometheus/foresight-metrics-token\n\n"
    "Prometheus reads the file again at every scrape. The old token stops working once the service has read the "
    "new one (FORESIGHT_VAULT_METRICS_REFRESH_S, 30 s by default), so update the file right away."
)
def rotate(
    stack: Annotated[str | None, typer.Option(help="The Pulumi stack: the token goes to deployments/<stack>/metrics.",
                                              show_default=False)] = None,
    path: Annotated[str | None, typer.Option(
        help="Write the token to this path of the KV mount instead of a stack's: a Kubernetes workload's "
        "metricsVaultPath (not under tenants/, keyids/ or deployments/, the mount's own records).",
        show_default=False)] = None,
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="Write the token to this file (new: mode 0600; replaced: atomically, keeping its mode and "
        "owner, only once Vault holds the new token) instead of printing it: Prometheus's credentials_file.",
        show_default=False)] = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Make a new 256-bit scrape token, write it to Vault in place of the old one, and print it once."""
    with output.reported(as_json), contextlib.ExitStack() as cleanup:
        secret = _target_path(stack, path)
        target = resolve(state_dir=state_dir)
        mount, source = kv_mount(target, stack)
        token_file = _token_file(output_file, cleanup) if output_file is not None else None
        token = new_token()
        full_path = f"{mount}/{secret}"
        audit = OnboardingAudit(target.audit_log)
        audit.check()  # before the write: a token written and not audited is the worse outcome
        try:
            version = _write(target, mount, secret, token)
        except OnboardingError as failure:
            audit.record(_ACTION, outcome="failure", vault_path=full_path, reason=str(failure))
            raise with_local_hint(target, failure) from None
        audit.record(_ACTION, vault_path=full_path, version=version)  # a line it cannot write is a warning
        where = f"KV mount {mount}: {source}"
        if token_file is not None:
            try:
                token_file.write(f"{token}\n".encode())
                cleanup.close()  # renamed into place now, before saying so
            except OSError as err:  # Vault holds the new token now: this is its only copy, so it is printed
                what = f"write the token to {output_file}"
                if as_json:  # stdout stays one JSON object, the token in it
                    output.emit_json({"error": f"{what}: {err.strerror}; the token Vault now holds is `token` here "
                                      "(store it now)", "exit_code": EXIT_FAILURE, "token": token,
                                      "vault_path": full_path, "version": version})
                    raise typer.Exit(EXIT_FAILURE) from None
                typer.echo(token)
                raise OnboardingError(what, f"{err.strerror}; the token Vault now holds is printed above instead "
                                      "(store it now)") from None
            if as_json:
                output.emit_json({"output": str(output_file), "vault_path": full_path, "version": version})
                return
            output.err.print(f"Scrape token version {version} written to {full_path} ({where}) and to "
                             f"{output_file}.", markup=False)
            return
        if as_json:
            output.emit_json({"token": token, "vault_path": full_path, "version": version})
            return
        typer.echo(token)
        output.err.print(f"Scrape token version {version} written to {full_path} ({where}; shown once, store it "
                         "now). See `foresight metrics-token rotate --help` for Prometheus.", markup=False)


def _write(target: Target, mount: str, path: str, token: str) -> int:
    """Write `token` over the version now at `path`; the version written. Vault's errors as onboarding errors."""
    what = f"rotate the metrics token at {mount}/{path}"
    kv = target.vault_client().secrets.kv.v2
    try:
        try:
            current = int(kv.read_secret_metadata(path, mount_point=mount)["data"]["current_version"])
        except hvac.exceptions.InvalidPath:
            current = 0  # never written (or no such mount: the write says which)
        reply = kv.create_or_update_secret(path, {VAULT_FIELD: token}, cas=current, mount_point=mount)
    except (requests.RequestException, hvac.exceptions.VaultDown, hvac.exceptions.BadGateway) as err:
        raise VaultFailure(what, f"Vault unreachable ({type(err).__name__})") from None
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
        raise VaultFailure(what, "permission denied: the Vault token may not read and write this path (is "
                           "FORESIGHT_VAULT_KV_MOUNT the deployment's mount?)") from None
    except hvac.exceptions.InvalidPath:
        raise NotFound(what, f"no KV v2 mount {mount!r} (FORESIGHT_VAULT_KV_MOUNT)") from None
    except hvac.exceptions.InvalidRequest as err:
        if is_cas_conflict(err):
            raise Conflict(what, "another rotation wrote it at the same time; run the command again and give "
                           "Prometheus the token it prints") from None
        raise VaultFailure(what, f"Vault said {type(err).__name__}") from None
    except hvac.exceptions.VaultError as err:
        raise VaultFailure(what, f"Vault said {type(err).__name__}") from None
    return int(reply["data"]["version"])
