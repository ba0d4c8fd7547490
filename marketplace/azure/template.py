"""The Azure Marketplace managed application (`mainTemplate.json` + `createUiDefinition.json`): one Foresight GPU
VM built from the Azure stack's parts.

Ports, GPU series, disk layout, the Key Vault's settings, the key's size and rotation, the role definitions
and the no-login SSH key come from `stacks/`, so the template cannot drift from `foresight:azure:GpuNode`.
Where it differs, it is because a marketplace buyer has no Vault and runs one node:
- a single VM instead of a scale set, and no load balancer or NAT gateway: the node keeps its state
  (certificate, tenants file, data disk) on its own disks, so a replacement would mint a new key and
  certificate; a static public IP with a DNS label is its address, and the certificate names both;
- TLS and the first API key are minted on the VM at first boot (`marketplace/first_boot.sh`, `first_boot.py`); the key
  reaches the buyer through a Key Vault secret that the VM's identity creates (a secrets role on the
  application's own vault, which holds nothing else) and the object id the buyer names may read. The template
  declares no secret: a placeholder version would become the latest again on every redeployment.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import re
import zipfile
from pathlib import Path
from typing import Any

from annotated_types import Ge, Le

from marketplace.azure.offer import IMAGE, USAGE_ATTRIBUTION_ID, VM_SIZES
from marketplace.azure.ui import create_ui_definition
from marketplace.first_boot import CONF_DIR
from marketplace.launch import PLACEHOLDER, SSH_OFF, cloud_config
from stacks.azure.compute import ADMIN_USER, DATA_DISK_LUN, DATA_DISK_PATH, NO_LOGIN_KEY, OS_DISK_GB
from stacks.azure.identity import BLOB_DATA_CONTRIBUTOR, BLOB_DATA_READER
from stacks.azure.kms import (
    CRYPTO_SERVICE_ENCRYPTION_USER,
    EXPIRE_AFTER,
    KEY_SIZE,
    ROTATE_AFTER,
    SOFT_DELETE_DAYS,
)
from stacks.azure.network import OWN_SUBNET_CIDR, OWN_VNET_CIDR, SSH_PORT, WORLD
from stacks.cloudinit import DATA_DIR
from stacks.spec import AUDIT_FOLDER, DEFAULT_INSTANCE_TYPES, HTTPS_PORT, RESP_PORT, SERVICE_PORTS, Cloud, StackSpec

# Built-in Key Vault data roles the stack has no use for: set (and read) secrets; read secrets.
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
SECRET_NAME = "foresight-api-key"  # noqa: S105 - the secret's name, not its value
KEY_NAME = "foresight"
# Key Vault's firewall refuses IP rules in these ranges (RFC 1918); a buyer's private range, which reaches the
# node over peering or VPN, never reaches the vault's public endpoint anyway.
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


# Newest GA version of each type in azure-rest-api-specs when last reviewed (2026-11-27); arm-ttk wants each
# to be the newest or under two years old.
API_VERSIONS = {
    "Microsoft.Resources/deployments": "2025-04-01",
    "Microsoft.Network/networkSecurityGroups": "2025-01-01",
    "Microsoft.Network/networkSecurityGroups/securityRules": "2025-01-01",
    "Microsoft.Network/virtualNetworks": "2025-01-01",
    "Microsoft.Network/publicIPAddresses": "2025-01-01",
    "Microsoft.Network/networkInterfaces": "2025-01-01",
    "Microsoft.ManagedIdentity/userAssignedIdentities": "2024-11-30",
    "Microsoft.KeyVault/vaults": "2025-05-01",
    "Microsoft.KeyVault/vaults/keys": "2025-05-01",
    "Microsoft.Compute/diskEncryptionSets": "2025-01-02",
    "Microsoft.Compute/virtualMachines": "2025-04-01",
    "Microsoft.Authorization/roleAssignments": "2022-04-01",
}
DEPLOYMENT_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
NAMES = {
    "Microsoft.Network/networkSecurityGroups": "foresight-nsg",
    "Microsoft.Network/virtualNetworks": "foresight-vnet",
    "Microsoft.Network/publicIPAddresses": "foresight-ip",
    "Microsoft.Network/networkInterfaces": "foresight-nic",
    "Microsoft.ManagedIdentity/userAssignedIdentities": "foresight-node",
    "Microsoft.Compute/diskEncryptionSets": "foresight-disks",
    "Microsoft.Compute/virtualMachines": "foresight-vm",
}
SUBNET_NAME = "node"
# Resources that take no location: a nested deployment at resource-group scope, and role assignments.
_UNLOCATED = frozenset({"Microsoft.Resources/deployments", "Microsoft.Authorization/roleAssignments"})


def rid(kind: str, *names: str) -> str:
    """resourceId(...) of a resource of this template; `names` are ARM expressions (default: its name)."""
    args = names or (f"'{NAMES[kind]}'",)
    return f"resourceId('{kind}', {', '.join(args)})"


def _vault_id() -> str:
    return rid("Microsoft.KeyVault/vaults", "variables('vaultName')")


def _key_id() -> str:
    return rid("Microsoft.KeyVault/vaults/keys", "variables('vaultName')", f"'{KEY_NAME}'")


# Where first boot creates the secret: the vault's URI ends with '/'.
_SECRET_URI = f"format('{{0}}secrets/{SECRET_NAME}', reference({_vault_id()}).vaultUri)"
IDENTITY = rid("Microsoft.ManagedIdentity/userAssignedIdentities")
_NO_AUDIT = "empty(parameters('auditContainerId'))"

PUBLIC_IP = rid("Microsoft.Network/publicIPAddresses")
NIC = rid("Microsoft.Network/networkInterfaces")
DISK_SET = rid("Microsoft.Compute/diskEncryptionSets")
SUBNET = rid(
    "Microsoft.Network/virtualNetworks/subnets", f"'{NAMES['Microsoft.Network/virtualNetworks']}'", f"'{SUBNET_NAME}'"
)


def service_environment() -> dict[str, str]:
    """foresight.env for a node without Vault: its own TLS and tenants files, data keys wrapped by Key Vault."""
    return {
        "FORESIGHT_TLS_CERT_FILE": f"{CONF_DIR}/tls.crt",
        "FORESIGHT_TLS_KEY_FILE": f"{CONF_DIR}/tls.key",
        "FORESIGHT_TENANTS_FILE": f"{CONF_DIR}/tenants.json",
        "FORESIGHT_KMS_PROVIDER": "azure",
        "FORESIGHT_KMS_KEY_ID": "@@KeyUri@@",
        "FORESIGHT_DATA_DIR": DATA_DIR,
        "AZURE_CLIENT_ID": "@@ClientId@@",  # azure-identity's choice among the VM's identities
        "FORESIGHT_AUDIT_SHIP_URL": "@@AuditShipUrl@@",  # empty (no auditContainerId): the trail stays on the node
    }


def custom_data_text() -> str:
    """The `#cloud-config` document with `@@Name@@` where a deployment value goes (`custom_data_values`)."""
    options = {"--secret-uri": "SecretUri", "--resource": "Audience", "--client-id": "ClientId", "--tenant": "Tenant",
               "--public-ip": "PublicIp", "--dns-name": "DnsName", "--private-ip": "PrivateIp"}
    return cloud_config("azure", service_environment(), DATA_DISK_PATH, options)


def custom_data_values() -> dict[str, str]:
    """Each placeholder's ARM expression, without the brackets."""
    return {
        "KeyUri": f"reference({_key_id()}).keyUri",
        "ClientId": f"reference({IDENTITY}).clientId",
        "SecretUri": _SECRET_URI,
        # Key Vault's token audience in whichever Azure cloud this runs (https://vault.azure.net in public Azure).
        "Audience": "format('https://{0}', substring(environment().suffixes.keyvaultDns, 1))",
        "Tenant": "parameters('tenantName')",
        "PublicIp": f"reference({PUBLIC_IP}).ipAddress",
        "DnsName": f"reference({PUBLIC_IP}).dnsSettings.fqdn",
        "PrivateIp": f"reference({NIC}).ipConfigurations[0].properties.privateIPAddress",
        "SshOff": f"if(empty(parameters('sshPublicKey')), '{SSH_OFF}', 'true')",
        # The stacks' foresight/<project>-<stack>, with the managed resource group's name for the stack's.
        "AuditShipUrl": f"if({_NO_AUDIT}, '', format('az://{{0}}@{{1}}.blob.{{2}}/{AUDIT_FOLDER}/{{3}}', "
        "variables('auditContainer')[12], variables('auditContainer')[8], environment().suffixes.storage, "
        "resourceGroup().name))",
    }


