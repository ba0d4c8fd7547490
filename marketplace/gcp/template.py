"""The Google Cloud Marketplace VM solution: a Terraform module for one Foresight GPU VM, built from the GCP stack's
parts.

Ports, GPU machine families, the image family the listing's image is built on, disk sizes and types, the data
disk's device name, the key's rotation and destroy delay, the key role, the Compute Engine service agent, the
firewall priorities, the subnet range, Shielded VM and OS Login settings come from `stacks/`, so the module
cannot drift from `foresight:gcp:GpuNode`. Where it differs, it is because a marketplace buyer has no Vault and
runs one node:
- one VM instead of a managed instance group of one behind a passthrough load balancer: the node keeps its
  state (certificate, tenants file, data disk) on its own disks, so a recreated VM would mint a new key and
  certificate, and there is nothing for autohealing or a balancer's health check to do;
- a reserved static external address on the VM instead of Cloud Router + Cloud NAT and a forwarding rule: the
  address survives stop/start, the certificate names it, the firewall admits the service ports (and SSH, only
  with a key and never from 0.0.0.0/0) from `allowed_cidr` alone, and the node leaves only to HTTPS; one
  address costs less than a NAT gateway plus a forwarding rule;
- TLS and the first API key are minted on the VM at first boot (`marketplace/first_boot.sh`, `first_boot.py`);
  the key reaches the buyer through a Secret Manager secret encrypted with the module's key, to which the
  node's service account may only add versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotated_types import Ge, Le

from marketplace.first_boot import CONF_DIR
from marketplace.launch import CIDR_PATTERN, PLACEHOLDER, SSH_OFF, cloud_config
from service.tenancy import TENANT_NAME_PATTERN
from stacks.cloudinit import DATA_DIR
from stacks.gcp.compute import (
    BOOT_DISK_GB,
    DATA_DEVICE_NAME,
    DATA_DISK_PATH,
    DISK_TYPE,
    GPU_FAMILIES,
    HYPERDISK_TYPE,
    SCOPES,
    SERIES_DISK_TYPES,
)
from stacks.gcp.identity import AUDIT_ROLES, ORIGIN_ROLE
from stacks.gcp.kms import DESTROY_SCHEDULED_DURATION, KEY_USER_ROLE, ROTATION_PERIOD, compute_service_agent
from stacks.gcp.network import ALLOW_PRIORITY, DENY_EGRESS_PRIORITY, OWN_SUBNET_CIDR, SSH_PORT, WORLD
from stacks.spec import (
    AUDIT_FOLDER,
    BUCKET_PATTERNS,
    DEFAULT_INSTANCE_TYPES,
    HTTPS_PORT,
    RESP_PORT,
    SERVICE_PORTS,
    SSH_KEY_TYPES,
    Cloud,
    StackSpec,
)

USER_DATA_FILE = "user-data.tftpl"
# The image `images/packer/gcp` publishes (its `image_family`); the producer portal swaps in the listed image.
LISTING_FAMILY = "foresight"
LISTING_PROJECT = "foresight-public"
DEFAULT_IMAGE = f"projects/{LISTING_PROJECT}/global/images/family/{LISTING_FAMILY}"
DEFAULT_ZONE = "us-central1-a"
SSH_USER = "foresight"  # the stack's `ssh-keys` user (stacks/gcp/compute.node_metadata)
SECRET_ADDER_ROLE = "roles/secretmanager.secretVersionAdder"  # noqa: S105 - a role name
SECRET_READER_ROLE = "roles/secretmanager.secretAccessor"  # noqa: S105 - a role name
PROVIDERS = {
    "google": ("hashicorp/google", ">= 6.0, < 8.0"),
    # google_project_service_identity (Secret Manager's service agent, for its CMEK grant) is beta only.
    "google-beta": ("hashicorp/google-beta", ">= 6.0, < 8.0"),
    "random": ("hashicorp/random", ">= 3.5, < 4.0"),
}
TERRAFORM_VERSION = ">= 1.3"
_KEY = "google_kms_crypto_key.node.id"
_NODE = "google_service_account.node.email"
AUDIT_PREFIX = f"{AUDIT_FOLDER}/${{var.goog_cm_deployment_name}}"  # the stacks' foresight/<project>-<stack>


class Expr(str):
    """An HCL expression written as is (a reference, a call, a template), not as a quoted string."""


@dataclass
class Block:
    kind: str
    labels: tuple[str, ...] = ()
    body: list[Any] = field(default_factory=list)  # (name, value) pairs, Blocks, Comment lines, None = blank


class Comment(str):
    """A `#` line in a block's body."""


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    description: str
    default: Any = None  # None: required
    validations: tuple[tuple[str, str], ...] = ()

    def block(self) -> Block:
        body: list[Any] = [("type", Expr(self.type)), ("description", self.description)]
        if self.default is not None:
            body.append(("default", self.default))
        for condition, message in self.validations:
            body.append(Block("validation", body=[("condition", Expr(condition)), ("error_message", message)]))
        return Block("variable", (self.name,), body)


