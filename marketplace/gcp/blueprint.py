"""What Cloud Marketplace reads beside the Terraform: `metadata.yaml` and `metadata.display.yaml` (BlueprintMetadata,
the Cloud Foundation Toolkit's blueprint format that the producer portal takes for a VM solution) and
`marketplace_test.tfvars` (the values its test deployment uses).

Both metadata files are derived from the module's own variables and outputs (`template.py`), so neither can
name a variable the module lacks; only the form's titles, sections and pickers are written here.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import yaml
from annotated_types import Ge, Le

from marketplace.launch import CIDR_PATTERN
from service.tenancy import TENANT_NAME_PATTERN
from stacks.spec import SERVICE_PORTS, StackSpec

API_VERSION = "blueprints.cloud.google.com/v1alpha1"
KIND = "BlueprintMetadata"
NAME = "foresight-vm"
SOURCE_REPO = "https://github.com/foresight/foresight"
SOURCE_DIR = "/marketplace/gcp"
# What the deploying identity needs in the project (Infrastructure Manager's service account, or a person).
DEPLOYER_ROLES = (
    "roles/cloudkms.admin",
    "roles/compute.admin",
    "roles/iam.serviceAccountAdmin",
    "roles/iam.serviceAccountUser",
    "roles/secretmanager.admin",
)
SERVICES = (
    "cloudkms.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "secretmanager.googleapis.com",
)
# The test deployment's values: placeholders the portal replaces (its project, the listed image), and TEST-NET-3,
# a range nobody routes to, as the only client range.
TEST_VALUES = {
    "project_id": "your-project-id",
    "goog_cm_deployment_name": "foresight-test",
    "image": None,
    "allowed_cidr": "203.0.113.0/24",
}
SECTIONS = [
    ("node", "Node", "The GPU machine, its zone and its encrypted data disk"),
    ("access", "Access", "Who may reach the node"),
    ("service", "Service", "The first tenant and who may read its API key"),
]


def _display() -> dict[str, dict[str, Any]]:
    """The form's entry for each variable: title, section, and the console's own pickers where one fits."""
    volume = StackSpec.model_fields["volume_size_gb"].metadata
    ports = ", ".join(map(str, SERVICE_PORTS))
    return {
        "project_id": {"title": "Project", "invisible": True},
        "goog_cm_deployment_name": {"title": "Deployment name", "invisible": True},
        "image": {"title": "Image", "invisible": True, "xGoogleProperty": {"type": "ET_GCE_DISK_IMAGE"}},
        "zone": {"title": "Zone", "section": "node", "xGoogleProperty": {"type": "ET_GCE_ZONE"}},
        "machine_type": {
            "title": "GPU machine type",
            "section": "node",
            "tooltip": "G2 (NVIDIA L4), A2 (A100) or A3 (H100); the zone must offer it and your GPU quota allow it",
            "xGoogleProperty": {
                "type": "ET_GCE_MACHINE_TYPE",
                "zoneProperty": "zone",
                "gceMachineType": {"minCpu": 4, "minRamGb": 16, "disallowCustomMachineTypes": True},
            },
        },
        "data_disk_size_gb": {
            "title": "Data disk size (GB)",
            "section": "node",
            "min": next(m.ge for m in volume if isinstance(m, Ge)),
            "max": next(m.le for m in volume if isinstance(m, Le)),
        },
        "allowed_cidr": {
            "title": "Allowed client CIDR",
            "section": "access",
            "tooltip": f"The only IPv4 range that may reach ports {ports}, and SSH if you give a key",
            "placeholder": "203.0.113.0/24",
            "regexValidation": CIDR_PATTERN,
            "validation": "An IPv4 CIDR such as 203.0.113.0/24",
        },
        "ssh_public_key": {
            "title": "SSH public key (optional)",
            "section": "access",
            "tooltip": "Empty: no SSH (sshd off, port 22 closed). Never open to 0.0.0.0/0",
        },
        "tenant_name": {
            "title": "First tenant",
            "section": "service",
            "regexValidation": TENANT_NAME_PATTERN,
            "validation": "A DNS label: lowercase letters, digits and '-'",
        },
        "api_key_readers": {
            "title": "Who may read the API key",
            "section": "service",
            "tooltip": "user:<email>, group:<email> or serviceAccount:<email>; project owners can already",
        },
        "audit_bucket": {
            "title": "Audit trail bucket (optional)",
            "section": "service",
            "tooltip": "An existing bucket's name; after deploying, run the grant_audit_bucket_command output",
        },
        "origin_buckets": {
            "title": "Origin buckets (optional)",
            "section": "service",
            "tooltip": "Existing buckets' names; after deploying, run the grant_origin_buckets_command output",
        },
    }


def _header(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "annotations": {"config.kubernetes.io/local-config": "true"}},
    }


def _source() -> dict[str, str]:
    return {"repo": SOURCE_REPO, "sourceType": "git", "dir": SOURCE_DIR}


def metadata(
    variables: Sequence[Any], outputs: Sequence[tuple[str, str, str]], version: str, terraform_version: str
) -> dict[str, Any]:
    """metadata.yaml: what the module is, its variables and outputs, and what deploying it requires."""
    declared = []
    for variable in variables:
        entry = {"name": variable.name, "description": variable.description, "varType": variable.type}
        if variable.default is None:
            entry["required"] = True
        else:
            entry["defaultValue"] = variable.default
        declared.append(entry)
    info = {
        "title": "Foresight: a Redis-compatible GPU cache with a learned prefetcher",
        "source": _source(),
        "version": version,
        "actuationTool": {"flavor": "Terraform", "version": terraform_version},
        "description": {
            "tagline": "A Redis-compatible multi-tenant cache on one GPU VM, over TLS only",
            "detailed": "One Compute Engine GPU VM in its own VPC, disks and secret encrypted with a Cloud KMS key "
            "of this deployment; the first API key is written to a Secret Manager secret at first boot.",
        },
        "softwareGroups": [{"type": "SG_OS", "software": [{"title": "Ubuntu", "version": "22.04"}]}],
    }
    return {
        **_header(NAME),
        "spec": {
            "info": info,
            "content": {},
            "interfaces": {
                "variables": declared,
                "outputs": [{"name": name, "description": text} for name, text, _ in outputs],
            },
            "requirements": {
                "roles": [{"level": "Project", "roles": list(DEPLOYER_ROLES)}],
                "services": list(SERVICES),
            },
        },
    }


def display(variables: Sequence[Any]) -> dict[str, Any]:
    """metadata.display.yaml: the deployment form and what the console shows once it is done."""
    entries = _display()
    form = {v.name: {"name": v.name, **entries[v.name]} for v in variables}
    return {
        **_header(f"{NAME}-display"),
        "spec": {
            "info": {"title": "Foresight GPU cache", "source": _source()},
            "ui": {
                "input": {
                    "variables": form,
                    "sections": [{"name": n, "title": t, "tooltip": tip} for n, t, tip in SECTIONS],
                },
                "runtime": {
                    "outputMessage": "The node mints its certificate and first API key a few minutes after the "
                    "deployment completes.",
                    "suggestedActions": [
                        {
                            "heading": "Read the API key and the CA certificate",
                            "description": "Run the get_api_key_command output in Cloud Shell; save "
                            "ca_certificate as ca.pem, then: redis-cli --tls --cacert ca.pem -h <external_ip> "
                            "-p 6380 and AUTH <api_key>.",
                        }
                    ],
                    "outputs": {
                        "get_api_key_command": {"showInNotification": True},
                        "resp_endpoint": {"showInNotification": True},
                        "https_endpoint": {"openInNewTab": True},
                    },
                },
            },
        },
    }


def test_tfvars(variables: Sequence[Any]) -> str:
    """marketplace_test.tfvars: every variable without a default, and the image (the portal's own checks)."""
    defaults = {v.name: v.default for v in variables}
    values = {name: defaults[name] if value is None else value for name, value in TEST_VALUES.items()}
    width = max(map(len, values))
    return "".join(f'{name.ljust(width)} = "{value}"\n' for name, value in values.items())


def _yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, width=120)


def render(
    variables: Sequence[Any], outputs: Sequence[tuple[str, str, str]], version: str | None, terraform_version: str
) -> dict[str, str]:
    version = version or importlib.metadata.version("foresight")
    return {
        "metadata.yaml": _yaml(metadata(variables, outputs, version, terraform_version)),
        "metadata.display.yaml": _yaml(display(variables)),
        "marketplace_test.tfvars": test_tfvars(variables),
    }
