"""The one typed input of the Kubernetes workload: `WorkloadSpec`, what both the Pulumi component and the CLI take.

Field names are snake_case in Python and camelCase in a config file (`allowedCidrs`, as the stacks' config keys).
`load_spec(path)` reads a YAML or JSON file and turns every problem into a `SpecError` whose lines name the
key to fix, e.g. `allowedCidrs: '10.0.0.0/33' is not a valid CIDR`. The CIDR, Vault address and image checks
are the VM stacks' own (`stacks.spec.StackSpec`), so both paths accept and refuse the same values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from stacks.spec import DEFAULT_IMAGE, StackSpec

# 40, not 63: the StatefulSet's name reappears in its pods' names (`<name>-<n>`), their claims'
# (`data-<name>-<n>`) and the controller-revision-hash label, which Kubernetes caps at 63 characters.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_VAULT_PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
# A DNS name (labels of letters, digits and '-') or an IPv4 address: what a load balancer is reached by.
_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}$){_HOST_LABEL}(\.{_HOST_LABEL})*")
_CPU_RE = re.compile(r"[0-9]+m|[0-9]+(\.[0-9]+)?")
_MEMORY_RE = re.compile(r"[0-9]+(Ki|Mi|Gi|Ti)?")
_ENV_KEY_RE = re.compile(r"[A-Z][A-Z0-9_]*")
# Words in a variable's name that mean its value is a credential; such values belong in a Secret mounted as a
# file (the `*_FILE` settings name those files, so they are fine).
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE")
# What the renderer sets from the spec's own fields (manifests.environment); extraEnv may not override them.
RENDERED_ENV_KEYS = frozenset(
    {
        "FORESIGHT_BIND",
        "FORESIGHT_RESP_PORT",
        "FORESIGHT_HTTP_PORT",
        "FORESIGHT_TLS_CERT_FILE",
        "FORESIGHT_TLS_KEY_FILE",
        "FORESIGHT_VAULT_ADDR",
        "FORESIGHT_VAULT_AUTH_METHOD",
        "FORESIGHT_VAULT_JWT_SOURCE",
        "FORESIGHT_VAULT_JWT_FILE",
        "FORESIGHT_VAULT_AUTH_MOUNT",
        "FORESIGHT_VAULT_ROLE",
        "FORESIGHT_VAULT_KV_MOUNT",
        "FORESIGHT_TLS_VAULT_PKI_MOUNT",
        "FORESIGHT_TLS_NODE_PKI_ROLE",
        "FORESIGHT_TLS_COMMON_NAME",
        "FORESIGHT_VAULT_METRICS_PATH",
        "FORESIGHT_KMS_PROVIDER",
        "FORESIGHT_KMS_KEY_ID",
        "FORESIGHT_DATA_DIR",
        "FORESIGHT_SHUTDOWN_GRACE_S",
        "FORESIGHT_PREFETCH_DEVICE",
        "FORESIGHT_SHARED_TIER_URL",
        "FORESIGHT_SHARED_TIER_PASSWORD_FILE",
        "FORESIGHT_SHARED_TIER_AUTH",
        "FORESIGHT_SHARED_TIER_USERNAME",
        "FORESIGHT_SHARED_TIER_AWS_CACHE",
        "FORESIGHT_SHARED_TIER_CA_FILE",
        "NVIDIA_VISIBLE_DEVICES",
    }
)


class SpecError(ValueError):
    """A workload spec that cannot be rendered; every line names the config key to fix."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


