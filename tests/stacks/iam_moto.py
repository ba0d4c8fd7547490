"""A moto server that evaluates IAM policies on every call: the stacks' S3 grants are checked by what they let a
principal holding only them do, not by reading the policy documents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from tests import servers
from tests.object_stores import uncached


@dataclass(frozen=True)
class IamMoto:
    """The server's endpoint and an admin's keys on it."""

    endpoint: str
    admin: dict[str, str]

    def client(self, service: str, **keys: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", **(keys or self.admin))

    def bucket(self, name: str) -> None:
        """Make the bucket unless an earlier test did (the server lives for the session)."""
        s3 = self.client("s3")
        if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=name)

    def user_with(self, name: str, policy: str) -> dict[str, str]:
        """Keys of a new IAM user holding only `policy`, as the node's role would."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    @contextmanager
    def acting_as(self, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """The product's own S3 clients (s3fs, through the environment a node's role gives) sign as `keys`; s3fs
        keeps one client per arguments whatever the credentials, so its cache is dropped around them."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", self.endpoint)
        with uncached("s3"):
            yield


@contextmanager
def iam_enforcing_moto() -> Iterator[IamMoto]:
    port = servers.free_port()
    argv = [str(servers.BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    # The first three calls go unchecked: they make the admin, whose keys sign everything after.
    with servers.process(argv, "moto-iam", env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}):
        servers.wait_until(lambda: servers.tcp_open(port), "moto (IAM enforced)")
        endpoint = f"http://127.0.0.1:{port}"
        setup = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                             aws_secret_access_key="setup")
        setup.create_user(UserName="admin")
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        setup.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(everything))
        key = setup.create_access_key(UserName="admin")["AccessKey"]
        yield IamMoto(endpoint, {"aws_access_key_id": key["AccessKeyId"],
                                 "aws_secret_access_key": key["SecretAccessKey"]})
