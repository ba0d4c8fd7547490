"""`foresight:aws:GpuNode`: one Foresight GPU node on AWS, built from the shared `StackSpec`.

It creates, all as its children:
- network (`network.py`): a VPC with public and private subnets, internet and NAT gateways (or the given VPC
  and subnets); a security group for the load balancer that admits 6380/8443 from `allowedCidrs` only, one for
  the node that admits them from the load balancer only (SSH only with a key, never from 0.0.0.0/0); a Network
  Load Balancer (internet-facing only when an allowed CIDR is public) with TCP listeners and target groups;
- identity (`identity.py`): the node's IAM role and instance profile (SSM core, KMS use on its key, no more);
- kms (`kms.py`): a customer-managed KMS key with rotation and a least-privilege key policy, and its alias;
- Vault (`stacks/vault.py`, `vault.py`): the provider, a KV v2 mount, the node's policy, an AWS auth method and
  its IAM role bound to the node's role;
- TLS (`stacks/tls.py`): a PKI mount with a root CA kept inside Vault and a role that issues certificates for the
  load balancer's DNS name only, from which the node issues its own;
- compute (`compute.py`): a launch template (GPU AMI from SSM, IMDSv2, KMS-encrypted root and data volumes,
  cloud-init user data) and an Auto Scaling group of one, spot or on-demand, with fallback types.
Its outputs are the shared `StackOutputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stacks.aws.compute import DATA_DISK_MODEL, check_instance_types, create_compute
from stacks.aws.identity import create_identity, grant_audit_shipping, grant_key_use, grant_origin_read
from stacks.aws.kms import create_key
from stacks.aws.network import check_network_ids, create_endpoint, create_network
from stacks.aws.vault import create_aws_auth, iam_server_id
from stacks.cloudinit import NodeBoot, render_user_data, service_environment
from stacks.spec import HTTPS_PORT, RESP_PORT, StackOutputs, StackSpec
from stacks.tls import EndpointName, create_endpoint_tls
from stacks.vault import VaultLayout, create_shared_vault

COMPONENT_TYPE = "foresight:aws:GpuNode"


@dataclass(frozen=True)
class GpuNodeArgs:
    """The validated inputs of one AWS node: the shared spec, checked against what AWS accepts."""

    spec: StackSpec

    @classmethod
    def from_spec(cls, spec: StackSpec) -> GpuNodeArgs:
        check_instance_types(spec)
        check_network_ids(spec)
        return cls(spec=spec)


class GpuNode(pulumi.ComponentResource):
    """One GPU node serving Foresight over TLS, with its network, key, identity, certificates and Vault."""

    outputs: StackOutputs

    def __init__(self, name: str, args: GpuNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        spec = args.spec
        invoke = pulumi.InvokeOptions(parent=self)
        partition = aws.get_partition(opts=invoke).partition
        account_id = aws.get_caller_identity(opts=invoke).account_id
        layout = VaultLayout.for_spec(spec)

        self.network = create_network(name, spec, parent=self)
        self.endpoint = create_endpoint(name, spec, self.network, parent=self)
        self.identity = create_identity(name, spec, partition, parent=self)
        self.key = create_key(name, spec, partition, account_id, self.identity.role.arn, parent=self)
        self.key_use = grant_key_use(name, self.identity, self.key.key.arn, parent=self)
        self.audit_use = grant_audit_shipping(name, spec, self.identity.role, partition, parent=self)
        self.origin_reads = grant_origin_read(name, spec, self.identity.role, partition, parent=self)
        self.vault = create_shared_vault(name, spec, layout, parent=self)
        self.tls = create_endpoint_tls(
            name, spec, layout, EndpointName(self.endpoint.host, is_ip=False), self.vault.provider, parent=self
        )
        self.vault_auth = create_aws_auth(
            name,
            spec,
            layout,
            node_role_arn=self.identity.role.arn,
            node_policy=self.vault.node_policy,
            provider=self.vault.provider,
            parent=self,
        )

        def user_data(key_arn: str, host: str) -> str:
            environment = service_environment(
                spec,
                layout,
                vault_login={
                    "FORESIGHT_VAULT_AUTH_METHOD": "aws",
                    "FORESIGHT_VAULT_AWS_HEADER_VALUE": iam_server_id(spec),
                },
                kms_provider="aws",
                kms_key_id=key_arn,
                tls_host=host,
                extra={"AWS_REGION": spec.region, "AWS_DEFAULT_REGION": spec.region},
            )
            return render_user_data(
                NodeBoot(
                    image=spec.image,
                    environment=environment,
                    data_disk=DATA_DISK_MODEL,
                    ssh_enabled=spec.ssh_public_key is not None,
                )
            )

        self.compute = create_compute(
            name,
            spec,
            self.network,
            self.endpoint,
            instance_profile_arn=self.identity.instance_profile.arn,
            key_arn=self.key.key.arn,
            # The Vault role and the PKI role must exist before a node boots and asks for them.
            user_data=pulumi.Output.all(
                self.key.key.arn, self.endpoint.host, self.vault_auth.role.id, self.tls.role.id
            ).apply(lambda values: user_data(values[0], values[1])),
            parent=self,
        )
        self.outputs = StackOutputs(
            endpoint_host=self.endpoint.host,
            resp_port=RESP_PORT,
            https_port=HTTPS_PORT,
            ca_certificate=self.tls.ca_certificate,
            kms_key_id=self.key.key.arn,
            vault_role=self.vault_auth.role.role,
            vault_auth_mount=self.vault_auth.backend.path,
            vault_kv_mount=self.vault.kv_mount.path,
            instance_id=self.compute.group.name,
            node_identity=self.identity.role.arn,
        )
        self.register_outputs(self.outputs.as_dict())
