"""Conditional writes: If-Match and If-None-Match on PUT and DELETE of a key (RFC 9110, 13.1.1 and 13.1.2)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.cache import WRITE_IF_ATTEMPTS, KeyContended, PreconditionFailed, TenantCache
from service.config import Settings
from service.http.validators import EntityTags, etag
from service.state import DEV_TENANT
from service.tenancy import TenantQuota, TenantSpec
from tests.service.harness import RunningService, running_service


def _http(svc: RunningService) -> httpx.Client:
    return httpx.Client(base_url=svc.endpoints.http_url)


def test_if_match_writes_only_over_the_value_with_that_strong_etag(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        http.put("/v1/keys/doc", content=b"v1")
        tag = etag(b"v1")
        for stale in ('"0000000000000000"', f"W/{tag}", f'W/{tag}, "other"'):  # weak tags never match If-Match
            refused = http.put("/v1/keys/doc", content=b"lost", headers={"If-Match": stale})
            assert refused.status_code == 412, stale
            assert refused.json()["detail"].startswith("precondition failed: If-Match"), stale
        assert http.get("/v1/keys/doc").content == b"v1"
        written = http.put("/v1/keys/doc", content=b"v2", headers={"If-Match": f'"other", {tag}'})
        assert (written.status_code, written.headers["etag"]) == (204, etag(b"v2"))
        assert http.get("/v1/keys/doc", headers={"Range": "bytes=0-"}).headers["etag"] == etag(b"v2")  # GET's tag
        assert http.put("/v1/keys/doc", content=b"v3", headers={"If-Match": tag}).status_code == 412  # v1's
        assert http.put("/v1/keys/doc", content=b"v3", headers={"If-Match": "*"}).status_code == 204
        assert http.get("/v1/keys/doc").content == b"v3"
        assert "etag" not in http.put("/v1/keys/doc", content=b"v4").headers  # unconditional: no hash paid


def test_if_match_star_needs_a_current_value(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        refused = http.put("/v1/keys/new", content=b"x", headers={"If-Match": "*"})
        assert refused.status_code == 412 and refused.json()["detail"] == (
            "precondition failed: If-Match: the key has no value")
        assert http.delete("/v1/keys/new", headers={"If-Match": "*"}).status_code == 412  # not 404
        assert http.get("/v1/keys/new").status_code == 404


def test_if_none_match_star_creates_only(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        created = http.put("/v1/keys/once", content=b"first", headers={"If-None-Match": "*"})
        assert (created.status_code, created.headers["etag"]) == (204, etag(b"first"))
        again = http.put("/v1/keys/once", content=b"second", headers={"If-None-Match": "*"})
        assert again.status_code == 412 and "If-None-Match" in again.json()["detail"]
        assert http.get("/v1/keys/once").content == b"first"
        assert http.delete("/v1/keys/once", headers={"If-None-Match": "*"}).status_code == 412
        assert http.get("/v1/keys/once").content == b"first"


def test_if_none_match_with_tags_compares_weakly(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        http.put("/v1/keys/doc", content=b"v1")
        tag = etag(b"v1")
        for held in (tag, f"W/{tag}"):
            assert http.put("/v1/keys/doc", content=b"no", headers={"If-None-Match": held}).status_code == 412
        assert http.get("/v1/keys/doc").content == b"v1"
        assert http.put("/v1/keys/doc", content=b"v2", headers={"If-None-Match": '"other"'}).status_code == 204
        assert http.get("/v1/keys/doc").content == b"v2"


def test_conditional_delete(dev_service: RunningService) -> None:
    resp = redis.Redis(port=dev_service.resp_port)
    resp.set("doc", "v1")
    with _http(dev_service) as http:
        assert http.delete("/v1/keys/doc", headers={"If-Match": etag(b"v0")}).status_code == 412
        assert resp.get("doc") == b"v1"
        assert http.delete("/v1/keys/doc", headers={"If-None-Match": etag(b"v1")}).status_code == 412
        assert resp.get("doc") == b"v1"
        assert http.delete("/v1/keys/doc", headers={"If-Match": etag(b"v1")}).status_code == 204
        assert resp.exists("doc") == 0
        assert http.delete("/v1/keys/doc", headers={"If-None-Match": "*"}).status_code == 404  # holds; no key


def test_a_malformed_precondition_is_refused_and_changes_nothing(dev_service: RunningService) -> None:
    """Ignored, it would write unconditionally what the client meant to write only under a condition."""
    resp = redis.Redis(port=dev_service.resp_port)
    resp.set("doc", "v1")
    with _http(dev_service) as http:
        for name in ("If-Match", "If-None-Match"):
            for bad in ("v1", etag(b"v1")[:-1], f"{etag(b'v1')} junk", f"*, {etag(b'v1')}", "", "W/"):
                for method in ("PUT", "DELETE"):
                    refused = http.request(method, "/v1/keys/doc", content=b"v2" if method == "PUT" else None,
                                           headers={name: bad})
                    assert refused.status_code == 400, (name, bad, method)
                    assert refused.json()["detail"].startswith(f"{name} must be * or a comma-separated list"), bad
        assert resp.get("doc") == b"v1"


def test_empty_list_elements_are_ignored(dev_service: RunningService) -> None:
    """RFC 9110, 5.6.1.2: a recipient accepts and ignores empty list elements (they were a 400 on writes, and
    made a GET's If-None-Match be ignored)."""
    with _http(dev_service) as http:
        http.put("/v1/keys/doc", content=b"v1")
        current = etag(b"v1")
        for listed in (f'"a",,{current}', f'"a", , {current}', f", {current}", f"{current} ,,"):
            assert http.get("/v1/keys/doc", headers={"If-None-Match": listed}).status_code == 304, listed
            assert http.put("/v1/keys/doc", content=b"v1", headers={"If-Match": listed}).status_code == 204, listed
        assert http.put("/v1/keys/doc", content=b"v2", headers={"If-Match": '"a",,"b"'}).status_code == 412


def test_header_lines_of_a_precondition_are_one_list(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        http.put("/v1/keys/doc", content=b"v1")
        lines = [("If-Match", '"other"'), ("If-Match", etag(b"v1"))]
        assert http.put("/v1/keys/doc", content=b"v2", headers=httpx.Headers(lines)).status_code == 204
        assert http.get("/v1/keys/doc").content == b"v2"


@pytest.fixture
def origin_service(tmp_path: Path) -> Iterator[RunningService]:
    (tmp_path / "origin-only").write_bytes(b"from the origin")
    with running_service(dev=True, origin=str(tmp_path)) as svc:
        yield svc


def test_a_key_only_the_origin_holds_is_a_current_value(origin_service: RunningService) -> None:
    """The conditions look the key up as GET does: a create-only PUT must not replace what the origin serves."""
    with _http(origin_service) as http:
        refused = http.put("/v1/keys/origin-only", content=b"mine", headers={"If-None-Match": "*"})
        assert refused.status_code == 412
        assert http.get("/v1/keys/origin-only").content == b"from the origin"
        assert http.put("/v1/keys/absent", content=b"mine", headers={"If-None-Match": "*"}).status_code == 204
        assert http.put("/v1/keys/absent2", content=b"mine", headers={"If-Match": "*"}).status_code == 412
        redis.Redis(port=origin_service.resp_port).flushdb()  # uncached again: only the origin has it
        written = http.put("/v1/keys/origin-only", content=b"mine",
                           headers={"If-Match": etag(b"from the origin")})
        assert written.status_code == 204
        assert http.get("/v1/keys/origin-only").content == b"mine"


_HASH = EntityTags.of


def _racing_tags(monkeypatch: pytest.MonkeyPatch, svc: RunningService, key: bytes, theirs: bytes | None) -> None:
    """Another client's write (`theirs`; None: a delete) lands while the next hash of a request awaits."""
    raced = False

    async def of(self: EntityTags, value: bytes) -> str:
        nonlocal raced
        tag = await _HASH(self, value)
        if not raced:
            raced = True
            store = svc.state.tenants.get(DEV_TENANT).store
            store.set(key, theirs) if theirs is not None else store.delete(key)
        return tag

    monkeypatch.setattr(EntityTags, "of", of)


def test_a_write_landing_while_the_condition_is_checked_is_not_overwritten(
        dev_service: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check awaits the hash; a write landing meanwhile must be checked in turn, not replaced by a write
    made on a condition that no longer holds."""
    resp = redis.Redis(port=dev_service.resp_port)
    with _http(dev_service) as http:
        http.put("/v1/keys/doc", content=b"v1")
        _racing_tags(monkeypatch, dev_service, b"doc", b"theirs")
        assert http.put("/v1/keys/doc", content=b"mine", headers={"If-Match": etag(b"v1")}).status_code == 412
        assert resp.get("doc") == b"theirs"

        http.put("/v1/keys/doc", content=b"v1")
        _racing_tags(monkeypatch, dev_service, b"doc", None)
        assert http.delete("/v1/keys/doc", headers={"If-None-Match": '"other"'}).status_code == 404  # gone first

        http.put("/v1/keys/doc", content=b"v1")
        _racing_tags(monkeypatch, dev_service, b"doc", b"theirs")
        assert http.delete("/v1/keys/doc", headers={"If-Match": etag(b"v1")}).status_code == 412
        assert resp.get("doc") == b"theirs"

        http.put("/v1/keys/doc", content=b"v1")
        _racing_tags(monkeypatch, dev_service, b"doc", b"theirs")  # false of v1, but theirs is checked again
        written = http.put("/v1/keys/doc", content=b"mine", headers={"If-None-Match": etag(b"v1")})
        assert (written.status_code, resp.get("doc")) == (204, b"mine")


def _cache() -> TenantCache:
    return TenantCache(TenantSpec(name="t", quota=TenantQuota(memory_bytes=1 << 20)), Settings(dev=True))


def test_a_key_changing_under_every_check_gives_up_without_writing() -> None:
    cache = _cache()
    cache.store.set(b"k", b"0")
    checked: list[bytes | None] = []

    async def failure(value: bytes | None) -> str | None:
        checked.append(value)
        cache.store.set(b"k", str(len(checked)).encode())  # another write, each time
        await asyncio.sleep(0)
        return None

    with pytest.raises(KeyContended):
        asyncio.run(cache.write_if(b"k", failure, lambda: cache.store.set(b"k", b"mine")))
    assert checked == [b"0", b"1", b"2"] and len(checked) == WRITE_IF_ATTEMPTS
    assert cache.store.get(b"k") == b"3"
    assert not cache.store._watched  # no watch left behind to slow every later write


def test_a_false_condition_raises_with_its_reason_and_a_true_one_returns_the_write() -> None:
    cache = _cache()

    async def absent(value: bytes | None) -> str | None:
        return None if value is None else "it exists"

    assert asyncio.run(cache.write_if(b"k", absent, lambda: cache.store.set(b"k", b"v") or "written")) == "written"
    with pytest.raises(PreconditionFailed, match="it exists"):
        asyncio.run(cache.write_if(b"k", absent, lambda: cache.store.set(b"k", b"w")))
    assert cache.store.get(b"k") == b"v"


def test_openapi_documents_the_preconditions_of_writes(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        operations = http.get("/openapi.json").json()["paths"]["/v1/keys/{key}"]
    for method in ("put", "delete"):
        headers = {p["name"] for p in operations[method]["parameters"] if p["in"] == "header"}
        assert {"If-Match", "If-None-Match"} <= headers, method
        assert "412" in operations[method]["responses"], method
    assert "Foresight-TTL" in {p["name"] for p in operations["put"]["parameters"]}  # merged, not replaced
