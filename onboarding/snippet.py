"""The connection snippet printed after `tenants create` and `local up`: redis-cli, redis-py and curl.

The key is in it once, in the `env` line that exports it; the clients read it from there, so it never lands on a
command line (which `ps` shows every user) or in the shell's history more than that once.
"""

from __future__ import annotations

import shlex

from onboarding.context import Endpoints

KEY_VARIABLE = "FORESIGHT_API_KEY"


def connection_snippet(endpoints: Endpoints, api_key: str, can_write: bool = True) -> dict[str, str]:
    """Commands that connect as the tenant over TLS, keyed by client, after `env` (the export line, the only one
    that holds the key); a key without the write scope reads only (the service would refuse the SET)."""
    ca = str(endpoints.ca_cert) if endpoints.ca_cert else None
    cacert = f" --cacert {shlex.quote(ca)}" if ca else ""
    redis_cli = (  # redis-cli reads the password from REDISCLI_AUTH: no -a on its command line
        f'REDISCLI_AUTH="${KEY_VARIABLE}" redis-cli --tls{cacert} -h {endpoints.resp_host} '
        f"-p {endpoints.resp_port} GET greeting"
    )
    ca_arg = f", ssl_ca_certs={ca!r}" if ca else ""
    redis_py = (
        "import os, redis\n"
        f"r = redis.Redis(host={endpoints.resp_host!r}, port={endpoints.resp_port}, ssl=True{ca_arg},\n"
        f"                password=os.environ[{KEY_VARIABLE!r}])\n"
        + ("r.set('greeting', 'hello'); " if can_write else "")
        + "print(r.get('greeting'))"
    )
    curl = (  # the header from stdin (printf is the shell's own), not curl's arguments
        f"printf 'Authorization: Bearer %s\\n' \"${KEY_VARIABLE}\" | curl{cacert} -H @- "
        f"{endpoints.http_url.rstrip('/')}/v1/keys/greeting"
    )
    return {"env": f"export {KEY_VARIABLE}={shlex.quote(api_key)}", "redis-cli": redis_cli, "redis-py": redis_py,
            "curl": curl}
