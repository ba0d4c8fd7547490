"""The AWS Marketplace launch template: the real validators pass it, it cannot drift from the AWS stack, it opens
nothing to the world by default, and its first boot mints a key that the service's own key source accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.exceptions
import pytest
import yaml
from cryptography import x509

import marketplace.first_boot
from marketplace.aws import first_boot, template
from marketplace.launch import SERVICE_IDS, STAGED_ENV_FILE
from service.config import Settings
from service.security.envelope import EnvelopeCipher
from service.security.kms.aws import AwsKms
from service.tenancy import FileKeySource
from stacks.aws.compute import (
    DATA_DEVICE,
    DATA_DISK_MODEL,
    GPU_FAMILIES,
    METADATA_HOP_LIMIT,
    ROOT_DEVICE,
    ROOT_VOLUME_GB,
)
from stacks.aws.identity import KMS_ACTIONS, audit_shipping_policy, origin_read_policy
from stacks.aws.kms import key_policy
from stacks.aws.network import WORLD
from stacks.spec import DEFAULT_INSTANCE_TYPES, HTTPS_PORT, RESP_PORT, SERVICE_PORTS, Cloud, StackSpec
from tests.images.tools import require_tool, run_checkov
from tests.marketplace.ca_key import assert_ca_key_sealed
from tests.marketplace.cloud_config import unit_commands
from tests.marketplace.metrics_token import assert_scrape_token_minted
from tests.servers import MotoServer, http_server
from tests.tlsutil import assert_tls_serves

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[2]
IMAGE_CONTRACT = REPO / "images/packer/cloud-init/user-data.example.yaml"
SAMPLE = {
    "KeyArn": "arn:aws:kms:us-east-1:123456789012:key/0d5b9e0e-1111-2222-3333-444455556666",
    "Region": "us-east-1",
    "SecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:demo-foresight-api-key-AbCdEf",
    "Tenant": "default",
    "PublicIp": "198.51.100.7",
}
STACK_NAME = "foresight-demo"


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return template.render("9.9.9")


@pytest.fixture(scope="module")
def template_file(rendered: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfn") / "foresight.template.json"
    path.write_text(json.dumps(rendered, indent=2))
    return path


def resources(rendered: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in rendered["Resources"].items() if r["Type"] == kind}


def launch_data(rendered: Mapping[str, Any]) -> dict[str, Any]:
    (lt,) = resources(rendered, "AWS::EC2::LaunchTemplate").values()
    return dict(lt["Properties"]["LaunchTemplateData"])


def resolve(node: Any, has_key: bool = False, audit_bucket: str = "") -> Any:
    """The user data's intrinsics with SAMPLE's values (and `audit_bucket` as AuditBucket), the way CloudFormation
    would fill them in."""
    by_intrinsic = {json.dumps(v, sort_keys=True): SAMPLE[k] for k, v in template._intrinsics().items() if k in SAMPLE}
    conditions = {"HasKeyName": has_key, "HasAuditBucket": bool(audit_bucket)}
    if isinstance(node, dict):
        if json.dumps(node, sort_keys=True) in by_intrinsic:
            return by_intrinsic[json.dumps(node, sort_keys=True)]
        if "Fn::Base64" in node:
            return resolve(node["Fn::Base64"], has_key, audit_bucket)
        if "Fn::Join" in node:
            separator, parts = node["Fn::Join"]
            return separator.join(resolve(part, has_key, audit_bucket) for part in parts)
        if "Fn::If" in node:
            condition, yes, no = node["Fn::If"]
            return resolve(yes if conditions[condition] else no, has_key, audit_bucket)
        if "Fn::Sub" in node:
            values = {"AuditBucket": audit_bucket, "AWS::StackName": STACK_NAME, "AWS::Partition": "aws"}
            return re.sub(r"\$\{([^}]+)\}", lambda m: values[m[1]], node["Fn::Sub"])
        raise AssertionError(f"unexpected intrinsic in the user data: {node}")
    return node


def user_data_text(rendered: Mapping[str, Any], has_key: bool = False, audit_bucket: str = "") -> str:
    return str(resolve(launch_data(rendered)["UserData"], has_key, audit_bucket))


# --- the real validators -------------------------------------------------------------------------------------


def test_cfn_lint_finds_nothing(template_file: Path) -> None:
    result = subprocess.run(
        [require_tool("cfn-lint"), "--include-checks", "I", "--", str(template_file)], capture_output=True, text=True
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_cfn_lint_would_catch_a_broken_template(rendered: dict[str, Any], tmp_path: Path) -> None:
    broken = json.loads(json.dumps(rendered))
    broken["Resources"]["Instance"]["DependsOn"].append("NoSuchResource")
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = subprocess.run([require_tool("cfn-lint"), str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and "NoSuchResource" in result.stdout


def test_checkov_has_no_failed_or_skipped_check(rendered: dict[str, Any], template_file: Path) -> None:
    report = run_checkov(template_file, "cloudformation")
    summary = report["summary"]
    assert summary["failed"] == 0, json.dumps(report["results"]["failed_checks"], indent=1)
    assert summary["skipped"] == 0 and summary["parsing_errors"] == 0, summary
    assert summary["resource_count"] == len(rendered["Resources"]), summary
    assert summary["passed"] >= 20, summary  # the checks really ran


# --- no drift from the AWS stack ------------------------------------------------------------------------------


def test_every_offered_instance_type_is_one_the_stack_deploys(rendered: dict[str, Any]) -> None:
    parameter = rendered["Parameters"]["InstanceType"]
    offered = parameter["AllowedValues"]
    assert parameter["Default"] == DEFAULT_INSTANCE_TYPES[Cloud.AWS] == offered[0]
    assert {t.rsplit(".", 1)[0] for t in offered} == GPU_FAMILIES
    config = {
        "aws:region": "us-east-1",
        "foresight:cloud": "aws",
        "foresight:allowedCidrs": '["203.0.113.0/24"]',
        "foresight:vaultAddress": "https://vault.example.com:8200",
        "foresight:fallbackInstanceTypes": json.dumps(offered),
    }
    spec = StackSpec.from_values("foresight", "test", config.get)
    from stacks.aws.compute import check_instance_types

    check_instance_types(spec)  # raises ConfigError naming the first type the stack would refuse
    assert set(spec.instance_types) == set(offered)


def test_security_group_admits_the_service_ports_from_the_allowed_cidr_only(rendered: dict[str, Any]) -> None:
    group = rendered["Resources"]["SecurityGroup"]["Properties"]
    ingress = group["SecurityGroupIngress"]
    assert sorted(rule["FromPort"] for rule in ingress) == sorted(SERVICE_PORTS)
    assert all(rule["FromPort"] == rule["ToPort"] and rule["CidrIp"] == {"Ref": "AllowedCidr"} for rule in ingress)
    assert [(rule["FromPort"], rule["ToPort"]) for rule in group["SecurityGroupEgress"]] == [(443, 443)]
    outputs = json.dumps(rendered["Outputs"])
    assert f"rediss://${{ElasticIp.PublicIp}}:{RESP_PORT}" in outputs
    assert f"https://${{ElasticIp.PublicIp}}:{HTTPS_PORT}" in outputs


def test_the_node_role_is_an_output_to_grant_origin_reads_to(rendered: dict[str, Any]) -> None:
    assert rendered["Resources"]["NodeRole"]["Type"] == "AWS::IAM::Role"
    assert rendered["Outputs"]["NodeRoleArn"]["Value"] == {"Fn::GetAtt": ["NodeRole", "Arn"]}


def test_node_role_and_key_policy_grant_the_stacks_kms_actions(rendered: dict[str, Any]) -> None:
    statements = rendered["Resources"]["NodePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    kms = next(s for s in statements if s["Resource"] == {"Fn::GetAtt": ["Key", "Arn"]})
    assert kms["Action"] == list(KMS_ACTIONS)
    policy = rendered["Resources"]["Key"]["Properties"]["KeyPolicy"]
    unsubbed = json.loads(json.dumps(policy), object_hook=lambda d: d.get("Fn::Sub", d) if len(d) == 1 else d)
    stack = json.loads(key_policy("${AWS::Partition}", "${AWS::AccountId}", "${NodeRole.Arn}"))
    by_sid = {s["Sid"]: s for s in stack["Statement"]}
    assert unsubbed["Statement"] == [by_sid["AccountAdministersTheKeyThroughIam"], by_sid["NodeRoleUsesTheKey"]]
    assert by_sid["NodeRoleUsesTheKey"]["Action"] == list(KMS_ACTIONS)


def test_volumes_and_metadata_match_the_stacks_launch_template(rendered: dict[str, Any]) -> None:
    data = launch_data(rendered)
    devices = {m["DeviceName"]: m["Ebs"]["VolumeSize"] for m in data["BlockDeviceMappings"]}
    assert devices == {ROOT_DEVICE: ROOT_VOLUME_GB, DATA_DEVICE: {"Ref": "VolumeSizeGb"}}
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == METADATA_HOP_LIMIT
    volume = rendered["Parameters"]["VolumeSizeGb"]
    field = StackSpec.model_fields["volume_size_gb"]
    assert volume["Default"] == field.default
    with pytest.raises(ValueError, match="greater than or equal"):
        StackSpec.model_validate({**_spec_fields(), "volumeSizeGb": volume["MinValue"] - 1})
    with pytest.raises(ValueError, match="less than or equal"):
        StackSpec.model_validate({**_spec_fields(), "volumeSizeGb": volume["MaxValue"] + 1})


def _spec_fields() -> dict[str, Any]:
    return {
        "project": "foresight",
        "stack": "test",
        "cloud": "aws",
        "region": "us-east-1",
        "allowedCidrs": ["203.0.113.0/24"],
        "vaultAddress": "https://vault.example.com:8200",
        "instanceType": "g6.xlarge",
    }


def test_service_settings_follow_the_images_contract_and_pass_production_checks(
    rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    contract = yaml.safe_load(IMAGE_CONTRACT.read_text())
    contract_env = next(f for f in contract["write_files"] if f["path"] == "/etc/foresight/foresight.env")["content"]
    environment = _staged_env(user_data_text(rendered))
    for name in ("FORESIGHT_TLS_CERT_FILE", "FORESIGHT_TLS_KEY_FILE", "FORESIGHT_TENANTS_FILE"):
        assert f"{name}={environment[name]}\n" in contract_env
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # what the service reads from the env file docker passes it
    assert settings.production_problems() == []
    assert (settings.kms_provider, settings.kms_key_id) == ("aws", SAMPLE["KeyArn"])
    assert environment["AWS_REGION"] == SAMPLE["Region"]


def _staged_env(text: str) -> dict[str, str]:
    document = yaml.safe_load(text)
    content = next(f for f in document["write_files"] if f["path"] == STAGED_ENV_FILE)["content"]
    return dict(line.split("=", 1) for line in content.splitlines())


# --- nothing open, nothing secret -----------------------------------------------------------------------------


def test_no_parameter_default_opens_a_port_to_the_world(rendered: dict[str, Any]) -> None:
    parameters = rendered["Parameters"]
    assert "Default" not in parameters["AllowedCidr"]
    assert all(p.get("Default") != str(WORLD) for p in parameters.values())
    pattern = re.compile(parameters["AllowedCidr"]["AllowedPattern"])
    assert pattern.fullmatch("203.0.113.0/24") and pattern.fullmatch("10.0.0.0/8")
    assert not any(pattern.fullmatch(bad) for bad in ("203.0.113.0", "256.1.1.1/24", "1.2.3.4/33", "::/0", ""))
    text = json.dumps(rendered["Resources"])
    assert text.count(f'"CidrIp": "{WORLD}"') == 1  # the HTTPS egress rule, nothing inbound
    vpc_pattern = re.compile(parameters["VpcCidr"]["AllowedPattern"])
    assert vpc_pattern.fullmatch(parameters["VpcCidr"]["Default"]) and not vpc_pattern.fullmatch("10.0.0.0/24")


def test_ssh_needs_a_key_pair_and_is_never_open_to_the_world(rendered: dict[str, Any]) -> None:
    ssh = rendered["Resources"]["SshIngress"]
    assert ssh["Condition"] == "SshAllowed" and ssh["Properties"]["CidrIp"] == {"Ref": "AllowedCidr"}
    condition = rendered["Conditions"]["SshAllowed"]["Fn::And"]
    assert {"Condition": "HasKeyName"} in condition
    assert {"Fn::Not": [{"Fn::Equals": [{"Ref": "AllowedCidr"}, str(WORLD)]}]} in condition
    assert "systemctl disable --now ssh.socket" in user_data_text(rendered, has_key=False)
    assert "ssh.socket" not in user_data_text(rendered, has_key=True)


def test_imdsv2_is_required(rendered: dict[str, Any]) -> None:
    options = launch_data(rendered)["MetadataOptions"]
    assert options["HttpTokens"] == "required" and options["HttpEndpoint"] == "enabled"
    assert "LaunchTemplate" in rendered["Resources"]["Instance"]["Properties"]


def test_every_volume_and_the_secret_are_encrypted_with_the_rotating_cmk(rendered: dict[str, Any]) -> None:
    key_arn = {"Fn::GetAtt": ["Key", "Arn"]}
    mappings = launch_data(rendered)["BlockDeviceMappings"]
    assert len(mappings) == 2
    assert all(m["Ebs"]["Encrypted"] is True and m["Ebs"]["KmsKeyId"] == key_arn for m in mappings)
    assert not resources(rendered, "AWS::EC2::Volume")
    assert "BlockDeviceMappings" not in rendered["Resources"]["Instance"]["Properties"]
    key = rendered["Resources"]["Key"]["Properties"]
    assert key["EnableKeyRotation"] is True and key["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert rendered["Resources"]["ApiKeySecret"]["Properties"]["KmsKeyId"] == {"Ref": "Key"}


def test_iam_statements_name_their_resources_and_actions(rendered: dict[str, Any]) -> None:
    statements = [
        s
        for policy in resources(rendered, "AWS::IAM::RolePolicy").values()
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert statements
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resource = json.dumps(resolve_origins(statement["Resource"], ["acme-products"], "aws"))
        # One folder's objects, and the objects of a bucket OriginBuckets names: no other wildcard.
        resource = resource.replace(f"{template.AUDIT_PREFIX}/*", "").replace("arn:aws:s3:::acme-products/*", "")
        assert statement["Effect"] == "Allow" and "*" not in resource, statement
        assert not any("*" in action for action in actions), statement
    secret = [s for s in statements if s["Resource"] == {"Ref": "ApiKeySecret"}]
    assert [s["Action"] for s in secret] == ["secretsmanager:PutSecretValue"]
    assert not any("Policies" in r["Properties"] for r in resources(rendered, "AWS::IAM::Role").values())


def test_user_data_holds_no_secret_and_fits_ec2s_limit(rendered: dict[str, Any]) -> None:
    text = user_data_text(rendered)
    assert len(text.encode()) < 16 * 1024
    for needle in (
        r"PRIVATE KEY",
        r"fsk_[a-z2-7]{12}_",
        r"AKIA[0-9A-Z]{16}",
        r"(?i)password\s*[:=]",
        r"[A-Za-z0-9+/]{40,}",
    ):
        assert not re.search(needle, text), needle
    assert not re.search(r"(?i)(token|secret|password|passwd|api_key)=", "".join(_staged_env(text)))
    outputs = json.dumps(rendered["Outputs"])
    assert "fsk_" not in outputs and "PRIVATE KEY" not in outputs


def test_user_data_passes_cloud_init_schema(rendered: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(user_data_text(rendered))
    result = subprocess.run(
        [require_tool("cloud-init"), "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr
    commands = unit_commands(yaml.safe_load(path.read_text()))
    assert commands["ExecStartPre"][1:] == [DATA_DISK_MODEL, SERVICE_IDS]
    assert commands["ExecStart"][1:3] == ["aws", SERVICE_IDS]
    options = dict(zip(commands["ExecStart"][3::2], commands["ExecStart"][4::2], strict=True))
    assert options == {"--secret-arn": SAMPLE["SecretArn"], "--tenant": SAMPLE["Tenant"],
                       "--public-ip": SAMPLE["PublicIp"]}


# --- first boot, for real: IMDSv2 fake, the moto server's Secrets Manager, the service's key source -----------


@pytest.fixture
def imds() -> Iterator[str]:
    """IMDSv2 as EC2 serves it, with the Elastic IP showing up only on the second look."""
    token = "imds-token"
    seen = {"public-ipv4": 0}
    metadata = {"local-ipv4": "10.42.0.17", "public-hostname": "ec2-198-51-100-7.compute-1.amazonaws.com"}

    def answer(method: str, path: str, raw_headers: dict[str, str], _body: bytes) -> tuple[int, str]:
        headers = {name.lower(): value for name, value in raw_headers.items()}
        if method == "PUT" and path == "/latest/api/token":
            return (200, token) if headers.get("x-aws-ec2-metadata-token-ttl-seconds") else (400, "no ttl")
        if headers.get("x-aws-ec2-metadata-token") != token:
            return 401, "IMDSv2 token required"
        name = path.removeprefix("/latest/meta-data/")
        if name == "public-ipv4":
            seen[name] += 1
            return (200, SAMPLE["PublicIp"]) if seen[name] > 1 else (404, "not associated yet")
        return (200, metadata[name]) if name in metadata else (404, "not found")

    with http_server(answer) as url:
        yield url


def moto_clients(moto: MotoServer) -> dict[str, str]:
    return {
        "region_name": "us-east-1",
        "endpoint_url": moto.endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }


def run_first_boot(
    out: Path, secret_arn: str, imds_url: str, moto: MotoServer, kms_key_arn: str
) -> subprocess.CompletedProcess[str]:
    """The module as first_boot.sh runs it: foresight.env's KMS settings (the stack's key) in the environment."""
    env = {
        **os.environ,
        "FORESIGHT_IMDS_ENDPOINT": imds_url,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FORESIGHT_KMS_PROVIDER": "aws",
        "FORESIGHT_KMS_KEY_ID": kms_key_arn,
        "FORESIGHT_KMS_ENDPOINT_URL": moto.endpoint,
    }
    argv = [
        sys.executable,
        "-m",
        "marketplace.aws.first_boot",
        "--out",
        str(out),
        "--tenant",
        "acme",
        "--secret-arn",
        secret_arn,
        "--public-ip",
        SAMPLE["PublicIp"],
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_first_boot_mints_a_key_the_service_accepts(imds: str, moto_server: MotoServer, tmp_path: Path) -> None:
    aws = moto_clients(moto_server)
    kms = boto3.client("kms", **aws)
    key_arn = kms.create_key()["KeyMetadata"]["Arn"]
    secrets = boto3.client("secretsmanager", **aws)
    arn = secrets.create_secret(Name=f"first-boot-{tmp_path.name}", KmsKeyId=key_arn)["ARN"]

    result = run_first_boot(tmp_path, arn, imds, moto_server, key_arn)

    assert result.returncode == 0, result.stderr
    document = json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])
    principal = FileKeySource(tmp_path / "tenants.json").authenticate(document["api_key"])
    assert principal is not None and principal.tenant == "acme" == document["tenant"]
    assert principal.key_id == document["key_id"] and "admin" in principal.scopes
    tampered = document["api_key"][:-1] + ("B" if document["api_key"].endswith("A") else "A")
    assert FileKeySource(tmp_path / "tenants.json").authenticate(tampered) is None
    assert document["api_key"] not in (tmp_path / "tenants.json").read_text()
    assert document["api_key"] not in result.stdout + result.stderr
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    assert document["ca_certificate"] == (tmp_path / "ca.crt").read_text()
    assert_tls_serves(tmp_path, host="ec2-198-51-100-7.compute-1.amazonaws.com")
    sans = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)} == {SAMPLE["PublicIp"], "10.42.0.17"}
    assert_ca_key_sealed(tmp_path, EnvelopeCipher(AwsKms(key_arn, client=kms)))  # the stack's key opens it
    assert_scrape_token_minted(tmp_path, document, result.stdout + result.stderr)


def test_first_boot_writes_nothing_when_the_secret_cannot_be_put(
    imds: str, moto_server: MotoServer, tmp_path: Path
) -> None:
    key_arn = boto3.client("kms", **moto_clients(moto_server)).create_key()["KeyMetadata"]["Arn"]
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:no-such-secret-AbCdEf"
    result = run_first_boot(tmp_path, missing, imds, moto_server, key_arn)
    assert result.returncode == 1 and "PutSecretValue" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_first_boot_imports_only_what_the_service_image_has() -> None:
    """It runs inside the service image, which has no Pulumi SDK and no stacks/ dependencies."""
    probe = (
        "import sys, marketplace.aws.first_boot; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pulumi_aws', 'stacks', 'boto3')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


# --- first boot waits out "not yet", as on Google Cloud and Azure ---------------------------------------------


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """with_retries' back-off without the sleeping (its deadline still counts)."""
    monkeypatch.setattr(marketplace.first_boot, "time", SimpleNamespace(monotonic=time.monotonic, sleep=lambda _: None))


