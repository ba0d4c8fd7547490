"""First boot of an AWS Marketplace instance: its addresses from IMDSv2, its first key into Secrets Manager.

`first_boot.sh` runs this inside the service image (`python -m marketplace.aws.first_boot`); the minting itself
is `marketplace/first_boot.py`, shared with Google Cloud and Azure. It reads the instance's addresses from IMDSv2
(waiting until the stack's Elastic IP is associated, which is also when the instance can reach AWS), wraps the
CA's key with the stack's KMS key (foresight.env's FORESIGHT_KMS_KEY_ID, in the environment), then puts the
plaintext key, the metrics scrape token and the CA certificate into the stack's Secrets Manager secret before
any file is written. Each step retries what means "not yet" (IMDS busy or not answering; the role's grant, its
credentials or the key policy still propagating) until a deadline, as on Google Cloud and Azure.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any

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
ASSOCIATION_TIMEOUT_S = 600.0
# Secrets Manager's error codes that mean "not yet": a new role policy, instance-profile credentials or key
# policy still reaching the service (the KMS side surfaces as EncryptionFailure), throttling, server trouble.
_SECRETS_RETRY = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "EncryptionFailure",
        "InternalServiceError",
        "ThrottlingException",
        "ServiceUnavailable",
        "RequestTimeout",
    }
)


def _imds(endpoint: str, method: str, path: str, headers: dict[str, str]) -> str | None:
    """One IMDS request's body; None for 404 (no public-hostname yet, or none in this VPC). Any other answer
    (401 for an expired token, 429, 5xx) or no answer at all is NotYet: IMDS is link-local and always there."""
    request = urllib.request.Request(f"{endpoint}/latest/{path}", method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the fixed IMDS address
            return str(response.read().decode()).strip() or None
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise NotYet(f"IMDS {method} {path} -> HTTP {err.code}") from None
    except OSError as err:
        raise NotYet(f"IMDS {method} {path}: {err}") from None


def _read_addresses(endpoint: str) -> tuple[str | None, Addresses | None]:
    """The public IP IMDSv2 reports now and, once it has one, all the addresses."""
    token = _imds(endpoint, "PUT", "api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}) or ""

    def get(name: str) -> str | None:
        return _imds(endpoint, "GET", f"meta-data/{name}", {"X-aws-ec2-metadata-token": token})

    public_ip = get("public-ipv4")
    private_ip = get("local-ipv4")
    if public_ip is None or private_ip is None:
        return public_ip, None
    return public_ip, Addresses(public_ip, get("public-hostname"), private_ip)


def wait_for_addresses(endpoint: str, public_ip: str, timeout_s: float = ASSOCIATION_TIMEOUT_S) -> Addresses:
    """The instance's addresses once IMDS reports `public_ip` (the Elastic IP CloudFormation associates)."""

    def read() -> Addresses:
        current, addresses = _read_addresses(endpoint)
        if current != public_ip or addresses is None:
            raise NotYet(f"IMDS reports public-ipv4 {current or 'none'}, not the Elastic IP {public_ip}")
        return addresses

    return with_retries(read, f"waiting for IMDS to report the Elastic IP {public_ip}", timeout_s)


def secrets_client(secret_arn: str) -> Any:
    """A Secrets Manager client in the secret's region."""
    import boto3  # only here: the rest of the module runs without an AWS SDK

    return boto3.client("secretsmanager", region_name=secret_arn.split(":")[3])


def put_secret(client: Any, secret_arn: str, document: str, timeout_s: float = RETRY_TIMEOUT_S) -> None:
    """PutSecretValue, again while AWS says "not yet". One request token for every attempt: an attempt that
    succeeded although its answer was lost makes the next one a no-op, not a second version."""
    import botocore.exceptions

    token = str(uuid.uuid4())
    what = f"PutSecretValue on {secret_arn}"

    def put() -> None:
        try:
            client.put_secret_value(SecretId=secret_arn, SecretString=document, ClientRequestToken=token)
        except botocore.exceptions.ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if err.response.get("Error", {}).get("Code") in _SECRETS_RETRY or status == 429 or status >= 500:
                raise NotYet(f"{what} failed: {err}") from None
            raise FirstBootError(f"{what} failed: {err}") from None
        except botocore.exceptions.ParamValidationError as err:
            raise FirstBootError(f"{what} failed: {err}") from None
        except botocore.exceptions.BotoCoreError as err:  # no credentials yet, no connection, a timeout
            raise NotYet(f"{what} failed: {err}") from None

    with_retries(put, f"putting the key into {secret_arn}", timeout_s)


def arguments() -> argparse.ArgumentParser:
    parser = base_arguments(__doc__)
    parser.add_argument("--secret-arn", required=True, help="the Secrets Manager secret the key goes to")
    parser.add_argument("--public-ip", required=True, help="the Elastic IP to wait for")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    try:
        cipher = node_cipher()
        addresses = wait_for_addresses(os.environ.get("FORESIGHT_IMDS_ENDPOINT", IMDS_ENDPOINT), args.public_ip)
        client = secrets_client(args.secret_arn)
        minted = provision(
            args.out, args.tenant, addresses, lambda document: put_secret(client, args.secret_arn, document), cipher
        )
    except FirstBootError as err:
        print(f"first_boot: {err}", file=sys.stderr)
        return 1
    print(
        f"first_boot: tenant {args.tenant}, key {minted.tenants.keys[0].key_id}; the key and the metrics token are "
        f"in {args.secret_arn}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
