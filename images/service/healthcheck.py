"""Container health probe: GET /healthz on the service's own HTTP port; exit 0 when it answers 200.

Standard library only, so a probe costs milliseconds and never imports the service (or torch).
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys

TIMEOUT_S = 4.0


def probe_host(bind: str) -> str:
    """The address to reach a listener bound to `bind`: loopback for the wildcard addresses."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)


def healthz_status() -> int:
    host = probe_host(os.environ.get("FORESIGHT_BIND", "127.0.0.1"))
    port = int(os.environ.get("FORESIGHT_HTTP_PORT", "8443"))
    if os.environ.get("FORESIGHT_TLS_CERT_FILE"):
        # The probe asks "is this process serving?", not "is this the right server?": the certificate names
        # the public host name, not loopback, so identity is not checked here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def main() -> int:
    try:
        status = healthz_status()
    except (OSError, http.client.HTTPException) as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: /healthz answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
