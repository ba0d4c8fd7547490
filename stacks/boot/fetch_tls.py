#!/usr/bin/env python3
"""Issue this node's TLS certificate from Vault PKI with the machine's cloud identity, at every service start and daily.

cloud-init installs this file on the node and systemd runs it (ExecStartPre) with the settings of
/etc/foresight/foresight.env: FORESIGHT_VAULT_ADDR, FORESIGHT_VAULT_AUTH_METHOD, FORESIGHT_VAULT_AUTH_MOUNT,
FORESIGHT_VAULT_ROLE, FORESIGHT_TLS_VAULT_PKI_MOUNT, FORESIGHT_TLS_NODE_PKI_ROLE and FORESIGHT_TLS_COMMON_NAME. It
logs in, asks <pki mount>/issue/<role> for a certificate for the endpoint's name (a DNS name or an IP address),
writes ca.pem, tls.crt and tls.key into --out (mode 0640, group --group; each file replaced whole), and revokes its
token. Vault generates the key for that one response, so the key exists only here. A timer runs it again while
the service runs: each run issues a fresh certificate and key, which is how the certificate is renewed (with
--every SECONDS it runs in a loop instead, as the Kubernetes pods' tls-refresh sidecar does). With --renew-after
SECONDS a run issues only when the certificate is that old or the mount's CA is no longer the one that issued it
(a rotated root: stacks/tls.py), which it asks without logging in; the VMs' timer runs hourly that way, so a new
root reaches them within the hour while each still issues about once a day.

Login methods (FORESIGHT_VAULT_AUTH_METHOD):
  aws  Vault's IAM auth method, with an sts:GetCallerIdentity request signed by the instance role's IMDSv2
       credentials.
  jwt  Vault's (and OpenBao's) jwt auth method, with FORESIGHT_VAULT_JWT_SOURCE=gcp: the VM service
       account's identity token (format=full) from the GCP metadata server, for the audience
       FORESIGHT_VAULT_GCP_AUDIENCE (default http://vault/<role>); with FORESIGHT_VAULT_JWT_SOURCE=azure: the
       managed identity's access token for https://management.azure.com/ from the Azure IMDS, of the
       user-assigned identity FORESIGHT_VAULT_AZURE_CLIENT_ID (unset: the VM's only identity); with
       FORESIGHT_VAULT_JWT_SOURCE=file: the token in FORESIGHT_VAULT_JWT_FILE (a Kubernetes pod's projected
       service-account token; stacks/kubernetes runs this script as the pod's init container). The service
       logs in the same way (service/security/vault_auth.py) and reads the same settings.

No static secret exists on the node. Standard library only, Python 3.10+: the OS's python3 runs it.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

IMDS_ENDPOINT = "http://169.254.169.254"
GCP_METADATA = "http://metadata.google.internal"
# What the service asks Azure's IMDS (at IMDS_ENDPOINT too) for: an Azure Resource Manager token.
AZURE_RESOURCE = "https://management.azure.com/"
AZURE_IMDS_API_VERSION = "2018-02-01"
# Vault's AWS auth method sends the request to its configured STS endpoint; the global one is its default.
STS_URL = "https://sts.amazonaws.com/"
STS_HOST = "sts.amazonaws.com"
STS_REGION = "us-east-1"
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"
# Vault PKI issue response field -> file name under --out.
TLS_FILES = {"issuing_ca": "ca.pem", "certificate": "tls.crt", "private_key": "tls.key"}
SETTINGS = (
    "FORESIGHT_VAULT_ADDR",
    "FORESIGHT_VAULT_AUTH_METHOD",
    "FORESIGHT_VAULT_AUTH_MOUNT",
    "FORESIGHT_VAULT_ROLE",
    "FORESIGHT_TLS_VAULT_PKI_MOUNT",
    "FORESIGHT_TLS_NODE_PKI_ROLE",
    "FORESIGHT_TLS_COMMON_NAME",
)
# RFC 5280's upper bound on a common name; a longer host (an AWS load balancer's can be) goes in the SANs only.
MAX_COMMON_NAME = 64
# Read only by the aws login: the X-Vault-AWS-IAM-Server-ID the stack's Vault requires (stacks/aws/vault.py).
AWS_SETTINGS = ("FORESIGHT_VAULT_AWS_HEADER_VALUE",)
# Read only by the jwt login; AWS nodes leave them unset, so unlike SETTINGS they are optional.
JWT_SETTINGS = (
    "FORESIGHT_VAULT_JWT_SOURCE",
    "FORESIGHT_VAULT_GCP_AUDIENCE",
    "FORESIGHT_VAULT_AZURE_CLIENT_ID",
    "FORESIGHT_VAULT_JWT_FILE",
)


class BootstrapError(RuntimeError):
    """A step failed; the message names the step and never carries a credential."""


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy, whatever the environment says


def http_request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    *,
    metadata: bool = False,
) -> bytes:
    """One request; `metadata` ones (the cloud's metadata service) never go through a configured proxy, as
    Azure's IMDS refuses proxied requests and no proxy can reach a link-local address anyway."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))  # noqa: S310
    open_url = _DIRECT.open if metadata else urllib.request.urlopen
    try:
        with open_url(request, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read(300).decode("utf-8", "replace").strip()
        raise BootstrapError(f"{method} {url} -> HTTP {err.code} {detail}") from None
    except OSError as err:
        raise BootstrapError(f"{method} {url} failed: {err}") from None


def instance_credentials(imds: str = IMDS_ENDPOINT) -> AwsCredentials:
    """The instance role's temporary credentials, read through IMDSv2 (session token first)."""
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    token = http_request("PUT", f"{imds}/latest/api/token", ttl, metadata=True)
    headers = {"X-aws-ec2-metadata-token": token.decode()}
    base = f"{imds}/latest/meta-data/iam/security-credentials/"
    roles = http_request("GET", base, headers, metadata=True).decode().split()
    if not roles:
        raise BootstrapError("the instance has no IAM role (instance profile)")
    document = json.loads(http_request("GET", base + roles[0], headers, metadata=True))
    return AwsCredentials(document["AccessKeyId"], document["SecretAccessKey"], document.get("Token"))


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sign_get_caller_identity(
    credentials: AwsCredentials, now: datetime.datetime, server_id: str | None = None
) -> dict[str, str]:
    """Headers of an sts:GetCallerIdentity POST signed with AWS Signature Version 4, `server_id` (Vault's
    X-Vault-AWS-IAM-Server-ID, which binds the request to that Vault) among the signed ones."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "Host": STS_HOST,
        "X-Amz-Date": amz_date,
    }
    if server_id:
        headers["X-Vault-AWS-IAM-Server-ID"] = server_id
    if credentials.session_token:
        headers["X-Amz-Security-Token"] = credentials.session_token
    canonical = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed_headers = ";".join(sorted(canonical))
    canonical_request = "\n".join(
        [
            "POST",
            "/",
            "",
            "".join(f"{name}:{canonical[name]}\n" for name in sorted(canonical)),
            signed_headers,
            _sha256_hex(STS_BODY),
        ]
    )
    scope = f"{day}/{STS_REGION}/sts/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, _sha256_hex(canonical_request)])
    key = f"AWS4{credentials.secret_access_key}".encode()
    for part in (day, STS_REGION, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return headers


def aws_login_payload(
    role: str, credentials: AwsCredentials, now: datetime.datetime, server_id: str | None = None
) -> dict[str, str]:
    """The body of POST /v1/auth/<mount>/login for Vault's AWS auth method, iam type."""
    headers = sign_get_caller_identity(credentials, now, server_id)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "role": role,
        "iam_http_request_method": "POST",
        "iam_request_url": b64(STS_URL),
        "iam_request_body": b64(STS_BODY),
        "iam_request_headers": b64(json.dumps({name: [value] for name, value in headers.items()})),
    }


def vault_json(
    method: str, addr: str, path: str, token: str | None = None, payload: Mapping[str, object] | None = None
) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Vault-Token"] = token
    body = None if payload is None else json.dumps(payload).encode()
    raw = http_request(method, f"{addr}/v1/{path}", headers, body)
    return dict(json.loads(raw)) if raw.strip() else {}


def vault_login(settings: Mapping[str, str], payload: Mapping[str, object]) -> str:
    """POST `payload` to the configured auth mount's login endpoint and return the client token."""
    path = f"auth/{settings['FORESIGHT_VAULT_AUTH_MOUNT']}/login"
    response = vault_json("POST", settings["FORESIGHT_VAULT_ADDR"], path, payload=payload)
    auth = response.get("auth")
    if not isinstance(auth, dict) or "client_token" not in auth:
        raise BootstrapError(f"POST {path} returned no token")
    return str(auth["client_token"])


def login_aws(settings: Mapping[str, str]) -> str:
    """Log in with the instance role and return a Vault token."""
    credentials = instance_credentials(os.environ.get("FORESIGHT_IMDS_ENDPOINT", IMDS_ENDPOINT))
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017 - datetime.UTC needs 3.11; nodes may run 3.10
    server_id = settings.get("FORESIGHT_VAULT_AWS_HEADER_VALUE") or None
    return vault_login(settings, aws_login_payload(settings["FORESIGHT_VAULT_ROLE"], credentials, now, server_id))


def gcp_identity_token(audience: str, metadata: str = GCP_METADATA) -> str:
    """The VM's default service account identity token for `audience`, from the GCP metadata server.

    format=full adds the instance's claims (project, zone, instance), which a role may bind; the service asks
    for the same token.
    """
    query = urllib.parse.urlencode({"audience": audience, "format": "full"})
    url = f"{metadata}/computeMetadata/v1/instance/service-accounts/default/identity?{query}"
    try:
        return http_request("GET", url, {"Metadata-Flavor": "Google"}, metadata=True).decode().strip()
    except BootstrapError as err:
        raise BootstrapError(
            f"no identity token from the GCP metadata server ({err}); does the VM have a service account?"
        ) from None


def gcp_jwt(settings: Mapping[str, str]) -> str:
    """The identity token for FORESIGHT_VAULT_GCP_AUDIENCE, by default http://vault/<role> as the service uses."""
    audience = settings.get("FORESIGHT_VAULT_GCP_AUDIENCE") or f"http://vault/{settings['FORESIGHT_VAULT_ROLE']}"
    return gcp_identity_token(audience, os.environ.get("FORESIGHT_VAULT_GCP_METADATA_URL", GCP_METADATA))


def azure_msi_token(resource: str, client_id: str | None = None, imds: str = IMDS_ENDPOINT) -> str:
    """A managed identity's access token for `resource` from the Azure IMDS, asked for as the service asks.

    `client_id` picks a user-assigned identity; without it IMDS answers for the VM's only identity.
    """
    params = {"api-version": AZURE_IMDS_API_VERSION, "resource": resource}
    if client_id:
        params["client_id"] = client_id
    url = f"{imds}/metadata/identity/oauth2/token?{urllib.parse.urlencode(params)}"
    if client_id:
        hint = (
            f"is a managed identity with client id {client_id} assigned to the VM? "
            "(FORESIGHT_VAULT_AZURE_CLIENT_ID takes its client id, not its principal id)"
        )
    else:
        hint = "is a managed identity assigned to the VM? With several, set FORESIGHT_VAULT_AZURE_CLIENT_ID"
    try:
        raw = http_request("GET", url, {"Metadata": "true"}, metadata=True)
    except BootstrapError as err:
        raise BootstrapError(f"no access token from the Azure IMDS ({err}); {hint}") from None
    try:
        token = json.loads(raw).get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        # The reply is not shown: a malformed one may still carry a token.
        raise BootstrapError(f"the Azure IMDS answered GET {url} without an access_token")
    return token


def azure_jwt(settings: Mapping[str, str]) -> str:
    """The managed identity's Azure Resource Manager token, of FORESIGHT_VAULT_AZURE_CLIENT_ID if set."""
    return azure_msi_token(
        AZURE_RESOURCE,
        settings.get("FORESIGHT_VAULT_AZURE_CLIENT_ID"),
        os.environ.get("FORESIGHT_IMDS_ENDPOINT", IMDS_ENDPOINT),
    )


def file_jwt(settings: Mapping[str, str]) -> str:
    """The token in FORESIGHT_VAULT_JWT_FILE, read at each login: the kubelet rotates a projected token in place."""
    path = settings.get("FORESIGHT_VAULT_JWT_FILE")
    if not path:
        raise BootstrapError("FORESIGHT_VAULT_JWT_SOURCE is 'file' but FORESIGHT_VAULT_JWT_FILE is unset")
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise BootstrapError(f"cannot read the identity token file {path}: {err.strerror}") from None
    if not token:
        raise BootstrapError(f"the identity token file {path} is empty")
    return token


# FORESIGHT_VAULT_JWT_SOURCE -> where the identity token comes from, as the service's own jwt login reads it.
JWT_SOURCES: dict[str, Callable[[Mapping[str, str]], str]] = {"gcp": gcp_jwt, "azure": azure_jwt, "file": file_jwt}


def login_jwt(settings: Mapping[str, str]) -> str:
    """Log in with the cloud identity's OIDC token (Vault's and OpenBao's jwt auth) and return a Vault token."""
    source = settings.get("FORESIGHT_VAULT_JWT_SOURCE", "")
    if source not in JWT_SOURCES:
        shown = repr(source) if source else "unset"
        raise BootstrapError(
            f"FORESIGHT_VAULT_JWT_SOURCE is {shown}; the boot script's jwt login supports {', '.join(JWT_SOURCES)}"
        )
    jwt = JWT_SOURCES[source](settings)
    return vault_login(settings, {"role": settings["FORESIGHT_VAULT_ROLE"], "jwt": jwt})


LOGIN_METHODS: dict[str, Callable[[Mapping[str, str]], str]] = {"aws": login_aws, "jwt": login_jwt}


def issue_request(host: str) -> dict[str, object]:
    """The issue call's body: `host` is the certificate's only SAN (an IP SAN for an address), and its common
    name where it fits. exclude_cn_from_sans keeps Vault from adding an address as a DNS SAN as well."""
    try:
        ipaddress.ip_address(host)
        sans = {"ip_sans": host}
    except ValueError:
        sans = {"alt_names": host}
    common_name = host if len(host) <= MAX_COMMON_NAME else ""
    return {"common_name": common_name, **sans, "exclude_cn_from_sans": True}


def issue_tls_material(settings: Mapping[str, str], token: str) -> dict[str, str]:
    """A fresh certificate and key from the stack's PKI role, for the role's default TTL (stacks/tls.py)."""
    path = f"{settings['FORESIGHT_TLS_VAULT_PKI_MOUNT']}/issue/{settings['FORESIGHT_TLS_NODE_PKI_ROLE']}"
    payload = issue_request(settings["FORESIGHT_TLS_COMMON_NAME"])
    response = vault_json("POST", settings["FORESIGHT_VAULT_ADDR"], path, token=token, payload=payload)
    data = response.get("data")
    if not isinstance(data, dict):
        raise BootstrapError(f"POST {path} returned no certificate")
    missing = sorted(field for field in TLS_FILES if not data.get(field))
    if missing:
        raise BootstrapError(f"POST {path} lacks {', '.join(missing)}")
    return {field: str(data[field]).rstrip("\n") + "\n" for field in TLS_FILES}


def write_tls_files(out_dir: Path, material: Mapping[str, str], group: int | None) -> None:
    """Write each file atomically, 0640 (root and `group` may read), in a 0750 directory.

    Each file is written under a name of its own and renamed over the old one, so a reader (the service's hot
    reload) sees the old file or the new one, never part of one; two runs at once (the daily refresh and a
    service start) each rename only their own files."""
    out_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    if group is not None:
        os.chown(out_dir, -1, group)
    for field, file_name in TLS_FILES.items():
        fd, staging = tempfile.mkstemp(prefix=f".{file_name}.", dir=out_dir)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), 0o640)
                if group is not None:
                    os.fchown(handle.fileno(), -1, group)
                handle.write(material[field])
            os.replace(staging, out_dir / file_name)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise


def fetch(settings: Mapping[str, str], out_dir: Path, group: int | None) -> None:
    method = settings["FORESIGHT_VAULT_AUTH_METHOD"]
    if method not in LOGIN_METHODS:
        raise BootstrapError(f"FORESIGHT_VAULT_AUTH_METHOD={method!r} is not one of {', '.join(LOGIN_METHODS)}")
    token = LOGIN_METHODS[method](settings)
    try:
        write_tls_files(out_dir, issue_tls_material(settings, token), group)
    finally:
        vault_json("POST", settings["FORESIGHT_VAULT_ADDR"], "auth/token/revoke-self", token=token)


def issuing_ca(settings: Mapping[str, str]) -> str:
    """The PEM of the mount's default issuer, the root every certificate is issued from now on (`<mount>/ca/pem`
    needs no token)."""
    path = f"{settings['FORESIGHT_TLS_VAULT_PKI_MOUNT']}/ca/pem"
    return http_request("GET", f"{settings['FORESIGHT_VAULT_ADDR']}/v1/{path}").decode("ascii", "replace")


def still_current(
    settings: Mapping[str, str], out_dir: Path, renew_after: float, now: Callable[[], float] = time.time
) -> str | None:
    """Why the certificate in `out_dir` needs no successor yet (younger than `renew_after` seconds, and from the CA
    that issues now), or None when a new one is due."""
    try:
        age = now() - (out_dir / TLS_FILES["certificate"]).stat().st_mtime
        held = (out_dir / TLS_FILES["issuing_ca"]).read_text()
    except OSError:
        return None
    if age >= renew_after or "".join(held.split()) != "".join(issuing_ca(settings).split()):
        return None
    return f"the certificate is {age / 3600:.1f} h old and its CA still issues"


