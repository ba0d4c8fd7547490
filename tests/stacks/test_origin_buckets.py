"""foresight:originBuckets on every cloud, one node and scale-out: the nodes' (or pods') identity gets read on each
tenant origin bucket named and nothing that writes; on AWS the policy is checked by what it lets the service's own
origin do against an IAM-enforcing moto."""

from __future__ import annotations

import json

import botocore.exceptions
import pytest

from service.origin import FsspecOrigin, OriginError
from stacks.aws.identity import origin_read_policy
from stacks.azure.identity import BLOB_DATA_READER
from stacks.gcp.identity import ORIGIN_ROLE
from stacks.spec import ConfigError, StackSpec
from tests.stacks.conftest import RunStack
from tests.stacks.iam_moto import IamMoto
from tests.stacks.mockrun import AZURE_NODE_PRINCIPAL, AZURE_POD_PRINCIPAL, GCP_PROJECT, REQUIRED_CONFIG, MockRun
from tests.stacks.test_audit_bucket import SCALE_OUT, assert_policies_pass

SUBSCRIPTION = "11111111-2222-4333-8444-555555555555"


def container(account: str, name: str) -> str:
    return (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/data-rg/providers/Microsoft.Storage/"
            f"storageAccounts/{account}/blobServices/default/containers/{name}")


def origins(*buckets: str, scale_out: bool = False) -> dict[str, str]:
    return {"foresight:originBuckets": json.dumps(list(buckets)), **(SCALE_OUT if scale_out else {})}


@pytest.mark.parametrize("scale_out", [False, True], ids=["node", "scale-out"])
def test_aws_grants_get_and_list_on_each_bucket_to_the_node_or_the_pods_role(
    run_stack: RunStack, scale_out: bool
) -> None:
    run = run_stack(origins("acme-products", "acme-media", scale_out=scale_out))
    name, role = ("foresight-pods-origins", "foresight-pods") if scale_out else ("foresight-origins", "foresight-node")
    (policy,) = [r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r.name.endswith("origins")]
    assert policy.name == name and policy.props["role"].startswith(role)
    assert json.loads(policy.props["policy"])["Statement"] == [
        {"Effect": "Allow", "Action": "s3:GetObject",
         "Resource": ["arn:aws:s3:::acme-products/*", "arn:aws:s3:::acme-media/*"]},
        {"Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": ["arn:aws:s3:::acme-products", "arn:aws:s3:::acme-media"]},
    ]
    assert not run.of_type("aws:s3/bucket:Bucket") and not run.of_type("aws:s3/bucketV2:BucketV2")  # theirs
    assert_policies_pass(run)


@pytest.mark.parametrize("scale_out", [False, True], ids=["node", "scale-out"])
def test_gcp_grants_object_viewer_on_each_bucket_to_the_nodes_or_the_pods_account(
    run_gcp_stack: RunStack, scale_out: bool
) -> None:
    run = run_gcp_stack(origins("acme_products", "acme.media", scale_out=scale_out))
    members = run.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    (account,) = [a.props["accountId"] for a in run.of_type("gcp:serviceaccount/account:Account")
                  if a.name == ("foresight-pods" if scale_out else "foresight-node")]
    member = f"serviceAccount:{account}@{GCP_PROJECT}.iam.gserviceaccount.com"
    assert sorted((m.props["bucket"], m.props["role"], m.props["member"]) for m in members) == [
        ("acme.media", ORIGIN_ROLE, member), ("acme_products", ORIGIN_ROLE, member)]
    assert_policies_pass(run)