# --- HCL, formatted the way `terraform fmt` leaves it ----------------------------------------------------------


def interpolated(text: str) -> Expr:
    """An HCL string template: `${...}` in `text` are interpolations."""
    return Expr('"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"')


def quote(text: str) -> str:
    """An HCL string literal: template sequences doubled so they stay literal."""
    return interpolated(text.replace("${", "$${").replace("%{", "%%{"))


def _value(value: Any, indent: int) -> str:
    if isinstance(value, Expr):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item, indent) for item in value) + "]"
    if isinstance(value, dict):
        keys = [k if re.fullmatch(r"[a-z_][a-z0-9_]*", k) else quote(k) for k in value]
        return "{\n" + _body(list(zip(keys, value.values(), strict=True)), indent + 2) + " " * indent + "}"
    raise TypeError(f"no HCL for {value!r}")


def _body(items: list[Any], indent: int) -> str:
    """Lines of a body; consecutive one-line attributes align their `=` as fmt does (multi-line values, blocks,
    comments and blank lines end a run)."""
    pad = " " * indent
    lines: list[str] = []
    run: list[tuple[str, str]] = []

    def flush() -> None:
        width = max((len(name) for name, _ in run), default=0)
        lines.extend(f"{pad}{name.ljust(width)} = {text}\n" for name, text in run)
        run.clear()

    for item in items:
        if isinstance(item, tuple):
            text = _value(item[1], indent)
            if "\n" not in text:
                run.append((item[0], text))
                continue
            flush()
            lines.append(f"{pad}{item[0]} = {text}\n")
            continue
        flush()
        if item is None:
            lines.append("\n")
        elif isinstance(item, Comment):
            lines.append(f"{pad}# {item}\n")
        else:
            lines.append(_block(item, indent))
    flush()
    return "".join(lines)


def _block(block: Block, indent: int = 0) -> str:
    header = " ".join([block.kind, *(quote(label) for label in block.labels)])
    return f"{' ' * indent}{header} {{\n{_body(block.body, indent + 2)}{' ' * indent}}}\n"


def hcl(items: Iterable[Block | Comment]) -> str:
    """Top-level blocks, one blank line apart; a Comment goes right above the block after it."""
    parts: list[str] = []
    comments = ""
    for item in items:
        if isinstance(item, Comment):
            comments += f"# {item}\n"
        else:
            parts.append(comments + _block(item))
            comments = ""
    return "\n".join(parts)


# --- the module's interface ------------------------------------------------------------------------------------


def _tcp(ports: Iterable[int]) -> str:
    return ", ".join(map(str, ports))


