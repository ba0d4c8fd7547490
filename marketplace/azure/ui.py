"""The Azure portal's form for the managed application (`createUiDefinition.json`): every mainTemplate
parameter is one output, and each output one parameter (a test holds the two to that, both ways)."""

from __future__ import annotations

import re
from typing import Any

from marketplace.azure.offer import IMAGE, VM_SIZES
from marketplace.launch import CIDR_PATTERN, GUID_PATTERN
from service.tenancy import TENANT_NAME_PATTERN
from stacks.azure.network import WORLD
from stacks.spec import BUCKET_PATTERNS, DEFAULT_INSTANCE_TYPES, SERVICE_PORTS, SSH_KEY_TYPES, Cloud, StackSpec


def _text_box(name: str, label: str, tool_tip: str, regex: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "Microsoft.Common.TextBox",
        "label": label,
        "toolTip": tool_tip,
        "constraints": {"required": True, "regex": regex, "validationMessage": message},
        "visible": True,
        **extra,
    }


def create_ui_definition() -> dict[str, Any]:
    """The portal's form: every mainTemplate parameter is one output, and each output one parameter."""
    volume = StackSpec.model_fields["volume_size_gb"]
    limits = {type(m).__name__: m for m in volume.metadata}
    ssh_key_regex = rf"^$|^({'|'.join(re.escape(kind) for kind in SSH_KEY_TYPES)}) [A-Za-z0-9+/=]+( [^\n]*)?$"
    container = BUCKET_PATTERNS[Cloud.AZURE].pattern.replace("(?P<account>", "(").replace(
        "(?P<container>", "(").removeprefix("^").removesuffix("$")  # the portal's regexes are JavaScript's: no names
    audit_regex = f"^$|^{container}$"
    origins_regex = f"^$|^{container}(,{container})*$"
    basics = [
        {
            "name": "adminUsername",
            "type": "Microsoft.Compute.UserNameTextBox",
            "label": "VM user name",
            "toolTip": "The login user for SSH (there is never a password)",
            "osPlatform": "Linux",
            "constraints": {"required": True},
            "visible": True,
        },
        {
            **_text_box(
                "sshPublicKey",
                "SSH public key (optional)",
                "One OpenSSH public key line; empty turns SSH off on the VM",
                ssh_key_regex,
                "One OpenSSH public key line (ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa), or nothing",
                multiLine=True,
            ),
            "constraints": {
                "required": False,
                "regex": ssh_key_regex,
                "validationMessage": "One OpenSSH public key line, or nothing",
            },
        },
    ]
    network = [
        _text_box(
            "allowedCidr",
            "Allowed client range",
            f"The only IPv4 range (CIDR) that may reach ports {', '.join(map(str, SERVICE_PORTS))}, and SSH "
            f"when a key is given (never from {WORLD}). A public range may also read the API key from the Key "
            f"Vault; Key Vault's firewall takes no private range (10/8, 172.16/12, 192.168/16)",
            CIDR_PATTERN,
            "An IPv4 CIDR such as 203.0.113.0/24",
        )
    ]
    node = [
        {
            "name": "vmSize",
            "type": "Microsoft.Compute.SizeSelector",
            "label": "GPU size",
            "toolTip": "An NVIDIA GPU size the Foresight image supports",
            "recommendedSizes": [DEFAULT_INSTANCE_TYPES[Cloud.AZURE]],
            "constraints": {"allowedSizes": list(VM_SIZES)},
            "osPlatform": "Linux",
            "imageReference": dict(IMAGE),
            "count": 1,
            "visible": True,
        },
        {
            "name": "dataDiskSizeGb",
            "type": "Microsoft.Common.Slider",
            "label": "Data disk size",
            "subLabel": "GiB",
            "toolTip": "The encrypted data disk (snapshots, audit log)",
            "min": limits["Ge"].ge,
            "max": limits["Le"].le,
            "defaultValue": volume.default,
            "showStepMarkers": False,
            "constraints": {"required": True},
            "visible": True,
        },
    ]
    service = [
        _text_box(
            "tenantName",
            "First tenant",
            "The tenant whose API key the VM creates",
            TENANT_NAME_PATTERN,
            "A DNS label: lowercase letters, digits and '-'",
            defaultValue="default",
        ),
        _text_box(
            "keyReaderObjectId",
            "Who may read the API key",
            "Object id of the Entra ID user or group given read access to the API key secret "
            "(yours: az ad signed-in-user show --query id --output tsv)",
            GUID_PATTERN,
            "An object id (a GUID)",
        ),
        {
            **_text_box(
                "auditContainerId",
                "Audit trail container (optional)",
                "Resource id of an existing blob container that receives the audit trail; after deploying, run the "
                "grantAuditContainerCommand output. Empty keeps the trail on the VM only",
                audit_regex,
                "A blob container's resource id (/subscriptions/.../containers/<name>), or nothing",
            ),
            "constraints": {"required": False, "regex": audit_regex,
                            "validationMessage": "A blob container's resource id, or nothing"},
        },
        {
            **_text_box(
                "originContainerIds",
                "Origin containers (optional)",
                "Resource ids of existing blob containers the tenants' origins live in, separated by commas; after "
                "deploying, run the grantOriginContainersCommand output",
                origins_regex,
                "Blob containers' resource ids separated by commas, or nothing",
            ),
            "constraints": {"required": False, "regex": origins_regex,
                            "validationMessage": "Blob containers' resource ids separated by commas, or nothing"},
        },
    ]

    def step(name: str, label: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "subLabel": {"preValidation": f"Configure the {label.lower()}", "postValidation": "Done"},
            "bladeTitle": label,
            "elements": elements,
        }

    steps = [step("network", "Network", network), step("node", "Node", node), step("service", "Service", service)]
    outputs = {"location": "[location()]"}
    outputs |= {element["name"]: f"[basics('{element['name']}')]" for element in basics}
    for each in steps:
        outputs |= {element["name"]: f"[steps('{each['name']}').{element['name']}]" for element in each["elements"]}
    return {
        "$schema": "https://schema.management.azure.com/schemas/0.1.2-preview/CreateUIDefinition.MultiVm.json#",
        "handler": "Microsoft.Azure.CreateUIDef",
        "version": "0.1.2-preview",
        "parameters": {"basics": basics, "steps": steps, "outputs": outputs},
    }
