"""`foresight local rewrap`: the KMS key-rotation procedure (docs/security.md) on the local deployment.

`foresight kms rewrap` must run with the service stopped and its KMS reachable, and `local down` stops both, so
locally the documented order (rotate, rewrap, retire) could not be followed. This keeps OpenBao up, stops only
the service, rotates the transit key if asked, runs the same `foresight kms rewrap` with the service's own settings,
retires the old versions only once every file moved, and starts the service again if it was running (also when
the rewrap failed: a deployment is never left down by this command).

With audit shipping configured (`--set audit_ship_url=...`), `--retire` is refused before anything is stopped or
changed: the archives already shipped stay wrapped under the old versions (a rewrap moves only the node's files),
so retiring those makes the trail unreadable. `--retire-despite-shipped-audit` accepts that.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import hvac
import requests

from onboarding.auditing import OnboardingAudit
from onboarding.errors import InvalidInput, LocalFailure, NotFound, VaultFailure
from onboarding.local.openbao import TRANSIT_KEY, TRANSIT_MOUNT, OpenBao
from onboarding.local.serve import LocalService, service_stop_timeout
from onboarding.local.stack import LocalStack
from onboarding.state import state_dir_option

REWRAP_TIMEOUT_S = 600.0
KMS_REWRAP = ("-c", "from service.cli import main; main()", "kms", "rewrap", "--json")  # run by this Python


@dataclass(frozen=True)
class RewrapOptions:
    rotate: bool = False  # a new transit key version first
    retire: bool = False  # then min_decryption_version = the newest version, if nothing failed
    dry_run: bool = False  # only report which files would move; rotates and retires nothing
    retire_despite_shipped_audit: bool = False  # retire although shipped audit archives need the old versions

    def check(self) -> None:
        if self.dry_run and (self.rotate or self.retire):
            raise InvalidInput("--dry-run", "changes nothing, so it cannot be combined with --rotate or --retire")
        if self.retire_despite_shipped_audit and not self.retire:
            raise InvalidInput("--retire-despite-shipped-audit", "only goes with --retire")

    def check_retire(self, audit_ship_url: str | None) -> None:
        """InvalidInput if --retire would make the audit archives shipped to `audit_ship_url` unreadable."""
        if self.retire and audit_ship_url and not self.retire_despite_shipped_audit:
            raise InvalidInput("--retire", f"the service ships its audit archives to {audit_ship_url} "
                               "(audit_ship_url), and the copies there stay wrapped under the old key versions (a "
                               "rewrap moves only this machine's files): retiring them makes that trail unreadable. "
                               "Run it without --retire and retire once the shipped archives' retention has ended, "
                               "or add --retire-despite-shipped-audit to accept losing them")


@dataclass
class RewrapResult:
    report: dict[str, Any]  # `foresight kms rewrap --json`'s object: dry_run, counts, files
    versions: tuple[int, int]  # the key's (newest, min_decryption_version) before
    rotated_to: int | None = None
    retired_below: int | None = None
    service_restarted: bool = False

    @property
    def failed(self) -> int:
        return int(self.report["counts"]["failed"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": f"{TRANSIT_MOUNT}/keys/{TRANSIT_KEY}",
            "latest_version_before": self.versions[0],
            "min_decryption_version_before": self.versions[1],
            "rotated_to": self.rotated_to,
            "retired_below": self.retired_below,
            "service_restarted": self.service_restarted,
            **self.report,
        }


def rewrap(stack: LocalStack, options: RewrapOptions) -> RewrapResult:
    """Rotate (if asked), rewrap every envelope of the service, retire (if asked and nothing failed)."""
    options.check()
    deployment = stack.deployment()
    if deployment is None:
        raise NotFound(f"no deployment in {stack.paths.root}", "start one with `foresight local up`")
    service = LocalService(stack.paths, deployment)
    options.check_retire(service.settings_env().get("FORESIGHT_AUDIT_SHIP_URL"))
    bao = OpenBao(stack.paths, deployment.vault_port, deployment.vault_cluster_port)
    if bao.health() != 200:
        raise VaultFailure("rewrap", "the local OpenBao is not active (stopped or sealed), and the KMS is its transit "
                           f"engine; start it with `foresight local up{state_dir_option(stack.paths.root)}`")
    audit = OnboardingAudit(deployment.audit_log)
    if not options.dry_run:
        audit.check()  # a rotation or retirement that cannot be audited is not made
    with stack.lock():
        root = bao.root_client()
        versions = _versions(root)
        result = RewrapResult({}, versions)
        running = service.process.pid() is not None
        service.process.stop(service_stop_timeout(deployment))  # it writes its snapshot as it stops: rewrapped too
        try:
            if options.rotate:
                _transit("rotate the transit key", lambda: root.secrets.transit.rotate_key(
                    TRANSIT_KEY, mount_point=TRANSIT_MOUNT))
                result.rotated_to = _versions(root)[0]
                audit.record("kms.rotate", key=TRANSIT_KEY, version=result.rotated_to)
            result.report = _run_kms_rewrap(service, options.dry_run)
            if not options.dry_run:
                audit.record("kms.rewrap", outcome="failure" if result.failed else "success", key=TRANSIT_KEY,
                             **result.report["counts"])
            if options.retire and result.failed == 0:
                newest = _versions(root)[0]
                _transit("retire the old key versions", lambda: root.secrets.transit.update_key_configuration(
                    TRANSIT_KEY, min_decryption_version=newest, mount_point=TRANSIT_MOUNT))
                result.retired_below = newest
                audit.record("kms.retire", key=TRANSIT_KEY, min_decryption_version=newest,
                             despite_shipped_audit=options.retire_despite_shipped_audit)
        finally:
            if running:
                service.start()
                result.service_restarted = True
    return result


def _versions(root: hvac.Client) -> tuple[int, int]:
    data = _transit("read the transit key", lambda: root.secrets.transit.read_key(
        TRANSIT_KEY, mount_point=TRANSIT_MOUNT))["data"]
    return int(data["latest_version"]), int(data["min_decryption_version"])


def _transit(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (hvac.exceptions.VaultError, requests.RequestException) as err:
        raise VaultFailure(what, f"{type(err).__name__}: {err}") from None


def _run_kms_rewrap(service: LocalService, dry_run: bool) -> dict[str, Any]:
    """`foresight kms rewrap --json` with the service's settings; its per-file progress goes to this stderr. Killed
    after REWRAP_TIMEOUT_S: the service is down meanwhile, and starts again only once this returns."""
    argv = [sys.executable, *KMS_REWRAP, *(["--dry-run"] if dry_run else [])]
    other: list[str] = []
    with tempfile.TemporaryFile("w+") as stdout:
        with subprocess.Popen(argv, env=service.process_env(), cwd=service.paths.root, stdout=stdout,
                              stderr=subprocess.PIPE, text=True) as child:
            relay = threading.Thread(target=_relay, args=(child.stderr, other), daemon=True)
            relay.start()
            try:
                code = child.wait(REWRAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                raise LocalFailure("rewrap", f"`foresight kms rewrap` did not finish in {REWRAP_TIMEOUT_S:.0f}s; "
                                   "it was stopped") from None
            finally:
                relay.join(5)
        stdout.seek(0)
        text = stdout.read()
    try:
        report: dict[str, Any] = json.loads(text)
    except ValueError:
        raise LocalFailure("rewrap", f"`foresight kms rewrap` exited {code}: {''.join(other).strip()}") from None
    if "error" in report:
        raise LocalFailure("rewrap", str(report["error"]))
    return report


def _relay(stderr: IO[str] | None, other: list[str]) -> None:
    """Pass the child's progress lines on to this stderr as they come; keep the rest for the error message."""
    for line in stderr or ():
        if line.startswith("rewrap: ["):
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            other.append(line)
