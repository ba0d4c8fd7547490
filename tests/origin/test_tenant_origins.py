"""A tenant whose origin cannot be used costs the other tenants nothing: not a failed reload, not a stalled loop.

Building an origin may connect (some fsspec filesystems do when they are made) and tenants load on the event
loop, so nothing is opened until a read, on a read thread; a URL the service does not read
(service.origin.urls) leaves its tenant without an origin, logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec.core
import pytest

from service.cache import TenantRegistry
from service.config import Settings
from service.origin import OriginError
from service.tenancy import TenantQuota, TenantSpec


@pytest.fixture
def registry() -> Iterator[TenantRegistry]:
    tenants = TenantRegistry(Settings(dev=True, origin_timeout_s=0.5))
    try:
        yield tenants
    finally:
        tenants.close()


def _healthy(tmp_path: Path) -> TenantSpec:
    (tmp_path / "k").write_bytes(b"beta's data")
    return TenantSpec(name="beta", quota=TenantQuota(origin=f"file://{tmp_path}"))


@pytest.mark.parametrize("url", ["memory://", "zip://missing.zip", "file://relative/dir"])
async def test_a_tenant_whose_origin_url_is_refused_is_served_without_one_and_the_others_load(
    registry: TenantRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture, url: str,
) -> None:
    registry.sync([TenantSpec(name="alpha", quota=TenantQuota(origin=url)), _healthy(tmp_path)])
    alpha, beta = registry.get("alpha"), registry.get("beta")
    assert alpha is not None and alpha.origin is None and not alpha.reads_through
    assert beta is not None and await beta.get(b"k") == b"beta's data"
    assert f"tenant alpha: origin {url} could not be opened: " in caplog.text


async def test_making_an_origins_filesystem_never_holds_the_event_loop(
    registry: TenantRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An S3 origin whose filesystem takes a second to make, and then fails (a credentials lookup that times out):
    the reload that brings its tenant is instant, another tenant's GET during it too, and the tenant's own reads
    fail as origin errors."""
    real = fsspec.core.url_to_fs

    def slow_to_make(url: str, **options: Any) -> Any:
        if url.startswith("s3://"):
            time.sleep(1.0)
            raise TimeoutError("credentials lookup timed out")
        return real(url, **options)

    monkeypatch.setattr(fsspec.core, "url_to_fs", slow_to_make)
    beta_spec = _healthy(tmp_path)
    registry.sync([beta_spec])
    beta = registry.get("beta")
    assert beta is not None
    began = time.monotonic()
    registry.sync([TenantSpec(name="alpha", quota=TenantQuota(origin="s3://slow-bucket/data")), beta_spec])
    assert time.monotonic() - began < 0.2
    alpha = registry.get("alpha")
    assert alpha is not None and alpha.origin is not None
    with caplog.at_level(logging.WARNING):
        failed = asyncio.ensure_future(alpha.get(b"k"))
        began = time.monotonic()
        beta.store.delete(b"k")
        assert await beta.get(b"k") == b"beta's data"
        assert time.monotonic() - began < 0.2
        with pytest.raises(OriginError):
            await failed
        deadline = time.monotonic() + 5
        while "origin s3://slow-bucket/data could not be opened: TimeoutError" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
        with pytest.raises(OriginError, match="the origin could not be opened"):  # not tried again for a while
            await alpha.get(b"k")
