"""The connection snippet printed after `tenants create` and `local up`: redis-cli, redis-py and curl."""

from __future__ import annotations

import shlex

from onboarding.context import Endpoints


def connection_snippet(endpoints: Endpoints, api_key: str, can_write: bool = True) -> dict[str, str]:
    """Commands that connect as the tenant over TLS, keyed by client; a key without the write scope reads only
    (the service would refuse the SET)."""
    ca = str(endpoints.ca_cert) if endpoints.ca_cert else None
    cacert = f" --cacert {shlex.quote(ca)}" if ca else ""
    redis_cli = (  # the key in the environment, not on the command line other users can see
        f"REDISCLI_AUTH={shlex.quote(api_key)} redis-cli --tls{cacert} -h {endpoints.resp_host} "
        f"-p {endpoints.resp_port} GET greeting"
    )
    ca_arg = f", ssl_ca_certs={ca!r}" if ca else ""
    redis_py = (
        "import redis\n"
        f"r = redis.Redis(host={endpoints.resp_host!r}, port={endpoints.resp_port}, ssl=True{ca_arg},\n"
        f"                password={api_key!r})\n"
        + ("r.set('greeting', 'hello'); " if can_write else "")
        + "print(r.get('greeting'))"
    )
    curl = (
        f"curl{cacert} -H {shlex.quote('Authorization: Bearer ' + api_key)} "
        f"{endpoints.http_url.rstrip('/')}/v1/keys/greeting"
    )
    return {"redis-cli": redis_cli, "redis-py": redis_py, "curl": curl}
