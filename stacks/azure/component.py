"""`foresight:azure:GpuNode`: one Foresight GPU node on Azure, built from the shared `StackSpec`.

It creates, all as its children, in a resource group of its own:
- network (`network.py`): a virtual network with one subnet and a NAT gateway (or the given network and
  subnet); the node's network security group: 6380/8443 from `allowedCidrs` only, 8443 from the load
  balancer's probes, SSH only with a key and never from 0.0.0.0/0, outbound HTTPS and Vault only; a Standard
  load balancer (a public frontend with a DNS name only when an allowed CIDR is public);
- identity (`identity.py`): the node's user-assigned managed identity, with no subscription role;
- kms (`kms.py`): a Key Vault (RBAC, purge protection) with an RSA key that rotates every 90 days, a disk
  encryption set that uses it for the disks, and role assignments on the key for the set and the node;
- Vault (`stacks/vault.py`, `vault.py`): the provider, a KV v2 mount, the node's policy, a jwt auth method
  trusting the tenant's Entra ID issuer and its role bound to the node's identity;
- TLS (`stacks/tls.py`): a PKI mount with a root CA kept inside Vault and a role that issues certificates for the
  endpoint only (its DNS name, or its private address), from which the node issues its own;
- compute (`compute.py`): a scale set of one (Ubuntu HPC image, encrypted disks, no public address,
  cloud-init custom data), Spot or regular, with fallback sizes and automatic repairs.
Its outputs are the shared `StackOutputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from stacks.azure.compute import DATA_DISK_PATH, check_instance_types, create_compute
from stacks.azure.identity import create_identity, grant_audit_shipping, grant_origin_read
from stacks.azure.kms import create_key
from stacks.azure.network import check_network_ids, create_endpoint, create_network
from stacks.azure.vault import create_azure_auth
from stacks.cloudinit import NodeBoot, render_user_data, service_environment
from stacks.spec import HTTPS_PORT, RESP_PORT, StackOutputs, StackSpec
from stacks.tls import EndpointName, create_endpoint_tls
from stacks.vault import VaultLayout, create_shared_vault

COMPONENT_TYPE = "foresight:azure:GpuNode"
# Azure's limit on custom data: "the base-64 encoded string is decoded to a binary array ... The maximum length
# of the binary array is 65535 bytes" (the Compute API's OSProfile.customData).
CUSTOM_DATA_LIMIT_BYTES = 65535


@dataclass(frozen=True)
class GpuNodeArgs:
    """The validated inputs of one Azure node: the shared spec, checked against what Azure accepts."""

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
        client = azure.authorization.get_client_config(opts=pulumi.InvokeOptions(parent=self))
        layout = VaultLayout.for_spec(spec)

        self.group = azure.resources.ResourceGroup(
            f"{name}-rg", location=spec.region, tags=spec.tags(), opts=pulumi.ResourceOptions(parent=self)
        )
        self.identity = create_identity(name, spec, self.group, parent=self)
        self.audit_grant = grant_audit_shipping(name, spec, self.identity.principal_id, parent=self)
        self.origin_grants = grant_origin_read(name, spec, self.identity.principal_id, parent=self)
        self.network = create_network(name, spec, self.group, parent=self)
        self.key = create_key(
            name, spec, self.group, client.tenant_id, client.subscription_id, self.identity.principal_id, parent=self
        )
        self.endpoint = create_endpoint(name, spec, self.group, self.network, client.subscription_id, parent=self)
        self.vault = create_shared_vault(name, spec, layout, parent=self)
        self.tls = create_endpoint_tls(
            name,
            spec,
            layout,
            EndpointName(self.endpoint.host, is_ip=not self.endpoint.host_is_dns_name),
            self.vault.provider,
            parent=self,
        )
        self.vault_auth = create_azure_auth(
            name,
            spec,
            layout,
            tenant_id=client.tenant_id,
            node_principal_id=self.identity.principal_id,
            node_policy=self.vault.node_policy,
            provider=self.vault.provider,
            parent=self,
        )

        def user_data(key_url: str, client_id: str, host: str) -> str:
            login = {
                "FORESIGHT_VAULT_AUTH_METHOD": "jwt",
                "FORESIGHT_VAULT_JWT_SOURCE": "azure",
                "FORESIGHT_VAULT_AZURE_CLIENT_ID": client_id,
            }
            environment = service_environment(
                spec,
                layout,
                vault_login=login,
                kms_provider="azure",
                kms_key_id=key_url,
                tls_host=host,
                extra={"AZURE_CLIENT_ID": client_id},  # azure-identity's choice among the VM's identities
            )
            text = render_user_data(
                NodeBoot(
                    image=spec.image,
                    environment=environment,
                    data_disk=DATA_DISK_PATH,
                    ssh_enabled=spec.ssh_public_key is not None,
                )
            )
            if len(text.encode()) > CUSTOM_DATA_LIMIT_BYTES:
                raise ValueError(f"custom data is {len(text.encode())} bytes, over Azure's {CUSTOM_DATA_LIMIT_BYTES}")
            return text

        self.compute = create_compute(
            name,
            spec,
            self.group,
            self.network,
            self.endpoint,
            identity_id=self.identity.identity.id,
            encryption_set_id=self.key.encryption_set.id,
            # The Vault role, the PKI role and the key's role assignments must exist before a node boots.
            user_data=pulumi.Output.all(
                self.key.key.key_uri,
                self.identity.client_id,
                self.endpoint.host,
                self.vault_auth.role.id,
                self.tls.role.id,
                *(user.id for user in self.key.users),
            ).apply(lambda values: user_data(values[0], values[1], values[2])),
            parent=self,
        )
        self.outputs = StackOutputs(
            endpoint_host=self.endpoint.host,
            resp_port=RESP_PORT,
            https_port=HTTPS_PORT,
            ca_certificate=self.tls.ca_certificate,
            kms_key_id=self.key.key.key_uri,
            vault_role=self.vault_auth.role.role_name,
            vault_auth_mount=self.vault_auth.backend.path.apply(str),
            vault_kv_mount=self.vault.kv_mount.path,
            instance_id=self.compute.scale_set.name,
            node_identity=self.identity.principal_id,
        )
        self.register_outputs(self.outputs.as_dict())
