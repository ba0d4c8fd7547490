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
- the TLS certificate names the load balancer's address, which the cloud assigns once the Service exists, so
  the certificate and its Vault secret come after the Service; the pods' template carries the certificate's
  digest (`CertificateRevision`), so the pods start once the secret holds it and roll whenever `pulumi up`
  renews it (their TLS init container fetches it at start only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pulumi
import pulumi_vault as vault

from stacks.kubernetes.spec import WorkloadSpec
from stacks.spec import StackSpec
from stacks.tls import ServerTls
from stacks.vault import JwtNodeAuth, NodeToken, VaultLayout, create_jwt_auth

K8S_NAMESPACE = "foresight"
WORKLOAD_NAME = "foresight"
VAULT_AUDIENCE = "vault"
# Settings the cloud fills in at deploy time; `workload_spec` gives them a stand-in the spec's checks accept.
DEPLOY_TIME = "deploy-time"
# The pod template's annotation holding the SHA-256 of the served certificate (PEM).
TLS_CERTIFICATE_ANNOTATION = "foresight.dev/tls-certificate-sha256"


@dataclass(frozen=True)
class CertificateRevision:
    """The pods' certificate annotation, given to the workload before the certificate exists (the certificate
    names the workload's load balancer) and settled once the certificate and its Vault secret do."""

    annotations: Mapping[str, pulumi.Output[str]]
    _resolve: Callable[[pulumi.Output[str]], None]

    @classmethod
    def pending(cls) -> CertificateRevision:
        digest: pulumi.Output[str]
        resolve: Callable[[pulumi.Output[str]], None]
        digest, resolve = pulumi.deferred_output()
        return cls({TLS_CERTIFICATE_ANNOTATION: digest}, resolve)

    def settle(self, tls: ServerTls, secret: vault.kv.SecretV2) -> None:
        """The certificate's digest, known once its Vault secret is written: pods rolled for it fetch it."""
        self._resolve(
            pulumi.Output.all(tls.server_cert.cert_pem, secret.id).apply(
                lambda values: hashlib.sha256(str(values[0]).encode()).hexdigest()
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
        tls_vault_path=layout.tls_path,
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
    tier_username: pulumi.Input[str] | None = None,
    tier_aws_cache: pulumi.Input[str] | None = None,
) -> dict[str, pulumi.Input[str]]:
    """ConfigMap entries only the cloud knows: the KMS key and how to reach the shared tier (no secret)."""
    settings: dict[str, pulumi.Input[str]] = {
        "FORESIGHT_KMS_KEY_ID": kms_key_id,
        "FORESIGHT_SHARED_TIER_URL": tier_url,
        "FORESIGHT_SHARED_TIER_AUTH": tier_auth,
    }
    if tier_username is not None:
        settings["FORESIGHT_SHARED_TIER_USERNAME"] = tier_username
    if tier_aws_cache is not None:
        settings["FORESIGHT_SHARED_TIER_AWS_CACHE"] = tier_aws_cache
    return settings