@pytest.mark.usefixtures("no_waiting")
def test_first_boot_waits_out_imds_answers_that_mean_not_yet() -> None:
    """IMDS busy (503, 429) or refusing an expired token (401) is worth another look, as no answer at all is."""
    busy = iter([503, 429, 401])

    def answer(method: str, path: str, _headers: dict[str, str], _body: bytes) -> tuple[int, str]:
        if method == "PUT":
            return 200, "imds-token"
        status = next(busy, 200)
        values = {"public-ipv4": SAMPLE["PublicIp"], "local-ipv4": "10.42.0.17"}
        name = path.removeprefix("/latest/meta-data/")
        return (status, "busy") if status != 200 else ((200, values[name]) if name in values else (404, ""))

    with http_server(answer) as url:
        addresses = first_boot.wait_for_addresses(url, SAMPLE["PublicIp"], timeout_s=60)
    assert (addresses.public_ip, addresses.private_ip, addresses.public_hostname) == (
        SAMPLE["PublicIp"], "10.42.0.17", None
    )
    with pytest.raises(marketplace.first_boot.NotYet, match="meta-data/public-ipv4"):
        first_boot._imds("http://127.0.0.1:9", "GET", "meta-data/public-ipv4", {})  # nothing listens there


def test_first_boot_gives_up_on_imds_at_its_deadline_naming_the_last_answer() -> None:
    with http_server(lambda *_: (503, "busy")) as url, pytest.raises(first_boot.FirstBootError) as raised:
        first_boot.wait_for_addresses(url, SAMPLE["PublicIp"], timeout_s=1)
    assert "gave up waiting for IMDS to report the Elastic IP" in str(raised.value) and "503" in str(raised.value)


