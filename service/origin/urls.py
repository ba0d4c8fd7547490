"""Which origin URLs Foresight reads: the one rule `tenants create --origin` and the service's tenant loads share.

fsspec knows dozens of protocols, and some of them (ftp, sftp, smb, ...) connect when their filesystem is made:
accepted as an origin, one such URL held every tenant's reload while it timed out. The origins are the ones the
README lists: a local directory and the three clouds' object stores, each named down to a bucket (container).
"""

from __future__ import annotations

# protocol -> what it names, for the messages. The object stores' first path segment is the bucket (container).
ORIGIN_KINDS = {
    "file": "a local directory (file:///srv/data)",
    "s3": "an S3 bucket (s3://bucket/prefix)",
    "gs": "a Cloud Storage bucket (gs://bucket/prefix)",
    "az": "an Azure Blob container (az://container/prefix)",
    # fsspec's other names for the same two stores: tenants stored before this rule may carry them
    "gcs": "a Cloud Storage bucket (gcs://bucket/prefix, the same as gs://)",
    "abfs": "an Azure Blob container (abfs://container/prefix, the same as az://)",
}
_USE = "use an absolute directory, file:///dir, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"


class BadOriginUrl(ValueError):
    """The URL names no origin Foresight reads; the message says which form to use."""


def origin_protocol(url: str) -> str:
    """The protocol of an origin URL already checked (`file` for a bare directory)."""
    protocol, sep, _ = url.partition("://")
    return protocol if sep else "file"


def check_origin_url(url: str) -> None:
    """BadOriginUrl unless `url` is an absolute directory, `file:///...`, or `s3://`, `gs://` or `az://` with a
    bucket (container). Parses only: nothing is imported or opened."""
    if "::" in url:
        raise BadOriginUrl(f"a chained URL (::) is not an origin; {_USE}")
    protocol, sep, path = url.partition("://")
    if not sep:
        if not url.startswith("/"):  # a relative one would be read relative to wherever the service runs
            raise BadOriginUrl("a local directory must be an absolute path (or file:///...)")
        return
    if protocol not in ORIGIN_KINDS:
        raise BadOriginUrl(f"protocol {protocol!r} is not an origin Foresight reads; {_USE}")
    if protocol == "file":
        if not path.startswith("/"):
            raise BadOriginUrl("file:// takes an absolute path: file:///srv/data (three slashes); "
                               f"file://{path} would name a directory relative to wherever the service runs")
        return
    if not path.split("/", 1)[0]:
        raise BadOriginUrl(f"{protocol}:// names no {'container' if protocol in ('az', 'abfs') else 'bucket'}: give "
                           f"{ORIGIN_KINDS[protocol].split('(')[1].rstrip(')')}")
