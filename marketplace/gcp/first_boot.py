"""First boot of a Google Cloud Marketplace VM: its addresses from the metadata server, its first key into the
deployment's Secret Manager secret.

`first_boot.sh` runs this inside the service image (`python -m marketplace.gcp.first_boot`); the minting is
`marketplace/first_boot.py`, shared with AWS and Azure. Terraform reserves the static external address before
the VM exists, so it comes as an argument; the metadata server (at 169.254.169.254, the address of
metadata.google.internal, so no DNS is needed inside the container) gives the internal address, confirms the
external one, and signs an access token of the VM's service account. With that token the document is added as
a new version of the one secret the account may add versions to (Secret Manager REST API, no SDK: the
secretVersionAdder role on that secret is the account's only write). A fresh IAM grant can take minutes to
reach Secret Manager, so 403 and the servers' "busy" answers are retried until a deadline. The CA's key is
wrapped with the deployment's Cloud KMS key (foresight.env's FORESIGHT_KMS_KEY_ID, in the environment) first.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import urllib.error
import urllib.request

from marketplace.first_boot import (
    Addresses,
    FirstBootError,
    NotYet,
    base_arguments,
    node_cipher,
    provision,
    with_retries,
)
from service.security.kms.gcp import crc32c

METADATA_ENDPOINT = "http://169.254.169.254"
SECRET_MANAGER_ENDPOINT = "https://secretmanager.googleapis.com"  # noqa: S105 - an API, not a secret
_SECRET_RE = re.compile(r"projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255}")
# Answers that mean "not yet": the metadata server's 404 while the service account attaches, 429 and 5xx;
# Secret Manager's 403 until the grant propagates, 429 and 5xx.
_METADATA_RETRY = frozenset({404, 429, 500, 502, 503, 504})
_SECRETS_RETRY = frozenset({403, 429, 500, 502, 503, 504})


def _request(request: urllib.request.Request, retry: frozenset[int]) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - metadata server or https API
            return bytes(response.read())
    except urllib.error.HTTPError as err:
        summary = f"{request.get_method()} {request.full_url} -> HTTP {err.code}"
        if err.code in retry:
            raise NotYet(summary) from None
        raise FirstBootError(summary) from None
    except OSError as err:
        raise NotYet(f"{request.full_url}: {err}") from None


def _metadata(endpoint: str, path: str) -> str:
    """One value from the metadata server (`Metadata-Flavor: Google` is what it requires of every request)."""
    url = f"{endpoint}/computeMetadata/v1/instance/{path}"
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})  # noqa: S310 - fixed address
    return _request(request, _METADATA_RETRY).decode().strip()


def read_addresses(endpoint: str, public_ip: str) -> Addresses:
    """The VM's internal address, once the metadata server reports `public_ip` as its external one."""
    external = _metadata(endpoint, "network-interfaces/0/access-configs/0/external-ip")
    if external != public_ip:
        raise NotYet(f"the metadata server reports external IP {external or 'none'}, not {public_ip}")
    return Addresses(
        public_ip=public_ip, public_hostname=None, private_ip=_metadata(endpoint, "network-interfaces/0/ip")
    )


def access_token(endpoint: str) -> str:
    """An OAuth access token of the VM's service account."""
    body = json.loads(_metadata(endpoint, "service-accounts/default/token"))
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise FirstBootError("the metadata server answered the token request without an access_token")
    return token


def add_version(endpoint: str, secret: str, token: str, document: str) -> None:
    """Secret Manager's `secrets.addVersion`: the payload base64 in JSON, with its CRC32C so that Secret Manager
    refuses a payload corrupted on the way."""
    data = document.encode()
    body = {"payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc32c(data))}}
    request = urllib.request.Request(  # noqa: S310 - https only, checked by main
        f"{endpoint}/v1/{secret}:addVersion",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    _request(request, _SECRETS_RETRY)


def arguments() -> argparse.ArgumentParser:
    parser = base_arguments(__doc__)
    parser.add_argument("--secret", required=True, help="the secret's resource name, projects/<p>/secrets/<id>")
    parser.add_argument("--public-ip", required=True, help="the VM's static external address")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    metadata = os.environ.get("FORESIGHT_METADATA_ENDPOINT", METADATA_ENDPOINT)
    secrets = os.environ.get("FORESIGHT_SECRET_MANAGER_ENDPOINT", SECRET_MANAGER_ENDPOINT).rstrip("/")
    if not _SECRET_RE.fullmatch(args.secret) or not secrets.startswith("https://"):
        print(f"first_boot: {args.secret} is not projects/<p>/secrets/<id>, or {secrets} is not https", file=sys.stderr)
        return 2

    def put(document: str) -> None:
        with_retries(
            lambda: add_version(secrets, args.secret, access_token(metadata), document), f"adding to {args.secret}"
        )

    try:
        cipher = node_cipher()
        addresses = with_retries(lambda: read_addresses(metadata, args.public_ip), "reading the VM's addresses")
        minted = provision(args.out, args.tenant, addresses, put, cipher)
    except FirstBootError as err:
        print(f"first_boot: {err}", file=sys.stderr)
        return 1
    print(
        f"first_boot: tenant {args.tenant}, key {minted.tenants.keys[0].key_id}; the key and the metrics token are "
        f"in {args.secret}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