class SecretsManager:
    """put_secret_value answering `errors` (Secrets Manager error codes) first, then success."""

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        self.calls: list[dict[str, str]] = []

    def put_secret_value(self, **request: str) -> dict[str, str]:
        self.calls.append(request)
        if self.errors:
            code = self.errors.pop(0)
            response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": 400}}
            raise botocore.exceptions.ClientError(response, "PutSecretValue")
        return {"ARN": request["SecretId"], "VersionId": request["ClientRequestToken"]}


@pytest.mark.usefixtures("no_waiting")
def test_first_boot_retries_the_put_while_the_grant_propagates_with_one_request_token() -> None:
    secrets = SecretsManager("AccessDeniedException", "EncryptionFailure", "ThrottlingException")
    first_boot.put_secret(secrets, SAMPLE["SecretArn"], '{"api_key": "x"}')
    assert len(secrets.calls) == 4
    # An attempt that succeeded unseen makes the next one a no-op, not a second version.
    assert len({call["ClientRequestToken"] for call in secrets.calls}) == 1


@pytest.mark.usefixtures("no_waiting")
def test_first_boot_does_not_retry_an_answer_that_will_not_change() -> None:
    secrets = SecretsManager("ResourceNotFoundException")
    with pytest.raises(first_boot.FirstBootError, match=r"PutSecretValue on .*ResourceNotFoundException"):
        first_boot.put_secret(secrets, SAMPLE["SecretArn"], '{"api_key": "x"}')
    assert len(secrets.calls) == 1