def variables() -> list[Variable]:
    volume = StackSpec.model_fields["volume_size_gb"]
    low = next(m.ge for m in volume.metadata if isinstance(m, Ge))
    high = next(m.le for m in volume.metadata if isinstance(m, Le))
    families = "|".join(sorted(GPU_FAMILIES))
    world = str(WORLD)
    ssh_key = f"^({'|'.join(SSH_KEY_TYPES)}) [A-Za-z0-9+/=]+( [^\\n]*)?$"
    return [
        Variable("project_id", "string", "The project to deploy into"),
        Variable(
            "goog_cm_deployment_name",
            "string",
            "The deployment's name (Cloud Marketplace sets it); resource names start with it",
            validations=(
                (
                    'can(regex("^[a-z][-a-z0-9]{0,62}$", var.goog_cm_deployment_name))',
                    "A lowercase letter, then lowercase letters, digits or '-' (at most 63).",
                ),
            ),
        ),
        Variable(
            "image",
            "string",
            "The Foresight image of this listing (Cloud Marketplace fills it in)",
            DEFAULT_IMAGE,
            (
                (
                    'can(regex("^(https://www[.]googleapis[.]com/compute/v1/)?projects/[a-z][-a-z0-9.:]*/global/images/'
                    '(family/)?[a-z]([-a-z0-9]*[a-z0-9])?$", var.image))',
                    "A Compute Engine image: projects/<project>/global/images/<image> (or images/family/<family).",
                ),
            ),
        ),
        Variable(
            "zone",
            "string",
            "A zone that offers the machine type; the region's network, key and secret follow it",
            DEFAULT_ZONE,
            (('can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.zone))', "A zone such as us-central1-a."),),
        ),
        Variable(
            "machine_type",
            "string",
            f"A machine type that carries NVIDIA GPUs: the {', '.join(sorted(GPU_FAMILIES))} families",
            DEFAULT_INSTANCE_TYPES[Cloud.GCP],
            (
                (
                    f'can(regex("^({families})-[a-z0-9-]+$", var.machine_type))',
                    f"A machine type of the {', '.join(sorted(GPU_FAMILIES))} families, such as "
                    f"{DEFAULT_INSTANCE_TYPES[Cloud.GCP]}.",
                ),
            ),
        ),
        Variable(
            "data_disk_size_gb",
            "number",
            "Size of the encrypted data disk (snapshots, audit log), GB",
            volume.default,
            (
                (
                    f"var.data_disk_size_gb >= {low} && var.data_disk_size_gb <= {high} && "
                    "floor(var.data_disk_size_gb) == var.data_disk_size_gb",
                    f"A whole number of GB from {low} to {high}.",
                ),
            ),
        ),
        Variable(
            "allowed_cidr",
            "string",
            f"The only IPv4 range that may reach ports {_tcp(SERVICE_PORTS)} (and SSH, never from {world})",
            validations=(
                (f"can(regex({quote(CIDR_PATTERN)}, var.allowed_cidr))", "An IPv4 CIDR such as 203.0.113.0/24."),
                (
                    "can(cidrsubnet(var.allowed_cidr, 0, 0)) && cidrsubnet(var.allowed_cidr, 0, 0) == var.allowed_cidr",
                    "The CIDR has host bits set; give its network address (203.0.113.0/24, not 203.0.113.7/24).",
                ),
            ),
        ),
        Variable(
            "ssh_public_key",
            "string",
            f"Optional OpenSSH public key for user {SSH_USER}, for SSH from allowed_cidr; empty: no SSH, OS Login",
            "",
            (
                (
                    f'var.ssh_public_key == "" || can(regex({quote(ssh_key)}, var.ssh_public_key))',
                    f"One OpenSSH public key line ({', '.join(SSH_KEY_TYPES)}), not a private key.",
                ),
            ),
        ),
        Variable(
            "tenant_name",
            "string",
            "The first tenant; its API key goes into the secret this module creates",
            "default",
            (
                (
                    f"can(regex({quote(TENANT_NAME_PATTERN)}, var.tenant_name))",
                    "A DNS label: lowercase letters, digits and '-'.",
                ),
            ),
        ),
        Variable(
            "audit_bucket",
            "string",
            "Optional existing Cloud Storage bucket for the audit trail (give it a locked retention policy): rotated "
            "audit files go to foresight/<deployment>/, and the node deletes one only once its copy is there. Grant "
            "the node's service account access with the grant_audit_bucket_command output. Empty: kept on the node",
            "",
            (
                (
                    f'var.audit_bucket == "" || can(regex({quote(BUCKET_PATTERNS[Cloud.GCP].pattern)}, '
                    "var.audit_bucket))",
                    "A Cloud Storage bucket name (lowercase letters, digits, '-', '_' and '.'), without gs://.",
                ),
            ),
        ),
        Variable(
            "origin_buckets",
            "list(string)",
            "Optional existing Cloud Storage buckets the tenants' origins live in. Grant the node's service account "
            "read on them with the grant_origin_buckets_command output",
            [],
            (
                (
                    f"alltrue([for b in var.origin_buckets : can(regex({quote(BUCKET_PATTERNS[Cloud.GCP].pattern)}, "
                    "b))])",
                    "Each origin bucket is a Cloud Storage bucket name (lowercase letters, digits, '-', '_' and '.'), "
                    "without gs://.",
                ),
            ),
        ),
        Variable(
            "api_key_readers",
            "list(string)",
            "IAM members (user:, group: or serviceAccount:) who may read the API key secret",
            [],
            (
                (
                    "alltrue([for m in var.api_key_readers : "
                    'can(regex("^(user|group|serviceAccount):[^@ ]+@[^@ ]+$", m))])',
                    "Each reader is user:<email>, group:<email> or serviceAccount:<email>.",
                ),
            ),
        ),
    ]


