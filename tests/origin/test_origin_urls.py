"""The origin URLs the service reads, and what a tenant whose origin cannot be used does to the others: nothing.

`tenants create --origin` refuses the same URLs (tests/onboarding/test_origin_input.py), and the service's tenant
loads too (test_tenant_origins.py): one rule, service.origin.urls.
"""

from __future__ import annotations

import pytest

from service.origin.urls import BadOriginUrl, check_origin_url


@pytest.mark.parametrize("url", ["/srv/data", "file:///srv/data", "s3://bucket", "s3://bucket/prefix",
                                 "gs://bucket/prefix", "az://container/dir"])
def test_the_origins_the_readme_lists_are_read(url: str) -> None:
    check_origin_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://10.255.255.1/x", "protocol 'ftp' is not an origin Foresight reads"),
        ("sftp://host/x", "protocol 'sftp' is not an origin Foresight reads"),
        ("memory://", "protocol 'memory' is not an origin Foresight reads"),
        ("zip://x.zip", "protocol 'zip' is not an origin Foresight reads"),
        ("github://org:repo@main/", "protocol 'github' is not an origin Foresight reads"),
        ("file://relative/dir", "file:// takes an absolute path: file:///srv/data"),
        ("s3://", "s3:// names no bucket: give s3://bucket/prefix"),
        ("gs:///prefix", "gs:// names no bucket"),
        ("az://", "az:// names no container: give az://container/prefix"),
        ("simplecache::s3://bucket/prefix", "a chained URL (::) is not an origin"),
        ("data/objects", "a local directory must be an absolute path"),
        ("", "a local directory must be an absolute path"),
    ],
)
def test_any_other_url_is_refused_saying_which_form_to_use(url: str, why: str) -> None:
    with pytest.raises(BadOriginUrl) as refused:
        check_origin_url(url)
    assert why in str(refused.value)
