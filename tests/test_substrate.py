"""The real servers the suite depends on start, answer and speak their protocols."""

from __future__ import annotations

import boto3
import redis

from tests.servers import MotoServer, OpenBao, RedisServer


def test_redis_server_answers(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    assert client.ping() is True
    assert client.info("server")["redis_version"]


def test_moto_server_speaks_s3(moto_server: MotoServer) -> None:
    s3 = boto3.client(
        "s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="substrate")
    s3.put_object(Bucket="substrate", Key="k", Body=b"v")
    assert s3.get_object(Bucket="substrate", Key="k")["Body"].read() == b"v"


def test_openbao_is_unsealed_and_writable(openbao: OpenBao) -> None:
    client = openbao.client()
    assert client.is_authenticated()
    assert client.sys.read_health_status(method="GET")["sealed"] is False
    client.secrets.kv.v2.create_or_update_secret(path="substrate", secret={"a": "b"}, mount_point="secret")
    read = client.secrets.kv.v2.read_secret_version(
        path="substrate", mount_point="secret", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"a": "b"}