def _versions() -> Block:
    providers = {name: {"source": source, "version": version} for name, (source, version) in PROVIDERS.items()}
    return Block(
        "terraform",
        body=[("required_version", TERRAFORM_VERSION), Block("required_providers", body=list(providers.items()))],
    )


# --- what it creates ----------------------------------------------------------------------------------------


def service_environment() -> dict[str, str]:
    """foresight.env for a node without Vault: its own TLS and tenants files, data keys wrapped by Cloud KMS."""
    return {
        "FORESIGHT_TLS_CERT_FILE": f"{CONF_DIR}/tls.crt",
        "FORESIGHT_TLS_KEY_FILE": f"{CONF_DIR}/tls.key",
        "FORESIGHT_TENANTS_FILE": f"{CONF_DIR}/tenants.json",
        "FORESIGHT_KMS_PROVIDER": "gcp",
        "FORESIGHT_KMS_KEY_ID": "@@KeyId@@",  # the CryptoKey's resource name
        "FORESIGHT_DATA_DIR": DATA_DIR,
        "GOOGLE_CLOUD_PROJECT": "@@Project@@",  # as the stack sets it
        "FORESIGHT_AUDIT_SHIP_URL": "@@AuditShipUrl@@",  # empty (no audit_bucket): the trail stays on the node
    }


def user_data_text() -> str:
    """The `#cloud-config` document with `@@Name@@` where a deployment value goes (`user_data_values`)."""
    options = {"--secret": "Secret", "--tenant": "Tenant", "--public-ip": "PublicIp"}
    return cloud_config("gcp", service_environment(), DATA_DISK_PATH, options)


def user_data_values() -> dict[str, str]:
    """Each placeholder's HCL expression."""
    return {
        "KeyId": _KEY,
        "Project": "var.project_id",
        "Secret": "google_secret_manager_secret.api_key.id",
        "Tenant": "var.tenant_name",
        "PublicIp": "google_compute_address.node.address",
        "SshOff": f'var.ssh_public_key == "" ? {quote(SSH_OFF)} : "true"',
        "AuditShipUrl": f'var.audit_bucket == "" ? "" : "gs://${{var.audit_bucket}}/{AUDIT_PREFIX}"',
    }


