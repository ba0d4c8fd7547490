"""First boot of an Azure Marketplace VM: its first key into the managed application's Key Vault secret.

`first_boot.sh` runs this inside the service image (`python -m marketplace.azure.first_boot`); the minting is
`marketplace/first_boot.py`, shared with AWS. ARM knows the VM's addresses before it boots (a static public IP
with a DNS label, the NIC's private address), so they come as arguments, not from IMDS. What does come from
Azure's Instance Metadata Service is an access token of the VM's user-assigned identity for Key Vault, with
which the document is PUT to the secret, creating it (Key Vault REST API, no SDK: a secrets role on the managed
application's own vault is the identity's only write). A fresh role assignment can take minutes to reach
Key Vault, so 401/403 and IMDS's "identity not ready yet" answers are retried until a deadline. The CA's key is
wrapped with the application's Key Vault key (foresight.env's FORESIGHT_KMS_KEY_ID, in the environment) first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from marketplace.first_boot import (
    RETRY_TIMEOUT_S,
    Addresses,
    FirstBootError,
    NotYet,
    base_arguments,
    node_cipher,
    provision,
    with_retries,
)

IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_API_VERSION = "2018-02-01"
KEY_VAULT_API_VERSION = "7.4"
# Answers that mean "not yet". IMDS: 400 "Identity not found" until the identity reaches the VM, 404/410 while
# it updates, 429 and 5xx when busy. Key Vault: 401/403 until the role assignment reaches it, 429 and 5xx.
_IMDS_RETRY = frozenset({400, 404, 410, 429, 500, 502, 503, 504})
_VAULT_RETRY = frozenset({401, 403, 429, 500, 502, 503, 504})


def _request(request: urllib.request.Request, retry: frozenset[int]) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - IMDS or the vault's https URI
            return bytes(response.read())
    except urllib.error.HTTPError as err:
        summary = f"{request.get_method()} {request.full_url.split('?')[0]} -> HTTP {err.code}"
        if err.code in retry:
            raise NotYet(summary) from None
        raise FirstBootError(summary) from None
    except OSError as err:
        raise NotYet(f"{request.full_url.split('?')[0]}: {err}") from None


def identity_token(endpoint: str, resource: str, client_id: str) -> str:
    """An access token of the user-assigned identity `client_id` for `resource`, from IMDS."""
    query = urllib.parse.urlencode({"api-version": IMDS_API_VERSION, "resource": resource, "client_id": client_id})
    url = f"{endpoint}/metadata/identity/oauth2/token?{query}"
    request = urllib.request.Request(url, headers={"Metadata": "true"})  # noqa: S310 - IMDS's fixed address
    body = json.loads(_request(request, _IMDS_RETRY))
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise FirstBootError("IMDS answered the token request without an access_token")
    return token


def put_secret(secret_uri: str, token: str, document: str) -> None:
    """Key Vault's Set Secret (PUT {vault}/secrets/{name}): creates the secret, or adds a version to it."""
    if urllib.parse.urlsplit(secret_uri).scheme != "https":
        raise FirstBootError(f"{secret_uri} is not an https:// Key Vault secret URI")
    body = json.dumps({"value": document, "contentType": "application/json"}).encode()
    request = urllib.request.Request(  # noqa: S310 - https only, checked above
        f"{secret_uri.rstrip('/')}?api-version={KEY_VAULT_API_VERSION}",
        data=body,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    _request(request, _VAULT_RETRY)


def put_with_retries(
    imds: str, resource: str, client_id: str, secret_uri: str, document: str, timeout_s: float = RETRY_TIMEOUT_S
) -> None:
    """Token, then PUT; both again while Azure says "not yet", until `timeout_s`."""
    with_retries(lambda: put_secret(secret_uri, identity_token(imds, resource, client_id), document),
                 f"setting {secret_uri}", timeout_s)


def arguments() -> argparse.ArgumentParser:
    parser = base_arguments(__doc__)
    parser.add_argument("--secret-uri", required=True, help="https://<vault>.vault.azure.net/secrets/<name>")
    parser.add_argument("--resource", required=True, help="Key Vault's token audience in this cloud")
    parser.add_argument("--client-id", required=True, help="the VM's user-assigned identity")
    parser.add_argument("--public-ip", required=True)
    parser.add_argument("--dns-name", required=True, help="the public IP's DNS name")
    parser.add_argument("--private-ip", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    imds = os.environ.get("FORESIGHT_IMDS_ENDPOINT", IMDS_ENDPOINT)
    addresses = Addresses(public_ip=args.public_ip, public_hostname=args.dns_name, private_ip=args.private_ip)
    try:
        minted = provision(
            args.out,
            args.tenant,
            addresses,
            lambda document: put_with_retries(imds, args.resource, args.client_id, args.secret_uri, document),
            node_cipher(),
        )
    except FirstBootError as err:
        print(f"first_boot: {err}", file=sys.stderr)
        return 1
    print(
        f"first_boot: tenant {args.tenant}, key {minted.tenants.keys[0].key_id}; the key and the metrics token are "
        f"in {args.secret_uri}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
