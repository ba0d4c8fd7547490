"""The Azure program with optional and bad config: bring-your-own network, private only, Spot with fallback
sizes, SSH, a refused Vault token, and the errors that name the key to fix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stacks.spec import ConfigError
from tests.stacks.conftest import RunStack
from tests.stacks.endpoint_tls import assert_vault_token_refused
from tests.stacks.mockrun import AZURE_INTERNAL_ADDRESS, BYO_SUBNET_CIDR, pki_role
from tests.stacks.test_azure_stack import SCALE_SET, azure_user_data, node_profile, security_rules

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHrYwJmqmn0Dbj1o4Qh0XGnQKiqLQ9Nn3mTBRJm8Ifj8 ops@example"
VNET = (
    "/subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/shared-net"
    "/providers/Microsoft.Network/virtualNetworks/shared-vnet"
)
BYO = {"foresight:vpcId": VNET, "foresight:subnetIds": json.dumps([f"{VNET}/subnets/cache"])}
NETWORK_TYPES = (
    "azure-native:network:VirtualNetwork",
    "azure-native:network:Subnet",
    "azure-native:network:NatGateway",
)


def test_bring_your_own_network_creates_no_network(run_azure_stack: RunStack) -> None:
    run = run_azure_stack(BYO)
    assert not [r.type for r in run if r.type in NETWORK_TYPES]
    assert [r.name for r in run.of_type("azure-native:network:PublicIPAddress")] == ["foresight-address"]
    ip = node_profile(run)["networkProfile"]["networkInterfaceConfigurations"][0]["ipConfigurations"][0]
    assert ip["subnet"]["id"] == f"{VNET}/subnets/cache"
    lookups = [args for token, args in run.invokes if token == "azure-native:network:getSubnet"]
    assert lookups == [{"resourceGroupName": "shared-net", "virtualNetworkName": "shared-vnet", "subnetName": "cache"}]


def test_private_only_keeps_the_endpoint_internal_and_open_to_the_subnet(run_azure_stack: RunStack) -> None:
    run = run_azure_stack({**BYO, "foresight:allowedCidrs": "[]"})
    assert not run.of_type("azure-native:network:PublicIPAddress")
    [frontend] = run.one("azure-native:network:LoadBalancer").props["frontendIPConfigurations"]
    assert frontend["subnet"]["id"] == f"{VNET}/subnets/cache" and "publicIPAddress" not in frontend
    assert security_rules(run)["service-in"]["sourceAddressPrefixes"] == [BYO_SUBNET_CIDR]
    assert run.outputs["endpointHost"].value == AZURE_INTERNAL_ADDRESS
    role = pki_role(run)
    assert role["allowed_domains"] == [AZURE_INTERNAL_ADDRESS] and role["allow_ip_sans"] is True
    assert role["allowed_ip_sans_cidr"] == [f"{AZURE_INTERNAL_ADDRESS}/32"]
    assert f"FORESIGHT_TLS_COMMON_NAME={AZURE_INTERNAL_ADDRESS}\n" in azure_user_data(run)


def test_spot_with_fallback_sizes_in_rank_order(run_azure_stack: RunStack) -> None:
    run = run_azure_stack(
        {
            "foresight:spot": "true",
            "foresight:fallbackInstanceTypes": '["Standard_NC8as_T4_v3", "Standard_NC24ads_A100_v4"]',
        }
    )
    scale_set = run.one(SCALE_SET).props
    assert scale_set["sku"] == {"name": "Mix", "capacity": 1}
    assert scale_set["skuProfile"]["allocationStrategy"] == "Prioritized"
    assert [(size["rank"], size["name"]) for size in scale_set["skuProfile"]["vmSizes"]] == [
        (0, "Standard_NC4as_T4_v3"),
        (1, "Standard_NC8as_T4_v3"),
        (2, "Standard_NC24ads_A100_v4"),
    ]
    profile = node_profile(run)
    assert (profile["priority"], profile["evictionPolicy"], profile["billingProfile"]) == (
        "Spot",
        "Delete",
        {"maxPrice": -1},
    )


def test_spot_node_evicted_and_deleted_is_restored_when_capacity_returns(run_azure_stack: RunStack) -> None:
    """A Delete eviction removes the VM; without Try & restore the scale set stays empty until someone scales it."""
    run = run_azure_stack({"foresight:spot": "true"})
    scale_set = run.one(SCALE_SET).props
    assert scale_set["spotRestorePolicy"] == {"enabled": True, "restoreTimeout": "PT2H"}  # 2 hours, the longest
    assert scale_set["virtualMachineProfile"]["evictionPolicy"] == "Delete"
    assert not [r for r in run if r.type.endswith(":AutoscaleSetting")]  # autoscale would turn Try & restore off


def test_ssh_key_is_installed_and_opens_22_to_allowed_cidrs_only(run_azure_stack: RunStack) -> None:
    run = run_azure_stack({"foresight:sshPublicKey": SSH_KEY})
    [key] = node_profile(run)["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
    assert key == {"path": "/home/foresight/.ssh/authorized_keys", "keyData": SSH_KEY}
    ssh = security_rules(run)["ssh-in"]
    assert ssh["sourceAddressPrefixes"] == ["203.0.113.0/24"] and ssh["destinationPortRanges"] == ["22"]
    assert "systemctl disable --now ssh.socket" not in azure_user_data(run)


def test_ssh_is_never_open_to_the_world_even_when_the_service_is(run_azure_stack: RunStack) -> None:
    run = run_azure_stack({"foresight:allowedCidrs": '["0.0.0.0/0"]', "foresight:sshPublicKey": SSH_KEY})
    rules = security_rules(run)
    assert rules["service-in"]["sourceAddressPrefixes"] == ["0.0.0.0/0"]
    assert "ssh-in" not in rules


def test_a_vault_token_in_the_config_is_refused_because_the_provider_would_store_it(run_azure_stack: RunStack) -> None:
    assert_vault_token_refused(run_azure_stack)


def test_custom_image_and_volume_size(run_azure_stack: RunStack) -> None:
    image = "registry.example.com/cache/foresight:1.2.3"
    run = run_azure_stack({"foresight:image": image, "foresight:volumeSizeGb": "500"})
    assert f"--log-driver journald {image}\n" in azure_user_data(run)
    assert node_profile(run)["storageProfile"]["dataDisks"][0]["diskSizeGB"] == 500


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"azure-native:location": None}, "azure-native:location: required"),
        ({"foresight:instanceType": "Standard_D4s_v5"}, "foresight:instanceType: 'Standard_D4s_v5' is not an Azure"),
        ({"foresight:instanceType": "g2-standard-4"}, "foresight:instanceType: 'g2-standard-4' is not an Azure"),
        ({"foresight:fallbackInstanceTypes": '["Standard_B2s"]'}, "foresight:fallbackInstanceTypes: 'Standard_B2s'"),
        ({**BYO, "foresight:vpcId": "shared-vnet"}, "foresight:vpcId: 'shared-vnet' is not a virtual network"),
        (
            {**BYO, "foresight:subnetIds": json.dumps([f"{VNET}/subnets/a", f"{VNET}/subnets/b"])},
            "foresight:subnetIds: give exactly one subnet",
        ),
        ({**BYO, "foresight:subnetIds": '["cache"]'}, "foresight:subnetIds: 'cache' is not a subnet resource id"),
        (
            {**BYO, "foresight:subnetIds": json.dumps([VNET.replace("shared-vnet", "other") + "/subnets/cache"])},
            "is not a subnet of foresight:vpcId",
        ),
    ],
)
def test_bad_config_fails_with_the_key_to_fix(
    run_azure_stack: RunStack, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        run_azure_stack(overrides)
    assert expected in str(info.value)


@pytest.mark.parametrize(("size", "fits"), [(65535, True), (65536, False)])
def test_custom_data_may_be_at_most_65535_bytes(
    run_azure_stack: RunStack, monkeypatch: pytest.MonkeyPatch, size: int, fits: bool
) -> None:
    """The Compute API decodes customData to a byte array of at most 65535 bytes (not 64 KiB)."""
    import stacks.azure.component

    header = "#cloud-config\n"
    monkeypatch.setattr(stacks.azure.component, "render_user_data", lambda _boot: header + "x" * (size - len(header)))
    if fits:
        assert len(azure_user_data(run_azure_stack()).encode()) == size
    else:
        with pytest.raises(ValueError, match="custom data is 65536 bytes, over Azure's 65535"):
            run_azure_stack()
