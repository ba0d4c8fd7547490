"""The Azure Marketplace managed application: checkov passes it (but for three findings we accept, each with its
reason), it keeps our encoding of arm-ttk's blocking rules (not arm-ttk itself, which needs PowerShell), it cannot
drift from the Azure stack, it opens nothing to the world by default, and its first boot mints a key that the
service's own key source accepts."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import random
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from cryptography import x509

from marketplace.azure import template
from marketplace.azure.offer import USAGE_ATTRIBUTION_ID
from marketplace.launch import SERVICE_IDS, STAGED_ENV_FILE
from service.config import Settings
from service.security.local_ca import CertificateAuthority
from service.tenancy import FileKeySource
from stacks.azure.compute import (
    DATA_DISK_LUN,
    DATA_DISK_PATH,
    GPU_SERIES,
    IMAGE,
    NO_LOGIN_KEY,
    OS_DISK_GB,
    check_instance_types,
    gpu_series,
)
from stacks.azure.identity import BLOB_DATA_CONTRIBUTOR, BLOB_DATA_READER
from stacks.azure.kms import CRYPTO_SERVICE_ENCRYPTION_USER, EXPIRE_AFTER, KEY_SIZE, ROTATE_AFTER
from stacks.spec import DEFAULT_INSTANCE_TYPES, SERVICE_PORTS, Cloud, StackSpec
from tests.images.tools import require_tool, run_checkov
from tests.marketplace.ca_key import KEYRING, assert_ca_key_sealed, local_cipher
from tests.marketplace.cloud_config import unit_commands
from tests.marketplace.metrics_token import assert_scrape_token_minted
from tests.servers import http_server
from tests.tlsutil import assert_tls_serves

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {
    "KeyUri": "https://fsabc123.vault.azure.net/keys/foresight",
    "ClientId": "11111111-2222-3333-4444-555555555555",
    "SecretUri": "https://fsabc123.vault.azure.net/secrets/foresight-api-key",
    "Audience": "https://vault.azure.net",
    "Tenant": "default",
    "PublicIp": "198.51.100.7",
    "DnsName": "foresight-abc123.westeurope.cloudapp.azure.com",
    "PrivateIp": "10.42.0.4",
    "SshOff": "systemctl disable --now ssh.socket ssh.service || true",
    "AuditShipUrl": "",
}
# checkov findings we accept, and why (docs/marketplace-azure.md says the same).
ACCEPTED_CHECKOV = {
    "CKV_AZURE_112": "HSM-backed keys need a Premium vault; the stack's key is a software RSA 3072 key",
    "CKV_AZURE_97": "encryption at host needs a subscription feature the buyer may not have registered",
    "CKV_AZURE_151": "the same check for VMs (named Windows); the disks use the customer-managed key already",
}
# arm-ttk's "apiVersions Should Be Recent": the newest GA version, or under 730 days old. Age is measured from
# the day API_VERSIONS was last checked against azure-rest-api-specs, not from today, so the result depends only on
# the code. Bumping REVIEWED (after updating API_VERSIONS and the set below) is the periodic review.
REVIEWED = dt.date(2026, 11, 27)
# These types' newest GA versions when reviewed are older than 730 days.
NEWEST_GA_WHEN_REVIEWED = {
    ("Microsoft.Authorization/roleAssignments", "2022-04-01"),
    ("Microsoft.ManagedIdentity/userAssignedIdentities", "2024-11-30"),
}
# Hosts of Azure's cloud environments (arm-ttk's AllEnvironments cache): never literal in a template.
AZURE_HOSTS = (
    "management.azure.com",
    "management.core.windows.net",
    "login.microsoftonline.com",
    "graph.windows.net",
    "graph.microsoft.com",
    "vault.azure.net",
    "core.windows.net",
    "database.windows.net",
    "azuredatalakestore.net",
    "azuredatalakeanalytics.net",
    "batch.core.windows.net",
    "gallery.azure.com",
    "portal.azure.com",
    "servicebus.windows.net",
    "azurecr.io",
    "usgovcloudapi.net",
    "chinacloudapi.cn",
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    return template.render("9.9.9")


@pytest.fixture(scope="module")
def main(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return rendered["mainTemplate.json"]


@pytest.fixture(scope="module")
def ui(rendered: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return rendered["createUiDefinition.json"]


def resources(main: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in main["resources"] if r["type"] == kind]


def vm(main: dict[str, Any]) -> dict[str, Any]:
    (machine,) = resources(main, "Microsoft.Compute/virtualMachines")
    return machine


def custom_data(main: dict[str, Any], has_ssh_key: bool = False) -> str:
    """The VM's custom data the way ARM would compute it, with SAMPLE's values."""
    expression = vm(main)["properties"]["osProfile"]["customData"]
    _, names = template.custom_data_format()
    values = template.custom_data_values()
    assert expression == f"[base64(format(variables('cloudConfig'), {', '.join(values[n] for n in names)}))]"
    sample = {**SAMPLE, "SshOff": "true" if has_ssh_key else SAMPLE["SshOff"]}
    return str(main["variables"]["cloudConfig"].format(*(sample[name] for name in names)))


def all_elements(ui: dict[str, Any]) -> list[dict[str, Any]]:
    steps = ui["parameters"]["steps"]
    return [*ui["parameters"]["basics"], *(element for step in steps for element in step["elements"])]


# --- the real validator ---------------------------------------------------------------------------------------


def test_checkov_fails_only_the_accepted_checks(main: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "mainTemplate.json"
    path.write_text(json.dumps(main, indent=2))
    report = run_checkov(path, "arm")
    summary = report["summary"]
    failed = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert failed == set(ACCEPTED_CHECKOV), json.dumps(report["results"]["failed_checks"], indent=1)
    assert summary["failed"] == len(ACCEPTED_CHECKOV) and summary["skipped"] == 0 == summary["parsing_errors"]
    assert summary["resource_count"] == len(main["resources"]), summary
    assert summary["passed"] >= 30, summary  # the checks really ran


# --- our encoding of arm-ttk's blocking rules (named as arm-ttk names them) -------------------------------------


def test_location_should_not_be_hardcoded(main: dict[str, Any]) -> None:
    location = main["parameters"]["location"]
    assert location == {**location, "type": "string", "defaultValue": "[resourceGroup().location]"}
    outside_parameters = json.dumps({k: v for k, v in main.items() if k != "parameters"})
    assert not re.search(r"(resourceGroup|deployment)\(\)\.location", outside_parameters, re.IGNORECASE)
    for resource in main["resources"]:
        assert resource.get("location", "[parameters('location')]") == "[parameters('location')]", resource["name"]


def test_resources_should_have_location(main: dict[str, Any]) -> None:
    unlocated = {"Microsoft.Resources/deployments", "Microsoft.Authorization/roleAssignments"}
    for resource in main["resources"]:
        top_level = resource["type"].count("/") == 1 and resource["type"] not in unlocated
        assert ("location" in resource) == top_level, resource["name"]


def test_apiversions_should_be_recent(main: dict[str, Any]) -> None:
    for resource in main["resources"]:
        version = resource["apiVersion"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", version), f"{resource['type']}: {version} is not a GA date"
        age = (REVIEWED - dt.date.fromisoformat(version)).days
        newest = (resource["type"], version) in NEWEST_GA_WHEN_REVIEWED
        assert age <= 730 or newest, f"{resource['type']} {version} was {age} days old on {REVIEWED}"


def test_secure_string_parameters_cannot_have_default(main: dict[str, Any]) -> None:
    for name, parameter in main["parameters"].items():
        if parameter["type"].lower() in ("securestring", "secureobject"):
            assert "defaultValue" not in parameter, name


def test_outputs_must_not_contain_secrets(main: dict[str, Any]) -> None:
    secure = [n for n, p in main["parameters"].items() if p["type"].lower() in ("securestring", "secureobject")]
    for name, output in main["outputs"].items():
        text = json.dumps(output)
        assert not re.search(r"\s*\[.*?\W*list\w+\s*\(", text) and "password" not in name.lower(), name
        assert not any(re.search(rf"parameters\s*\(\s*'{p}'", text) for p in secure), name
        assert "fsk_" not in text and "PRIVATE KEY" not in text


def test_parameters_must_be_referenced(main: dict[str, Any]) -> None:
    body = json.dumps({k: v for k, v in main.items() if k != "parameters"})
    for name in main["parameters"]:
        assert f"parameters('{name}')" in body, name


def test_variables_must_be_referenced(main: dict[str, Any]) -> None:
    body = json.dumps({k: v for k, v in main.items() if k != "variables"}) + json.dumps(main["variables"])
    for name in main["variables"]:
        assert f"variables('{name}')" in body, name


def test_createuidefinition_outputs_match_maintemplate_parameters(main: dict[str, Any], ui: dict[str, Any]) -> None:
    outputs = ui["parameters"]["outputs"]
    assert set(outputs) == set(main["parameters"])  # "Outputs Must Be Present In Template Parameters", both ways
    assert outputs["location"] == "[location()]"  # "Location Should Be In Outputs"
    names = {element["name"] for element in all_elements(ui)}
    for name, value in outputs.items():  # "Controls In Outputs Must Exist"
        match = re.fullmatch(r"\[(basics\('(\w+)'\)|steps\('(\w+)'\)\.(\w+)|location\(\))\]", value)
        assert match and (match[2] or match[4] or "location") in names | {"location"}, (name, value)


def test_deploymenttemplate_must_not_contain_hardcoded_uri(main: dict[str, Any]) -> None:
    text = json.dumps(main)
    for match in re.finditer("|".join(re.escape(host) for host in AZURE_HOSTS), text, re.IGNORECASE):
        assert text[: match.start()].endswith("https://schema."), f"hardcoded {match[0]}"


def test_managedidentityextension_must_not_be_used(main: dict[str, Any]) -> None:
    assert "ManagedIdentityExtension" not in json.dumps(main)
    assert not any(r["type"].endswith("/extensions") for r in main["resources"])


def test_vm_images_should_use_latest_version(main: dict[str, Any]) -> None:
    assert vm(main)["properties"]["storageProfile"]["imageReference"]["version"] == "latest"


def test_vm_size_should_be_a_parameter(main: dict[str, Any], ui: dict[str, Any]) -> None:
    assert vm(main)["properties"]["hardwareProfile"]["vmSize"] == "[parameters('vmSize')]"
    (selector,) = [e for e in all_elements(ui) if e["type"] == "Microsoft.Compute.SizeSelector"]
    assert (
        main["parameters"]["vmSize"]["defaultValue"] in selector["constraints"]["allowedSizes"]
    )  # "VMSizes Must Match Template"
    assert selector["constraints"]["allowedSizes"] == main["parameters"]["vmSize"]["allowedValues"]


def test_adminusername_should_not_be_a_literal(main: dict[str, Any], ui: dict[str, Any]) -> None:
    assert vm(main)["properties"]["osProfile"]["adminUsername"] == "[parameters('adminUsername')]"
    (user,) = [e for e in all_elements(ui) if e["type"] == "Microsoft.Compute.UserNameTextBox"]
    assert "defaultValue" not in user  # "Usernames Should Not Have A Default"


def test_password_boxes_must_have_min_length_because_there_are_none(main: dict[str, Any], ui: dict[str, Any]) -> None:
    assert not [
        e
        for e in all_elements(ui)
        if e["type"] in ("Microsoft.Common.PasswordBox", "Microsoft.Compute.CredentialsCombo")
    ]
    assert not [p for p in main["parameters"].values() if p["type"].lower() == "securestring"]


def test_ids_should_be_derived_from_resourceids(main: dict[str, Any]) -> None:
    allowed = re.compile(
        r"\s*\[\s*(extensionResourceId|resourceId|subscriptionResourceId|tenantResourceId|if|parameters|reference|variables|subscription|guid)\s*\("
    )
    exempt = {"tenantId", "clientId", "objectId", "keyId", "subscriptionId"}

    def walk(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for key, value in walk(main["resources"]):
        if key.lower().endswith("id") and key not in exempt and isinstance(value, str):
            assert allowed.match(value), (key, value)


def test_textboxes_are_well_formed_and_tooltips_present(ui: dict[str, Any]) -> None:
    assert ui["handler"] == "Microsoft.Azure.CreateUIDef" and ui["version"] == "0.1.2-preview"
    assert ui["$schema"].endswith("/0.1.2-preview/CreateUIDefinition.MultiVm.json#")
    for element in all_elements(ui):
        assert element["toolTip"], element["name"]
        if element["type"] == "Microsoft.Common.TextBox":
            constraints = element["constraints"]
            assert constraints["regex"] and constraints["validationMessage"], element["name"]


def _break(main: dict[str, Any], how: str) -> dict[str, Any]:
    broken: dict[str, Any] = json.loads(json.dumps(main))
    machine = next(r for r in broken["resources"] if r["type"] == "Microsoft.Compute/virtualMachines")
    if how == "location":
        machine["location"] = "westeurope"
    elif how == "api":
        machine["apiVersion"] = "2019-07-01"
    elif how == "size":
        machine["properties"]["hardwareProfile"]["vmSize"] = "Standard_NC4as_T4_v3"
    elif how == "image":
        machine["properties"]["storageProfile"]["imageReference"]["version"] = "1.0.0"
    elif how == "uri":
        broken["outputs"]["portal"] = {"type": "string", "value": "https://portal.azure.com/"}
    elif how == "parameter":
        broken["parameters"]["unused"] = {"type": "string", "defaultValue": ""}
    return broken


@pytest.mark.parametrize(
    ("how", "rule"),
    [
        ("location", test_location_should_not_be_hardcoded),
        ("api", test_apiversions_should_be_recent),
        ("image", test_vm_images_should_use_latest_version),
        ("uri", test_deploymenttemplate_must_not_contain_hardcoded_uri),
        ("parameter", test_parameters_must_be_referenced),
    ],
)
def test_our_arm_ttk_rules_catch_a_broken_template(main: dict[str, Any], how: str, rule: Any) -> None:
    rule(main)
    with pytest.raises(AssertionError):
        rule(_break(main, how))


def test_vm_size_rule_catches_a_literal_size(main: dict[str, Any], ui: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        test_vm_size_should_be_a_parameter(_break(main, "size"), ui)


# --- no drift from the Azure stack ----------------------------------------------------------------------------


def test_every_offered_size_is_one_the_stack_deploys(main: dict[str, Any]) -> None:
    offered = main["parameters"]["vmSize"]["allowedValues"]
    assert offered[0] == main["parameters"]["vmSize"]["defaultValue"] == DEFAULT_INSTANCE_TYPES[Cloud.AZURE]
    assert {gpu_series(size) for size in offered} == GPU_SERIES
    spec = StackSpec.model_validate(
        {
            "project": "foresight",
            "stack": "test",
            "cloud": "azure",
            "region": "westeurope",
            "allowedCidrs": ["203.0.113.0/24"],
            "vaultAddress": "https://vault.example.com:8200",
            "instanceType": offered[0],
            "fallbackInstanceTypes": offered[1:],
        }
    )
    check_instance_types(spec)  # raises ConfigError naming the first size the stack would refuse


def test_key_vault_key_and_disks_match_the_stack(main: dict[str, Any]) -> None:
    (vault,) = resources(main, "Microsoft.KeyVault/vaults")
    assert vault["properties"]["enableRbacAuthorization"] and vault["properties"]["enablePurgeProtection"]
    (key,) = resources(main, "Microsoft.KeyVault/vaults/keys")
    properties = key["properties"]
    assert (properties["kty"], properties["keySize"]) == ("RSA", KEY_SIZE)
    policy = properties["rotationPolicy"]
    assert policy["attributes"]["expiryTime"] == EXPIRE_AFTER
    assert policy["lifetimeActions"] == [{"action": {"type": "rotate"}, "trigger": {"timeAfterCreate": ROTATE_AFTER}}]
    storage = vm(main)["properties"]["storageProfile"]
    disk_set = "[resourceId('Microsoft.Compute/diskEncryptionSets', 'foresight-disks')]"
    disks = [storage["osDisk"], *storage["dataDisks"]]
    assert all(d["managedDisk"]["diskEncryptionSet"]["id"] == disk_set for d in disks)
    assert storage["osDisk"]["diskSizeGB"] == OS_DISK_GB and storage["dataDisks"][0]["lun"] == DATA_DISK_LUN
    (encryption_set,) = resources(main, "Microsoft.Compute/diskEncryptionSets")
    assert encryption_set["properties"]["rotationToLatestKeyVersionEnabled"] is True


def test_roles_are_the_stacks_on_the_key_and_secrets_roles_on_the_applications_vault(main: dict[str, Any]) -> None:
    grants = resources(main, "Microsoft.Authorization/roleAssignments")
    by_role = sorted((g["properties"]["roleDefinitionId"].split("'")[-2], g["scope"]) for g in grants)
    key_scope = "[format('Microsoft.KeyVault/vaults/{0}/keys/foresight', variables('vaultName'))]"
    vault_scope = "[format('Microsoft.KeyVault/vaults/{0}', variables('vaultName'))]"
    assert by_role == sorted([
        (CRYPTO_SERVICE_ENCRYPTION_USER, key_scope),  # the disk encryption set
        (CRYPTO_SERVICE_ENCRYPTION_USER, key_scope),  # the node: wrap and unwrap only
        (template.SECRETS_OFFICER, vault_scope),  # the node creates the secret: a role on it would need it first
        (template.SECRETS_USER, vault_scope),
    ])
    assert not resources(main, "Microsoft.Authorization/roleDefinitions")
    # The vault holds the key and, once first boot ran, the one secret: nothing else for these roles to reach.
    assert {r["type"] for r in main["resources"] if r["type"].startswith("Microsoft.KeyVault/vaults/")} == {
        "Microsoft.KeyVault/vaults/keys"
    }


def test_a_redeployment_cannot_put_a_placeholder_over_the_api_key(main: dict[str, Any]) -> None:
    """No secret resource: ARM would PUT its value as a new latest version on every deployment of the template,
    long after first boot wrote the key. First boot creates the secret where the template says it is."""
    assert not resources(main, "Microsoft.KeyVault/vaults/secrets")
    assert "pending" not in json.dumps(main)
    deployed = {"Microsoft.KeyVault/vaults/fsabc123": {"vaultUri": "https://fsabc123.vault.azure.net/"}}
    variables = {"vaultName": "fsabc123"}
    assert evaluate(f"[{template.custom_data_values()['SecretUri']}]", {}, variables, deployed) == SAMPLE["SecretUri"]
    for name in ("apiKeySecretUri", "getApiKeyCommand"):
        assert SAMPLE["SecretUri"] in evaluate(main["outputs"][name]["value"], {}, variables, deployed)


def test_marketplace_image_is_built_on_the_stacks_image() -> None:
    packer = (REPO / "images/packer/azure/foresight.pkr.hcl").read_text()
    for part in ("publisher", "offer", "sku"):
        default = re.search(rf'variable "image_{part}" {{\s*type\s*=\s*string\s*default\s*=\s*"([^"]+)"', packer)
        assert default and default[1] == IMAGE[part], part


def test_service_settings_pass_production_checks(main: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    document = yaml.safe_load(custom_data(main))
    staged = next(f for f in document["write_files"] if f["path"] == STAGED_ENV_FILE)["content"]
    environment = dict(line.split("=", 1) for line in staged.splitlines())
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.production_problems() == []
    assert (settings.kms_provider, settings.kms_key_id) == ("azure", SAMPLE["KeyUri"])
    assert environment["AZURE_CLIENT_ID"] == SAMPLE["ClientId"]


# --- nothing open, nothing secret -----------------------------------------------------------------------------


_ARM_TOKEN = re.compile(r"\s*(?:'((?:[^']|'')*)'|(\d+)|([A-Za-z_]\w*)|(\S))")


def evaluate(expression: str, parameters: dict[str, Any], variables: dict[str, Any], deployed: dict[str, Any]) -> Any:
    """An ARM expression's value, for the functions this template uses: parameters and variables as given, and
    `reference(resourceId(type, name))` as `deployed['type/name']`."""
    tokens = [m.groups() for m in _ARM_TOKEN.finditer(expression.removeprefix("[").removesuffix("]"))]
    position = 0
    functions: dict[str, Any] = {
        "parameters": lambda name: parameters[name],
        "variables": lambda name: evaluate(variables[name], parameters, variables, deployed)
        if isinstance(variables[name], str) and variables[name].startswith("[")
        else variables[name],
        "resourceId": lambda *parts: "/".join(parts),
        "reference": lambda resource: deployed[resource],
        "split": str.split, "int": int, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b, "div": lambda a, b: a // b, "min": min, "equals": lambda a, b: a == b,
        "or": lambda *a: any(a), "and": lambda *a: all(a), "not": lambda a: not a,
        "if": lambda condition, yes, no: yes if condition else no,
        "createArray": lambda *items: list(items),
        "createObject": lambda *kv: dict(zip(kv[::2], kv[1::2], strict=True)),
        "format": lambda text, *args: text.format(*args),
        "empty": lambda value: len(value) == 0, "concat": lambda *parts: "".join(parts),
        "replace": lambda text, old, new: text.replace(old, new),
        "environment": lambda: {"suffixes": {"storage": "core.windows.net"}},
        "resourceGroup": lambda: {"name": "mrg-foresight-1"},
    }

    def take(symbol: str | None = None) -> tuple[str | None, ...]:
        nonlocal position
        token = tokens[position]
        assert symbol is None or token[3] == symbol, (symbol, token, expression)
        position += 1
        return token

    def value() -> Any:
        string, number, name, _ = take()
        if string is not None:
            result: Any = string.replace("''", "'")
        elif number is not None:
            result = int(number)
        else:
            assert name in functions, f"{name} is not a function this evaluator knows"
            take("(")
            args = []
            while tokens[position][3] != ")":
                args.append(value())
                if tokens[position][3] == ",":
                    take(",")
            take(")")
            result = functions[name](*args)
        while position < len(tokens) and tokens[position][3] in (".", "["):
            if take()[3] == ".":
                result = result[take()[2]]
            else:
                result = result[value()]
                take("]")
        return result

    result = value()
    assert position == len(tokens), expression
    return result


def _is_public(cidr: str) -> bool:
    return not any(ipaddress.IPv4Network(cidr).overlaps(block) for block in template.PRIVATE_RANGES)


@pytest.mark.parametrize(
    ("cidr", "public"),
    [
        ("203.0.113.0/24", True), ("198.51.100.7/32", True), ("11.0.0.0/8", True), ("100.64.0.0/10", True),
        ("172.15.0.0/16", True), ("172.32.0.0/11", True), ("192.169.0.0/16", True),
        ("10.0.0.0/8", False), ("10.20.30.0/24", False), ("172.16.0.0/12", False), ("172.31.255.0/24", False),
        ("192.168.1.0/24", False),
        # Public addresses, but the range takes in a private one too.
        ("8.0.0.0/6", False), ("172.0.0.0/8", False), ("192.0.0.0/2", False), ("0.0.0.0/0", False),
    ],
)
def test_key_vault_admits_the_allowed_cidr_only_when_it_is_public(
    main: dict[str, Any], cidr: str, public: bool
) -> None:
    """Key Vault refuses an IP rule in a private (RFC 1918) range, and with it the whole deployment. The node's
    own address is always admitted."""
    (vault,) = resources(main, "Microsoft.KeyVault/vaults")
    node = "198.51.100.7"
    deployed = {"Microsoft.Network/publicIPAddresses/foresight-ip": {"ipAddress": node}}
    rules = evaluate(vault["properties"]["networkAcls"]["ipRules"], {"allowedCidr": cidr}, main["variables"], deployed)
    assert rules == [{"value": node}, *([{"value": cidr}] if public else [])]
    assert _is_public(cidr) is public


def test_key_vault_rule_agrees_with_ipaddress_on_any_range(main: dict[str, Any]) -> None:
    (vault,) = resources(main, "Microsoft.KeyVault/vaults")
    expression = vault["properties"]["networkAcls"]["ipRules"]
    deployed = {"Microsoft.Network/publicIPAddresses/foresight-ip": {"ipAddress": "198.51.100.7"}}
    generator = random.Random(1918)
    for _ in range(2000):
        prefix = generator.randint(0, 32)
        network = ipaddress.IPv4Network((generator.getrandbits(32), prefix), strict=False)
        cidr = str(network)
        rules = evaluate(expression, {"allowedCidr": cidr}, main["variables"], deployed)
        assert (len(rules) == 2) is _is_public(cidr), cidr


def test_service_ports_only_from_the_allowed_cidr_which_has_no_default(
    main: dict[str, Any], ui: dict[str, Any]
) -> None:
    assert "defaultValue" not in main["parameters"]["allowedCidr"]
    rules = {
        r["name"].split("/")[1]: r for r in resources(main, "Microsoft.Network/networkSecurityGroups/securityRules")
    }
    inbound = [r["properties"] for r in rules.values() if r["properties"]["direction"] == "Inbound"]
    assert all(p["sourceAddressPrefix"] == "[parameters('allowedCidr')]" for p in inbound)
    assert rules["service-in"]["properties"]["destinationPortRanges"] == [str(port) for port in SERVICE_PORTS]
    (box,) = [e for e in all_elements(ui) if e["name"] == "allowedCidr"]
    pattern = re.compile(box["constraints"]["regex"])
    assert pattern.fullmatch("203.0.113.0/24") and pattern.fullmatch("10.0.0.0/8")
    assert not any(pattern.fullmatch(bad) for bad in ("*", "Internet", "203.0.113.0", "256.1.1.1/24", "::/0", ""))


def test_ssh_needs_a_key_and_is_never_open_to_the_world(main: dict[str, Any]) -> None:
    (ssh,) = [r for r in main["resources"] if r["name"].endswith("/ssh-in")]
    condition = ssh["condition"]
    assert "not(empty(parameters('sshPublicKey')))" in condition
    assert "not(equals(parameters('allowedCidr'), '0.0.0.0/0'))" in condition
    linux = vm(main)["properties"]["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert "variables('noLoginKey')" in linux["ssh"]["publicKeys"][0]["keyData"]
    assert main["variables"]["noLoginKey"] == NO_LOGIN_KEY
    assert "systemctl disable --now ssh.socket" in custom_data(main, has_ssh_key=False)
    assert "ssh.socket" not in custom_data(main, has_ssh_key=True)


def test_custom_data_holds_no_secret_and_fits_azures_limit(main: dict[str, Any]) -> None:
    text = custom_data(main)
    assert len(text.encode()) < 64 * 1024
    for needle in (r"PRIVATE KEY", r"fsk_[a-z2-7]{12}_", r"(?i)password\s*[:=]", r"[A-Za-z0-9+/]{60,}"):
        assert not re.search(needle, text), needle


def test_custom_data_passes_cloud_init_schema(main: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "custom-data.yaml"
    path.write_text(custom_data(main))
    result = subprocess.run(
        [require_tool("cloud-init"), "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr
    commands = unit_commands(yaml.safe_load(path.read_text()))
    assert commands["ExecStartPre"][1:] == [DATA_DISK_PATH, SERVICE_IDS]
    assert commands["ExecStart"][1:3] == ["azure", SERVICE_IDS]
    options = dict(zip(commands["ExecStart"][3::2], commands["ExecStart"][4::2], strict=True))
    assert options == {"--secret-uri": SAMPLE["SecretUri"], "--resource": SAMPLE["Audience"],
                       "--client-id": SAMPLE["ClientId"], "--tenant": SAMPLE["Tenant"],
                       "--public-ip": SAMPLE["PublicIp"], "--dns-name": SAMPLE["DnsName"],
                       "--private-ip": SAMPLE["PrivateIp"]}


def test_usage_attribution_and_package(main: dict[str, Any], tmp_path: Path) -> None:
    names = [r["name"] for r in resources(main, "Microsoft.Resources/deployments")]
    assert names == [f"pid-{USAGE_ATTRIBUTION_ID}"]
    archive = template.package(tmp_path, "9.9.9")
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == ["createUiDefinition.json", "mainTemplate.json"]
        assert json.loads(bundle.read("mainTemplate.json")) == main


# --- first boot, for real, against a FAKE of IMDS's identity endpoint and Key Vault's Set Secret ---------------


@dataclass
class FakeAzure:
    """IMDS's token endpoint and Key Vault's Set Secret as their REST references describe them (no Azure here):
    the token needs `Metadata: true`, api-version, resource and client_id; Set Secret needs that bearer token,
    api-version and a JSON `value`, and answers 403 `refusals` times first, as while a role assignment
    propagates. It creates a secret that does not exist yet; a name other than 1-127 letters, digits and '-' is
    a 400 BadParameter."""

    client_id: str
    refusals: int = 1
    token: str = "eyJ0eXAiOiJKV1QifQ.fake.token"
    secrets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def answer(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        if parts.path == "/metadata/identity/oauth2/token":
            if headers.get("metadata") != "true" or method != "GET":
                return 400, {"error": "invalid_request", "error_description": "Required metadata header not specified"}
            if query.get("client_id") != self.client_id or query.get("resource") != SAMPLE["Audience"]:
                return 400, {"error": "invalid_request", "error_description": "Identity not found"}
            return 200, {"access_token": self.token, "resource": query["resource"], "token_type": "Bearer"}
        name = parts.path.removeprefix("/secrets/")
        if method != "PUT" or query.get("api-version") != "7.4":
            return 400, {"error": {"code": "BadParameter"}}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": {"code": "Unauthorized"}}
        if self.refusals > 0:
            self.refusals -= 1
            return 403, {"error": {"code": "Forbidden", "innererror": {"code": "ForbiddenByRbac"}}}
        if not re.fullmatch(r"[0-9A-Za-z-]{1,127}", name):
            return 400, {"error": {"code": "BadParameter", "message": "The request URI contains an invalid name"}}
        self.secrets.setdefault(name, []).append(json.loads(body))
        return 200, {"value": json.loads(body)["value"], "id": f"{url.split('?')[0]}/0123abcd"}


def _answer(fake: FakeAzure, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    status, reply = fake.answer(method, path, {name.lower(): value for name, value in headers.items()}, body)
    return status, json.dumps(reply)


@dataclass
class Endpoints:
    fake: FakeAzure
    imds: str
    vault: str
    ca_file: Path


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Endpoints]:
    """The fake IMDS on plain HTTP (as Azure's) and the fake vault on HTTPS with a test CA's certificate."""
    ca = CertificateAuthority.create(common_name="fake Key Vault CA")
    issued = ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    issued.write(tmp_path / "vault.crt", tmp_path / "vault.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    fake = FakeAzure(client_id=SAMPLE["ClientId"])
    vault_tls = (tmp_path / "vault.crt", tmp_path / "vault.key")

    def answer(*request: Any) -> tuple[int, str]:
        return _answer(fake, *request)

    with http_server(answer) as imds_url, http_server(answer, tls=vault_tls, host="localhost") as vault_url:
        yield Endpoints(fake, imds_url, vault_url, tmp_path / "ca.pem")


def run_first_boot(out: Path, azure: Endpoints, secret: str) -> subprocess.CompletedProcess[str]:
    """The module as first_boot.sh runs it, with a local keyring beside `out` as the KMS foresight.env names."""
    env = {
        "PATH": "/usr/bin:/bin",
        "FORESIGHT_IMDS_ENDPOINT": azure.imds,
        "SSL_CERT_FILE": str(azure.ca_file),
        "FORESIGHT_KMS_PROVIDER": "local",
        "FORESIGHT_KMS_KEY_ID": str(out.parent / KEYRING),
    }
    arguments = {
        "--out": str(out),
        "--tenant": "acme",
        "--secret-uri": f"{azure.vault}/secrets/{secret}",
        "--resource": SAMPLE["Audience"],
        "--client-id": SAMPLE["ClientId"],
        "--public-ip": SAMPLE["PublicIp"],
        "--dns-name": SAMPLE["DnsName"],
        "--private-ip": SAMPLE["PrivateIp"],
    }
    argv = [sys.executable, "-m", "marketplace.azure.first_boot", *(x for pair in arguments.items() for x in pair)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_first_boot_mints_a_key_the_service_accepts(azure: Endpoints, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    out.mkdir()
    result = run_first_boot(out, azure, "foresight-api-key")

    assert result.returncode == 0, result.stderr
    assert azure.fake.refusals == 0  # the 403 of a propagating role assignment was retried
    (written,) = azure.fake.secrets["foresight-api-key"]
    assert written["contentType"] == "application/json"
    document = json.loads(written["value"])
    principal = FileKeySource(out / "tenants.json").authenticate(document["api_key"])
    assert principal is not None and principal.tenant == "acme" == document["tenant"]
    assert principal.key_id == document["key_id"] and "admin" in principal.scopes
    assert document["api_key"] not in (out / "tenants.json").read_text()
    assert document["api_key"] not in result.stdout + result.stderr
    assert document["host"] == SAMPLE["DnsName"] and document["ca_certificate"] == (out / "ca.crt").read_text()
    assert (out / "tls.key").stat().st_mode & 0o077 == 0
    assert_tls_serves(out, host=SAMPLE["DnsName"])
    sans = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)} == {
        SAMPLE["PublicIp"],
        SAMPLE["PrivateIp"],
    }
    assert_ca_key_sealed(out, local_cipher(tmp_path / KEYRING))
    assert_scrape_token_minted(out, document, result.stdout + result.stderr)


def test_first_boot_writes_nothing_when_the_secret_cannot_be_set(azure: Endpoints, tmp_path: Path) -> None:
    out = tmp_path / "conf"
    out.mkdir()
    result = run_first_boot(out, azure, "not_a_secret_name")
    assert result.returncode == 1 and "HTTP 400" in result.stderr
    assert list(out.iterdir()) == []


def test_first_boot_imports_only_what_the_service_image_has() -> None:
    """It runs inside the service image, which has no Pulumi SDK or stacks/, and needs no Azure SDK."""
    probe = (
        "import sys, marketplace.azure.first_boot; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pulumi', 'pulumi_azure_native', 'stacks', 'azure')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


AUDIT_CONTAINER = ("/subscriptions/11111111-2222-4333-8444-555555555555/resourceGroups/audit-rg/providers/"
                   "Microsoft.Storage/storageAccounts/acmeaudit/blobServices/default/containers/trail")


@pytest.mark.parametrize("container", ["", AUDIT_CONTAINER])
def test_an_audit_container_is_where_the_node_ships_and_the_grant_it_needs_is_an_output(
    main: dict[str, Any], ui: dict[str, Any], container: str
) -> None:
    parameters = {"auditContainerId": container}
    deployed = {"Microsoft.ManagedIdentity/userAssignedIdentities/foresight-node":
                {"principalId": "9f8e7d6c-0000-4000-8000-000000000001"}}
    url = evaluate(template.custom_data_values()["AuditShipUrl"], parameters, main["variables"], deployed)
    command = evaluate(main["outputs"]["grantAuditContainerCommand"]["value"], parameters, main["variables"], deployed)
    principal = evaluate(main["outputs"]["nodePrincipalId"]["value"], parameters, main["variables"], deployed)
    assert principal == "9f8e7d6c-0000-4000-8000-000000000001"  # what origin containers grant their reader role to
    if not container:
        assert url == "" and command == ""  # no container: nothing shipped, nothing to grant
        return
    assert url == "az://trail@acmeaudit.blob.core.windows.net/foresight/mrg-foresight-1"  # the stacks' layout
    spec = StackSpec.model_validate({"project": "foresight", "stack": "test", "cloud": "azure", "region": "westeurope",
                                     "allowedCidrs": [], "vaultAddress": "https://vault.example.com",
                                     "instanceType": DEFAULT_INSTANCE_TYPES[Cloud.AZURE], "auditBucket": container})
    assert spec.audit_ship_url == "az://trail@acmeaudit.blob.core.windows.net/foresight/foresight-test"
    assert command == (f"az role assignment create --assignee-object-id 9f8e7d6c-0000-4000-8000-000000000001 "
                       f"--assignee-principal-type ServicePrincipal --role {BLOB_DATA_CONTRIBUTOR} --scope {container}")
    (box,) = [e for e in all_elements(ui) if e["name"] == "auditContainerId"]
    pattern = re.compile(box["constraints"]["regex"])
    assert pattern.fullmatch(container) and pattern.fullmatch("") and not box["constraints"]["required"]
    assert not pattern.fullmatch("acmeaudit/trail") and not pattern.fullmatch(container + "/x")


ORIGIN_CONTAINERS = [AUDIT_CONTAINER.replace("acmeaudit", "acmedata").replace("trail", name)
                     for name in ("products", "media")]


@pytest.mark.parametrize("containers", [[], ORIGIN_CONTAINERS[:1], ORIGIN_CONTAINERS], ids=["none", "one", "two"])
def test_the_origin_grant_command_gives_the_node_the_stacks_read_role_on_each_container(
    main: dict[str, Any], ui: dict[str, Any], containers: list[str]
) -> None:
    principal = "9f8e7d6c-0000-4000-8000-000000000001"
    deployed = {"Microsoft.ManagedIdentity/userAssignedIdentities/foresight-node": {"principalId": principal}}
    command = evaluate(main["outputs"]["grantOriginContainersCommand"]["value"],
                       {"originContainerIds": ",".join(containers)}, main["variables"], deployed)
    assert [part for part in command.split(" && ") if part] == [
        f"az role assignment create --assignee-object-id {principal} --assignee-principal-type ServicePrincipal "
        f"--role {BLOB_DATA_READER} --scope {container}" for container in containers]
    (box,) = [e for e in all_elements(ui) if e["name"] == "originContainerIds"]
    pattern = re.compile(box["constraints"]["regex"])
    assert pattern.fullmatch(",".join(containers)) and not box["constraints"]["required"]
    for bad in ("acmedata/products", f"{ORIGIN_CONTAINERS[0]}, {ORIGIN_CONTAINERS[1]}", f"{ORIGIN_CONTAINERS[0]},"):
        assert not pattern.fullmatch(bad), bad
