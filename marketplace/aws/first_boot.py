"""First boot of a marketplace instance: a buyer has no Vault, so the instance mints its own TLS and first key.

`first_boot.sh` runs this inside the service image (`python -m marketplace.aws.first_boot`), so the key format,
its hash and the tenants file are the service's own code, not a copy. It reads the instance's addresses from
IMDSv2 (waiting until the stack's Elastic IP is associated, which is also when the instance can reach AWS),
issues a certificate for them from a CA whose key is never written, then puts the plaintext key and the CA
certificate into the stack's Secrets Manager secret *before* writing tls.crt, tls.key, ca.crt and tenants.json
(key hashes only), so that a failed put leaves nothing behind and the next attempt starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from service.security.apikeys import new_key
from service.security.local_ca import CertificateAuthority, IssuedCert, write_private
from service.tenancy import KeyRecord, TenantsFile, TenantSpec

IMDS_ENDPOINT = "http://169.254.169.254"
# Long enough that a trial never meets an expiry, short enough that a leaked key does not live for a decade.
CERT_DAYS = 825
# The buyer's only key may do everything within the tenant, FLUSHDB included.
FIRST_KEY_SCOPES = ["read", "write", "admin"]
ASSOCIATION_TIMEOUT_S = 600.0


class FirstBootError(RuntimeError):
    """A step failed; the message names it and never carries the key."""


@dataclass(frozen=True)
class Addresses:
    public_ip: str
    public_hostname: str | None
    private_ip: str


@dataclass(frozen=True)
class Minted:
    tls: IssuedCert
    ca_pem: bytes
    api_key: str
    tenants: TenantsFile


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


def mint(tenant: str, addresses: Addresses) -> Minted:
    """A CA, a server certificate for the addresses, and the tenant's first key with its tenants file."""
    ca = CertificateAuthority.create(common_name=f"Foresight {tenant} CA ({addresses.public_ip})", days=CERT_DAYS)
    names = [addresses.public_hostname] if addresses.public_hostname else []
    tls = ca.issue(
        addresses.public_hostname or addresses.public_ip,
        dns_names=names,
        ip_addresses=[addresses.public_ip, addresses.private_ip],
        days=CERT_DAYS,
    )
    key = new_key()
    tenants = TenantsFile(
        tenants=[TenantSpec(name=tenant)],
        keys=[KeyRecord(key_id=key.key_id, tenant=tenant, hash=key.key_hash, scopes=FIRST_KEY_SCOPES)],
    )
    return Minted(tls=tls, ca_pem=ca.cert_pem, api_key=key.secret, tenants=tenants)


def secret_document(minted: Minted, addresses: Addresses) -> str:
    """What the buyer reads from the secret: the key, its tenant, and the CA to trust."""
    return json.dumps(
        {
            "tenant": minted.tenants.tenants[0].name,
            "key_id": minted.tenants.keys[0].key_id,
            "api_key": minted.api_key,
            "host": addresses.public_hostname or addresses.public_ip,
            "ca_certificate": minted.ca_pem.decode(),
        }
    )


def put_secret(secret_arn: str, document: str) -> None:
    import boto3  # only here: the rest of the module runs without an AWS SDK
    import botocore.exceptions

    region = secret_arn.split(":")[3]
    client = boto3.client("secretsmanager", region_name=region)
    try:
        client.put_secret_value(SecretId=secret_arn, SecretString=document)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise FirstBootError(f"PutSecretValue on {secret_arn} failed: {err}") from None


def write_files(out: Path, minted: Minted) -> None:
    """tenants.json last: its presence is what tells first_boot.sh that this already ran."""
    write_private(out / "ca.crt", minted.ca_pem, mode=0o644)
    minted.tls.write(out / "tls.crt", out / "tls.key")
    write_private(out / "tenants.json", minted.tenants.model_dump_json(indent=2).encode(), mode=0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for the TLS files and tenants.json")
    parser.add_argument("--tenant", required=True, help="the first tenant's name")
    parser.add_argument("--secret-arn", required=True, help="the Secrets Manager secret the key goes to")
    parser.add_argument("--public-ip", required=True, help="the Elastic IP to wait for")
    args = parser.parse_args(argv)
    try:
        addresses = wait_for_addresses(os.environ.get("FORESIGHT_IMDS_ENDPOINT", IMDS_ENDPOINT), args.public_ip)
        minted = mint(args.tenant, addresses)
        put_secret(args.secret_arn, secret_document(minted, addresses))
        write_files(args.out, minted)
    except FirstBootError as err:
        print(f"first_boot: {err}", file=sys.stderr)
        return 1
    print(f"first_boot: tenant {args.tenant}, key {minted.tenants.keys[0].key_id}; the key is in {args.secret_arn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
