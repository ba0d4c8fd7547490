"""How long the service may take to stop, one budget for the VM's systemd unit and the Kubernetes pod.

On SIGTERM the service drains RESP for up to its shutdown grace, waits as long again (plus a second) for HTTP,
writes its encrypted snapshot and closes the audit log, waiting up to service.security.audit.SHIP_ON_CLOSE_S on a
bucket copy (service/server.py). A stop cut short by SIGKILL loses the snapshot and the audit log's last fsync.
The stacks do not import the service, so its two numbers are repeated here; tests/stacks keeps them in step.
"""

from __future__ import annotations

SNAPSHOT_ALLOWANCE_S = 60
AUDIT_CLOSE_ALLOWANCE_S = 10  # service.security.audit.SHIP_ON_CLOSE_S
SERVICE_DEFAULT_GRACE_S = 10  # service.config.Settings.shutdown_grace_s's default: what a VM's service runs with
UNIT_STOP_MARGIN_S = 15  # systemd's own limit past `docker stop`'s, so that docker's SIGKILL comes first


def service_stop_s(grace_s: int) -> int:
    """The longest a stop takes: RESP drain, HTTP drain, snapshot, audit close."""
    return 2 * grace_s + 1 + SNAPSHOT_ALLOWANCE_S + AUDIT_CLOSE_ALLOWANCE_S
