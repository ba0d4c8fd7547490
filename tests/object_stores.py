"""The three clouds' object stores behind one interface, for tests of the origin and of audit shipping: S3 on moto,
Cloud Storage on gcp-storage-emulator, Azure Blob on Azurite (Microsoft's emulator).

Each store is set up and read back with its own cloud's SDK (boto3, google-cloud-storage, azure-storage-blob), not
through fsspec, so that what the product writes or reads through fsspec is checked against the cloud's API, not
against fsspec itself. `environment` is what points the product's filesystem at the emulator, as the machine's
identity and the real endpoint do in a cloud.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import fsspec


@contextmanager
def uncached(scheme: str) -> Iterator[None]:
    """fsspec hands out a filesystem it made before, for another endpoint (or for none): dropped before and after."""
    filesystem = fsspec.get_filesystem_class(scheme)
    filesystem.clear_instance_cache()
    try:
        yield
    finally:
        filesystem.clear_instance_cache()


class ObjectStore(Protocol):
    scheme: str
    environment: dict[str, str]

    def url(self, bucket: str, prefix: str) -> str:
        """The fsspec URL of `prefix` in `bucket`, as FORESIGHT_ORIGIN or FORESIGHT_AUDIT_SHIP_URL take it."""
        ...

    def create_bucket(self, bucket: str) -> None: ...

    def buckets(self) -> set[str]: ...

    def put(self, bucket: str, key: str, data: bytes) -> None: ...

    def get(self, bucket: str, key: str) -> bytes: ...

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Object names under `prefix`, sorted."""
        ...


class S3Store:
    scheme = "s3"

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.environment = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint,
                            "FSSPEC_S3_ENDPOINT_URL": endpoint}
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")

    def url(self, bucket: str, prefix: str) -> str:
        return f"s3://{bucket}/{prefix}"

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def buckets(self) -> set[str]:
        return {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def keys(self, bucket: str, prefix: str) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(o["Key"] for o in listed)


class GcsStore:
    scheme = "gs"

    def __init__(self, endpoint: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.environment = {"STORAGE_EMULATOR_HOST": endpoint}
        self.client = storage.Client(project="foresight-test", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": endpoint})

    def url(self, bucket: str, prefix: str) -> str:
        return f"gs://{bucket}/{prefix}"

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

    def buckets(self) -> set[str]:
        return {b.name for b in self.client.list_buckets()}

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.bucket(bucket).blob(key).upload_from_string(data)

    def get(self, bucket: str, key: str) -> bytes:
        data: bytes = self.client.bucket(bucket).blob(key).download_as_bytes()
        return data

    def keys(self, bucket: str, prefix: str) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(bucket, prefix=prefix))


class AzureStore:
    scheme = "az"

    def __init__(self, connection_string: str, account: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.account = account
        self.environment = {"AZURE_STORAGE_CONNECTION_STRING": connection_string}
        self.client: Any = BlobServiceClient.from_connection_string(connection_string)

    def url(self, bucket: str, prefix: str) -> str:
        return f"az://{bucket}@{self.account}.blob.core.windows.net/{prefix}"

    def create_bucket(self, bucket: str) -> None:
        self.client.create_container(bucket)

    def buckets(self) -> set[str]:
        return {c.name for c in self.client.list_containers()}

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.get_blob_client(bucket, key).upload_blob(data, overwrite=True)

    def get(self, bucket: str, key: str) -> bytes:
        data: bytes = self.client.get_blob_client(bucket, key).download_blob().readall()
        return data

    def keys(self, bucket: str, prefix: str) -> list[str]:
        return sorted(b.name for b in self.client.get_container_client(bucket).list_blobs(name_starts_with=prefix))