def template_name(placeholder: str) -> str:
    """`PublicIp` -> `public_ip`, the templatefile variable a placeholder becomes."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", placeholder).lower()


def user_data_template() -> str:
    """`user_data_text()` as a templatefile: `${`/`%{` doubled so they stay literal, placeholders as `${name}`."""
    text = user_data_text().replace("${", "$${").replace("%{", "%%{")
    return PLACEHOLDER.sub(lambda match: "${" + template_name(match[1]) + "}", text)


def _locals() -> Block:
    return Block(
        "locals",
        body=[
            Comment("Names start with the deployment's; 20 characters leave room for each suffix within GCP's limits."),
            ("name", Expr('trim(substr(var.goog_cm_deployment_name, 0, 20), "-")')),
            ("region", Expr('regex("^(.+)-[a-z]$", var.zone)[0]')),
            ("labels", {"foresight-deployment": Expr("local.name"), "managed-by": "terraform"}),
            Comment("The stack's rules: SSH only with a key, and never from the whole internet."),
            ("ssh_allowed", Expr(f'var.ssh_public_key != "" && var.allowed_cidr != "{WORLD}"')),
            Comment("The stack's disk type: Hyperdisk Balanced for the series that take no Persistent Disk."),
            ("disk_type", Expr(_disk_type())),
            ("user_data_vars", {template_name(k): Expr(v) for k, v in user_data_values().items()}),
            ("user_data", Expr(f'templatefile("${{path.module}}/{USER_DATA_FILE}", local.user_data_vars)')),
        ],
    )


def _disk_type() -> str:
    """The stack's `node_disk_type` of one machine type, as a Terraform expression of var.machine_type."""
    hyperdisk_only = [prefix for prefix, types in SERIES_DISK_TYPES if DISK_TYPE not in types]
    prefixes = ", ".join(f'"{prefix}"' for prefix in hyperdisk_only)
    return (f"anytrue([for prefix in [{prefixes}] : startswith(var.machine_type, prefix)]) ? "
            f'"{HYPERDISK_TYPE}" : "{DISK_TYPE}"')


def _resource(kind: str, name: str, *body: Any) -> Block:
    return Block("resource", (kind, name), list(body))


def _named(suffix: str = "") -> tuple[str, Expr]:
    return ("name", Expr(f'"${{local.name}}-foresight{suffix}"'))


def _firewall(name: str, description: str, egress: bool, ports: list[int] | None, ranges: Any) -> Block:
    rule: list[Any] = [
        _named(f"-{name.replace('_', '-')}"),
        ("network", Expr("google_compute_network.node.id")),
        ("description", f"Foresight: {description}"),
        ("direction", "EGRESS" if egress else "INGRESS"),
        ("priority", ALLOW_PRIORITY if ports else DENY_EGRESS_PRIORITY),
        ("destination_ranges" if egress else "source_ranges", ranges),
        ("target_service_accounts", [Expr(_NODE)]),
    ]
    if ports:
        rule.append(Block("allow", body=[("protocol", "tcp"), ("ports", [str(port) for port in ports])]))
    else:
        rule.append(Block("deny", body=[("protocol", "all")]))
    return _resource("google_compute_firewall", name, *rule)