def custom_data_format() -> tuple[str, list[str]]:
    """`custom_data_text()` as a format() string for ARM (braces doubled, `{i}` per placeholder) and the
    placeholder names in argument order."""
    names: list[str] = []

    def argument(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"{{{names.index(match[1])}}}"

    text = custom_data_text().replace("{", "{{").replace("}", "}}")
    return PLACEHOLDER.sub(argument, text), names


def render(version: str | None = None) -> dict[str, dict[str, Any]]:
    """`mainTemplate.json` and `createUiDefinition.json` (JSON-able dicts) for `foresight marketplace build`."""
    version = version or importlib.metadata.version("foresight")
    return {"mainTemplate.json": main_template(version), "createUiDefinition.json": create_ui_definition()}


def package(out_dir: Path, version: str | None = None) -> Path:
    """Writes both files into `out_dir` and zips them as `app.zip`, the package Partner Center takes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "app.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, document in render(version).items():
            text = json.dumps(document, indent=2) + "\n"
            (out_dir / name).write_text(text)
            bundle.writestr(name, text)
    return archive


def main_template(version: str) -> dict[str, Any]:
    cloud_config, _ = custom_data_format()
    return {
        "$schema": DEPLOYMENT_SCHEMA,
        "contentVersion": "1.0.0.0",
        "metadata": {"foresight": {"version": version}},
        "parameters": _parameters(),
        "variables": {
            # Vault names are global and stay reserved under purge protection: one per managed resource group.
            "vaultName": "[format('fs{0}', uniqueString(resourceGroup().id))]",
            "dnsLabel": "[format('foresight-{0}', uniqueString(resourceGroup().id))]",
            "noLoginKey": NO_LOGIN_KEY,
            "cloudConfig": cloud_config,
            # The container id's segments (account 8, container 12), padded so that an empty id indexes too: an
            # expression that fails on its untaken branch fails the deployment.
            "auditContainer": "[split(concat(parameters('auditContainerId'), '/////////////'), '/')]",
            **_client_range_variables(),
        },
        "resources": [
            _usage_attribution(),
            *_network(),
            *_identity_and_key(),
            *_role_assignments(),
            _virtual_machine(),
        ],
        "outputs": _outputs(),
    }


def _parameters() -> dict[str, Any]:
    volume = StackSpec.model_fields["volume_size_gb"].metadata
    return {
        "location": {
            "type": "string",
            "defaultValue": "[resourceGroup().location]",
            "metadata": {"description": "Where every resource goes"},
        },
        "vmSize": {
            "type": "string",
            "defaultValue": DEFAULT_INSTANCE_TYPES[Cloud.AZURE],
            "allowedValues": list(VM_SIZES),
            "metadata": {"description": "An NVIDIA GPU size (the region must offer it and the quota allow it)"},
        },
        "dataDiskSizeGb": {
            "type": "int",
            "defaultValue": StackSpec.model_fields["volume_size_gb"].default,
            "minValue": next(m.ge for m in volume if isinstance(m, Ge)),
            "maxValue": next(m.le for m in volume if isinstance(m, Le)),
            "metadata": {"description": "Size of the encrypted data disk (snapshots, audit log), GiB"},
        },
        "allowedCidr": {
            "type": "string",
            "metadata": {"description": f"The only IPv4 range that may reach ports {_ports()} (and SSH)"},
        },
        "adminUsername": {
            "type": "string",
            "defaultValue": ADMIN_USER,
            "metadata": {"description": "The VM's login user (SSH key only, never a password)"},
        },
        "sshPublicKey": {
            "type": "string",
            "defaultValue": "",
            "metadata": {"description": "Optional OpenSSH public key for SSH from allowedCidr; empty: no SSH"},
        },
        "tenantName": {
            "type": "string",
            "defaultValue": "default",
            "metadata": {"description": "The first tenant; its API key goes into this application's Key Vault"},
        },
        "keyReaderObjectId": {
            "type": "string",
            "metadata": {"description": "Object id of the Entra ID user or group that may read the API key"},
        },
        "auditContainerId": {
            "type": "string",
            "defaultValue": "",
            "metadata": {
                "description": "Optional resource id of an existing blob container for the audit trail (give it an "
                "immutability policy): rotated audit files go to foresight/<resource group>/, and the node deletes one "
                "only once its copy is there. Grant the node's identity access with the grantAuditContainerCommand "
                "output. Empty: kept on the node"
            },
        },
        "originContainerIds": {
            "type": "string",
            "defaultValue": "",
            "metadata": {
                "description": "Optional resource ids of existing blob containers the tenants' origins live in, "
                "separated by commas. Grant the node's identity read on them with the grantOriginContainersCommand "
                "output"
            },
        },
    }


def _ports() -> str:
    return ", ".join(map(str, SERVICE_PORTS))


def _resource(kind: str, name: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    located = kind.count("/") == 1 and kind not in _UNLOCATED
    return {
        "type": kind,
        "apiVersion": API_VERSIONS[kind],
        "name": name,
        **({"location": "[parameters('location')]"} if located else {}),
        **extra,
        "properties": properties,
    }


def _usage_attribution() -> dict[str, Any]:
    """Customer usage attribution: an empty deployment whose name carries the offer's tracking GUID."""
    empty = {"$schema": DEPLOYMENT_SCHEMA, "contentVersion": "1.0.0.0", "resources": []}
    return _resource(
        "Microsoft.Resources/deployments", f"pid-{USAGE_ATTRIBUTION_ID}", {"mode": "Incremental", "template": empty}
    )


def _rule(name: str, priority: int, direction: str, **properties: Any) -> dict[str, Any]:
    kind = "Microsoft.Network/networkSecurityGroups/securityRules"
    group = NAMES["Microsoft.Network/networkSecurityGroups"]
    base = {"priority": priority, "direction": direction, "sourcePortRange": "*", "description": name}
    return _resource(kind, f"{group}/{name}", {**base, **properties}, dependsOn=[f"[{rid(kind.rsplit('/', 1)[0])}]"])


def _security_rules() -> list[dict[str, Any]]:
    """The stack's rules without its load balancer and Vault: service ports and SSH in, HTTPS out."""
    ssh = _rule(
        "ssh-in",
        120,
        "Inbound",
        access="Allow",
        protocol="Tcp",
        sourceAddressPrefix="[parameters('allowedCidr')]",
        destinationAddressPrefix="*",
        destinationPortRange=str(SSH_PORT),
    )
    ssh["condition"] = (
        f"[and(not(empty(parameters('sshPublicKey'))), not(equals(parameters('allowedCidr'), '{WORLD}')))]"
    )
    return [
        _rule(
            "service-in",
            100,
            "Inbound",
            access="Allow",
            protocol="Tcp",
            sourceAddressPrefix="[parameters('allowedCidr')]",
            destinationAddressPrefix="*",
            destinationPortRanges=[str(port) for port in SERVICE_PORTS],
        ),
        ssh,
        _rule(
            "https-out",
            100,
            "Outbound",
            access="Allow",
            protocol="Tcp",
            sourceAddressPrefix="*",
            destinationAddressPrefix="Internet",
            destinationPortRange="443",
        ),
        _rule(
            "deny-internet-out",
            4000,
            "Outbound",
            access="Deny",
            protocol="*",
            sourceAddressPrefix="*",
            destinationAddressPrefix="Internet",
            destinationPortRange="*",
        ),
    ]


def _network() -> list[dict[str, Any]]:
    nsg_kind = "Microsoft.Network/networkSecurityGroups"
    subnet = {
        "name": SUBNET_NAME,
        "properties": {"addressPrefix": str(OWN_SUBNET_CIDR), "defaultOutboundAccess": False},
    }
    ip_configuration = {
        "name": "ip",
        "properties": {
            "privateIPAllocationMethod": "Dynamic",
            "subnet": {"id": f"[{SUBNET}]"},
            "publicIPAddress": {"id": f"[{PUBLIC_IP}]"},
        },
    }
    return [
        _resource(nsg_kind, NAMES[nsg_kind], {}),
        *_security_rules(),
        _resource(
            "Microsoft.Network/virtualNetworks",
            NAMES["Microsoft.Network/virtualNetworks"],
            {"addressSpace": {"addressPrefixes": [str(OWN_VNET_CIDR)]}, "subnets": [subnet]},
        ),
        _resource(
            "Microsoft.Network/publicIPAddresses",
            NAMES["Microsoft.Network/publicIPAddresses"],
            {
                "publicIPAllocationMethod": "Static",
                "publicIPAddressVersion": "IPv4",
                "dnsSettings": {"domainNameLabel": "[variables('dnsLabel')]"},
            },
            sku={"name": "Standard", "tier": "Regional"},
        ),
        _resource(
            "Microsoft.Network/networkInterfaces",
            NAMES["Microsoft.Network/networkInterfaces"],
            {"ipConfigurations": [ip_configuration], "networkSecurityGroup": {"id": f"[{rid(nsg_kind)}]"}},
            dependsOn=[
                f"[{rid(nsg_kind)}]",
                f"[{rid('Microsoft.Network/virtualNetworks')}]",
                f"[{PUBLIC_IP}]",
            ],
        ),
    ]


def _client_range_variables() -> dict[str, Any]:
    """`allowedCidrIsPublic`: whether the buyer's range overlaps none of PRIVATE_RANGES. Each of those is at most
    a /16, so comparing the first 16 bits of both networks, cut to the shorter prefix, decides it."""
    scale = "variables('powersOfTwo')[sub(16, min(variables('allowedCidrPrefix'), {}))]"
    overlaps = [
        f"equals(div(variables('allowedCidrHigh16'), {scale.format(block.prefixlen)}), "
        f"div({int(block.network_address) >> 16}, {scale.format(block.prefixlen)}))"
        for block in PRIVATE_RANGES
    ]
    return {
        "allowedCidrParts": "[split(parameters('allowedCidr'), '/')]",
        "allowedCidrOctets": "[split(variables('allowedCidrParts')[0], '.')]",
        "allowedCidrPrefix": "[int(variables('allowedCidrParts')[1])]",
        "allowedCidrHigh16": (
            "[add(mul(int(variables('allowedCidrOctets')[0]), 256), int(variables('allowedCidrOctets')[1]))]"
        ),
        "powersOfTwo": [2**bits for bits in range(17)],
        "allowedCidrIsPublic": f"[not(or({', '.join(overlaps)}))]",
    }


def _identity_and_key() -> list[dict[str, Any]]:
    """The stack's Key Vault, key and disk encryption set. The secret is first boot's to create."""
    node_rule = f"createObject('value', reference({PUBLIC_IP}).ipAddress)"
    client_rule = "createObject('value', parameters('allowedCidr'))"
    vault_properties = {
        "tenantId": "[subscription().tenantId]",
        "sku": {"family": "A", "name": "standard"},
        "enableRbacAuthorization": True,
        "enableSoftDelete": True,
        "softDeleteRetentionInDays": SOFT_DELETE_DAYS,
        "enablePurgeProtection": True,
        "enabledForDiskEncryption": True,
        # Reachable only from the node's address and, when it overlaps none of PRIVATE_RANGES, the buyer's range;
        # the disk encryption set is a trusted service.
        "networkAcls": {
            "defaultAction": "Deny",
            "bypass": "AzureServices",
            "ipRules": (
                f"[if(variables('allowedCidrIsPublic'), createArray({node_rule}, {client_rule}), "
                f"createArray({node_rule}))]"
            ),
        },
    }
    rotation = {
        "attributes": {"expiryTime": EXPIRE_AFTER},
        "lifetimeActions": [{"action": {"type": "rotate"}, "trigger": {"timeAfterCreate": ROTATE_AFTER}}],
    }
    key_properties = {
        "kty": "RSA",
        "keySize": KEY_SIZE,
        "keyOps": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
        "rotationPolicy": rotation,
    }
    vault = f"[{_vault_id()}]"
    return [
        _resource(
            "Microsoft.ManagedIdentity/userAssignedIdentities",
            NAMES["Microsoft.ManagedIdentity/userAssignedIdentities"],
            {},
        ),
        _resource(
            "Microsoft.KeyVault/vaults", "[variables('vaultName')]", vault_properties, dependsOn=[f"[{PUBLIC_IP}]"]
        ),
        _resource(
            "Microsoft.KeyVault/vaults/keys",
            f"[format('{{0}}/{KEY_NAME}', variables('vaultName'))]",
            key_properties,
            dependsOn=[vault],
        ),
        _resource(
            "Microsoft.Compute/diskEncryptionSets",
            NAMES["Microsoft.Compute/diskEncryptionSets"],
            {
                "encryptionType": "EncryptionAtRestWithCustomerKey",
                "activeKey": {"sourceVault": {"id": vault}, "keyUrl": f"[reference({_key_id()}).keyUriWithVersion]"},
                "rotationToLatestKeyVersionEnabled": True,
            },
            identity={"type": "SystemAssigned"},
            dependsOn=[f"[{_key_id()}]"],
        ),
    ]


def _grant(label: str, scope: tuple[str, str], role: str, principal: str, principal_of: str | None) -> dict[str, Any]:
    """A role assignment on the key or the vault: `scope` is (its resourceId expression, its relative path);
    `principal_of` is the resource whose service principal it is (None: a user or group the buyer names)."""
    resource_id, path = scope
    properties = {
        "roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{role}')]",
        "principalId": f"[{principal}]",
        **({"principalType": "ServicePrincipal"} if principal_of else {}),
    }
    return _resource(
        "Microsoft.Authorization/roleAssignments",
        f"[guid({resource_id}, {label}, '{role}')]",
        properties,
        scope=f"[format('{path}', variables('vaultName'))]",
        dependsOn=[f"[{resource_id}]", *([f"[{principal_of}]"] if principal_of else [])],
    )


def _role_assignments() -> list[dict[str, Any]]:
    """The stack's two grants on the key; the node's secrets role and the buyer's read on the vault. A role on
    one secret needs the secret to exist first, and a template that declares it puts a placeholder version over
    the key on every redeployment; the vault is this application's and holds no other secret."""
    key = (_key_id(), f"Microsoft.KeyVault/vaults/{{0}}/keys/{KEY_NAME}")
    vault = (_vault_id(), "Microsoft.KeyVault/vaults/{0}")
    node = f"reference({IDENTITY}).principalId"
    disks = (
        f"reference({DISK_SET}, '{API_VERSIONS['Microsoft.Compute/diskEncryptionSets']}', 'full').identity.principalId"
    )
    return [
        _grant("'disks'", key, CRYPTO_SERVICE_ENCRYPTION_USER, disks, DISK_SET),
        _grant("'node'", key, CRYPTO_SERVICE_ENCRYPTION_USER, node, IDENTITY),
        _grant("'node'", vault, SECRETS_OFFICER, node, IDENTITY),
        _grant("parameters('keyReaderObjectId')", vault, SECRETS_USER, "parameters('keyReaderObjectId')", None),
    ]


def _disk(size: Any) -> dict[str, Any]:
    return {
        "diskSizeGB": size,
        "managedDisk": {"storageAccountType": "Premium_LRS", "diskEncryptionSet": {"id": f"[{DISK_SET}]"}},
        "deleteOption": "Delete",
    }


def _virtual_machine() -> dict[str, Any]:
    _, names = custom_data_format()
    values = custom_data_values()
    custom_data = f"[base64(format(variables('cloudConfig'), {', '.join(values[name] for name in names)}))]"
    admin = "parameters('adminUsername')"
    ssh_key = "parameters('sshPublicKey')"
    os_profile = {
        "computerName": "foresight",
        "allowExtensionOperations": False,  # nothing here needs a VM extension
        "adminUsername": f"[{admin}]",
        "customData": custom_data,
        "linuxConfiguration": {
            "disablePasswordAuthentication": True,
            "ssh": {
                "publicKeys": [
                    {
                        "path": f"[format('/home/{{0}}/.ssh/authorized_keys', {admin})]",
                        "keyData": f"[if(empty({ssh_key}), variables('noLoginKey'), {ssh_key})]",
                    }
                ]
            },
        },
    }
    storage = {
        "imageReference": {**IMAGE, "version": "latest"},
        "osDisk": {"createOption": "FromImage", "caching": "ReadWrite", **_disk(OS_DISK_GB)},
        "dataDisks": [
            {
                "lun": DATA_DISK_LUN,
                "createOption": "Empty",
                "caching": "ReadOnly",
                **_disk("[parameters('dataDiskSizeGb')]"),
            }
        ],
    }
    properties = {
        "hardwareProfile": {"vmSize": "[parameters('vmSize')]"},
        "osProfile": os_profile,
        "storageProfile": storage,
        "networkProfile": {"networkInterfaces": [{"id": f"[{NIC}]", "properties": {"deleteOption": "Delete"}}]},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
    }
    return _resource(
        "Microsoft.Compute/virtualMachines",
        NAMES["Microsoft.Compute/virtualMachines"],
        properties,
        plan={"name": IMAGE["sku"], "publisher": IMAGE["publisher"], "product": IMAGE["offer"]},
        identity={"type": "UserAssigned", "userAssignedIdentities": {f"[{IDENTITY}]": {}}},
        # The disk set's grant before its disks, and the node's grants before first boot uses them.
        dependsOn=[f"[{NIC}]", *(f"[{_assignment_id(g)}]" for g in _role_assignments()[:3])],
    )


def _assignment_id(grant: dict[str, Any]) -> str:
    """An extension resource's id: a role assignment on the key or the vault."""
    scope_id = grant["dependsOn"][0][1:-1]
    return f"extensionResourceId({scope_id}, 'Microsoft.Authorization/roleAssignments', {grant['name'][1:-1]})"


def _az_grant(role: str) -> str:
    """The ARM expression of an `az` command assigning `role` to the node's identity, up to the scope that follows:
    the one shape of both grant outputs."""
    return (f"format('az role assignment create --assignee-object-id {{0}} --assignee-principal-type "
            f"ServicePrincipal --role {role} --scope ', reference({IDENTITY}).principalId)")


def _outputs() -> dict[str, Any]:
    host = f"reference({PUBLIC_IP}).dnsSettings.fqdn"
    secret_uri = _SECRET_URI

    def output(value: str) -> dict[str, str]:
        return {"type": "string", "value": value}

    return {
        "respEndpoint": output(f"[format('rediss://{{0}}:{RESP_PORT}', {host})]"),
        "httpsEndpoint": output(f"[format('https://{{0}}:{HTTPS_PORT}', {host})]"),
        "keyVaultName": output("[variables('vaultName')]"),
        "apiKeySecretName": output(SECRET_NAME),
        "apiKeySecretUri": output(f"[{secret_uri}]"),
        "getApiKeyCommand": output(
            f"[format('az keyvault secret show --id {{0}} --query value --output tsv', {secret_uri})]"
        ),
        "keyId": output(f"[reference({_key_id()}).keyUri]"),
        "vmName": output(NAMES["Microsoft.Compute/virtualMachines"]),
        # What to grant Storage Blob Data Reader on each tenant's origin container (the buyer's, like the audit one).
        "nodePrincipalId": output(f"[reference({IDENTITY}).principalId]"),
        # The container is the buyer's, outside this application's resource group: the grant is theirs to make.
        "grantAuditContainerCommand": output(
            f"[if({_NO_AUDIT}, '', concat({_az_grant(BLOB_DATA_CONTRIBUTOR)}, parameters('auditContainerId')))]"
        ),
        # The same for the origin containers: one assignment of the stacks' read role per container.
        "grantOriginContainersCommand": output(
            f"[if(empty(parameters('originContainerIds')), '', concat({_az_grant(BLOB_DATA_READER)}, "
            f"replace(parameters('originContainerIds'), ',', concat(' && ', {_az_grant(BLOB_DATA_READER)}))))]"
        ),
    }