@pytest.mark.parametrize("scale_out", [False, True], ids=["node", "scale-out"])
def test_azure_assigns_blob_data_reader_on_each_container_only(run_azure_stack: RunStack, scale_out: bool) -> None:
    products, media = container("acmedata", "products"), container("acmemedia", "media")
    run = run_azure_stack(origins(products, media, scale_out=scale_out))
    grants = [r for r in run.of_type("azure-native:authorization:RoleAssignment") if "-origin-" in r.name]
    prefix = "foresight-pods" if scale_out else "foresight"
    assert sorted((g.name, g.props["scope"]) for g in grants) == [
        (f"{prefix}-origin-acmedata-products", products), (f"{prefix}-origin-acmemedia-media", media)]
    for grant in grants:
        assert grant.props["principalId"] == (AZURE_POD_PRINCIPAL if scale_out else AZURE_NODE_PRINCIPAL)
        assert grant.props["roleDefinitionId"] == (
            f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{BLOB_DATA_READER}")
    assert_policies_pass(run)


def test_without_origin_buckets_nothing_is_granted(
    baseline: MockRun, gcp_baseline: MockRun, azure_baseline: MockRun
) -> None:
    assert not [r for r in baseline.of_type("aws:iam/rolePolicy:RolePolicy") if r.name.endswith("-origins")]
    assert not gcp_baseline.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert not [r for r in azure_baseline.of_type("azure-native:authorization:RoleAssignment") if "-origin-" in r.name]


def test_a_bucket_named_twice_is_granted_once(run_gcp_stack: RunStack) -> None:
    run = run_gcp_stack(origins("acme-products", "acme-products"))
    assert [m.props["bucket"] for m in run.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")] == ["acme-products"]


@pytest.mark.parametrize(
    ("runner", "value", "expected"),
    [
        ("run_stack", '["acme-products", "Acme"]', "'Acme' is not an S3 bucket name"),
        ("run_stack", '["s3://acme-products/catalog"]', "a bucket, not a URL"),
        ("run_gcp_stack", '["gs://acme"]', "is not a Cloud Storage bucket name"),
        ("run_azure_stack", '["acmedata/products"]', "is not a blob container's resource id"),
        ("run_stack", "acme-products", "must be a list of strings"),
        ("run_stack", json.dumps([f"acme-{n}" for n in range(51)]), "at most 50"),
    ],
)
def test_a_bucket_that_is_not_the_clouds_kind_is_refused_naming_the_key(
    runner: str, value: str, expected: str, request: pytest.FixtureRequest
) -> None:
    run: RunStack = request.getfixturevalue(runner)
    with pytest.raises(ConfigError, match=expected) as caught:
        run({"foresight:originBuckets": value})
    assert caught.value.keys == ["foresight:originBuckets"]


ORIGIN_SPEC = StackSpec.from_values(
    "foresight", "prod", {**REQUIRED_CONFIG, "foresight:originBuckets": '["acme-products"]'}.get)


@pytest.fixture
def buckets(iam_moto: IamMoto) -> IamMoto:
    for name in ("acme-products", "acme-private"):
        iam_moto.bucket(name)
    s3 = iam_moto.client("s3")
    s3.put_object(Bucket="acme-products", Key="catalog/item-1", Body=b"a lamp")
    s3.put_object(Bucket="acme-private", Key="catalog/item-1", Body=b"not theirs")
    return iam_moto


async def test_the_policy_lets_the_services_origin_read_and_miss_and_nothing_else_on_a_real_iam_evaluation(
    buckets: IamMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = buckets.user_with("origin-reader", origin_read_policy(ORIGIN_SPEC, "aws"))
    with buckets.acting_as(keys, monkeypatch):
        origin = FsspecOrigin("s3://acme-products/catalog", timeout_s=20)
        assert await origin.fetch(b"item-1") == b"a lamp"
        assert await origin.fetch(b"item-2") is None  # a miss, not an error: the list right makes it a 404
        other = FsspecOrigin("s3://acme-private/catalog", timeout_s=20)
        with pytest.raises(OriginError, match="access denied"):  # a bucket not listed
            await other.fetch(b"item-1")
    node = buckets.client("s3", **keys)
    for call in (lambda: node.put_object(Bucket="acme-products", Key="catalog/item-3", Body=b"1"),
                 lambda: node.delete_object(Bucket="acme-products", Key="catalog/item-1")):
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            call()


async def test_without_the_list_statement_every_miss_is_an_origin_error(
    buckets: IamMoto, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = json.loads(origin_read_policy(ORIGIN_SPEC, "aws"))
    policy["Statement"] = [s for s in policy["Statement"] if s["Action"] != "s3:ListBucket"]
    keys = buckets.user_with("origin-no-list", json.dumps(policy))
    with buckets.acting_as(keys, monkeypatch):
        origin = FsspecOrigin("s3://acme-products/catalog", timeout_s=20)
        assert await origin.fetch(b"item-1") == b"a lamp"
        with pytest.raises(OriginError, match="access denied"):
            await origin.fetch(b"item-2")