def _network() -> list[Block]:
    world = [str(WORLD)]
    ssh = _firewall("ssh_in", "break-glass SSH from the allowed CIDR", False, [SSH_PORT], [Expr("var.allowed_cidr")])
    ssh.body.insert(0, ("count", Expr("local.ssh_allowed ? 1 : 0")))
    return [
        _resource(
            "google_compute_network",
            "node",
            _named(),
            ("description", "Foresight: the node's own network"),
            ("auto_create_subnetworks", False),
            ("routing_mode", "REGIONAL"),
        ),
        _resource(
            "google_compute_subnetwork",
            "node",
            _named(),
            ("network", Expr("google_compute_network.node.id")),
            ("region", Expr("local.region")),
            ("ip_cidr_range", str(OWN_SUBNET_CIDR)),
            ("private_ip_google_access", True),
            Block(
                "log_config",
                body=[
                    ("aggregation_interval", "INTERVAL_10_MIN"),
                    ("flow_sampling", 0.5),
                    ("metadata", "INCLUDE_ALL_METADATA"),
                ],
            ),
        ),
        _resource(
            "google_compute_address",
            "node",
            _named(),
            ("region", Expr("local.region")),
            ("address_type", "EXTERNAL"),
            ("network_tier", "PREMIUM"),
            ("description", "Foresight: the node's address, named by its certificate"),
            ("labels", Expr("local.labels")),
        ),
        _firewall(
            "service_in",
            f"ports {_tcp(SERVICE_PORTS)} from the allowed CIDR",
            False,
            list(SERVICE_PORTS),
            [Expr("var.allowed_cidr")],
        ),
        ssh,
        _firewall("https_out", "HTTPS out (Google APIs)", True, [443], world),
        _firewall("deny_out", "no other egress", True, None, world),
    ]


def _identity_and_key() -> list[Block | Comment]:
    key_users = {
        "node": Expr(f'"serviceAccount:${{{_NODE}}}"'),
        "compute": interpolated(compute_service_agent("${data.google_project.this.number}")),
        "secret-manager": Expr('"serviceAccount:${google_project_service_identity.secret_manager.email}"'),
    }
    return [
        Block("data", ("google_project", "this")),
        _resource(
            "google_service_account",
            "node",
            ("account_id", Expr('"fs-${local.name}-node"')),
            ("display_name", Expr('"Foresight node of ${var.goog_cm_deployment_name}"')),
            ("description", "Runs the Foresight node; may use its key and add versions to its secret, no more"),
        ),
        Comment("Cloud KMS never deletes a key ring, so a redeployment under the same name needs a new one."),
        _resource("random_id", "key_ring", ("byte_length", 3)),
        _resource(
            "google_kms_key_ring",
            "node",
            ("name", Expr('"${local.name}-foresight-${random_id.key_ring.hex}"')),
            ("location", Expr("local.region")),
        ),
        _resource(
            "google_kms_crypto_key",
            "node",
            ("name", "foresight"),
            ("key_ring", Expr("google_kms_key_ring.node.id")),
            ("purpose", "ENCRYPT_DECRYPT"),
            ("rotation_period", ROTATION_PERIOD),
            ("destroy_scheduled_duration", DESTROY_SCHEDULED_DURATION),
            ("labels", Expr("local.labels")),
        ),
        _resource(
            "google_project_service_identity",
            "secret_manager",
            ("provider", Expr("google-beta")),
            ("service", "secretmanager.googleapis.com"),
        ),
        Comment("On the key alone: the node (data keys), Compute Engine (CMEK disks), Secret Manager (the secret)."),
        _resource(
            "google_kms_crypto_key_iam_member",
            "key_users",
            ("for_each", key_users),
            ("crypto_key_id", Expr(_KEY)),
            ("role", KEY_USER_ROLE),
            ("member", Expr("each.value")),
        ),
        _resource(
            "google_secret_manager_secret",
            "api_key",
            ("secret_id", Expr('"${local.name}-foresight-api-key"')),
            ("labels", Expr("local.labels")),
            Block(
                "replication",
                body=[
                    Block(
                        "user_managed",
                        body=[
                            Block(
                                "replicas",
                                body=[
                                    ("location", Expr("local.region")),
                                    Block("customer_managed_encryption", body=[("kms_key_name", Expr(_KEY))]),
                                ],
                            )
                        ],
                    )
                ],
            ),
            ("depends_on", [Expr("google_kms_crypto_key_iam_member.key_users")]),
        ),
        _resource(
            "google_secret_manager_secret_iam_member",
            "node_adds_versions",
            ("secret_id", Expr("google_secret_manager_secret.api_key.id")),
            ("role", SECRET_ADDER_ROLE),
            ("member", Expr(f'"serviceAccount:${{{_NODE}}}"')),
        ),
        _resource(
            "google_secret_manager_secret_iam_member",
            "readers",
            ("for_each", Expr("toset(var.api_key_readers)")),
            ("secret_id", Expr("google_secret_manager_secret.api_key.id")),
            ("role", SECRET_READER_ROLE),
            ("member", Expr("each.value")),
        ),
    ]


