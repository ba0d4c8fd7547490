"""The HTTP API: same semantics as RESP over the same store, plus health, readiness, metrics and OpenAPI."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import redis
from cryptography import x509
from pydantic import ValidationError

from service.config import ConfigError, Settings
from service.http.routes import keys as keys_routes
from service.http.validators import etag
from service.security.admin_token import new_admin_token
from service.security.apikeys import hash_key, new_key
from service.security.local_ca import CertificateAuthority
from tests.service.conftest import ProductionService
from tests.service.harness import RunningService, running_service, write_tenants_file
from tests.tlsutil import PKI


def _http(svc: RunningService) -> httpx.Client:
    return httpx.Client(base_url=svc.endpoints.http_url)


def test_put_get_delete_round_trip_shares_the_resp_store(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        assert http.put("/v1/keys/a/b c", content=b"\x00bytes").status_code == 204
        got = http.get("/v1/keys/a/b c")
        assert got.status_code == 200 and got.content == b"\x00bytes"
        assert got.headers["content-type"] == "application/octet-stream"
        assert redis.Redis(port=dev_service.resp_port).get("a/b c") == b"\x00bytes"
        assert http.delete("/v1/keys/a/b c").status_code == 204
        assert http.delete("/v1/keys/a/b c").status_code == 404
        assert http.get("/v1/keys/a/b c").status_code == 404


def test_ttl_by_query_or_header(dev_service: RunningService) -> None:
    resp = redis.Redis(port=dev_service.resp_port)
    with _http(dev_service) as http:
        assert http.put("/v1/keys/q", content=b"1", params={"ttl": 100}).status_code == 204
        assert http.put("/v1/keys/h", content=b"1", headers={"Foresight-TTL": "1"}).status_code == 204
        assert 99 <= resp.ttl("q") <= 100
        assert int(http.get("/v1/keys/q").headers["foresight-ttl-ms"]) > 99_000
        conflict = http.put("/v1/keys/x", content=b"1", params={"ttl": 5}, headers={"Foresight-TTL": "6"})
        assert conflict.status_code == 400
        assert http.put("/v1/keys/x", content=b"1", params={"ttl": 0}).status_code == 422
        assert http.put("/v1/keys/x", content=b"1", params={"ttl": "soon"}).status_code == 422
        twice = http.put("/v1/keys/x", content=b"1", params=[("ttl", "60"), ("ttl", "1")])  # FastAPI took the last
        assert twice.status_code == 400 and twice.json() == {"detail": "query parameter 'ttl' given more than once"}
        assert http.get("/v1/keys/x").status_code == 404  # nothing written
        assert http.get("/v1/keys", params=[("count", "5"), ("count", "5")]).status_code == 400
        time.sleep(1.2)
        assert http.get("/v1/keys/h").status_code == 404


def test_ttl_is_bounded_as_expire_bounds_it(dev_service: RunningService) -> None:
    """A deadline past a signed 64-bit count of milliseconds is refused (RESP's EXPIRE and SET EX refuse it):
    stored, it gave TTL replies no client could parse and broke the snapshot of every tenant."""
    resp = redis.Redis(port=dev_service.resp_port)
    with _http(dev_service) as http:
        for params, headers in (({"ttl": "99999999999999999999"}, {}), ({"ttl": str(2**63 // 1000)}, {}),
                                ({}, {"Foresight-TTL": "99999999999999999999"})):
            refused = http.put("/v1/keys/k", content=b"1", params=params, headers=headers)
            assert refused.status_code == 400 and "ttl too large" in refused.json()["detail"]
        assert http.get("/v1/keys/k").status_code == 404
        assert http.put("/v1/keys/k", content=b"1", params={"ttl": 10**15}).status_code == 204  # about 32M years
        assert 10**15 - 2 <= resp.ttl("k") <= 10**15


def _raw_put(svc: RunningService, head: bytes, body: list[bytes]) -> bytes:
    """Send a PUT's head and then `body` (never finishing it), and return the status line it gets back."""
    with socket.create_connection(("127.0.0.1", httpx.URL(svc.endpoints.http_url).port), timeout=5) as sock:
        sock.sendall(b"PUT /v1/keys/big HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n")
        try:
            for piece in body:
                sock.sendall(piece)
        except OSError:  # it answered and closed before the rest arrived
            pass
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_put_refuses_a_body_over_the_limit_without_buffering_it(dev_service: RunningService,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared length over the limit is refused before any of the body is read; a chunked body as soon as
    more than the limit has arrived (the server used to read it all first, a 300 MB PUT included)."""
    monkeypatch.setattr(keys_routes, "MAX_VALUE_BYTES", 4096)
    too_large = b"HTTP/1.1 413 Request Entity Too Large"
    assert _raw_put(dev_service, b"Content-Length: 300000000\r\n", [b"x" * 100]) == too_large
    chunked = [b"400\r\n" + b"x" * 1024 + b"\r\n"] * 5  # 5 KiB, and no last chunk: it never ends
    assert _raw_put(dev_service, b"Transfer-Encoding: chunked\r\n", chunked) == too_large
    with _http(dev_service) as http:
        assert http.put("/v1/keys/big", content=b"x" * 4096).status_code == 204  # at the limit
        assert http.put("/v1/keys/big", content=iter([b"x" * 4096])).status_code == 204  # chunked, at the limit
        assert http.put("/v1/keys/big", content=b"x" * 4097).status_code == 413


def test_keys_that_are_not_utf8_are_addressed_by_their_bytes(dev_service: RunningService) -> None:
    """%FF and %FE are two keys, the RESP keys b"\\xff" and b"\\xfe" (decoded as UTF-8 they were one, and
    neither)."""
    resp = redis.Redis(port=dev_service.resp_port)
    with _http(dev_service) as http:
        assert http.put("/v1/keys/bin%FF", content=b"ff").status_code == 204
        assert http.put("/v1/keys/bin%FE", content=b"fe").status_code == 204
        assert http.get("/v1/keys/bin%FF").content == b"ff" and http.get("/v1/keys/bin%fe").content == b"fe"
        assert resp.get(b"bin\xff") == b"ff" and resp.get(b"bin\xfe") == b"fe"
        resp.set(b"\xc3\x28/x y", b"resp")
        assert http.get("/v1/keys/%C3%28/x%20y").content == b"resp"
        assert http.delete("/v1/keys/bin%FF").status_code == 204
        assert resp.exists(b"bin\xff", b"bin\xfe") == 1
        assert http.get("/v1/keys/caf%C3%A9").status_code == 404
        assert http.put("/v1/keys/café", content=b"utf8").status_code == 204  # UTF-8 keys as before
        assert resp.get("café") == b"utf8"


def test_stats_show_the_tenants_connections_and_commands_as_info_does(dev_service: RunningService) -> None:
    """The README promised connected_clients and the two totals under /v1/stats too; only INFO had them."""
    clients = [redis.Redis(port=dev_service.resp_port) for _ in range(2)]
    for client in clients:
        client.ping()
    with _http(dev_service) as http:
        shown = http.get("/v1/stats").json()["clients"]
    info = clients[0].info()
    assert shown["connected_clients"] == info["connected_clients"] >= 2
    assert shown["total_connections_received"] == info["total_connections_received"] >= 2
    assert 2 <= shown["total_commands_processed"] < info["total_commands_processed"]  # INFO came after it


def test_a_wrong_method_is_told_every_method_the_path_takes_and_probes_may_use_head(
        dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        refused = http.post("/v1/keys/a")
        assert refused.status_code == 405 and refused.headers["allow"] == "DELETE, GET, HEAD, PUT"  # was "GET"
        assert http.request("PATCH", "/healthz").headers["allow"] == "GET, HEAD"
        for probe in ("/healthz", "/readyz"):
            assert http.head(probe).status_code == 200, probe  # 405 before
        assert http.get("/nope").status_code == 404  # other errors as FastAPI answers them


def test_mget_keeps_order_and_encodes_binary(dev_service: RunningService) -> None:
    redis.Redis(port=dev_service.resp_port).mset({"t": "text", "bin": b"\xff\xfe"})
    with _http(dev_service) as http:
        items = http.post("/v1/mget", json={"keys": ["bin", "missing", "t"]}).json()["items"]
        assert items[0] == {"key": "bin", "value": base64.b64encode(b"\xff\xfe").decode(), "encoding": "base64"}
        assert items[1] == {"key": "missing", "value": None, "encoding": "utf-8"}
        assert items[2] == {"key": "t", "value": "text", "encoding": "utf-8"}
        assert http.post("/v1/mget", json={"keys": []}).status_code == 422
        assert http.post("/v1/mget", content=b"not json").status_code == 422


def test_mget_checks_the_key_before_it_reads_the_body_and_bounds_the_body(
        prod_service: ProductionService) -> None:
    """Without a key the body is never read: a 200 MB one used to be parsed (RSS 83 -> 675 MB) before the 401."""
    svc, tls = prod_service.svc, ssl.create_default_context(cafile=str(prod_service.pki.ca_cert))
    acme = _bearer(prod_service.keys["acme"].secret)
    with httpx.Client(base_url=svc.endpoints.http_url, verify=tls) as http:
        json_type = {"content-type": "application/json"}
        assert http.post("/v1/mget", content=b"not json", headers=json_type).status_code == 401
        http.put("/v1/keys/k", content=b"v", headers=acme)
        assert http.post("/v1/mget", json={"keys": ["k"]}, headers=acme).json()["items"][0]["value"] == "v"
        invalid = http.post("/v1/mget", content=b'{"keys": [1]}', headers=acme)
        assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "keys", 0]
        assert http.post("/v1/mget", content=b"{", headers=acme).json()["detail"][0]["type"] == "json_invalid"
        for unparsable in (b'{"keys": ["\xff"]}', b"[" * 100_000):  # not UTF-8; nested past the parser: not a 500
            assert http.post("/v1/mget", content=unparsable, headers=acme).status_code == 400
        over = http.post("/v1/mget", content=b" " * (keys_routes.MAX_MGET_BYTES + 1), headers=acme)
        assert over.status_code == 413 and "mget bodies are limited to" in over.text
        mget = http.get("/openapi.json").json()["paths"]["/v1/mget"]["post"]
        assert mget["requestBody"]["content"]["application/json"]["schema"]["properties"]["keys"]["maxItems"] == 10_000
    with _tls_socket(svc.endpoints.http_url, tls) as sock:  # a body announced, never sent: answered at once
        sock.sendall(b"POST /v1/mget HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000000\r\n\r\n")
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")


def _tls_socket(url: str, tls: ssl.SSLContext) -> ssl.SSLSocket:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    return tls.wrap_socket(socket.create_connection((host, port)), server_hostname=host)


def test_listing_keys_pages_like_scan_and_deleting_all_empties_the_tenant(dev_service: RunningService) -> None:
    resp = redis.Redis(port=dev_service.resp_port)
    resp.mset({**{f"user:{i}": "u" for i in range(250)}, "session:1": "s", b"bin:\xff": "b"})
    with _http(dev_service) as http:
        names: list[dict[str, str]] = []
        cursor, pages = "0", 0
        while True:
            page = http.get("/v1/keys", params={"match": "user:*", "cursor": cursor, "count": 40}).json()
            names += page["keys"]
            cursor, pages = page["cursor"], pages + 1
            if cursor == "0":
                break
        assert pages == 7  # 252 keys examined 40 at a time
        assert sorted(n["key"] for n in names) == sorted(f"user:{i}" for i in range(250))
        everything = http.get("/v1/keys", params={"count": 1000}).json()
        assert everything["cursor"] == "0" and len(everything["keys"]) == 252
        assert {"key": base64.b64encode(b"bin:\xff").decode(), "encoding": "base64"} in everything["keys"]
        for bad in ({"cursor": "-1"}, {"cursor": "abc"}, {"count": 0}, {"count": 10_001}):
            assert http.get("/v1/keys", params=bad).status_code == 422, bad
        assert http.get("/v1/keys", params={"cursor": str(2**64)}).status_code == 400
        assert http.delete("/v1/keys").json() == {"removed": 252}
        assert resp.dbsize() == 0 and http.get("/v1/keys").json() == {"cursor": "0", "keys": []}


def test_a_byte_range_of_a_value(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        http.put("/v1/keys/blob", content=b"0123456789")
        whole = http.get("/v1/keys/blob")
        assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
        for header, body, span in (("bytes=2-5", b"2345", "2-5"), ("bytes=7-", b"789", "7-9"),
                                   ("bytes=-3", b"789", "7-9"), ("bytes=-30", b"0123456789", "0-9"),
                                   ("bytes=5-100", b"56789", "5-9"), ("bytes=0-0", b"0", "0-0")):
            part = http.get("/v1/keys/blob", headers={"Range": header})
            assert (part.status_code, part.content) == (206, body), header
            assert part.headers["content-range"] == f"bytes {span}/10", header
        for header in ("bytes=10-", "bytes=-0", "bytes=99-100"):
            refused = http.get("/v1/keys/blob", headers={"Range": header})
            assert refused.status_code == 416 and refused.headers["content-range"] == "bytes */10", header
        for header in ("bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=-", "bytes=a-b"):  # ignored: all of it
            ignored = http.get("/v1/keys/blob", headers={"Range": header})
            assert (ignored.status_code, ignored.content) == (200, b"0123456789"), header
        assert http.get("/v1/keys/nope", headers={"Range": "bytes=0-1"}).status_code == 404
        head = http.head("/v1/keys/blob")
        assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "10")
        assert http.head("/v1/keys/blob", headers={"Range": "bytes=-4"}).headers["content-range"] == "bytes 6-9/10"
        assert http.head("/v1/keys/nope").status_code == 404
        http.put("/v1/keys/empty", content=b"")
        for header in ("bytes=0-", "bytes=-0"):  # no first byte in an empty value; no suffix of length 0
            assert http.get("/v1/keys/empty", headers={"Range": header}).status_code == 416, header
        suffix = http.get("/v1/keys/empty", headers={"Range": "bytes=-5"})  # satisfiable (RFC 9110, 14.1.2),
        assert (suffix.status_code, suffix.content) == (200, b"")  # but no Content-Range can name zero bytes
        assert http.get("/v1/keys/blob", headers={"Range": "BYTES=2-3"}).content == b"23"  # units ignore case


def test_range_positions_of_any_length_are_answered_on_a_connection_that_stays_up(
        dev_service: RunningService) -> None:
    """Python's int() refuses over 4300 digits: such a Range was a 500, an ERROR traceback and a dropped
    connection. A position that long lies past the end of every value."""
    huge = "9" * 5000
    with _http(dev_service) as http:
        http.put("/v1/keys/blob", content=b"0123456789")
        for header, status, body in ((f"bytes={huge}-", 416, None), (f"bytes={huge}-{huge}", 416, None),
                                     (f"bytes=0-{huge}", 206, b"0123456789"), (f"bytes=-{huge}", 206, b"0123456789"),
                                     ("bytes=00000000000000000000000000000003-4", 206, b"34")):
            answer = http.get("/v1/keys/blob", headers={"Range": header})
            assert answer.status_code == status, header[:40]
            if body is None:
                assert answer.json()["detail"] == "the value has 10 bytes"
                assert answer.headers["content-range"] == "bytes */10"
            else:
                assert answer.content == body
        assert http.get("/v1/keys/blob").content == b"0123456789"  # the same connection still serves


def test_mget_refuses_a_key_that_is_not_unicode_with_a_json_error(dev_service: RunningService) -> None:
    """JSON can spell a lone surrogate, which has no UTF-8 bytes: it was a 500 and an ERROR traceback."""
    with _http(dev_service) as http:
        refused = http.post("/v1/mget", content=b'{"keys": ["ok", "\\udcff"]}',
                            headers={"content-type": "application/json"})
        assert refused.status_code == 400
        assert refused.json()["detail"].startswith("keys[1] is not Unicode text")
        assert http.post("/v1/mget", json={"keys": ["ok"]}).status_code == 200  # the same connection


def test_range_and_conditional_reads_carry_a_strong_etag_that_if_none_match_and_if_range_use(
        dev_service: RunningService) -> None:
    """If-Range was ignored (206 for a value that had changed, so a client fetching parts spliced two versions)
    and no answer had a validator. A plain GET carries none: the hash would cost as much CPU as serving."""
    with _http(dev_service) as http:
        http.put("/v1/keys/doc", content=b"0123456789")
        assert "etag" not in http.get("/v1/keys/doc").headers
        first = http.get("/v1/keys/doc", headers={"Range": "bytes=0-3"})
        tag = first.headers["etag"]
        assert (first.status_code, first.content, tag) == (206, b"0123", etag(b"0123456789"))
        assert len(tag) == 18 and http.head("/v1/keys/doc", headers={"Range": "bytes=0-"}).headers["etag"] == tag
        for held in (tag, f"W/{tag}", f'"other", {tag}', "*"):
            for method in ("GET", "HEAD"):
                cached = http.request(method, "/v1/keys/doc", headers={"If-None-Match": held, "Range": "bytes=1-2"})
                assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", tag), held
        not_cached = http.get("/v1/keys/doc", headers={"If-None-Match": '"other"'})
        assert (not_cached.status_code, not_cached.content, not_cached.headers["etag"]) == (200, b"0123456789", tag)
        resumed = http.get("/v1/keys/doc", headers={"Range": "bytes=4-", "If-Range": tag})
        assert (resumed.status_code, resumed.content) == (206, b"456789")

        http.put("/v1/keys/doc", content=b"ABCDEFGHIJ")  # changed between the client's two parts
        changed = http.get("/v1/keys/doc", headers={"Range": "bytes=4-", "If-Range": tag})
        assert (changed.status_code, changed.content) == (200, b"ABCDEFGHIJ")
        assert changed.headers["etag"] == etag(b"ABCDEFGHIJ") and "content-range" not in changed.headers
        assert http.get("/v1/keys/doc", headers={"If-None-Match": tag}).status_code == 200
        new_tag = changed.headers["etag"]
        for never in (f"W/{new_tag}", "Wed, 21 Oct 2015 07:28:00 GMT", '"stale"'):  # weak tags and dates: all of it
            whole = http.get("/v1/keys/doc", headers={"Range": "bytes=4-", "If-Range": never})
            assert (whole.status_code, whole.content) == (200, b"ABCDEFGHIJ"), never
        assert http.get("/v1/keys/doc", headers={"Range": "bytes=0-0", "If-Range": new_tag}).content == b"A"
        assert http.get("/v1/keys/doc", headers={"If-Range": new_tag}).status_code == 200  # no Range: ignored
        assert http.get("/v1/keys/nope", headers={"If-None-Match": "*"}).status_code == 404


def test_a_large_value_keeps_its_etag_until_it_changes(dev_service: RunningService) -> None:
    """Large values are hashed off the event loop and their tags remembered by identity: a rewrite of the same
    size must still change the tag."""
    first, second = b"a" * 300_000, b"a" * 299_999 + b"b"
    with _http(dev_service) as http:
        for value in (first, second, first):
            http.put("/v1/keys/big", content=value)
            for _ in range(2):
                part = http.get("/v1/keys/big", headers={"Range": "bytes=-1"})
                assert (part.content, part.headers["etag"]) == (value[-1:], etag(value))



def test_health_readiness_openapi(dev_service: RunningService) -> None:
    with _http(dev_service) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready"}
        paths = http.get("/openapi.json").json()["paths"]
        assert {"/v1/keys/{key}", "/v1/mget", "/v1/stats", "/healthz", "/readyz", "/metrics"} <= set(paths)
        dev_service.state.draining = True
        assert http.get("/readyz").status_code == 503


def test_metrics_count_hits_and_misses_per_tenant(dev_service: RunningService) -> None:
    client = redis.Redis(port=dev_service.resp_port)
    client.set("k", "v")
    client.get("k")
    client.get("k")
    client.get("missing")
    with _http(dev_service) as http:
        text = http.get("/metrics").text
    assert 'foresight_cache_hits_total{tenant="default"} 2.0' in text
    assert 'foresight_cache_misses_total{tenant="default"} 1.0' in text
    assert 'foresight_keys{tenant="default"} 1.0' in text
    assert "foresight_resp_connections 1.0" in text


def test_an_admin_refresh_of_one_tenant_logs_its_revoked_key_out_at_once(tmp_path: Path, pki: PKI) -> None:
    """What `keys revoke` calls: the connection logged in with the key used to keep working until the login
    cache's own re-check (half of auth_cache_ttl_s), here 15 s; another tenant's connection is not touched."""
    tenants_file = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants_file, {"acme": {}, "globex": {}})
    admin_token = new_admin_token()
    tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                         admin_token_hash=hash_key(admin_token), auth_cache_ttl_s=30) as svc, \
            httpx.Client(base_url=svc.endpoints.http_url, verify=tls) as http:
        acme, globex = (redis.Redis(port=svc.resp_port, ssl=True, ssl_ca_certs=str(pki.ca_cert),
                                    password=keys[name].secret) for name in ("acme", "globex"))
        assert acme.set("k", "v") and globex.ping()
        document = json.loads(tenants_file.read_text())
        document["keys"] = [k for k in document["keys"] if k["tenant"] != "acme"]  # acme's key revoked
        tenants_file.write_text(json.dumps(document))
        refreshed = http.post("/admin/v1/tenants/acme/refresh", headers=_bearer(admin_token))
        assert refreshed.status_code == 200, refreshed.text
        with pytest.raises(redis.exceptions.AuthenticationError):
            acme.get("k")  # the same connection, its session revoked by the refresh
        assert globex.ping()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _metric(text: str, name: str) -> float:
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name} ")]
    return value


def test_metrics_say_when_the_served_certificate_expires_and_follow_a_renewal(tmp_path: Path) -> None:
    """Renewal happens outside the process (fetch_tls.py, cert-manager): the expiry is what operators alert on."""
    ca = CertificateAuthority.create()
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "tls.crt", tmp_path / "tls.key"
    ca_file.write_bytes(ca.cert_pem)
    first = ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"], days=30)
    first.write(cert_file, key_file)
    verify = ssl.create_default_context(cafile=str(ca_file))
    write_tenants_file(tmp_path / "tenants.json", {"acme": {}})
    with running_service(tls_cert_file=cert_file, tls_key_file=key_file, tls_reload_interval_s=0.1,
                         tenants_file=tmp_path / "tenants.json") as svc, \
            httpx.Client(base_url=svc.endpoints.http_url, verify=verify) as http:
        text = http.get("/metrics").text
        expiry = x509.load_pem_x509_certificate(first.cert_pem).not_valid_after_utc.timestamp()
        assert _metric(text, "foresight_tls_certificate_expiry_timestamp_seconds") == expiry
        assert _metric(text, "foresight_tls_reloads_total") == 0
        renewed = ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"], days=3)
        renewed.write(cert_file, key_file)
        deadline = time.monotonic() + 10
        while _metric(http.get("/metrics").text, "foresight_tls_reloads_total") == 0:
            assert time.monotonic() < deadline, "the renewed certificate never went live"
            time.sleep(0.1)
        text = http.get("/metrics").text
        soon = x509.load_pem_x509_certificate(renewed.cert_pem).not_valid_after_utc.timestamp()
        assert _metric(text, "foresight_tls_certificate_expiry_timestamp_seconds") == soon < expiry


def test_metrics_need_the_scrape_token_or_a_loopback_client(tmp_path: Path, pki: PKI) -> None:
    """/metrics names every tenant and its activity: it was open to any client of the tenant-facing port."""
    tenants_file = tmp_path / "tenants.json"
    keys = write_tenants_file(tenants_file, {"acme": {}, "globex": {}})
    admin_token, token = new_admin_token(), secrets.token_hex()
    token_file = tmp_path / "metrics-token"
    token_file.write_text(token + "\n")
    settings = dict(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                    admin_token_hash=hash_key(admin_token), forwarded_allow_ips=["127.0.0.1"])
    remote = {"X-Forwarded-For": "203.0.113.9"}  # the client's address, as a proxy on this host would name it
    tls = ssl.create_default_context(cafile=str(pki.ca_cert))

    with running_service(**settings) as svc, httpx.Client(base_url=svc.endpoints.http_url, verify=tls) as http:
        assert http.put("/v1/keys/k", content=b"v", headers=_bearer(keys["acme"].secret)).status_code == 204
        assert 'foresight_keys{tenant="acme"} 1.0' in http.get("/metrics").text  # loopback: no token configured
        for credential in ({}, _bearer(keys["globex"].secret), _bearer(token)):  # no scrape token is configured
            refused = http.get("/metrics", headers={**remote, **credential})
            assert refused.status_code == 401 and "acme" not in refused.text
            assert refused.headers["www-authenticate"] == 'Bearer realm="foresight"'
        assert 'tenant="acme"' in http.get("/metrics", headers={**remote, **_bearer(admin_token)}).text
        assert http.get("/healthz", headers=remote).status_code == 200
        assert http.get("/readyz", headers=remote).status_code == 200

    with running_service(**settings, metrics_token_file=token_file) as svc, \
            httpx.Client(base_url=svc.endpoints.http_url, verify=tls) as http:
        for client in ({}, remote):  # once a token is configured, loopback clients need it too
            for credential in ({}, _bearer(keys["acme"].secret), _bearer(secrets.token_hex())):
                assert http.get("/metrics", headers={**client, **credential}).status_code == 401
            for credential in (_bearer(token), _bearer(admin_token)):
                assert 'tenant="globex"' in http.get("/metrics", headers={**client, **credential}).text
        rotated = secrets.token_hex()
        token_file.write_text(rotated)
        assert http.get("/metrics", headers={**remote, **_bearer(rotated)}).status_code == 200
        assert http.get("/metrics", headers={**remote, **_bearer(token)}).status_code == 401
        token_file.write_text("short")  # a bad rewrite keeps the last good token
        assert http.get("/metrics", headers={**remote, **_bearer(rotated)}).status_code == 200

    with pytest.raises(ConfigError, match="FORESIGHT_METRICS_TOKEN_FILE"), \
            running_service(**settings, metrics_token_file=token_file):
        pass


def _failed_login_sources(audit: Path) -> set[str]:
    """The addresses (without port) the audit log names for failed logins."""
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    return {e["source"].rsplit(":", 1)[0] for e in events if e["action"] == "auth" and e["outcome"] == "failure"}


def test_x_forwarded_for_names_the_client_only_when_it_comes_from_a_configured_proxy(tmp_path: Path,
                                                                                      pki: PKI) -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so any local process could pick
    the address the failed-login limiter counts and the audit log records. By default the header is ignored;
    with forwarded_allow_ips naming the proxy, the client it names is the one limited and audited."""
    tenants_file = tmp_path / "tenants.json"
    write_tenants_file(tenants_file, {"acme": {}})
    settings = dict(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                    auth_failure_burst=2, auth_failure_rate=0.001)  # no failure earned back during the test
    tls = ssl.create_default_context(cafile=str(pki.ca_cert))
    guess = _bearer(new_key().secret)
    forwarded = {**guess, "X-Forwarded-For": "203.0.113.9"}

    ignored = tmp_path / "ignored.log"
    with running_service(**settings, audit_log=ignored) as svc, \
            httpx.Client(base_url=svc.endpoints.http_url, verify=tls) as http:
        assert [http.get("/v1/keys/k", headers=forwarded).status_code for _ in range(3)] == [401, 401, 429]
        assert http.get("/v1/keys/k", headers=guess).status_code == 429  # the connecting address was limited
        assert _failed_login_sources(ignored) == {"127.0.0.1"}

    believed = tmp_path / "believed.log"
    with running_service(**settings, audit_log=believed, forwarded_allow_ips=["127.0.0.1"]) as svc, \
            httpx.Client(base_url=svc.endpoints.http_url, verify=tls) as http:
        assert [http.get("/v1/keys/k", headers=forwarded).status_code for _ in range(3)] == [401, 401, 429]
        assert http.get("/v1/keys/k", headers=guess).status_code == 401  # the proxy itself is not limited
        assert _failed_login_sources(believed) == {"203.0.113.9", "127.0.0.1"}


def test_forwarded_allow_ips_takes_addresses_and_networks_only() -> None:
    """A name or a network with host bits set would be compared as a literal by uvicorn, and never match."""
    assert Settings(forwarded_allow_ips="127.0.0.1, 10.0.0.0/8").forwarded_allow_ips == [
        ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8")]
    assert Settings().forwarded_allow_ips == []
    for bad in ("localhost", "10.0.0.1/8", "*"):
        with pytest.raises(ValidationError, match="not a valid IPv4 or IPv6 network"):
            Settings(forwarded_allow_ips=bad)
