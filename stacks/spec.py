"""The shared stack spec: the validated inputs every cloud takes and the outputs every cloud returns.

`StackSpec.from_pulumi_config()` reads the `foresight:*` keys (and the cloud's region key), validates them,
and turns every problem into a `ConfigError` that names the key to fix, e.g.
`foresight:allowedCidrs: '10.0.0.0/33' is not a valid CIDR`. `StackOutputs` is what each cloud's component
hands back; `export()` publishes it under the same stack output names on every cloud.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any
from urllib.parse import urlsplit

import pulumi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

NAMESPACE = "foresight"
DEFAULT_IMAGE = "ghcr.io/foresight/foresight:0.1.0"
RESP_PORT = 6380
HTTPS_PORT = 8443
SERVICE_PORTS = (RESP_PORT, HTTPS_PORT)
DEFAULT_VOLUME_SIZE_GB = 100


class Cloud(StrEnum):
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"


# Where each cloud's provider reads its region; the spec reads the same key so errors can name it.
REGION_KEYS: Mapping[Cloud, str] = {
    Cloud.AWS: "aws:region",
    Cloud.GCP: "gcp:region",
    Cloud.AZURE: "azure-native:location",
}
# "A current single-GPU type" per cloud, used when foresight:instanceType is empty.
DEFAULT_INSTANCE_TYPES: Mapping[Cloud, str] = {
    Cloud.AWS: "g6.xlarge",
    Cloud.GCP: "g2-standard-4",
    Cloud.AZURE: "Standard_NC4as_T4_v3",
}
# Ranges that only a private network (VPC, peering, VPN) can source; anything else makes the endpoint public.
PRIVATE_RANGES = tuple(IPv4Network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
# Keys the stacks once read and now refuse, and why. Pulumi stores a provider's inputs, a token included, in the state.
REFUSED_KEYS: Mapping[str, str] = {
    "vaultToken": "is refused: a token given to Pulumi's Vault provider is stored in the state. Remove it (`pulumi "
    "config rm foresight:vaultToken`) and set VAULT_TOKEN in the environment of `pulumi up`, or run `vault login` "
    "first",
}
# The project keys of Pulumi.yaml, in the order the README lists them.
CONFIG_KEYS = (
    "cloud",
    "allowedCidrs",
    "vaultAddress",
    "instanceType",
    "fallbackInstanceTypes",
    "spot",
    "image",
    "vpcId",
    "subnetIds",
    "sshPublicKey",
    "volumeSizeGb",
    "scaleOut",
    "nodes",
    "redisPrivateDnsZoneId",
    "auditBucket",
    "originBuckets",
    "tlsCaGenerations",
    "tlsCaIssuing",
)
REQUIRED_KEYS = ("cloud", "allowedCidrs", "vaultAddress")
_LIST_KEYS = frozenset({"allowedCidrs", "fallbackInstanceTypes", "subnetIds", "originBuckets", "tlsCaGenerations"})
# Root CAs alive at once: the one that issues and, while clients move over, the one it replaces (and one spare).
MAX_TLS_CA_GENERATIONS = 3

# An OCI image reference: registry[:port]/path[:tag][@sha256:digest]. It ends up on a systemd ExecStart line,
# so anything outside this grammar (spaces, quotes, `;`) is refused rather than escaped.
_IMAGE_RE = re.compile(
    r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
# A bucket the stack grants the node access to (foresight:auditBucket, foresight:originBuckets): an existing S3 or
# Cloud Storage bucket's name, or an Azure blob container's resource id (what a role assignment is scoped to, and it
# holds the account's name).
_AZURE_CONTAINER_RE = re.compile(
    r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[-\w._()]{1,90}/providers/Microsoft\.Storage/storageAccounts/"
    r"(?P<account>[a-z0-9]{3,24})/blobServices/default/containers/(?P<container>[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$"
)
AUDIT_FOLDER = "foresight"  # the bucket folder that every stack's and listing's own folder goes under
BUCKET_PATTERNS: Mapping[Cloud, re.Pattern[str]] = {  # the marketplace templates' parameters use them too
    Cloud.AWS: re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    Cloud.GCP: re.compile(r"^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$"),
    Cloud.AZURE: _AZURE_CONTAINER_RE,
}
_BUCKET_FORMS = {
    "aws": "an S3 bucket name such as acme-data (it must exist: the stack only grants the node access to it)",
    "gcp": "a Cloud Storage bucket name such as acme-data (it must exist: the stack only grants the node access)",
    "azure": "a blob container's resource id, /subscriptions/<id>/resourceGroups/<group>/providers/"
    "Microsoft.Storage/storageAccounts/<account>/blobServices/default/containers/<container>",
}
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


class ConfigError(ValueError):
    """Stack configuration that cannot be deployed; every line names the config key to fix."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{key}: {message}" for key, message in problems))

    @classmethod
    def one(cls, key: str, message: str) -> ConfigError:
        return cls([(key, message)])

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.problems]