class WorkloadSpec(BaseModel):
    """Everything the manifests are built from. No field holds a secret: the Vault login uses the pod's
    projected service-account token, and the shared tier's password is a Secret the pod mounts by name."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)

    namespace: str = Field(description="Namespace every namespaced object goes into (it must exist).")
    name: str = Field("foresight", description="Name of the workload; every object is named after it.")
    image: str = Field(DEFAULT_IMAGE, description="Service image; pin it by digest (`repo:tag@sha256:...`).")
    replicas: int = Field(2, ge=1, le=256, description="Pods, each on its own node where the cluster allows.")
    gpus_per_pod: int = Field(1, ge=0, le=16, description="nvidia.com/gpu per pod; 0 runs CPU-only pods.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels a pod's node must carry.")
    allowed_cidrs: tuple[IPv4Network, ...] = Field(
        description="IPv4 ranges that may reach the load balancer and the pods (at least one)."
    )
    vault_address: str = Field(description="Vault/OpenBao server, https:// only, e.g. https://vault.example.com:8200.")
    vault_auth_mount: str = Field("jwt", description="Path of the jwt auth method that trusts the cluster's issuer.")
    vault_role: str = Field(description="jwt role the pods log in with (bound to this service account).")
    vault_audience: str = Field(
        "vault",
        min_length=1,
        max_length=256,
        pattern=r"^\S+$",
        description="Audience of the projected token (a name or URL); the role's bound_audiences.",
    )
    vault_kv_mount: str = Field(description="KV v2 mount holding the tenants and their key hashes.")
    vault_pki_mount: str = Field(description="Vault PKI mount that issues the pods' server certificates.")
    vault_pki_role: str = Field(
        description="Role of that mount the pods issue their certificate from (at start and daily); it should allow "
        "tlsCommonName and nothing else, and the pods' Vault policy `update` on <vaultPkiMount>/issue/<role>."
    )
    tls_common_name: str = Field(
        description="The name clients connect to, which every pod's certificate is issued for: the load balancer's "
        "DNS name or IPv4 address, or a DNS name that points at it."
    )
    metrics_vault_path: str | None = Field(
        None,
        description="Path of the /metrics scrape token inside the KV mount, e.g. deployments/<stack>/metrics, where "
        "`foresight metrics-token rotate --stack <stack>` writes it (or `--path`); unset: none, and only the admin "
        "token scrapes.",
    )
    kms_provider: Literal["aws", "gcp", "azure", "vault-transit"] = Field(
        description="KMS wrapping the data keys of the snapshot and audit log."
    )
    kms_key_id: str = Field(min_length=1, description="The KMS key: AWS ARN/alias, GCP key name, Azure key URL.")
    shared_tier_url: str | None = Field(
        None, description="Shared Valkey/Redis tier, rediss://host:port; its password comes from a Secret."
    )
    shared_tier_auth: Literal["password", "aws", "gcp", "azure"] = Field(
        "password",
        description="How pods prove themselves to the shared tier: a password from sharedTierPasswordSecret, or "
        "their cloud identity with no stored secret (aws: ElastiCache IAM auth, gcp: Memorystore for Valkey IAM "
        "auth, azure: Azure Cache for Redis with Entra ID); the service's shared_tier_auth.",
    )
    shared_tier_username: str | None = Field(
        None, description="The tier's user: the ElastiCache user id (aws), the managed identity's object id (azure)."
    )
    shared_tier_aws_cache: str | None = Field(
        None, description="aws auth: the ElastiCache replication group id the pods' IAM tokens are signed for."
    )
    shared_tier_ca_config_map: str | None = Field(
        None, description="ConfigMap whose key `ca.pem` is the CA of the tier's certificate, where the public CAs in "
        "the image do not cover it (Memorystore's per-instance CA); unset: the image's CA store."
    )
    shared_tier_password_secret: str | None = Field(
        None,
        validate_default=True,
        description="Name of the Secret whose key `password` is the shared tier's password (with sharedTierUrl and "
        "sharedTierAuth password).",
    )
    storage_class: str | None = Field(None, description="StorageClass of the data volumes; unset: the default.")
    pod_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels on the pods, e.g. azure.workload.identity/use: 'true'."
    )
    tolerations: tuple[dict[str, str], ...] = Field(
        default=(), description="Taints of the pool the pods tolerate beyond the GPU one (key, operator, value, "
        "effect), e.g. AKS's kubernetes.azure.com/scalesetpriority=spot:NoSchedule on Spot pools."
    )
    data_volume_gb: int = Field(20, ge=1, le=16384, description="Size of each pod's data volume in GiB.")
    cpu_request: str = Field("2", description="CPU each pod is guaranteed.")
    cpu_limit: str = Field("4", description="CPU each pod may use at most.")
    memory_request: str = Field("8Gi", description="Memory each pod is guaranteed.")
    memory_limit: str = Field("16Gi", description="Memory each pod may use at most (it is killed above it).")
    shutdown_grace_s: int = Field(20, ge=1, le=600, description="Time in-flight requests get on shutdown.")
    service_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the LoadBalancer Service (the cloud's LB settings)."
    )
    service_account_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of the ServiceAccount (workload identity for the cloud KMS)."
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict, description="More FORESIGHT_* or cloud SDK settings; never a secret."
    )
    extra_egress_ports: tuple[int, ...] = Field(
        (), description="More TCP ports the pods may reach, e.g. 80 or 988 for GKE's metadata server."
    )

    @field_validator("allowed_cidrs", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: Any) -> tuple[IPv4Network, ...]:
        networks = StackSpec._parse_cidrs(value)
        if not networks:
            raise ValueError('at least one range is required, e.g. ["203.0.113.0/24"]; none would open the LB')
        return networks

    @field_validator("vault_address")
    @classmethod
    def _check_vault_address(cls, value: str) -> str:
        return StackSpec._check_vault_address(value)

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        return StackSpec._check_image(value)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} must be lowercase letters, digits and '-', at most 40 characters")
        return value

    @field_validator("namespace", "shared_tier_password_secret", "shared_tier_ca_config_map", "storage_class")
    @classmethod
    def _check_dns_label(cls, value: str | None) -> str | None:
        if value is not None and not _NAMESPACE_RE.fullmatch(value):
            raise ValueError(f"{value!r} must be lowercase letters, digits and '-', at most 63 characters")
        return value

    @field_validator(
        "vault_auth_mount", "vault_role", "vault_kv_mount", "vault_pki_mount", "vault_pki_role", "metrics_vault_path"
    )
    @classmethod
    def _check_vault_name(cls, value: str | None) -> str | None:
        if value is not None and (not _VAULT_PATH_RE.fullmatch(value) or ".." in value):
            raise ValueError(f"{value!r} must be a Vault name or path such as deployments/eks/metrics")
        return value

    @field_validator("tls_common_name")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not _HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} must be a DNS name such as cache.example.com or an IPv4 address")
        return value

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _check_cpu(cls, value: str) -> str:
        if not _CPU_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a CPU quantity such as 2, 1.5 or 500m")
        return value

    @field_validator("memory_request", "memory_limit")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        if not _MEMORY_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a memory quantity such as 8Gi or 512Mi")
        return value

    @field_validator("shared_tier_url")
    @classmethod
    def _check_shared_tier_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.username or parts.password:  # checked first, so no message ever repeats the password
            raise ValueError("must not carry a user or password; put the password in sharedTierPasswordSecret")
        if parts.scheme != "rediss" or not parts.hostname:
            raise ValueError(f"{value!r} must be a rediss:// (TLS) URL such as rediss://cache.example.internal:6379")
        if parts.query or parts.fragment or parts.path.strip("/") not in ("", *map(str, range(16))):
            raise ValueError(f"{value!r} must be rediss://host[:port][/db] without a query")
        return value

    @field_validator("extra_env")
    @classmethod
    def _check_extra_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_KEY_RE.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name (A-Z, 0-9, _)")
            if key == "FORESIGHT_VAULT_METRICS_PATH":
                raise ValueError(f"{key} comes from metricsVaultPath; set that instead")
            if key in RENDERED_ENV_KEYS:
                raise ValueError(f"{key} comes from the spec's own fields (e.g. kmsKeyId); set those instead")
            if not key.endswith("_FILE") and any(word in key for word in _SECRET_WORDS):
                raise ValueError(
                    f"{key} looks like a secret; a ConfigMap is readable by anyone who can read the namespace. "
                    "Mount it from a Secret as a file and give its *_FILE setting instead"
                )
        return value

    @field_validator("tolerations")
    @classmethod
    def _check_tolerations(cls, value: tuple[dict[str, str], ...]) -> tuple[dict[str, str], ...]:
        for toleration in value:
            unknown = set(toleration) - {"key", "operator", "value", "effect"}
            if unknown or "key" not in toleration:
                raise ValueError(f"{toleration} is not a toleration: it takes key, and operator, value, effect")
            if toleration.get("effect", "NoSchedule") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ValueError(f"{toleration['effect']!r} is not a taint effect")
        return value

    @field_validator("extra_egress_ports")
    @classmethod
    def _check_ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [port for port in value if not 1 <= port <= 65535]
        if bad:
            raise ValueError(f"{bad[0]} is not a TCP port")
        return tuple(sorted(set(value)))

    @field_validator("shared_tier_password_secret")
    @classmethod
    def _check_password_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Runs after shared_tier_url (declared earlier), so the error lands on the key that is missing or extra.
        if "shared_tier_url" not in info.data or "shared_tier_auth" not in info.data:
            return value  # the URL or the auth itself was refused; that error says enough
        url, auth = info.data["shared_tier_url"], info.data["shared_tier_auth"]
        if url is not None and auth == "password" and value is None:
            raise ValueError("required with sharedTierUrl: the Secret holding the shared tier's password (or set "
                             "sharedTierAuth to the cloud's identity: aws, gcp or azure)")
        if url is None and value is not None:
            raise ValueError("only with sharedTierUrl (the shared tier this Secret's password is for)")
        if auth != "password" and value is not None:
            raise ValueError(f"not with sharedTierAuth {auth}: the pods use their cloud identity, no password")
        return value

    @model_validator(mode="after")
    def _check_tier_identity(self) -> WorkloadSpec:
        if self.shared_tier_url is None:
            return self
        if self.shared_tier_auth in ("aws", "azure") and not self.shared_tier_username:
            raise ValueError(f"sharedTierUsername: required with sharedTierAuth {self.shared_tier_auth}")
        if self.shared_tier_auth == "aws" and not self.shared_tier_aws_cache:
            raise ValueError("sharedTierAwsCache: required with sharedTierAuth aws (the replication group id)")
        return self

    @property
    def vault_port(self) -> int:
        return urlsplit(self.vault_address).port or 443

    @property
    def shared_tier_port(self) -> int | None:
        return None if self.shared_tier_url is None else urlsplit(self.shared_tier_url).port or 6379

    @property
    def bound_subject(self) -> str:
        """The `sub` claim of the pods' projected token: what the Vault role's bound_subject must be."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def version(self) -> str:
        """The image's tag (or digest prefix) as a label value, for app.kubernetes.io/version."""
        reference, _, digest = self.image.partition("@")
        last = reference.rsplit("/", 1)[-1]
        if ":" in last:
            return last.split(":", 1)[1][:63]
        return f"sha256-{digest.removeprefix('sha256:')[:12]}" if digest else "unversioned"


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    location = [str(part) for part in error["loc"]]
    key = ".".join([to_camel(location[0]), *location[1:]]) if location else "config"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required"
    return key, message


def parse_spec(values: Any) -> WorkloadSpec:
    """`values` (the parsed config) as a WorkloadSpec, or SpecError naming each key to fix."""
    if not isinstance(values, dict):
        raise SpecError([("config", "must be a mapping of WorkloadSpec keys, e.g. namespace: foresight")])
    try:
        return WorkloadSpec.model_validate(values)
    except ValidationError as err:
        raise SpecError([_problem(error) for error in err.errors()]) from None


def load_spec(path: Path) -> WorkloadSpec:
    """The spec in the YAML or JSON file `path`, or SpecError."""
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([("config", f"cannot read it: {err.strerror}")]) from None
    except UnicodeDecodeError:
        raise SpecError([("config", "not a text file (YAML or JSON in UTF-8)")]) from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first_line = str(err).splitlines()[0]
        raise SpecError([("config", f"cannot be parsed: {first_line}")]) from None
    return parse_spec(values)