def node_metadata() -> dict[str, Expr]:
    """The stack's instance metadata (`stacks.gcp.compute.node_metadata`); "ssh-keys" is empty without a key."""
    no_key = 'var.ssh_public_key == ""'
    return {
        "user-data": Expr("local.user_data"),
        "block-project-ssh-keys": Expr('"TRUE"'),
        "enable-oslogin": Expr(f'{no_key} ? "TRUE" : "FALSE"'),
        "ssh-keys": Expr(f'{no_key} ? "" : "{SSH_USER}:${{var.ssh_public_key}}"'),
    }


def _compute() -> list[Block]:
    boot = Block(
        "boot_disk",
        body=[
            ("auto_delete", True),
            ("kms_key_self_link", Expr(_KEY)),
            Block(
                "initialize_params",
                body=[
                    ("image", Expr("var.image")),
                    ("size", BOOT_DISK_GB),
                    ("type", Expr("local.disk_type")),
                    ("labels", Expr("local.labels")),
                ],
            ),
        ],
    )
    interface = Block(
        "network_interface",
        body=[
            ("subnetwork", Expr("google_compute_subnetwork.node.id")),
            ("nic_type", "GVNIC"),
            Block(
                "access_config",
                body=[("nat_ip", Expr("google_compute_address.node.address")), ("network_tier", "PREMIUM")],
            ),
        ],
    )
    return [
        _resource(
            "google_compute_disk",
            "data",
            _named("-data"),
            ("zone", Expr("var.zone")),
            ("type", Expr("local.disk_type")),
            ("size", Expr("var.data_disk_size_gb")),
            ("labels", Expr("local.labels")),
            Block("disk_encryption_key", body=[("kms_key_self_link", Expr(_KEY))]),
            ("depends_on", [Expr("google_kms_crypto_key_iam_member.key_users")]),
        ),
        _resource(
            "google_compute_instance",
            "node",
            _named(),
            ("zone", Expr("var.zone")),
            ("machine_type", Expr("var.machine_type")),
            ("description", "Foresight GPU node"),
            ("labels", Expr("local.labels")),
            boot,
            Block(
                "attached_disk",
                body=[
                    ("source", Expr("google_compute_disk.data.id")),
                    ("device_name", DATA_DEVICE_NAME),
                    ("kms_key_self_link", Expr(_KEY)),
                ],
            ),
            interface,
            Block("service_account", body=[("email", Expr(_NODE)), ("scopes", SCOPES)]),
            Comment("GPUs cannot live-migrate: host maintenance stops the VM, which then starts again."),
            Block(
                "scheduling",
                body=[
                    ("on_host_maintenance", "TERMINATE"),
                    ("automatic_restart", True),
                    ("provisioning_model", "STANDARD"),
                ],
            ),
            Comment(
                "Secure boot off: the image's NVIDIA kernel modules are not signed with a key the firmware trusts."
            ),
            Block(
                "shielded_instance_config",
                body=[("enable_secure_boot", False), ("enable_vtpm", True), ("enable_integrity_monitoring", True)],
            ),
            Comment("The stack's: OS Login would ignore the key, so it is off only when a key is given."),
            ("metadata", node_metadata()),
            Comment("First boot adds the key to the secret: the grants must exist before it boots."),
            (
                "depends_on",
                [
                    Expr("google_secret_manager_secret_iam_member.node_adds_versions"),
                    Expr("google_kms_crypto_key_iam_member.key_users"),
                    Expr("google_compute_firewall.https_out"),
                ],
            ),
        ),
    ]


def _providers() -> list[Block]:
    return [Block("provider", (name,), [("project", Expr("var.project_id"))]) for name in ("google", "google-beta")]


