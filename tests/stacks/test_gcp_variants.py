"""The Google Cloud program with optional and bad config: bring-your-own network, private only, spot with
fallbacks, SSH, a refused Vault token, and the errors that name the key to fix."""

from __future__ import annotations

from typing import Any

import pytest

from stacks.spec import ConfigError
from tests.stacks.conftest import RunStack
from tests.stacks.endpoint_tls import assert_vault_token_refused
from tests.stacks.mockrun import BYO_SUBNET_CIDR, GCP_INTERNAL_ADDRESS, MockRun, fake_cloud_invoke
from tests.stacks.test_gcp_stack import FIREWALL, GROUP, TEMPLATE, firewall

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHrYwJmqmn0Dbj1o4Qh0XGnQKiqLQ9Nn3mTBRJm8Ifj8 ops@example"
BYO = {"foresight:vpcId": "shared-vpc", "foresight:subnetIds": '["cache-subnet"]'}
NETWORK_TYPES = (
    "gcp:compute/network:Network",
    "gcp:compute/subnetwork:Subnetwork",
    "gcp:compute/router:Router",
    "gcp:compute/routerNat:RouterNat",
)


def test_bring_your_own_network_creates_no_network(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack(BYO)
    assert not [r.type for r in run if r.type in NETWORK_TYPES]
    subnet = run.one(TEMPLATE).props["networkInterfaces"][0]["subnetwork"]
    assert subnet.endswith("/regions/us-central1/subnetworks/cache-subnet")
    assert all(r.props["network"] == "shared-vpc" for r in run.of_type(FIREWALL))
    lookups = [args for token, args in run.invokes if token == "gcp:compute/getSubnetwork:getSubnetwork"]
    assert lookups == [{"name": "cache-subnet", "region": "us-central1"}]


def test_private_only_keeps_the_endpoint_internal_and_open_to_the_subnet(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack({**BYO, "foresight:allowedCidrs": "[]"})
    address = run.one("gcp:compute/address:Address").props
    assert address["addressType"] == "INTERNAL" and address["subnetwork"].endswith("/subnetworks/cache-subnet")
    rule = run.one("gcp:compute/forwardingRule:ForwardingRule").props
    assert rule["loadBalancingScheme"] == "INTERNAL" and rule["network"] == "shared-vpc"
    assert run.one("gcp:compute/regionBackendService:RegionBackendService").props["loadBalancingScheme"] == "INTERNAL"
    assert firewall(run, "service-in")["sourceRanges"] == [BYO_SUBNET_CIDR]
    assert run.outputs["endpointHost"].value == GCP_INTERNAL_ADDRESS


def test_private_ranges_keep_the_load_balancer_internal(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack({"foresight:allowedCidrs": '["10.8.0.0/16"]'})
    assert run.one("gcp:compute/address:Address").props["addressType"] == "INTERNAL"
    assert firewall(run, "service-in")["sourceRanges"] == ["10.8.0.0/16"]


def test_spot_with_fallback_types_in_rank_order(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack(
        {"foresight:spot": "true", "foresight:fallbackInstanceTypes": '["g2-standard-8", "a2-highgpu-1g"]'}
    )
    scheduling = run.one(TEMPLATE).props["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT" and scheduling["preemptible"] is True
    assert scheduling["automaticRestart"] is False and scheduling["instanceTerminationAction"] == "DELETE"
    selections = run.one(GROUP).props["instanceFlexibilityPolicy"]["instanceSelections"]
    assert [(s["rank"], s["machineTypes"]) for s in selections] == [
        (0, ["g2-standard-4"]),
        (1, ["g2-standard-8"]),
        (2, ["a2-highgpu-1g"]),
    ]


def disk_types(run: MockRun) -> list[str]:
    return [disk["diskType"] for disk in run.one(TEMPLATE).props["disks"]]


@pytest.mark.parametrize("machine_type", ["g2-standard-4", "a2-highgpu-1g", "a3-highgpu-8g"])
def test_machine_types_that_take_persistent_disk_keep_pd_balanced(run_gcp_stack: RunStack, machine_type: str) -> None:
    run = run_gcp_stack({"foresight:instanceType": machine_type})
    assert run.one(TEMPLATE).props["machineType"] == machine_type
    assert disk_types(run) == ["pd-balanced", "pd-balanced"]


def test_a3_ultra_takes_no_persistent_disk_so_its_disks_are_hyperdisk_balanced(run_gcp_stack: RunStack) -> None:
    """Google: A3 Ultra "can't use Persistent Disk (regional or zonal)", and Hyperdisk Balanced is the only boot disk
    type it supports. The stack's key, sizes and device name are the same as on pd-balanced."""
    run = run_gcp_stack({"foresight:instanceType": "a3-ultragpu-8g", "foresight:volumeSizeGb": "500"})
    disks = run.one(TEMPLATE).props["disks"]
    assert disk_types(run) == ["hyperdisk-balanced", "hyperdisk-balanced"]
    assert all(disk["diskEncryptionKey"]["kmsKeySelfLink"] == run.outputs["kmsKeyId"].value for disk in disks)
    assert (disks[0]["diskSizeGb"], disks[1]["diskSizeGb"], disks[1]["deviceName"]) == (100, 500, "foresight-data")
    assert not any("provisionedIops" in disk or "provisionedThroughput" in disk for disk in disks)  # Google's defaults


def test_a3_ultra_with_an_a3_high_fallback_puts_both_on_hyperdisk_balanced(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack(
        {"foresight:instanceType": "a3-highgpu-8g", "foresight:fallbackInstanceTypes": '["a3-ultragpu-8g"]'}
    )
    assert disk_types(run) == ["hyperdisk-balanced", "hyperdisk-balanced"]  # A3 High takes both, A3 Ultra one
    selections = run.one(GROUP).props["instanceFlexibilityPolicy"]["instanceSelections"]
    assert [s["machineTypes"] for s in selections] == [["a3-highgpu-8g"], ["a3-ultragpu-8g"]]


def test_ssh_key_replaces_os_login_and_opens_22_to_allowed_cidrs_only(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack({"foresight:sshPublicKey": SSH_KEY})
    metadata = run.one(TEMPLATE).props["metadata"]
    assert metadata["ssh-keys"] == f"foresight:{SSH_KEY}" and metadata["enable-oslogin"] == "FALSE"
    ssh = firewall(run, "ssh-in")
    assert ssh["sourceRanges"] == ["203.0.113.0/24"] and ssh["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert "systemctl disable --now ssh.socket" not in metadata["user-data"]


def test_ssh_is_never_open_to_the_world_even_when_the_service_is(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack({"foresight:allowedCidrs": '["0.0.0.0/0"]', "foresight:sshPublicKey": SSH_KEY})
    assert firewall(run, "service-in")["sourceRanges"] == ["0.0.0.0/0"]
    assert not [r for r in run.of_type(FIREWALL) if r.name.endswith("ssh-in")]


def test_a_vault_token_in_the_config_is_refused_because_the_provider_would_store_it(run_gcp_stack: RunStack) -> None:
    assert_vault_token_refused(run_gcp_stack)


def test_custom_image_and_volume_size(run_gcp_stack: RunStack) -> None:
    image = "registry.example.com/cache/foresight:1.2.3"
    run = run_gcp_stack({"foresight:image": image, "foresight:volumeSizeGb": "500"})
    assert f"--log-driver journald {image}\n" in run.one(TEMPLATE).props["metadata"]["user-data"]
    assert run.one(TEMPLATE).props["disks"][1]["diskSizeGb"] == 500


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"gcp:region": None}, "gcp:region: required"),
        ({"foresight:instanceType": "n1-standard-4"}, "foresight:instanceType: 'n1-standard-4' is not a Google Cloud"),
        ({"foresight:instanceType": "g6.xlarge"}, "foresight:instanceType: 'g6.xlarge' is not a Google Cloud"),
        ({"foresight:fallbackInstanceTypes": '["e2-medium"]'}, "foresight:fallbackInstanceTypes: 'e2-medium' is not"),
        (
            {"foresight:fallbackInstanceTypes": '["a3-ultragpu-8g"]'},
            "foresight:fallbackInstanceTypes: no disk type fits every machine type: g2-standard-4 takes pd-balanced, "
            "a3-ultragpu-8g takes hyperdisk-balanced",
        ),
        ({**BYO, "foresight:vpcId": "Shared_VPC"}, "foresight:vpcId: 'Shared_VPC' is not a VPC network name"),
        ({**BYO, "foresight:subnetIds": '["a", "b"]'}, "foresight:subnetIds: give exactly one subnet"),
        (
            {**BYO, "foresight:subnetIds": '["projects/p/regions/europe-west4/subnetworks/s"]'},
            "foresight:subnetIds: 'projects/p/regions/europe-west4/subnetworks/s' is in europe-west4",
        ),
    ],
)
def test_bad_config_fails_with_the_key_to_fix(
    run_gcp_stack: RunStack, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        run_gcp_stack(overrides)


def test_machine_type_not_offered_in_the_region_names_the_key(run_gcp_stack: RunStack) -> None:
    def nowhere(token: str, args: dict[str, Any]) -> dict[str, Any]:
        if token == "gcp:compute/getMachineTypes:getMachineTypes":
            return {"id": args["zone"], "machineTypes": []}
        return fake_cloud_invoke(token, args)

    with pytest.raises(
        ConfigError, match=r"foresight:instanceType: g2-standard-4 is not offered in any zone of us-central1"
    ):
        run_gcp_stack(invoke=nowhere)


def test_a_provider_without_a_project_names_the_key(run_gcp_stack: RunStack) -> None:
    def no_project(token: str, args: dict[str, Any]) -> dict[str, Any]:
        if token == "gcp:organizations/getProject:getProject":
            return {"id": "projects/"}
        return fake_cloud_invoke(token, args)

    with pytest.raises(ConfigError, match="gcp:project: required"):
        run_gcp_stack(invoke=no_project)
