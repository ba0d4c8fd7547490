"""First boot of an AWS Marketplace instance: its addresses from IMDSv2, its first key into Secrets Manager.

`first_boot.sh` runs this inside the service image (`python -m marketplace.aws.first_boot`); the minting itself
is `marketplace/first_boot.py`, shared with Azure. It reads the instance's addresses from IMDSv2 (waiting until
the stack's Elastic IP is associated, which is also when the instance can reach AWS), then puts the plaintext
key and the CA certificate into the stack's Secrets Manager secret before any file is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request

from marketplace.first_boot import Addresses, FirstBootError, base_arguments, provision

IMDS_ENDPOINT = "http://169.254.169.254"
ASSOCIATION_TIMEOUT_S = 600.0


def _imds(endpoint: str, method: str, path: str, headers: dict[str, str]) -> str | None:
    """One IMDS request's body; None for 404 (no public-hostname yet, or none in this VPC)."""
    request = urllib.request.Request(f"{endpoint}/latest/{path}", method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the fixed IMDS address
            return str(response.read().decode()).strip() or None
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise FirstBootError(f"IMDS {method} {path} -> HTTP {err.code}") from None


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
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            current, addresses = _read_addresses(endpoint)
            if current == public_ip and addresses is not None:
                return addresses
        except OSError:
            pass  # IMDS not answering yet: retried below
        if time.monotonic() > deadline:
            raise FirstBootError(f"IMDS never reported the Elastic IP {public_ip} as public-ipv4")
        time.sleep(2)


def put_secret(secret_arn: str, document: str) -> None:
    import boto3  # only here: the rest of the module runs without an AWS SDK
    import botocore.exceptions

    region = secret_arn.split(":")[3]
    client = boto3.client("secretsmanager", region_name=region)
    try:
        client.put_secret_value(SecretId=secret_arn, SecretString=document)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise FirstBootError(f"PutSecretValue on {secret_arn} failed: {err}") from None


def arguments() -> argparse.ArgumentParser:
    parser = base_arguments(__doc__)
    parser.add_argument("--secret-arn", required=True, help="the Secrets Manager secret the key goes to")
    parser.add_argument("--public-ip", required=True, help="the Elastic IP to wait for")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    try:
        addresses = wait_for_addresses(os.environ.get("FORESIGHT_IMDS_ENDPOINT", IMDS_ENDPOINT), args.public_ip)
        minted = provision(args.out, args.tenant, addresses, lambda document: put_secret(args.secret_arn, document))
    except FirstBootError as err:
        print(f"first_boot: {err}", file=sys.stderr)
        return 1
    print(f"first_boot: tenant {args.tenant}, key {minted.tenants.keys[0].key_id}; the key is in {args.secret_arn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
