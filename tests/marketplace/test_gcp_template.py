"""The Google Cloud Marketplace VM solution: `terraform fmt` and python-hcl2 accept every file, the real Terraform
evaluates its variable validations and renders its user data (no provider: `init` and `validate` would need the
registry), checkov passes it (but for two findings we accept, each with its reason), `cloud-init schema` accepts
the user data, it cannot drift from the GCP stack, it opens nothing to the world by default, and its first boot
mints a key that the service's own key source accepts.

Only the tests that take the `harness` fixture, or call `terraform`, need Terraform (tests/images/tools.py finds
it; scripts/setup.sh test installs it); every check of the user data itself runs on the document as Python fills
it in, and one Terraform test shows that Terraform renders that same document."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from cryptography import x509

from marketplace.gcp import blueprint, template
from marketplace.gcp.first_boot import SECRET_MANAGER_ENDPOINT
from marketplace.launch import PLACEHOLDER, SERVICE_IDS, SSH_OFF, STAGED_ENV_FILE
from service.config import Settings
from service.security.kms.gcp import crc32c
from service.security.local_ca import CertificateAuthority
from service.tenancy import FileKeySource
from stacks.gcp.compute import (
    BOOT_DISK_GB,
    DATA_DEVICE_NAME,
    DATA_DISK_PATH,
    DISK_TYPE,
    GPU_FAMILIES,
    IMAGE_FAMILY,
    IMAGE_PROJECT,
    machine_family,
    node_disk_type,
    node_metadata,
)
from stacks.gcp.identity import AUDIT_ROLES, ORIGIN_ROLE
from stacks.gcp.kms import DESTROY_SCHEDULED_DURATION, KEY_USER_ROLE, ROTATION_PERIOD, compute_service_agent
from stacks.gcp.network import OWN_SUBNET_CIDR, SSH_PORT
from stacks.spec import DEFAULT_INSTANCE_TYPES, DEFAULT_VOLUME_SIZE_GB, SERVICE_PORTS, Cloud, StackSpec
from tests.images.tools import require_tool, run_checkov, terraform_command
from tests.marketplace.ca_key import KEYRING, assert_ca_key_sealed, local_cipher
from tests.marketplace.cloud_config import unit_commands
from tests.marketplace.metrics_token import assert_scrape_token_minted
from tests.servers import http_server
from tests.tlsutil import assert_tls_serves

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {
    "key_id": "projects/acme-prod/locations/us-central1/keyRings/foresight-1-foresight-a1b2c3/cryptoKeys/foresight",
    "secret": "projects/acme-prod/secrets/foresight-1-foresight-api-key",
    "public_ip": "198.51.100.7",
}
PRIVATE_IP = "10.42.0.2"
REQUIRED = {"project_id": "acme-prod", "goog_cm_deployment_name": "foresight-1", "allowed_cidr": "203.0.113.0/24"}
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0cJ8T3d6u0Y5b2nSxPz8hX7o0Q2c1Vf3mB9kR4sLp buyer@laptop"
# checkov findings we accept, and why (docs/marketplace-gcp.md says the same).
ACCEPTED_CHECKOV = {
    "CKV_GCP_40": "the node's static external address is its endpoint (as the AWS Elastic IP and the Azure public "
    "IP); the firewall admits only allowed_cidr",
    "CKV_GCP_82": "prevent_destroy would make the deployment impossible to delete; destroying the key only "
    "schedules its versions, recoverable for the stack's 30 days",
}
TERRAFORM_ENV = {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return template.render("9.9.9")


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return template.package(tmp_path_factory.mktemp("gcp") / "module", "9.9.9")


@pytest.fixture(scope="module")
def parsed(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every .tf and .tfvars file through python-hcl2 (plain strings, blocks as lists, as Terraform's JSON)."""
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    return {
        name: hcl2.loads(text, serialization_options=options)
        for name, text in files.items()
        if name.endswith((".tf", ".tfvars"))
    }