def outputs() -> list[tuple[str, str, str]]:
    """(name, description, HCL expression) of each output."""
    address = "google_compute_address.node.address"
    return [
        ("resp_endpoint", "Redis protocol over TLS (AUTH with the API key)", f'"rediss://${{{address}}}:{RESP_PORT}"'),
        ("https_endpoint", "HTTPS API", f'"https://${{{address}}}:{HTTPS_PORT}"'),
        ("external_ip", "The node's address; its certificate names it", address),
        (
            "api_key_secret",
            "Secret holding the API key and the CA certificate (a few minutes after the deployment)",
            "google_secret_manager_secret.api_key.id",
        ),
        (
            "get_api_key_command",
            "Read the API key document with gcloud",
            '"gcloud secrets versions access latest --secret=${google_secret_manager_secret.api_key.secret_id} '
            '--project=${var.project_id}"',
        ),
        ("kms_key_id", "The Cloud KMS key (disks, secret, the service's data keys)", _KEY),
        ("instance_name", "The node", "google_compute_instance.node.name"),
        ("node_service_account", "The node's service account", _NODE),
        (
            "grant_audit_bucket_command",
            "With audit_bucket: the grant that lets the node ship its audit trail there (the bucket is yours, so "
            "this module holds no role on it)",
            'var.audit_bucket == "" ? "" : join(" && ", [for role in ' + _hcl_list(AUDIT_ROLES) + " : "
            + _gcloud_grant("var.audit_bucket", "role", _NODE) + "])",
        ),
        (
            "grant_origin_buckets_command",
            "With origin_buckets: the grants that let the node read them (the buckets are yours, so this module "
            "holds no role on them)",
            grant_origin_read_command(_NODE),
        ),
    ]


def grant_origin_read_command(account: str) -> str:
    """The HCL of the gcloud commands that give `account` (an expression) the stacks' ORIGIN_ROLE on each bucket."""
    return 'join(" && ", [for b in var.origin_buckets : ' + _gcloud_grant("b", quote(ORIGIN_ROLE), account) + "])"


def _gcloud_grant(bucket: str, role: str, account: str) -> str:
    """An HCL string: the gcloud command binding `role` on `bucket` to the service account `account` (each an HCL
    expression), the one shape of both grant outputs."""
    return (f'"gcloud storage buckets add-iam-policy-binding gs://${{{bucket}}} --member=serviceAccount:${{{account}}} '
            f'--role=${{{role}}}"')


def _hcl_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(quote(item) for item in items) + "]"


def _outputs() -> list[Block]:
    return [
        Block("output", (name,), [("description", text), ("value", Expr(value))]) for name, text, value in outputs()
    ]


def render(version: str | None = None) -> dict[str, str]:
    """The module's files by name (text), for `foresight marketplace build` (`<out>/gcp/`)."""
    from marketplace.gcp import blueprint  # the Marketplace's files describe this module's interface

    files = {
        "versions.tf": hcl([_versions()]),
        "variables.tf": hcl(v.block() for v in variables()),
        "main.tf": hcl([*_providers(), _locals(), *_network(), *_identity_and_key(), *_compute()]),
        "outputs.tf": hcl(_outputs()),
        USER_DATA_FILE: user_data_template(),
    }
    return {**files, **blueprint.render(variables(), outputs(), version, TERRAFORM_VERSION)}


def stray_files(out_dir: Path) -> list[str]:
    """Files in `out_dir` the module does not have: Terraform would load a stray .tf with it, and the portal takes
    the folder whole."""
    ours = set(render())
    return sorted(p.name for p in out_dir.iterdir() if p.name not in ours) if out_dir.is_dir() else []


def package(out_dir: Path, version: str | None = None) -> Path:
    """Writes the module's files into `out_dir` (the folder the producer portal takes, zipped or from a bucket)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render(version).items():
        (out_dir / name).write_text(text)
    return out_dir
