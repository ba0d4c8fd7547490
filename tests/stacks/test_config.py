"""Stack configuration: bad values fail before anything is created, with an error that names the key to fix."""

from __future__ import annotations

import pytest

from stacks.spec import CONFIG_KEYS, REQUIRED_KEYS, ConfigError, StackOutputs, StackSpec
from tests.stacks.conftest import RunStack
from tests.stacks.mockrun import REQUIRED_CONFIG

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n-----END OPENSSH PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"foresight:cloud": None}, "foresight:cloud: required"),
        ({"foresight:cloud": "openstack"}, "foresight:cloud: Input should be 'aws', 'gcp' or 'azure'"),
        ({"foresight:allowedCidrs": None}, "foresight:allowedCidrs: required"),
        ({"foresight:allowedCidrs": '["10.0.0.0/33"]'}, "foresight:allowedCidrs: '10.0.0.0/33' is not a valid CIDR"),
        ({"foresight:allowedCidrs": '["10.0.0.1/24"]'}, "foresight:allowedCidrs: '10.0.0.1/24' has host bits set"),
        ({"foresight:allowedCidrs": '["2001:db8::/32"]'}, "foresight:allowedCidrs: '2001:db8::/32' is IPv6"),
        ({"foresight:allowedCidrs": "203.0.113.0/24"}, "foresight:allowedCidrs: must be a list of strings"),
        ({"foresight:vaultAddress": None}, "foresight:vaultAddress: required"),
        (
            {"foresight:vaultAddress": "http://vault:8200"},
            "foresight:vaultAddress: 'http://vault:8200' must be an https",
        ),
        ({"foresight:vaultAddress": "https://vault/v1/x"}, "foresight:vaultAddress: 'https://vault/v1/x' must be the"),
        ({"aws:region": None}, "aws:region: required"),
        ({"foresight:instanceType": "m5.large"}, "foresight:instanceType: 'm5.large' is not an NVIDIA GPU type"),
        ({"foresight:fallbackInstanceTypes": '["t3.micro"]'}, "foresight:fallbackInstanceTypes: 't3.micro' is not"),
        ({"foresight:spot": "maybe"}, "foresight:spot: Input should be a valid boolean"),
        ({"foresight:volumeSizeGb": "5"}, "foresight:volumeSizeGb: Input should be greater than or equal to 20"),
        ({"foresight:image": "ghcr.io/x/y:1; rm -rf /"}, "foresight:image: 'ghcr.io/x/y:1; rm -rf /' is not an image"),
        ({"foresight:vpcId": "vpc-0123456789abcdef0"}, "foresight:subnetIds: required with foresight:vpcId"),
        ({"foresight:subnetIds": '["subnet-0123abcd"]'}, "foresight:vpcId: required with foresight:subnetIds"),
        (
            {"foresight:vpcId": "vpc_main", "foresight:subnetIds": '["subnet-0123abcd"]'},
            "foresight:vpcId: 'vpc_main' is not a VPC id",
        ),
        ({"foresight:sshPublicKey": PRIVATE_KEY}, "foresight:sshPublicKey: this is a private key"),
        ({"foresight:sshPublicKey": "AAAAC3Nza"}, "foresight:sshPublicKey: must be one OpenSSH public key line"),
        ({"foresight:vaultToken": "hvs.plaintext"}, "foresight:vaultToken: is refused: a token given to Pulumi's"),
    ],
)
def test_bad_config_fails_with_the_key_to_fix(
    run_stack: RunStack, overrides: dict[str, str | None], expected: str
) -> None:
    with pytest.raises(ConfigError) as failure:
        run_stack(overrides)
    assert expected in str(failure.value), str(failure.value)


def test_every_problem_is_reported_at_once(run_stack: RunStack) -> None:
    with pytest.raises(ConfigError) as failure:
        run_stack({"foresight:allowedCidrs": None, "foresight:vaultAddress": None})
    assert failure.value.keys == ["foresight:allowedCidrs", "foresight:vaultAddress"]


def test_instance_type_not_offered_in_the_region_names_the_key(run_stack: RunStack) -> None:
    def no_offerings(token: str, args: dict[str, object]) -> dict[str, object]:
        from tests.stacks.mockrun import fake_cloud_invoke

        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            return {"id": "us-east-1", "instanceTypes": [], "locations": [], "locationTypes": []}
        return fake_cloud_invoke(token, args)

    with pytest.raises(
        ConfigError, match=r"foresight:instanceType: g6\.xlarge is not offered in any zone of us-east-1"
    ):
        run_stack(invoke=no_offerings)


def _spec(**values: str) -> StackSpec:
    config = {**REQUIRED_CONFIG, **{f"foresight:{key}": value for key, value in values.items()}}
    return StackSpec.from_values("foresight", "dev", config.get)


def test_defaults_apply_when_only_required_keys_are_set() -> None:
    spec = _spec()
    assert spec.instance_type == "g6.xlarge"
    assert spec.fallback_instance_types == ()
    assert spec.spot is False
    assert spec.image == "ghcr.io/foresight/foresight:0.1.0"
    assert spec.vpc_id is None and spec.subnet_ids == ()
    assert spec.ssh_public_key is None
    assert spec.volume_size_gb == 100
    assert spec.region == "us-east-1"


def test_empty_strings_from_project_defaults_mean_unset() -> None:
    spec = _spec(instanceType="", vpcId="", sshPublicKey="", vaultToken="", subnetIds="[]")
    assert (spec.instance_type, spec.vpc_id, spec.ssh_public_key) == ("g6.xlarge", None, None)


def test_public_endpoint_follows_the_allowed_ranges() -> None:
    assert _spec(allowedCidrs='["203.0.113.0/24"]').public_endpoint is True
    assert _spec(allowedCidrs='["10.1.0.0/16", "172.20.0.0/16"]').public_endpoint is False
    assert _spec(allowedCidrs="[]").public_endpoint is False


def test_duplicate_cidrs_and_types_collapse_and_order_is_kept() -> None:
    spec = _spec(allowedCidrs='["10.0.0.0/8", "10.0.0.0/8"]', fallbackInstanceTypes='["g5.xlarge", "g6.xlarge"]')
    assert [str(c) for c in spec.allowed_cidrs] == ["10.0.0.0/8"]
    assert spec.instance_types == ("g6.xlarge", "g5.xlarge")


def test_every_config_key_has_a_field_and_required_ones_have_no_default() -> None:
    aliases = {field.alias or name for name, field in StackSpec.model_fields.items()}
    assert set(CONFIG_KEYS) <= aliases
    for name, field in StackSpec.model_fields.items():
        if (field.alias or name) in REQUIRED_KEYS:
            assert field.is_required(), name


def test_outputs_share_one_set_of_names() -> None:
    names = [StackOutputs.export_name(field) for field in StackOutputs.__dataclass_fields__]
    assert names == [
        "endpointHost",
        "respPort",
        "httpsPort",
        "caCertificate",
        "kmsKeyId",
        "vaultRole",
        "vaultAuthMount",
        "vaultKvMount",
        "instanceId",
        "nodeIdentity",
    ]
