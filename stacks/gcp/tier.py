"""Google Cloud shared tier: Memorystore for Valkey, reached from the stack's VPC, with IAM auth and TLS.

- A service connection policy (service class `gcp-memorystore`) for the stack's network and subnet: Memorystore
  creates its Private Service Connect endpoints there, so the instance gets addresses in the stack's own subnet
  and no VPC peering. A network takes one such policy per region and service class: on a bring-your-own
  network that already has one, remove it from this program's resources (`pulumi state delete`) or import it.
- The instance: cluster mode disabled (one shard, one replica in another zone), so the service's plain
  Valkey/Redis client with pub/sub works as it does on a single server; IAM auth (the pods send their Google
  access token as the password, no password exists), TLS with Google's per-instance CA, `allkeys-lru` (a cache:
  any key may go when memory is full), at-rest encryption with the stack's Cloud KMS key (Memorystore's service
  agent may use it, granted on the key), deletion protection on.
- The pods' Google service account gets roles/memorystore.dbConnectionUser on the project: that is where IAM
  admits it (Memorystore has no per-instance IAM policy in the provider); the project's other Memorystore
  instances are reachable only from networks they have endpoints in.
- The per-instance CA: the instance reports the chain (`managed_server_ca`) and `create_tier_ca_config_map`
  puts it, as `ca.pem`, in a ConfigMap the pods mount to check the tier's certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pulumi_kubernetes as k8s

from stacks.cluster import K8S_NAMESPACE
from stacks.gcp.network import Network
from stacks.spec import StackSpec

TIER_PORT = 6379
ENGINE_VERSION = "VALKEY_8_0"
NODE_TYPE = "STANDARD_SMALL"
SHARD_COUNT = 1
REPLICA_COUNT = 1
SERVICE_CLASS = "gcp-memorystore"
CONNECTION_ROLE = "roles/memorystore.dbConnectionUser"
CA_CONFIG_MAP = "foresight-shared-tier-ca"
PRIMARY = "CONNECTION_TYPE_PRIMARY"


@dataclass(frozen=True)
class SharedTier:
    connection_policy: gcp.networkconnectivity.ServiceConnectionPolicy
    instance: gcp.memorystore.Instance
    connection_user: gcp.projects.IAMMember

    @property
    def url(self) -> pulumi.Output[str]:
        """`rediss://<primary endpoint>:<port>`: TLS, no user, no password."""
        return self.instance.endpoints.apply(_primary_url)

    @property
    def ca_pem(self) -> pulumi.Output[str]:
        """The instance's server CA chain as one PEM bundle."""
        return self.instance.managed_server_cas.apply(_ca_bundle)


def memorystore_service_agent(project_number: str) -> str:
    return f"serviceAccount:service-{project_number}@gcp-sa-memorystore.iam.gserviceaccount.com"


def resource_path(link_or_name: str, project_id: str, collection: str) -> str:
    """`projects/<p>/<collection>/<name>` from a self link, a path or a bare name (a bring-your-own network)."""
    if "projects/" in link_or_name:
        return link_or_name[link_or_name.index("projects/") :]
    return f"projects/{project_id}/{collection}/{link_or_name}"


def create_tier(
    name: str,
    spec: StackSpec,
    project_id: str,
    network: Network,
    pod_email: pulumi.Input[str],
    key_id: pulumi.Input[str],
    key_grant: pulumi.Resource,
    parent: pulumi.Resource,
) -> SharedTier:
    opts = pulumi.ResourceOptions(parent=parent)
    network_path = network.network.apply(lambda link: resource_path(link, project_id, "global/networks"))
    subnet_path = network.subnetwork.apply(
        lambda link: resource_path(link, project_id, f"regions/{spec.region}/subnetworks")
    )
    connection_policy = gcp.networkconnectivity.ServiceConnectionPolicy(
        f"{name}-memorystore-psc",
        location=spec.region,
        service_class=SERVICE_CLASS,
        network=network_path,
        description=f"Foresight stack {spec.stack}: Memorystore endpoints in the stack's subnet",
        psc_config=gcp.networkconnectivity.ServiceConnectionPolicyPscConfigArgs(subnetworks=[subnet_path]),
        labels=spec.labels(),
        opts=opts,
    )
    instance = gcp.memorystore.Instance(
        f"{name}-tier",
        instance_id=_instance_id(spec),
        location=spec.region,
        mode="CLUSTER_DISABLED",
        shard_count=SHARD_COUNT,
        replica_count=REPLICA_COUNT,
        node_type=NODE_TYPE,
        engine_version=ENGINE_VERSION,
        engine_configs={"maxmemory-policy": "allkeys-lru"},
        authorization_mode="IAM_AUTH",
        transit_encryption_mode="SERVER_AUTHENTICATION",
        server_ca_mode="GOOGLE_MANAGED_PER_INSTANCE_CA",
        kms_key=key_id,
        zone_distribution_config=gcp.memorystore.InstanceZoneDistributionConfigArgs(mode="MULTI_ZONE"),
        desired_auto_created_endpoints=[
            gcp.memorystore.InstanceDesiredAutoCreatedEndpointArgs(network=network_path, project_id=project_id)
        ],
        deletion_protection_enabled=True,
        labels=spec.labels(),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[connection_policy, key_grant]),
    )
    connection_user = gcp.projects.IAMMember(
        f"{name}-pods-memorystore",
        project=project_id,
        role=CONNECTION_ROLE,
        member=pulumi.Output.concat("serviceAccount:", pod_email),
        opts=opts,
    )
    return SharedTier(connection_policy=connection_policy, instance=instance, connection_user=connection_user)


def create_tier_ca_config_map(
    name: str, tier: SharedTier, provider: k8s.Provider, namespace: k8s.core.v1.Namespace, parent: pulumi.Resource
) -> k8s.core.v1.ConfigMap:
    """The tier's CA as `ca.pem` in the workload's namespace (public certificates: a ConfigMap, not a Secret)."""
    return k8s.core.v1.ConfigMap(
        f"{name}-tier-ca",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=CA_CONFIG_MAP,
            namespace=K8S_NAMESPACE,
            labels={"app.kubernetes.io/name": "foresight", "app.kubernetes.io/managed-by": "pulumi"},
        ),
        data={"ca.pem": tier.ca_pem},
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=[namespace]),
    )


def _instance_id(spec: StackSpec) -> str:
    """4-63 characters, lowercase letters, digits and '-', starting with a letter, not ending with '-'."""
    stem = "".join(c if c.isalnum() else "-" for c in spec.name.lower()).strip("-")
    return f"fs-{stem}"[:63].rstrip("-")


def _primary_url(endpoints: Any) -> str:
    for endpoint in endpoints or []:
        for connection in _get(endpoint, "connections") or []:
            psc = _get(connection, "psc_auto_connection")
            if psc is not None and _get(psc, "connection_type") == PRIMARY:
                return f"rediss://{_get(psc, 'ip_address')}:{_get(psc, 'port') or TIER_PORT}"
    return ""  # not known before the instance exists (a preview)


def _ca_bundle(cas: Any) -> str:
    pems = [
        pem.strip()
        for ca in cas or []
        for cert in _get(ca, "ca_certs") or []
        for pem in _get(cert, "certificates") or []
    ]
    return "".join(f"{pem}\n" for pem in pems)


def _get(value: Any, key: str) -> Any:
    """An output type's field by its Python name, or a plain dict's by either name."""
    if isinstance(value, dict) and not hasattr(value, key):
        camel = key.split("_")[0] + "".join(part.capitalize() for part in key.split("_")[1:])
        return value.get(key, value.get(camel))
    return getattr(value, key, None)
