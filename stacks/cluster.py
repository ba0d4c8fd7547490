"""What every cloud's scale-out component shares: the pods' Vault login, their workload, the tier settings.

A scale-out stack (`foresight:scaleOut: true`) runs `foresight:nodes` pods on a managed Kubernetes cluster's GPU
node pool, one pod per node, behind one load balancer, all on a managed Valkey/Redis shared tier
(service/shared_tier.py) that they reach with their cloud identity, no stored password. Per cloud,
`stacks/<cloud>/cluster.py` makes the cluster and its GPU pool, `tier.py` the managed tier, and `scale_out.py` the
`foresight:<cloud>:ScaleOut` component that joins them with these parts:
- the pods log in to Vault with their projected service-account token: a jwt auth method that trusts the
  cluster's OIDC issuer, and a role bound to this workload's service account (`create_cluster_vault_auth`);
- `workload_spec` builds the `WorkloadSpec` from the stack spec (names known before deploying) and
  `deploy_time_settings` the ConfigMap entries only the cloud knows (the KMS key, the tier's endpoint);
- the pods' certificates name the load balancer's address, which the cloud assigns once the Service exists, so the
  PKI role that issues them (stacks/tls.py) comes after the Service, and so does the ConfigMap entry naming the
  address (`PendingTls`); the pods' template carries the digest of the CA certificate and the role's names, so the
  pods start once the role exists and roll when the CA or the endpoint's name changes. Renewal needs no rollout:
  each pod issues a certificate at start (its init container) and daily after (its tls-refresh container).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pulumi
import pulumi_vault as vault

from stacks.cloudinit import TLS_COMMON_NAME_SETTING
from stacks.kubernetes.spec import WorkloadSpec
from stacks.spec import StackSpec
from stacks.tls import EndpointTls
from stacks.vault import JwtNodeAuth, NodeToken, VaultLayout, create_jwt_auth

K8S_NAMESPACE = "foresight"
WORKLOAD_NAME = "foresight"
VAULT_AUDIENCE = "vault"
# Settings the cloud fills in at deploy time; `workload_spec` gives them a stand-in the spec's checks accept.
DEPLOY_TIME = "deploy-time"
# The pod template's annotation holding the SHA-256 of the CA certificate (PEM) and the names the role issues for.
TLS_ISSUER_ANNOTATION = "foresight.dev/tls-issuer-sha256"


@dataclass(frozen=True)
class PendingTls:
    """What the workload needs from the endpoint's TLS before that exists (the role names the workload's load
    balancer): the endpoint's name for the ConfigMap (`deploy_time_settings`) and the pods' issuer annotation,
    both settled once the load balancer's address and the PKI role exist."""

    host: pulumi.Output[str]
    annotations: Mapping[str, pulumi.Output[str]]
    _resolve_host: Callable[[pulumi.Output[str]], None]
    _resolve_digest: Callable[[pulumi.Output[str]], None]

    @classmethod
    def pending(cls) -> PendingTls:
        host: pulumi.Output[str]
        digest: pulumi.Output[str]
        resolve_host: Callable[[pulumi.Output[str]], None]
        resolve_digest: Callable[[pulumi.Output[str]], None]
        host, resolve_host = pulumi.deferred_output()
        digest, resolve_digest = pulumi.deferred_output()
        return cls(host, {TLS_ISSUER_ANNOTATION: digest}, resolve_host, resolve_digest)

    def settle(self, tls: EndpointTls) -> None:
        """The endpoint's name, and the digest of the CA and the role (its names among them), known once the role
        exists: pods start after it, and a new CA or endpoint name rolls them onto certificates of the new one."""
        self._resolve_host(pulumi.Output.from_input(tls.endpoint.host))
        self._resolve_digest(
            pulumi.Output.all(tls.ca_certificate, tls.role.data_json).apply(
                lambda values: hashlib.sha256(f"{values[0]}\n{values[1]}".encode()).hexdigest()
            )
        )