def container_parts(resource_id: str) -> re.Match[str]:
    """The `account` and `container` of a blob container's resource id (the spec has checked its form)."""
    found = _AZURE_CONTAINER_RE.fullmatch(resource_id)
    if found is None:
        raise ValueError(f"{resource_id!r} is not a blob container's resource id")
    return found


def config_key(name: str) -> str:
    """The fully qualified key (`foresight:allowedCidrs`) of a project config name."""
    return f"{NAMESPACE}:{name}"


def label_value(text: str) -> str:
    """`text` as a Google Cloud label value: lowercased, other characters as `-`, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def is_private_range(network: IPv4Network) -> bool:
    return any(network.subnet_of(private) for private in PRIVATE_RANGES)


class StackSpec(BaseModel):
    """What every cloud's component is built from. Field aliases are the config key names."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    project: str
    stack: str
    cloud: Cloud
    region: str = Field(min_length=1)
    allowed_cidrs: tuple[IPv4Network, ...] = Field(alias="allowedCidrs")
    vault_address: str = Field(alias="vaultAddress")
    instance_type: str = Field(alias="instanceType", min_length=1)
    fallback_instance_types: tuple[str, ...] = Field(default=(), alias="fallbackInstanceTypes")
    spot: bool = False
    image: str = DEFAULT_IMAGE
    vpc_id: str | None = Field(default=None, alias="vpcId")
    subnet_ids: tuple[str, ...] = Field(default=(), alias="subnetIds")
    ssh_public_key: str | None = Field(default=None, alias="sshPublicKey")
    volume_size_gb: int = Field(default=DEFAULT_VOLUME_SIZE_GB, ge=20, le=16384, alias="volumeSizeGb")
    # Scale-out (stacks/cluster.py): a managed cluster's GPU pool of `nodes`, one pod each, on a shared tier.
    scale_out: bool = Field(default=False, alias="scaleOut")
    nodes: int = Field(default=2, ge=1, le=64)
    # Azure scale-out on a given virtual network that already resolves privatelink.redis.cache.windows.net (a hub's
    # zone): the tier's private endpoint registers in that zone instead of a new one (stacks/azure/tier.py).
    redis_private_dns_zone_id: str | None = Field(default=None, alias="redisPrivateDnsZoneId")
    # Ship the audit trail to a bucket the customer owns (service FORESIGHT_AUDIT_SHIP_URL); see audit_ship_url.
    audit_bucket: str | None = Field(default=None, alias="auditBucket")
    # Tenants' origin buckets, which the stack does not own: the node's (or the pods') identity gets read on each.
    origin_buckets: tuple[str, ...] = Field(default=(), max_length=50, alias="originBuckets")  # AWS: inline policy size
    tls_ca_generations: tuple[int, ...] = Field(
        default=(1,),
        alias="tlsCaGenerations",
        description="The endpoint's root CAs (stacks/tls.py): the last issues the nodes' certificates, and clients "
        "trust them all (the caCertificate output). Adding a number rotates the CA; dropping one retires it (its "
        "root stays registered, out of the bundle).",
    )
    tls_ca_issuing: int = Field(
        default=0,
        ge=0,
        alias="tlsCaIssuing",
        description="The generation that issues; 0: the last of tls_ca_generations. Holding the old one while "
        "clients learn the new bundle makes a rotation that no client notices.",
    )

    @field_validator("allowed_cidrs", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: Any) -> tuple[IPv4Network, ...]:
        networks: list[IPv4Network] = []
        for item in _string_list(value):
            try:
                network = ip_network(item, strict=True)
            except ValueError:
                try:
                    loose = ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not a valid CIDR") from None
                raise ValueError(f"{item!r} has host bits set; did you mean '{loose}'?") from None
            if isinstance(network, IPv6Network):
                raise ValueError(f"{item!r} is IPv6; only IPv4 ranges are supported")
            if network not in networks:
                networks.append(network)
        return tuple(networks)

    @field_validator("vault_address")
    @classmethod
    def _check_vault_address(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{value!r} must be an https:// URL such as https://vault.example.com:8200")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"{value!r} must be the server's address only, without a path, query or user")
        return value.rstrip("/")

    @field_validator("instance_type")
    @classmethod
    def _check_instance_type(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"{value!r} is not an instance type name")
        return value

    @field_validator("fallback_instance_types", "subnet_ids", "origin_buckets", mode="before")
    @classmethod
    def _parse_string_list(cls, value: Any) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_string_list(value)))

    @field_validator("tls_ca_generations", mode="before")
    @classmethod
    def _check_ca_generations(cls, value: Any) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):  # `pulumi config set foresight:tlsCaGenerations 2`
            value = [value]
        if not isinstance(value, list | tuple) or not value or not all(
            isinstance(item, int) and not isinstance(item, bool) and item >= 1 for item in value
        ):
            raise ValueError("must be a list of generation numbers (whole numbers from 1), e.g. [1, 2]")
        if list(value) != sorted(set(value)):
            raise ValueError(f"{list(value)} must be increasing, without repeats: the last one issues, e.g. [1, 2]")
        if len(value) > MAX_TLS_CA_GENERATIONS:
            raise ValueError(f"at most {MAX_TLS_CA_GENERATIONS} at once: retire the oldest (drop it) first")
        return tuple(value)

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        if not _IMAGE_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an image reference such as {DEFAULT_IMAGE}")
        return value

    @field_validator("ssh_public_key")
    @classmethod
    def _check_ssh_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if "PRIVATE KEY" in value:
            raise ValueError("this is a private key; give the public half (the .pub file) instead")
        parts = value.split()
        if "\n" in value or len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
            raise ValueError(f"must be one OpenSSH public key line starting with one of {', '.join(SSH_KEY_TYPES)}")
        return value

    @property
    def name(self) -> str:
        """A name unique to this project and stack, for things that live outside the cloud (Vault paths)."""
        return f"{self.project}-{self.stack}"

    @property
    def public_endpoint(self) -> bool:
        """True when an allowed CIDR lies outside private address space: the endpoint faces the internet."""
        return any(not is_private_range(network) for network in self.allowed_cidrs)

    @property
    def bring_your_own_network(self) -> bool:
        return self.vpc_id is not None

    @property
    def instance_types(self) -> tuple[str, ...]:
        """The primary type first, then the fallbacks in the order given."""
        return (self.instance_type, *(t for t in self.fallback_instance_types if t != self.instance_type))

    @property
    def audit_prefix(self) -> str:
        """The stack's folder in the audit bucket (each node adds its hostname below it)."""
        return f"{AUDIT_FOLDER}/{self.name}"

    @property
    def audit_ship_url(self) -> str | None:
        """FORESIGHT_AUDIT_SHIP_URL for this stack's nodes, from foresight:auditBucket."""
        if self.audit_bucket is None:
            return None
        if self.cloud == Cloud.AZURE:
            found = container_parts(self.audit_bucket)
            return f"az://{found['container']}@{found['account']}.blob.core.windows.net/{self.audit_prefix}"
        return f"{'s3' if self.cloud == Cloud.AWS else 'gs'}://{self.audit_bucket}/{self.audit_prefix}"

    def audit_environment(self) -> dict[str, str]:
        """The service setting that ships the audit trail, for nodes and pods alike (empty without a bucket)."""
        return {"FORESIGHT_AUDIT_SHIP_URL": self.audit_ship_url} if self.audit_ship_url else {}

    @property
    def vault_port(self) -> int:
        return urlsplit(self.vault_address).port or 443

    def tags(self) -> dict[str, str]:
        """Tags every taggable AWS and Azure resource carries; the policy pack requires them."""
        return {"foresight:project": self.project, "foresight:stack": self.stack, "managed-by": "pulumi"}

    def labels(self) -> dict[str, str]:
        """The same as `tags()` in Google Cloud's label grammar (keys and values: lowercase letters, digits, `_`
        and `-`, at most 63 characters), which has no `:`."""
        return {
            "foresight-project": label_value(self.project),
            "foresight-stack": label_value(self.stack),
            "managed-by": "pulumi",
        }

    @classmethod
    def from_values(
        cls,
        project: str,
        stack: str,
        read: Callable[[str], str | None],
    ) -> StackSpec:
        """Build the spec from raw config strings (`read("foresight:spot")` -> "true"), or ConfigError."""
        raw: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for name in CONFIG_KEYS:
            value = read(config_key(name))
            if value is None or value == "":
                continue
            if name in _LIST_KEYS:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    problems.append((config_key(name), f"must be {_LIST_FORMS[name]}"))
                    continue
            raw[name] = value
        problems += _missing_required(raw)
        cloud = _cloud_or_none(raw.get("cloud"))
        region_key = REGION_KEYS.get(cloud, "aws:region") if cloud else "aws:region"
        region = read(region_key)
        if cloud is not None and not region:
            problems.append((region_key, f"required; set it with `pulumi config set {region_key} <region>`"))
        problems += [(config_key(name), why) for name, why in REFUSED_KEYS.items() if read(config_key(name))]
        if problems:
            raise ConfigError(problems)
        if cloud is not None:
            raw.setdefault("instanceType", DEFAULT_INSTANCE_TYPES[cloud])
        try:
            spec = cls.model_validate({"project": project, "stack": stack, "region": region, **raw})
        except ValidationError as err:
            raise ConfigError([_problem(error, region_key) for error in err.errors()]) from None
        spec._check_combinations()
        return spec

    @classmethod
    def from_pulumi_config(cls) -> StackSpec:
        """The spec of the stack being deployed (`pulumi up`) or tested (`pulumi.runtime.set_mocks`)."""
        return cls.from_values(pulumi.get_project(), pulumi.get_stack(), read=pulumi.runtime.get_config)

    @property
    def issuing_ca_generation(self) -> int:
        return self.tls_ca_issuing or self.tls_ca_generations[-1]

    def _check_combinations(self) -> None:
        if self.issuing_ca_generation not in self.tls_ca_generations:
            raise ConfigError.one(
                config_key("tlsCaIssuing"),
                f"{self.tls_ca_issuing} is not one of foresight:tlsCaGenerations {list(self.tls_ca_generations)}",
            )
        if self.vpc_id and not self.subnet_ids:
            raise ConfigError.one(config_key("subnetIds"), "required with foresight:vpcId (one subnet or more)")
        if self.subnet_ids and not self.vpc_id:
            raise ConfigError.one(config_key("vpcId"), "required with foresight:subnetIds (the subnets' network)")
        if self.scale_out and not self.allowed_cidrs:
            raise ConfigError.one(
                config_key("allowedCidrs"),
                "required with foresight:scaleOut: the cluster's load balancer admits these ranges only (give your "
                "network's private range, e.g. 10.0.0.0/8, to keep it internal)",
            )
        if self.redis_private_dns_zone_id and not (
            self.cloud == Cloud.AZURE and self.scale_out and self.bring_your_own_network
        ):
            raise ConfigError.one(
                config_key("redisPrivateDnsZoneId"),
                "only with foresight:cloud azure, foresight:scaleOut and foresight:vpcId: it names the existing "
                "privatelink.redis.cache.windows.net zone a given virtual network already resolves through",
            )
        if self.audit_bucket is not None and not BUCKET_PATTERNS[self.cloud].fullmatch(self.audit_bucket):
            raise ConfigError.one(config_key("auditBucket"),
                                  f"{self.audit_bucket!r} is not {_BUCKET_FORMS[self.cloud]}")
        if wrong := [b for b in self.origin_buckets if not BUCKET_PATTERNS[self.cloud].fullmatch(b)]:
            raise ConfigError.one(config_key("originBuckets"), f"{wrong[0]!r} is not {_BUCKET_FORMS[self.cloud]}"
                                  + (" (a bucket, not a URL: the tenants' origins name the folders)"
                                     if "://" in wrong[0] else ""))
        if self.scale_out and self.ssh_public_key:
            raise ConfigError.one(
                config_key("sshPublicKey"), "not with foresight:scaleOut: cluster nodes take no SSH key (use kubectl)"
            )


