"""`foresight:gcp:GpuNode`: one Foresight GPU node on Google Cloud, built from the shared `StackSpec`.

It creates, all as its children:
- network (`network.py`): a custom VPC with one regional subnet, Cloud Router and NAT (or the given network
  and subnet); firewall rules targeting the node's service account: 6380/8443 from `allowedCidrs` only, 8443
  from Google's health checkers, SSH only with a key and never from 0.0.0.0/0, egress HTTPS and Vault only;
  a reserved address and a passthrough Network Load Balancer (external only when an allowed CIDR is public);
- identity (`identity.py`): the node's service account, with no project role;
- kms (`kms.py`): a Cloud KMS key ring and key with 90-day rotation, usable by the node and by Compute
  Engine's service agent (for the CMEK disks), granted on the key alone;
- Vault (`stacks/vault.py`, `vault.py`): the provider, a KV v2 mount, the node's policy, a jwt auth method
  trusting Google's issuer and its role bound to the node's service account;
- TLS (`stacks/tls.py`): a PKI mount with a root CA kept inside Vault and a role that issues certificates for the
  endpoint's address only, from which the node issues its own;
- compute (`compute.py`): an instance template (Ubuntu accelerator image, CMEK boot and data disks, no public
  address, cloud-init user data) and a regional managed instance group of one, spot or standard, with
  fallback machine types and autohealing.
Its outputs are the shared `StackOutputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from stacks.cloudinit import NodeBoot, render_user_data, service_environment
from stacks.gcp.compute import DATA_DISK_PATH, check_instance_types, create_compute
from stacks.gcp.identity import create_identity, grant_audit_shipping, grant_origin_read
from stacks.gcp.kms import create_key
from stacks.gcp.network import attach_load_balancer, check_network_ids, create_address, create_firewall, create_network
from stacks.gcp.vault import create_gcp_auth
from stacks.spec import HTTPS_PORT, RESP_PORT, ConfigError, StackOutputs, StackSpec
from stacks.tls import EndpointName, create_endpoint_tls
from stacks.vault import VaultLayout, create_shared_vault

COMPONENT_TYPE = "foresight:gcp:GpuNode"
USER_DATA_LIMIT_BYTES = 256 * 1024  # Compute Engine's limit on one metadata value


@dataclass(frozen=True)
class GpuNodeArgs:
    """The validated inputs of one Google Cloud node: the shared spec, checked against what Google Cloud accepts."""

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
        project = gcp.organizations.get_project(opts=pulumi.InvokeOptions(parent=self))
        if not project.project_id or not project.number:
            raise ConfigError.one("gcp:project", "required; set it with `pulumi config set gcp:project <project id>`")
        project_id, project_number = project.project_id, project.number
        layout = VaultLayout.for_spec(spec)

        self.identity = create_identity(name, spec, parent=self)
        self.network = create_network(name, spec, parent=self)
        self.firewall = create_firewall(name, spec, self.network, self.identity.email, parent=self)
        self.key = create_key(name, spec, project_number, self.identity.email, parent=self)
        self.audit_grants = grant_audit_shipping(name, spec, self.identity.email, parent=self)
        self.origin_grants = grant_origin_read(name, spec, self.identity.email, parent=self)
        endpoint = create_address(name, spec, self.network, parent=self)
        self.vault = create_shared_vault(name, spec, layout, parent=self)
        self.tls = create_endpoint_tls(
            name, spec, layout, EndpointName(endpoint.host, is_ip=True), self.vault.provider, parent=self
        )
        self.vault_auth = create_gcp_auth(
            name,
            spec,
            layout,
            node_email=self.identity.email,
            node_policy=self.vault.node_policy,
            provider=self.vault.provider,
            parent=self,
        )

        def user_data(key_id: str, host: str) -> str:
            environment = service_environment(
                spec,
                layout,
                vault_login={"FORESIGHT_VAULT_AUTH_METHOD": "jwt", "FORESIGHT_VAULT_JWT_SOURCE": "gcp"},
                kms_provider="gcp",
                kms_key_id=key_id,
                tls_host=host,
                extra={"GOOGLE_CLOUD_PROJECT": project_id},
            )
            text = render_user_data(
                NodeBoot(
                    image=spec.image,
                    environment=environment,
                    data_disk=DATA_DISK_PATH,
                    ssh_enabled=spec.ssh_public_key is not None,
                    install_container_runtime=True,  # the Ubuntu accelerator image has the driver only
                )
            )
            if len(text.encode()) > USER_DATA_LIMIT_BYTES:
                raise ValueError(
                    f"user data is {len(text.encode())} bytes, over Compute Engine's {USER_DATA_LIMIT_BYTES}"
                )
            return text

        self.compute = create_compute(
            name,
            spec,
            self.network,
            node_email=self.identity.email,
            key_id=self.key.key.id,
            # The Vault role, the PKI role and the key grants must exist before a node boots and uses them.
            user_data=pulumi.Output.all(
                self.key.key.id,
                endpoint.host,
                self.vault_auth.role.id,
                self.tls.role.id,
                *(user.id for user in self.key.users),
            ).apply(lambda values: user_data(values[0], values[1])),
            parent=self,
        )
        self.endpoint = attach_load_balancer(
            name, spec, self.network, endpoint, self.compute.group.instance_group, parent=self
        )
        self.outputs = StackOutputs(
            endpoint_host=self.endpoint.host,
            resp_port=RESP_PORT,
            https_port=HTTPS_PORT,
            ca_certificate=self.tls.ca_certificate,
            kms_key_id=self.key.key.id,
            vault_role=self.vault_auth.role.role_name,
            vault_auth_mount=self.vault_auth.backend.path.apply(str),
            vault_kv_mount=self.vault.kv_mount.path,
            instance_id=self.compute.group.name,
            node_identity=self.identity.email,
        )
        self.register_outputs(self.outputs.as_dict())