def service_account_subject() -> str:
    """The `sub` claim of the pods' projected tokens: only this workload's service account logs in."""
    return f"system:serviceaccount:{K8S_NAMESPACE}:{WORKLOAD_NAME}"


def create_cluster_vault_auth(
    name: str,
    spec: StackSpec,
    layout: VaultLayout,
    issuer: pulumi.Input[str],
    node_policy: vault.Policy,
    provider: vault.Provider,
    parent: pulumi.Resource,
) -> JwtNodeAuth:
    """A jwt auth method trusting the cluster's OIDC issuer and a role for the workload's service account, with
    the same read-only policy a single node gets."""
    token = NodeToken(
        issuer=issuer,
        audience=VAULT_AUDIENCE,
        claim="sub",
        value=service_account_subject(),
        description=f"Foresight stack {spec.stack}: pods of the {spec.cloud} cluster (projected service account "
        "tokens)",
    )
    return create_jwt_auth(name, spec, layout, token, node_policy, provider, parent)


def workload_spec(
    spec: StackSpec,
    layout: VaultLayout,
    *,
    kms_provider: str,
    tier_port: int,
    node_selector: Mapping[str, str],
    storage_class: str | None,
    service_annotations: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    extra_egress_ports: tuple[int, ...] = (),
    pod_labels: Mapping[str, str] | None = None,
    tolerations: tuple[dict[str, str], ...] = (),
    shared_tier_ca_config_map: str | None = None,
) -> WorkloadSpec:
    """The workload of a scale-out stack. The KMS key and the tier's endpoint are `deploy_time_settings`."""
    return WorkloadSpec(
        namespace=K8S_NAMESPACE,
        name=WORKLOAD_NAME,
        image=spec.image,
        replicas=spec.nodes,
        gpus_per_pod=1,
        node_selector=dict(node_selector),
        allowed_cidrs=spec.allowed_cidrs,
        vault_address=spec.vault_address,
        vault_auth_mount=layout.auth_mount,
        vault_role=layout.role,
        vault_audience=VAULT_AUDIENCE,
        vault_kv_mount=layout.kv_mount,
        vault_pki_mount=layout.pki_mount,
        vault_pki_role=layout.pki_role,
        tls_common_name=DEPLOY_TIME,
        metrics_vault_path=layout.metrics_path,
        kms_provider=kms_provider,
        kms_key_id=DEPLOY_TIME,
        storage_class=storage_class,
        data_volume_gb=spec.volume_size_gb,
        service_annotations=dict(service_annotations or {}),
        extra_env={**spec.audit_environment(), **(extra_env or {})},
        extra_egress_ports=(tier_port, *extra_egress_ports),
        pod_labels=dict(pod_labels or {}),
        tolerations=tolerations,
        shared_tier_ca_config_map=shared_tier_ca_config_map,
    )


def deploy_time_settings(
    kms_key_id: pulumi.Input[str],
    tier_url: pulumi.Input[str],
    tier_auth: str,
    tls_host: pulumi.Input[str],
    tier_username: pulumi.Input[str] | None = None,
    tier_aws_cache: pulumi.Input[str] | None = None,
) -> dict[str, pulumi.Input[str]]:
    """ConfigMap entries only the cloud knows: the KMS key, how to reach the shared tier, and the endpoint's name
    that the pods' certificates are issued for (no secret)."""
    settings: dict[str, pulumi.Input[str]] = {
        "FORESIGHT_KMS_KEY_ID": kms_key_id,
        TLS_COMMON_NAME_SETTING: tls_host,
        "FORESIGHT_SHARED_TIER_URL": tier_url,
        "FORESIGHT_SHARED_TIER_AUTH": tier_auth,
    }
    if tier_username is not None:
        settings["FORESIGHT_SHARED_TIER_USERNAME"] = tier_username
    if tier_aws_cache is not None:
        settings["FORESIGHT_SHARED_TIER_AWS_CACHE"] = tier_aws_cache
    return settings