def fetch_and_report(
    settings: Mapping[str, str], out_dir: Path, group: int | None, renew_after: float | None = None
) -> bool:
    """One run, its outcome printed as one line; False when it failed."""
    try:
        current = None if renew_after is None else still_current(settings, out_dir, renew_after)
        if current is None:
            fetch(settings, out_dir, group)
    except BootstrapError as err:
        print(f"fetch_tls: {err}", file=sys.stderr, flush=True)
        return False
    if current is not None:
        print(f"fetch_tls: {current}: nothing issued", flush=True)
    else:
        print(f"fetch_tls: wrote {', '.join(TLS_FILES.values())} to {out_dir}", flush=True)
    return True


def refresh_forever(
    settings: Mapping[str, str],
    out_dir: Path,
    group: int | None,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Issue a fresh certificate every `interval_s` seconds (the first after one interval: a pod's init container
    has just issued one). A failed run waits for the next; the certificate outlives many intervals."""
    while True:
        sleep(interval_s)
        fetch_and_report(settings, out_dir, group)


def _stop(signum: int, frame: object) -> None:
    sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for ca.pem, tls.crt, tls.key")
    parser.add_argument("--group", type=int, default=None, help="numeric group that may read the files")
    parser.add_argument("--every", type=float, default=None, metavar="SECONDS",
                        help="run for ever, issuing a fresh certificate every SECONDS")
    parser.add_argument("--renew-after", type=float, default=None, metavar="SECONDS",
                        help="issue only if the certificate in --out is SECONDS old or its CA no longer issues")
    args = parser.parse_args(argv)
    missing = [name for name in SETTINGS if not os.environ.get(name)]
    if missing:
        print(f"fetch_tls: missing settings: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = {name: os.environ[name] for name in SETTINGS + AWS_SETTINGS + JWT_SETTINGS if os.environ.get(name)}
    if args.every is not None:
        # As a pod's sidecar this is PID 1 (its command bypasses the image's tini), and the kernel drops a signal PID 1
        # has no handler for: without one, every pod stop waited out its whole grace period for this container.
        signal.signal(signal.SIGTERM, _stop)
        refresh_forever(settings, args.out, args.group, args.every)
    return 0 if fetch_and_report(settings, args.out, args.group, args.renew_after) else 1


if __name__ == "__main__":
    sys.exit(main())