_LIST_FORMS = {
    "allowedCidrs": 'a list of strings, e.g. ["203.0.113.0/24"]',
    "fallbackInstanceTypes": 'a list of strings, e.g. ["g5.xlarge"]',
    "subnetIds": 'a list of strings, e.g. ["subnet-0abc"]',
    "originBuckets": 'a list of strings, e.g. ["acme-data"]',
    "tlsCaGenerations": "a list of numbers, e.g. [1, 2]",
}


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str | IPv4Network):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str | IPv4Network) for item in value):
        raise ValueError("must be a list of strings")
    return [str(item).strip() for item in value]


def _missing_required(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    hints = {
        "cloud": "one of aws, gcp, azure",
        "allowedCidrs": 'CIDRs that may reach the service, e.g. ["203.0.113.0/24"]; [] means private only',
        "vaultAddress": "the Vault server, e.g. https://vault.example.com:8200",
    }
    return [(config_key(name), f"required: {hints[name]}") for name in REQUIRED_KEYS if name not in raw]


def _cloud_or_none(value: Any) -> Cloud | None:
    try:
        return Cloud(value)
    except ValueError:
        return None


def _problem(error: Mapping[str, Any], region_key: str) -> tuple[str, str]:
    head = str(error["loc"][0]) if error["loc"] else ""
    key = region_key if head == "region" else config_key(head)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] != "value_error" and "input" in error:
        message = f"{message} (got {error['input']!r})"
    return key, message