def test_an_audit_bucket_gets_the_stacks_statements_on_this_stacks_folder_and_the_node_ships_there(
    rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = rendered["Resources"]["AuditPolicy"]
    assert policy["Condition"] == "HasAuditBucket" and policy["Properties"]["RoleName"] == {"Ref": "NodeRole"}
    spec = StackSpec.model_validate({**_spec_fields(), "stack": STACK_NAME.removeprefix("foresight-"),
                                     "auditBucket": "acme-audit"})
    statements = json.loads(json.dumps(policy["Properties"]["PolicyDocument"]["Statement"]),
                            object_hook=lambda d: resolve(d, audit_bucket="acme-audit") if "Fn::Sub" in d else d)
    assert statements == json.loads(audit_shipping_policy(spec, "aws"))["Statement"]  # the stack's, same folder
    pattern = re.compile(rendered["Parameters"]["AuditBucket"]["AllowedPattern"])
    assert all(pattern.fullmatch(ok) for ok in ("", "acme-audit", "logs.acme.example"))
    assert not any(pattern.fullmatch(bad) for bad in ("Acme", "s3://acme-audit", "a", "acme_audit"))
    environment = _staged_env(user_data_text(rendered, audit_bucket="acme-audit"))
    assert environment["FORESIGHT_AUDIT_SHIP_URL"] == f"s3://acme-audit/foresight/{STACK_NAME}"
    assert spec.audit_ship_url == environment["FORESIGHT_AUDIT_SHIP_URL"]
    monkeypatch.setenv("FORESIGHT_AUDIT_SHIP_URL", environment["FORESIGHT_AUDIT_SHIP_URL"])
    assert Settings().audit_ship_url == spec.audit_ship_url
    assert _staged_env(user_data_text(rendered))["FORESIGHT_AUDIT_SHIP_URL"] == ""  # no bucket: nothing shipped


def resolve_origins(node: Any, buckets: list[str], partition: str) -> Any:
    """The origin policy's intrinsics with `buckets` as OriginBuckets, in `partition`, as CloudFormation would."""
    conditions = {"InAwsCn": partition == "aws-cn", "InAwsUsGov": partition == "aws-us-gov"}
    if isinstance(node, list):
        return [resolve_origins(item, buckets, partition) for item in node]
    if not isinstance(node, dict):
        return node
    if node == {"Ref": "OriginBuckets"}:
        return buckets
    if "Fn::If" in node:
        condition, yes, no = node["Fn::If"]
        return resolve_origins(yes if conditions[condition] else no, buckets, partition)
    if "Fn::Split" in node:
        separator, text = node["Fn::Split"]
        return resolve_origins(text, buckets, partition).split(separator)
    if "Fn::Join" in node:
        separator, parts = node["Fn::Join"]
        return separator.join(resolve_origins(parts, buckets, partition))
    return {key: resolve_origins(value, buckets, partition) for key, value in node.items()}


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
@pytest.mark.parametrize("buckets", [["acme-products"], ["acme-products", "media.acme.example", "acme-logs"]],
                         ids=["one", "three"])
def test_origin_buckets_get_the_stacks_read_statements_in_the_stacks_partition(
    rendered: dict[str, Any], buckets: list[str], partition: str
) -> None:
    policy = rendered["Resources"]["OriginPolicy"]
    assert policy["Condition"] == "HasOriginBuckets" and policy["Properties"]["RoleName"] == {"Ref": "NodeRole"}
    spec = StackSpec.model_validate({**_spec_fields(), "originBuckets": buckets})
    statements = resolve_origins(policy["Properties"]["PolicyDocument"]["Statement"], buckets, partition)
    assert statements == json.loads(origin_read_policy(spec, partition))["Statement"]  # what the stacks grant


def test_origin_buckets_are_checked_one_by_one_and_none_grants_nothing(rendered: dict[str, Any]) -> None:
    parameter = rendered["Parameters"]["OriginBuckets"]
    assert parameter["Type"] == "CommaDelimitedList" and parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])  # CloudFormation matches each item of a list against it
    assert all(pattern.fullmatch(ok) for ok in ("", "acme-products", "media.acme.example"))
    assert not any(pattern.fullmatch(bad) for bad in ("Acme", "s3://acme-products", "acme-products/catalog"))
    (joined,) = rendered["Conditions"]["HasOriginBuckets"]["Fn::Not"][0]["Fn::Equals"][:1]
    assert resolve_origins(joined, [""], "aws") == ""  # the default, [""]: no policy
    assert resolve_origins(joined, ["acme-products"], "aws") != ""
