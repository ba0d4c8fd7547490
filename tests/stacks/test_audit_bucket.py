"""foresight:auditBucket on every cloud, one node and scale-out: the nodes' (or pods') identity gets write access
to the stack's folder of the customer's bucket and nothing more, and the service is told where to ship."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from service.security.audit_shipping import AuditShipper
from stacks.aws.identity import audit_shipping_policy
from stacks.azure.identity import BLOB_DATA_CONTRIBUTOR
from stacks.gcp.identity import AUDIT_ROLES
from stacks.spec import ConfigError, StackSpec
from tests.stacks.conftest import RunStack
from tests.stacks.iam_moto import IamMoto
from tests.stacks.mockrun import (
    AZURE_NODE_PRINCIPAL,
    AZURE_POD_PRINCIPAL,
    GCP_PROJECT,
    REQUIRED_CONFIG,
    MockRun,
    user_data,
)
from tests.stacks.policy_harness import POLICIES, violations
from tests.stacks.test_azure_stack import azure_user_data
from tests.stacks.test_gcp_stack import gcp_user_data

SCALE_OUT = {"foresight:scaleOut": "true", "foresight:nodes": "3"}
AUDIT_SUBSCRIPTION = "11111111-2222-4333-8444-555555555555"  # not the stack's: the container may live elsewhere
CONTAINER = (f"/subscriptions/{AUDIT_SUBSCRIPTION}/resourceGroups/audit-rg/providers/Microsoft.Storage/"
             "storageAccounts/acmeaudit/blobServices/default/containers/trail")


def audit_config(bucket: str, scale_out: bool = False) -> dict[str, str]:
    return {"foresight:auditBucket": bucket, **(SCALE_OUT if scale_out else {})}


def config_map(run: MockRun) -> dict[str, Any]:
    (settings,) = [r for r in run.of_type("kubernetes:core/v1:ConfigMap") if r.name.endswith("-env")]
    return dict(settings.props["data"])


def assert_told_to_ship(run: MockRun, url: str, scale_out: bool, user_data_of: Callable[[MockRun], str]) -> None:
    """The pods' ConfigMap, or the node's env file, sets FORESIGHT_AUDIT_SHIP_URL to `url`."""
    if scale_out:
        assert config_map(run)["FORESIGHT_AUDIT_SHIP_URL"] == url
    else:
        assert f"FORESIGHT_AUDIT_SHIP_URL={url}\n" in user_data_of(run)


def assert_policies_pass(run: MockRun) -> None:
    for resource in run:
        for name in POLICIES:
            assert violations(name, resource.type, resource.inputs) == [], (resource.name, name)


@pytest.mark.parametrize("scale_out", [False, True], ids=["node", "scale-out"])
def test_aws_grants_put_and_get_on_the_stacks_folder_and_a_list_limited_to_it(
    run_stack: RunStack, scale_out: bool
) -> None:
    run = run_stack(audit_config("acme-audit", scale_out))
    name, role = ("foresight-pods-audit", "foresight-pods") if scale_out else ("foresight-audit", "foresight-node")
    (policy,) = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == name]
    assert policy.props["role"].startswith(role)
    assert json.loads(policy.props["policy"])["Statement"] == [
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"],
         "Resource": "arn:aws:s3:::acme-audit/foresight/foresight-aws-test/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::acme-audit",
         "Condition": {"StringLike": {"s3:prefix": "foresight/foresight-aws-test/*"}}},
    ]
    url = "s3://acme-audit/foresight/foresight-aws-test"
    assert_told_to_ship(run, url, scale_out, user_data)
    assert not run.of_type("aws:s3/bucket:Bucket") and not run.of_type("aws:s3/bucketV2:BucketV2")  # theirs
    assert_policies_pass(run)


@pytest.mark.parametrize("scale_out", [False, True], ids=["node", "scale-out"])
def test_gcp_grants_create_and_view_on_the_bucket_to_the_nodes_or_the_pods_account(
    run_gcp_stack: RunStack, scale_out: bool
) -> None:
    run = run_gcp_stack(audit_config("acme_audit", scale_out))
    members = run.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert sorted(m.props["role"] for m in members) == sorted(AUDIT_ROLES)
    (account,) = [a.props["accountId"] for a in run.of_type("gcp:serviceaccount/account:Account")
                  if a.name == ("foresight-pods" if scale_out else "foresight-node")]
    assert {(m.props["bucket"], m.props["member"]) for m in members} == {
        ("acme_audit", f"serviceAccount:{account}@{GCP_PROJECT}.iam.gserviceaccount.com")}
    url = "gs://acme_audit/foresight/foresight-gcp-test"
    assert_told_to_ship(run, url, scale_out, gcp_user_data)
    assert_policies_pass(run)


@pytest.mark.parametrize("scale_out", [False, True], ids=["node", "scale-out"])
def test_azure_assigns_blob_data_contributor_on_the_container_only(run_azure_stack: RunStack, scale_out: bool) -> None:
    run = run_azure_stack(audit_config(CONTAINER, scale_out))
    name = "foresight-pods-audit" if scale_out else "foresight-audit"
    (grant,) = [r for r in run.of_type("azure-native:authorization:RoleAssignment") if r.name == name]
    assert grant.props["scope"] == CONTAINER
    assert grant.props["principalId"] == (AZURE_POD_PRINCIPAL if scale_out else AZURE_NODE_PRINCIPAL)
    assert grant.props["roleDefinitionId"] == (
        f"/subscriptions/{AUDIT_SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{BLOB_DATA_CONTRIBUTOR}")
    url = "az://trail@acmeaudit.blob.core.windows.net/foresight/foresight-azure-test"
    assert_told_to_ship(run, url, scale_out, azure_user_data)
    assert_policies_pass(run)


def test_without_a_bucket_nothing_is_granted_and_nothing_is_shipped(
    baseline: MockRun, gcp_baseline: MockRun, azure_baseline: MockRun
) -> None:
    assert not [r for r in baseline.of_type("aws:iam/rolePolicy:RolePolicy") if r.name.endswith("-audit")]
    assert not gcp_baseline.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert not [r for r in azure_baseline.of_type("azure-native:authorization:RoleAssignment")
                if r.name.endswith("-audit")]
    assert "FORESIGHT_AUDIT_SHIP_URL" not in user_data(baseline) + gcp_user_data(gcp_baseline)
    assert "FORESIGHT_AUDIT_SHIP_URL" not in azure_user_data(azure_baseline)


@pytest.mark.parametrize(
    ("runner", "bucket", "expected"),
    [
        ("run_stack", "Acme-Audit", "'Acme-Audit' is not an S3 bucket name"),
        ("run_stack", "s3://acme-audit", "'s3://acme-audit' is not an S3 bucket name"),
        ("run_gcp_stack", "gs://acme", "is not a Cloud Storage bucket name"),
        ("run_azure_stack", "acmeaudit/trail", "is not a blob container's resource id"),
        ("run_azure_stack", CONTAINER.replace("containers/trail", "containers/-x"), "resource id"),
    ],
)
def test_a_bucket_that_is_not_the_clouds_kind_is_refused_naming_the_key(
    runner: str, bucket: str, expected: str, request: pytest.FixtureRequest
) -> None:
    run: RunStack = request.getfixturevalue(runner)
    with pytest.raises(ConfigError, match=expected) as caught:
        run({"foresight:auditBucket": bucket})
    assert caught.value.keys == ["foresight:auditBucket"]



def _ship_as(
    moto: IamMoto, keys: dict[str, str], host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AuditShipper:
    moto.bucket("acme-audit")
    with moto.acting_as(keys, monkeypatch):
        shipper = AuditShipper(AUDIT_SPEC.audit_ship_url or "", host)
        rotated = tmp_path / "audit.20261128T000000000000Z.log.fse"
        rotated.write_bytes(b"archive" * 100)
        shipper.ship([rotated])
    return shipper


AUDIT_SPEC = StackSpec.from_values("foresight", "prod", {**REQUIRED_CONFIG, "foresight:auditBucket": "acme-audit"}.get)


def test_the_node_policy_lets_the_shipper_ship_and_nothing_else_on_a_real_iam_evaluation(
    iam_moto: IamMoto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = iam_moto.user_with("node", audit_shipping_policy(AUDIT_SPEC, "aws"))
    shipper = _ship_as(iam_moto, keys, "host1", tmp_path, monkeypatch)
    assert shipper.shipped_files == 1
    listed = iam_moto.client("s3").list_objects_v2(Bucket="acme-audit", Prefix="foresight/")["Contents"]
    assert [o["Key"] for o in listed] == ["foresight/foresight-prod/host1/audit.20261128T000000000000Z.log.fse"]
    node = iam_moto.client("s3", **keys)
    for call in (lambda: node.put_object(Bucket="acme-audit", Key="elsewhere/x", Body=b"1"),
                 lambda: node.delete_object(Bucket="acme-audit", Key=listed[0]["Key"]),
                 lambda: node.get_object(Bucket="acme-audit", Key="elsewhere/x")):
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            call()


def test_without_the_list_statement_shipping_fails_and_says_so(
    iam_moto: IamMoto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    policy = json.loads(audit_shipping_policy(AUDIT_SPEC, "aws"))
    policy["Statement"] = [s for s in policy["Statement"] if s["Action"] != "s3:ListBucket"]
    keys = iam_moto.user_with("node-no-list", json.dumps(policy))
    shipper = _ship_as(iam_moto, keys, "host2", tmp_path, monkeypatch)
    assert shipper.shipped_files == 0 and not shipper.has(tmp_path / "audit.20261128T000000000000Z.log.fse")
    assert any("not shipped" in r.message for r in caplog.records)