def resource(parsed: dict[str, dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r[kind][name] for r in parsed["main.tf"]["resource"] if kind in r and name in r[kind]]
    assert len(found) == 1, (kind, name)
    return dict(found[0])


def terraform(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*terraform_command(), f"-chdir={directory}", *args, "-no-color"]
    return subprocess.run(command, capture_output=True, text=True, env=TERRAFORM_ENV, timeout=120)


# --- the real tools -------------------------------------------------------------------------------------------


def test_terraform_fmt_finds_nothing_to_change(module_dir: Path) -> None:
    result = terraform(module_dir, "fmt", "-check", "-diff", "-recursive")
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_fmt_would_catch_a_misformatted_file(module_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text((module_dir / "main.tf").read_text().replace("  name ", "name ", 1))
    assert terraform(tmp_path, "fmt", "-check").returncode != 0


def test_every_file_parses(files: dict[str, str], parsed: dict[str, dict[str, Any]]) -> None:
    assert set(files) == {
        "main.tf",
        "variables.tf",
        "outputs.tf",
        "versions.tf",
        template.USER_DATA_FILE,
        "metadata.yaml",
        "metadata.display.yaml",
        "marketplace_test.tfvars",
    }
    assert {"variable"} == set(parsed["variables.tf"]) and {"output"} == set(parsed["outputs.tf"])
    assert {"resource", "data", "locals", "provider"} == set(parsed["main.tf"])
    assert parsed["versions.tf"]["terraform"][0]["required_providers"]
    for name in ("metadata.yaml", "metadata.display.yaml"):
        document = yaml.safe_load(files[name])
        assert (document["apiVersion"], document["kind"]) == (
            "blueprints.cloud.google.com/v1alpha1",
            "BlueprintMetadata",
        )


def test_checkov_fails_only_the_accepted_checks(module_dir: Path) -> None:
    report = run_checkov(module_dir, "terraform")
    summary = report["summary"]
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert failed == set(ACCEPTED_CHECKOV), json.dumps(report["results"]["failed_checks"], indent=1)
    assert summary["failed"] == len(ACCEPTED_CHECKOV) and summary["skipped"] == 0 == summary["parsing_errors"]
    assert summary["resource_count"] >= 19 and summary["passed"] >= 40, summary  # the checks really ran


# --- the real terraform, on what it can evaluate without a provider -------------------------------------------


@pytest.fixture(scope="module")
def harness(files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """variables.tf, the user-data template, and main.tf's locals with SAMPLE for what resources would give."""
    directory = tmp_path_factory.mktemp("harness")
    (directory / "variables.tf").write_text(files["variables.tf"])
    (directory / template.USER_DATA_FILE).write_text(files[template.USER_DATA_FILE])
    items = []
    for item in template._locals().body:
        if isinstance(item, tuple) and item[0] == "user_data_vars":
            item = (item[0], {k: SAMPLE.get(k, v) for k, v in item[1].items()})
        items.append(item)
    body = [*items, ("metadata", template.node_metadata())]
    outputs = [
        template.Block("output", (name,), [("value", template.Expr(f"local.{name}"))])
        for name in ("name", "region", "ssh_allowed", "disk_type", "user_data", "metadata")
    ]
    (directory / "harness.tf").write_text(template.hcl([template.Block("locals", body=body), *outputs]))
    assert terraform(directory, "init", "-input=false", "-backend=false").returncode == 0
    return directory


def apply(harness: Path, **values: str) -> dict[str, Any]:
    arguments = [f"-var={name}={value}" for name, value in {**REQUIRED, **values}.items()]
    result = terraform(harness, "apply", "-input=false", "-auto-approve", "-lock=false", *arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = json.loads(terraform(harness, "output", "-json").stdout)
    return {name: output["value"] for name, output in outputs.items()}


def refused(harness: Path, **values: str) -> str:
    arguments = [f"-var={name}={value}" for name, value in {**REQUIRED, **values}.items()]
    result = terraform(harness, "plan", "-input=false", "-lock=false", *arguments)
    assert result.returncode != 0, f"terraform accepted {values}"
    return result.stderr


@pytest.mark.parametrize("machine_type", ["g2-standard-4", "a2-highgpu-1g", "a3-highgpu-8g", "a3-ultragpu-8g"])
def test_terraform_picks_the_disk_type_the_stack_picks(harness: Path, machine_type: str) -> None:
    """A3 Ultra takes no Persistent Disk: the listing's disks follow the stack's table for the buyer's type."""
    assert apply(harness, machine_type=machine_type)["disk_type"] == node_disk_type([machine_type])


def test_terraform_accepts_the_defaults_and_derives_names(harness: Path) -> None:
    values = apply(harness)
    assert (values["name"], values["region"], values["ssh_allowed"]) == ("foresight-1", "us-central1", False)
    assert (
        apply(harness, zone="europe-west4-b", goog_cm_deployment_name="a-very-long-deployment-name-here")["name"]
        == "a-very-long-deployme"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("allowed_cidr", "0.0.0.0", "An IPv4 CIDR"),
        ("allowed_cidr", "::/0", "An IPv4 CIDR"),
        ("allowed_cidr", "10.0.0.0/33", "An IPv4 CIDR"),
        ("allowed_cidr", "203.0.113.7/24", "host bits"),
        ("machine_type", "n2-standard-8", "a2, a3, g2"),
        ("machine_type", "e2-medium", "a2, a3, g2"),
        ("data_disk_size_gb", "19", "20 to 16384"),
        ("data_disk_size_gb", "16385", "20 to 16384"),
        ("ssh_public_key", "-----BEGIN OPENSSH PRIVATE KEY-----", "public key"),
        ("tenant_name", "Acme", "DNS label"),
        ("zone", "us-central1", "zone such as"),
        ("image", "ubuntu-2204", "Compute Engine image"),
        ("goog_cm_deployment_name", "1st", "lowercase letter"),
        ("audit_bucket", "gs://acme-audit", "Cloud Storage bucket name"),
        ("audit_bucket", "Acme", "Cloud Storage bucket name"),
        ("origin_buckets", '["acme-products", "gs://acme-media"]', "Each origin bucket is a Cloud Storage bucket"),
    ],
)
def test_terraform_refuses_a_bad_value(harness: Path, name: str, value: str, message: str) -> None:
    assert message in " ".join(refused(harness, **{name: value}).split())


def test_the_test_tfvars_pass_the_validations(harness: Path, parsed: dict[str, dict[str, Any]]) -> None:
    tfvars = parsed["marketplace_test.tfvars"]
    required = {v.name for v in template.variables() if v.default is None}
    assert required <= set(tfvars) and tfvars["image"] == template.DEFAULT_IMAGE
    apply(harness, **tfvars)


def test_the_ssh_rule_exists_only_where_ssh_is_allowed(parsed: dict[str, dict[str, Any]]) -> None:
    assert resource(parsed, "google_compute_firewall", "ssh_in")["count"] == "${local.ssh_allowed ? 1 : 0}"
    ssh_off = template.user_data_values()["SshOff"]
    assert ssh_off.startswith('var.ssh_public_key == "" ?') and template.quote(SSH_OFF) in ssh_off


def test_ssh_needs_a_key_and_is_never_open_to_the_world(harness: Path) -> None:
    assert apply(harness, ssh_public_key=SSH_KEY)["ssh_allowed"] is True
    assert apply(harness, ssh_public_key=SSH_KEY, allowed_cidr="0.0.0.0/0")["ssh_allowed"] is False
    assert apply(harness, ssh_public_key="")["ssh_allowed"] is False


def test_instance_metadata_is_the_stacks(harness: Path) -> None:
    spec = stack_spec()
    without_key = apply(harness)["metadata"]
    assert without_key == {**node_metadata(spec, without_key["user-data"]), "ssh-keys": ""}
    with_key = apply(harness, ssh_public_key=SSH_KEY)["metadata"]
    keyed = spec.model_copy(update={"ssh_public_key": SSH_KEY})
    assert with_key == node_metadata(keyed, with_key["user-data"])


def user_data(harness: Path, **values: str) -> str:
    return str(apply(harness, **values)["user_data"])


def filled_user_data(tenant: str = "acme", ssh_key: str = "") -> str:
    """The module's user data with SAMPLE's values in, as Terraform's templatefile fills it in (which
    test_terraform_renders_the_user_data_filled_in_here shows), with no Terraform needed."""
    filled = {
        "KeyId": SAMPLE["key_id"],
        "Project": REQUIRED["project_id"],
        "Secret": SAMPLE["secret"],
        "Tenant": tenant,
        "PublicIp": SAMPLE["public_ip"],
        "SshOff": "true" if ssh_key else SSH_OFF,
        "AuditShipUrl": "",
    }
    return PLACEHOLDER.sub(lambda m: filled[m[1]], template.user_data_text())


def test_terraform_renders_the_user_data_filled_in_here(harness: Path) -> None:
    # What terraform renders is the shared cloud-config with the values in, its scripts' `${...}` left alone.
    assert yaml.safe_load(user_data(harness, tenant_name="acme")) == yaml.safe_load(filled_user_data())
    with_key = user_data(harness, tenant_name="acme", ssh_public_key=SSH_KEY)
    assert yaml.safe_load(with_key) == yaml.safe_load(filled_user_data(ssh_key=SSH_KEY))


def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(filled_user_data())
    result = subprocess.run(
        [require_tool("cloud-init"), "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr
    document = yaml.safe_load(path.read_text())
    commands = unit_commands(document)
    assert commands["ExecStartPre"][1:] == [DATA_DISK_PATH, SERVICE_IDS]
    assert commands["ExecStart"][1:3] == ["gcp", SERVICE_IDS]
    assert dict(zip(commands["ExecStart"][3::2], commands["ExecStart"][4::2], strict=True)) == {
        "--secret": SAMPLE["secret"],
        "--tenant": "acme",
        "--public-ip": SAMPLE["public_ip"],
    }
    runcmd = document["runcmd"]
    assert "systemctl disable --now ssh.socket" in runcmd[0]
    assert "ssh.socket" not in yaml.safe_load(filled_user_data(ssh_key=SSH_KEY))["runcmd"][0]


def test_user_data_holds_no_secret_and_fits_the_metadata_limit() -> None:
    text = filled_user_data()
    assert len(text.encode()) < 256 * 1024
    for needle in (r"PRIVATE KEY", r"fsk_[a-z2-7]{12}_", r"(?i)password\s*[:=]", r"[A-Za-z0-9+/]{60,}"):
        assert not re.search(needle, text), needle


def staged_environment(cloud_config: str) -> dict[str, str]:
    """The foresight.env that first boot installs, from a rendered user data document."""
    document = yaml.safe_load(cloud_config)
    staged = next(f for f in document["write_files"] if f["path"] == STAGED_ENV_FILE)["content"]
    return dict(line.split("=", 1) for line in staged.splitlines())


def test_service_settings_pass_production_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = staged_environment(filled_user_data())
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.production_problems() == []
    assert (settings.kms_provider, settings.kms_key_id) == ("gcp", SAMPLE["key_id"])
    assert environment["GOOGLE_CLOUD_PROJECT"] == "acme-prod"


# --- no drift from the GCP stack ------------------------------------------------------------------------------


def stack_spec() -> StackSpec:
    return StackSpec.model_validate(
        {
            "project": "foresight",
            "stack": "test",
            "cloud": "gcp",
            "region": "us-central1",
            "allowedCidrs": ["203.0.113.0/24"],
            "vaultAddress": "https://vault.example.com",
            "instanceType": DEFAULT_INSTANCE_TYPES[Cloud.GCP],
        }
    )


def test_machine_types_are_the_stacks_gpu_families(parsed: dict[str, dict[str, Any]]) -> None:
    (machine_type,) = [v["machine_type"] for v in parsed["variables.tf"]["variable"] if "machine_type" in v]
    assert machine_type["default"] == DEFAULT_INSTANCE_TYPES[Cloud.GCP]
    pattern = re.search(r'regex\(\\?"(.+?)\\?", var', machine_type["validation"][0]["condition"])
    assert pattern
    accepts = re.compile(pattern[1].replace("\\\\", "\\"))
    for candidate in (
        "g2-standard-4",
        "g2-standard-96",
        "a2-highgpu-1g",
        "a2-ultragpu-8g",
        "a3-highgpu-8g",
        "n2-standard-8",
        "e2-medium",
        "n1-standard-4",
        "c3-standard-4",
        "g2",
    ):
        assert bool(accepts.fullmatch(candidate)) == (machine_family(candidate) in GPU_FAMILIES), candidate


def test_disks_key_and_network_match_the_stack(parsed: dict[str, dict[str, Any]], files: dict[str, str]) -> None:
    instance = resource(parsed, "google_compute_instance", "node")
    boot = instance["boot_disk"][0]
    disk_type = "${local.disk_type}"
    assert boot["initialize_params"][0]["size"] == BOOT_DISK_GB and boot["initialize_params"][0]["type"] == disk_type
    assert instance["attached_disk"][0]["device_name"] == DATA_DEVICE_NAME
    data = resource(parsed, "google_compute_disk", "data")
    assert data["type"] == disk_type
    (size,) = [v["data_disk_size_gb"] for v in parsed["variables.tf"]["variable"] if "data_disk_size_gb" in v]
    assert size["default"] == DEFAULT_VOLUME_SIZE_GB == StackSpec.model_fields["volume_size_gb"].default
    assert "16384" in size["validation"][0]["condition"] and ">= 20" in size["validation"][0]["condition"]
    key = resource(parsed, "google_kms_crypto_key", "node")
    assert (key["rotation_period"], key["destroy_scheduled_duration"]) == (ROTATION_PERIOD, DESTROY_SCHEDULED_DURATION)
    assert resource(parsed, "google_compute_subnetwork", "node")["ip_cidr_range"] == str(OWN_SUBNET_CIDR)
    scheduling = instance["scheduling"][0]
    assert scheduling["on_host_maintenance"] == "TERMINATE"
    assert instance["shielded_instance_config"][0] == {
        "enable_secure_boot": False,
        "enable_vtpm": True,
        "enable_integrity_monitoring": True,
    }


def test_cmek_on_both_disks_and_the_secret_and_grants_on_the_key_alone(parsed: dict[str, dict[str, Any]]) -> None:
    key = "${google_kms_crypto_key.node.id}"
    instance = resource(parsed, "google_compute_instance", "node")
    assert instance["boot_disk"][0]["kms_key_self_link"] == key
    assert resource(parsed, "google_compute_disk", "data")["disk_encryption_key"][0]["kms_key_self_link"] == key
    secret = resource(parsed, "google_secret_manager_secret", "api_key")
    replica = secret["replication"][0]["user_managed"][0]["replicas"][0]
    assert replica["customer_managed_encryption"][0]["kms_key_name"] == key
    users = resource(parsed, "google_kms_crypto_key_iam_member", "key_users")
    assert users["role"] == KEY_USER_ROLE and users["crypto_key_id"] == key
    assert users["for_each"]["compute"] == compute_service_agent("${data.google_project.this.number}")
    assert set(users["for_each"]) == {"node", "compute", "secret-manager"}


def test_the_node_may_only_add_versions_to_its_secret(parsed: dict[str, dict[str, Any]]) -> None:
    bindings = [(kind, r) for block in parsed["main.tf"]["resource"] for kind, r in block.items() if "iam" in kind]
    kinds = {kind for kind, _ in bindings}
    assert kinds == {"google_kms_crypto_key_iam_member", "google_secret_manager_secret_iam_member"}  # no project role
    adder = resource(parsed, "google_secret_manager_secret_iam_member", "node_adds_versions")
    assert adder["role"] == "roles/secretmanager.secretVersionAdder"
    assert adder["member"] == "serviceAccount:${google_service_account.node.email}"
    assert adder["secret_id"] == "${google_secret_manager_secret.api_key.id}"


def test_the_listings_image_is_built_on_the_stacks_image() -> None:
    packer = (REPO / "images/packer/gcp/foresight.pkr.hcl").read_text()

    def default(name: str) -> str:
        match = re.search(rf'variable "{name}" {{\s*type\s*=\s*string\s*default\s*=\s*"([^"]+)"', packer)
        assert match, name
        return match[1]

    assert (default("source_image_family"), default("source_image_project")) == (IMAGE_FAMILY, IMAGE_PROJECT)
    assert default("machine_type") == DEFAULT_INSTANCE_TYPES[Cloud.GCP]
    assert re.search(rf'image_family\s*=\s*"{template.LISTING_FAMILY}"', packer)
    assert re.search(rf"disk_size\s*=\s*{BOOT_DISK_GB}\b", packer) and f'"{DISK_TYPE}"' in packer


# --- nothing open, nothing secret -----------------------------------------------------------------------------


def test_service_ports_only_from_the_allowed_cidr_which_has_no_default(parsed: dict[str, dict[str, Any]]) -> None:
    (allowed,) = [v["allowed_cidr"] for v in parsed["variables.tf"]["variable"] if "allowed_cidr" in v]
    assert "default" not in allowed
    rules = {
        name: r
        for block in parsed["main.tf"]["resource"]
        for kind, named in block.items()
        if kind == "google_compute_firewall"
        for name, r in named.items()
    }
    assert set(rules) == {"service_in", "ssh_in", "https_out", "deny_out"}
    for rule in rules.values():
        assert rule["target_service_accounts"] == ["${google_service_account.node.email}"]
    for name in ("service_in", "ssh_in"):
        assert rules[name]["source_ranges"] == ["${var.allowed_cidr}"] and rules[name]["direction"] == "INGRESS"
    assert rules["service_in"]["allow"] == [{"protocol": "tcp", "ports": [str(p) for p in SERVICE_PORTS]}]
    assert rules["ssh_in"]["allow"] == [{"protocol": "tcp", "ports": [str(SSH_PORT)]}]
    assert rules["https_out"]["allow"] == [{"protocol": "tcp", "ports": ["443"]}]
    assert rules["deny_out"]["deny"] == [{"protocol": "all"}] and rules["deny_out"]["priority"] > 1000


def test_no_file_holds_a_secret(files: dict[str, str]) -> None:
    for name, text in files.items():
        for needle in (r"PRIVATE KEY", r"fsk_[a-z2-7]{12}_", r"(?i)password\s*[:=]", r"\bAIza[0-9A-Za-z_-]{35}\b"):
            assert not re.search(needle, text), (name, needle)


def test_metadata_describes_exactly_the_modules_interface(files: dict[str, str], parsed: dict[str, Any]) -> None:
    declared = {name: v for block in parsed["variables.tf"]["variable"] for name, v in block.items()}
    spec = yaml.safe_load(files["metadata.yaml"])["spec"]
    variables = {v["name"]: v for v in spec["interfaces"]["variables"]}
    assert set(variables) == set(declared)
    for name, variable in variables.items():
        assert variable.get("required", False) == ("default" not in declared[name]), name
        assert variable.get("defaultValue") == declared[name].get("default"), name
    outputs = {name for block in parsed["outputs.tf"]["output"] for name in block}
    assert {o["name"] for o in spec["interfaces"]["outputs"]} == outputs
    assert spec["info"]["version"] == "9.9.9" and spec["info"]["actuationTool"]["flavor"] == "Terraform"
    ui = yaml.safe_load(files["metadata.display.yaml"])["spec"]["ui"]
    assert set(ui["input"]["variables"]) == set(declared)
    sections = {s["name"] for s in ui["input"]["sections"]}
    assert {v.get("section") for v in ui["input"]["variables"].values()} - {None} == sections
    assert set(ui["runtime"]["outputs"]) <= outputs
    assert ui["input"]["variables"]["project_id"]["invisible"] is True


def test_package_writes_every_file(files: dict[str, str], tmp_path: Path) -> None:
    out = template.package(tmp_path / "gcp", "9.9.9")
    assert {p.name: p.read_text() for p in out.iterdir()} == files


# --- first boot, for real, against a FAKE metadata server and Secret Manager ----------------------------------


@dataclass
class FakeGoogle:
    """The metadata server and Secret Manager's addVersion as their references describe them (no Google Cloud
    here): the metadata server wants `Metadata-Flavor: Google` and refuses proxied requests (X-Forwarded-For);
    addVersion wants the bearer token and a JSON `payload.data` in base64, checks `dataCrc32c` when given, and
    answers 403 `refusals` times first, as while an IAM grant propagates."""

    refusals: int = 1
    token: str = "ya29.fake-access-token"
    versions: dict[str, list[bytes]] = field(default_factory=lambda: {SAMPLE["secret"]: []})

    def metadata(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        if headers.get("metadata-flavor") != "Google" or "x-forwarded-for" in headers:
            return 403, "Missing Metadata-Flavor:Google header."
        values = {
            "instance/service-accounts/default/token": json.dumps(
                {"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"}
            ),
            "instance/network-interfaces/0/ip": PRIVATE_IP,
            "instance/network-interfaces/0/access-configs/0/external-ip": SAMPLE["public_ip"],
        }
        found = values.get(path.removeprefix("/computeMetadata/v1/"))
        return (200, found) if found is not None else (404, "Not Found")

    def add_version(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        def error(code: int, status: str, message: str) -> tuple[int, str]:
            return code, json.dumps({"error": {"code": code, "message": message, "status": status}})

        match = re.fullmatch(r"/v1/(projects/[^/]+/secrets/[^/:]+):addVersion", path)
        if method != "POST" or match is None:
            return error(404, "NOT_FOUND", "Method not found.")
        if headers.get("authorization") != f"Bearer {self.token}":
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if self.refusals > 0:
            self.refusals -= 1
            return error(403, "PERMISSION_DENIED", "Permission 'secretmanager.versions.add' denied")
        if match[1] not in self.versions:
            return error(404, "NOT_FOUND", f"Secret [{match[1]}] not found or has no versions.")
        payload = json.loads(body)["payload"]
        data = base64.b64decode(payload["data"])
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != crc32c(data):
            return error(400, "INVALID_ARGUMENT", "Checksum mismatch")
        self.versions[match[1]].append(data)
        number = len(self.versions[match[1]])
        return 200, json.dumps(
            {
                "name": f"{match[1]}/versions/{number}",
                "state": "ENABLED",
                "clientSpecifiedPayloadChecksum": "dataCrc32c" in payload,
            }
        )


@dataclass
class Endpoints:
    fake: FakeGoogle
    metadata: str
    secret_manager: str
    ca_file: Path


@pytest.fixture
def google(tmp_path: Path) -> Iterator[Endpoints]:
    """The fake metadata server on plain HTTP (as Google's) and Secret Manager on HTTPS with a test CA."""
    ca = CertificateAuthority.create(common_name="fake Secret Manager CA")
    issued = ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    issued.write(tmp_path / "sm.crt", tmp_path / "sm.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    fake = FakeGoogle()

    def metadata(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        return fake.metadata(path, {k.lower(): v for k, v in headers.items()})

    def secrets(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        return fake.add_version(method, path, {k.lower(): v for k, v in headers.items()}, body)

    tls = (tmp_path / "sm.crt", tmp_path / "sm.key")
    with http_server(metadata) as metadata_url, http_server(secrets, tls=tls, host="localhost") as secrets_url:
        yield Endpoints(fake, metadata_url, secrets_url, tmp_path / "ca.pem")


def run_first_boot(out: Path, google: Endpoints, secret: str) -> subprocess.CompletedProcess[str]:
    """The module as first_boot.sh runs it, with a local keyring beside `out` as the KMS foresight.env names."""
    env = {
        "PATH": "/usr/bin:/bin",
        "FORESIGHT_METADATA_ENDPOINT": google.metadata,
        "FORESIGHT_SECRET_MANAGER_ENDPOINT": google.secret_manager,
        "SSL_CERT_FILE": str(google.ca_file),
        "FORESIGHT_KMS_PROVIDER": "local",
        "FORESIGHT_KMS_KEY_ID": str(out.parent / KEYRING),
    }
    argv = [
        sys.executable,
        "-m",
        "marketplace.gcp.first_boot",
        "--out",
        str(out),
        "--tenant",
        "acme",
        "--secret",
        secret,
        "--public-ip",
        SAMPLE["public_ip"],
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_first_boot_mints_a_key_the_service_accepts(google: Endpoints, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    out.mkdir()
    result = run_first_boot(out, google, SAMPLE["secret"])

    assert result.returncode == 0, result.stderr
    assert google.fake.refusals == 0  # the 403 of a propagating grant was retried
    (written,) = google.fake.versions[SAMPLE["secret"]]
    document = json.loads(written)
    principal = FileKeySource(out / "tenants.json").authenticate(document["api_key"])
    assert principal is not None and principal.tenant == "acme" == document["tenant"]
    assert principal.key_id == document["key_id"] and "admin" in principal.scopes
    assert document["api_key"] not in (out / "tenants.json").read_text()
    assert document["api_key"] not in result.stdout + result.stderr
    assert document["host"] == SAMPLE["public_ip"] and document["ca_certificate"] == (out / "ca.crt").read_text()
    assert (out / "tls.key").stat().st_mode & 0o077 == 0
    assert_tls_serves(out, host=SAMPLE["public_ip"])
    sans = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)} == {SAMPLE["public_ip"], PRIVATE_IP}
    assert_ca_key_sealed(out, local_cipher(tmp_path / KEYRING))
    assert_scrape_token_minted(out, document, result.stdout + result.stderr)


def test_first_boot_writes_nothing_when_the_secret_cannot_be_added_to(google: Endpoints, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    out.mkdir()
    result = run_first_boot(out, google, "projects/acme-prod/secrets/no-such-secret")
    assert result.returncode == 1 and "HTTP 404" in result.stderr
    assert list(out.iterdir()) == []


def test_first_boot_talks_to_secret_manager_over_https_only() -> None:
    assert SECRET_MANAGER_ENDPOINT.startswith("https://")


def test_first_boot_imports_only_what_the_service_image_has() -> None:
    """It runs inside the service image, which has no Pulumi SDK or stacks/, and needs no Google SDK."""
    probe = (
        "import sys, marketplace.gcp.first_boot; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pulumi', 'pulumi_gcp', 'stacks', 'google')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_blueprint_roles_cover_every_service_the_module_uses(files: dict[str, str]) -> None:
    used = set(re.findall(r'resource "google_(compute|kms|secret_manager|service_account)', files["main.tf"]))
    services = {"compute": "compute", "kms": "cloudkms", "secret_manager": "secretmanager", "service_account": "iam"}
    assert {f"{services[u]}.googleapis.com" for u in used} == set(blueprint.SERVICES)


def test_terraform_ships_the_audit_trail_to_the_audit_bucket_in_the_stacks_layout(
    harness: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def shipped_to(**values: str) -> str:
        return staged_environment(user_data(harness, **values))["FORESIGHT_AUDIT_SHIP_URL"]

    assert shipped_to() == ""  # no bucket: nothing shipped
    url = shipped_to(audit_bucket="acme_audit")
    stack_url = stack_spec().model_copy(update={"audit_bucket": "acme_audit"}).audit_ship_url
    assert url == "gs://acme_audit/foresight/foresight-1"  # the stacks' layout, the deployment's name for the stack's
    assert stack_url == "gs://acme_audit/foresight/foresight-test"
    monkeypatch.setenv("FORESIGHT_AUDIT_SHIP_URL", url)
    assert Settings().audit_ship_url == url


def test_the_audit_buckets_grant_is_an_output_not_a_resource(parsed: dict[str, dict[str, Any]]) -> None:
    command = next(o["grant_audit_bucket_command"]["value"] for o in parsed["outputs.tf"]["output"]
                   if "grant_audit_bucket_command" in o)
    assert all(role in command for role in AUDIT_ROLES) and "add-iam-policy-binding gs://${var.audit_bucket}" in command
    assert not [r for r in parsed["main.tf"]["resource"] if "google_storage_bucket_iam_member" in r]  # not ours


def test_the_origin_grant_command_gives_the_nodes_account_the_stacks_read_role_on_each_bucket(
    files: dict[str, str], tmp_path: Path
) -> None:
    account = "fs-node@acme-cache.iam.gserviceaccount.com"  # what google_service_account.node.email would be
    (tmp_path / "variables.tf").write_text(files["variables.tf"])
    expression = template.Expr(template.grant_origin_read_command(json.dumps(account)))
    output = template.Block("output", ("command",), [("value", expression)])
    (tmp_path / "command.tf").write_text(template.hcl([output]))
    assert terraform(tmp_path, "init", "-input=false", "-backend=false").returncode == 0
    assert apply(tmp_path)["command"] == ""  # no origin buckets: nothing to run
    command = apply(tmp_path, origin_buckets='["acme-products", "media.acme.example"]')["command"]
    assert command.split(" && ") == [
        f"gcloud storage buckets add-iam-policy-binding gs://{bucket} --member=serviceAccount:{account} "
        f"--role={ORIGIN_ROLE}" for bucket in ("acme-products", "media.acme.example")]
    outputs = {name: value for name, _, value in template.outputs()}
    assert outputs["grant_origin_buckets_command"] == template.grant_origin_read_command(template._NODE)
