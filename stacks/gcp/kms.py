"""Cloud KMS: the customer-managed key that encrypts the node's disks (CMEK) and the service's data keys.

A key ring in the stack's region and one symmetric key in it, rotated every 90 days; a destroyed key version
stays recoverable for 30 days (Cloud KMS never deletes key rings, so `pulumi destroy` leaves an empty one).
Two principals may encrypt and decrypt with the key, granted on the key alone: the node's service account (the
service's envelope encryption) and the project's Compute Engine service agent, which is who encrypts and
decrypts a CMEK disk when the managed instance group creates or starts a VM.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from stacks.spec import StackSpec

ROTATION_PERIOD = f"{90 * 24 * 3600}s"
DESTROY_SCHEDULED_DURATION = f"{30 * 24 * 3600}s"
KEY_USER_ROLE = "roles/cloudkms.cryptoKeyEncrypterDecrypter"


@dataclass(frozen=True)
class NodeKey:
    key_ring: gcp.kms.KeyRing
    key: gcp.kms.CryptoKey
    users: list[gcp.kms.CryptoKeyIAMMember]


def compute_service_agent(project_number: str) -> str:
    return f"serviceAccount:service-{project_number}@compute-system.iam.gserviceaccount.com"


def create_key(
    name: str, spec: StackSpec, project_number: str, node_email: pulumi.Input[str], parent: pulumi.Resource
) -> NodeKey:
    opts = pulumi.ResourceOptions(parent=parent)
    key_ring = gcp.kms.KeyRing(f"{name}-keyring", location=spec.region, opts=opts)
    key = gcp.kms.CryptoKey(
        f"{name}-key",
        key_ring=key_ring.id,
        purpose="ENCRYPT_DECRYPT",
        rotation_period=ROTATION_PERIOD,
        destroy_scheduled_duration=DESTROY_SCHEDULED_DURATION,
        labels=spec.labels(),
        opts=opts,
    )
    members = {
        "node": pulumi.Output.concat("serviceAccount:", node_email),
        "compute": pulumi.Output.from_input(compute_service_agent(project_number)),
    }
    users = [
        gcp.kms.CryptoKeyIAMMember(
            f"{name}-key-{who}", crypto_key_id=key.id, role=KEY_USER_ROLE, member=member, opts=opts
        )
        for who, member in members.items()
    ]
    return NodeKey(key_ring=key_ring, key=key, users=users)