@dataclass(frozen=True)
class StackOutputs:
    """The outputs every cloud's component returns, exported under the same names on every cloud."""

    endpoint_host: pulumi.Input[str]
    resp_port: pulumi.Input[int]
    https_port: pulumi.Input[int]
    ca_certificate: pulumi.Input[str]
    kms_key_id: pulumi.Input[str]
    vault_role: pulumi.Input[str]
    vault_auth_mount: pulumi.Input[str]
    vault_kv_mount: pulumi.Input[str]
    # The cloud's handle on what runs the service (AWS: the Auto Scaling group that keeps one instance alive).
    instance_id: pulumi.Input[str]
    # Who the service runs as, for grants on what the stack does not own (tenants' origin buckets): AWS the role's
    # ARN, Google Cloud the service account's email, Azure the managed identity's principal id (the pods' with
    # scale-out).
    node_identity: pulumi.Input[str]

    @staticmethod
    def export_name(field_name: str) -> str:
        head, *rest = field_name.split("_")
        return head + "".join(part.capitalize() for part in rest)

    def as_dict(self) -> dict[str, pulumi.Input[Any]]:
        return {self.export_name(f.name): getattr(self, f.name) for f in fields(self)}

    def export(self) -> None:
        for name, value in self.as_dict().items():
            pulumi.export(name, value)
