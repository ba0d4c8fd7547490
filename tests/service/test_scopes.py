"""An API key does what its scopes allow and nothing more, on both listeners: "read" reads, "write" writes,
"admin" empties the tenant's keyspace (FLUSHDB/FLUSHALL), which never reaches another tenant."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from service.security.apikeys import IssuedKey, new_key
from tests.service.harness import RunningService, running_service
from tests.tlsutil import PKI

KEYS = {  # name: (tenant, scopes)
    "app": ("acme", ["read", "write"]),
    "reader": ("acme", ["read"]),
    "writer": ("acme", ["write"]),
    "owner": ("acme", ["admin", "read", "write"]),
    "neighbour": ("globex", ["read", "write"]),
    "intruder": ("globex", ["admin", "read", "write"]),
}


@dataclass
class Scoped:
    svc: RunningService
    keys: dict[str, IssuedKey]
    pki: PKI
    audit: Path

    def redis(self, name: str) -> redis.Redis:
        return redis.Redis(port=self.svc.resp_port, ssl=True, ssl_ca_certs=str(self.pki.ca_cert),
                           password=self.keys[name].secret)

    def http(self) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        return httpx.Client(base_url=self.svc.endpoints.http_url, verify=verify)

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name].secret}"}


@pytest.fixture
def scoped(tmp_path: Path, pki: PKI) -> Iterator[Scoped]:
    keys = {name: new_key() for name in KEYS}
    tenants_file = tmp_path / "tenants.json"
    tenants_file.write_text(json.dumps({
        "tenants": [{"name": "acme"}, {"name": "globex"}],
        "keys": [{"key_id": keys[name].key_id, "tenant": tenant, "hash": keys[name].key_hash, "scopes": scopes}
                 for name, (tenant, scopes) in KEYS.items()],
    }))
    audit = tmp_path / "audit.log"
    with running_service(tls_cert_file=pki.cert, tls_key_file=pki.key, tenants_file=tenants_file,
                         audit_log=audit) as svc:
        yield Scoped(svc, keys, pki, audit)


def test_a_read_only_key_reads_and_cannot_write(scoped: Scoped) -> None:
    scoped.redis("app").set("page", "cached")
    reader = scoped.redis("reader")
    assert reader.get("page") == b"cached"
    assert reader.mget(["page", "nope"]) == [b"cached", None]
    assert reader.ttl("page") == -1 and reader.exists("page") == 1
    for write in (lambda: reader.set("page", "defaced"), lambda: reader.delete("page"),
                  lambda: reader.incr("hits"), lambda: reader.getdel("page"), lambda: reader.expire("page", 1)):
        with pytest.raises(redis.exceptions.NoPermissionError, match="needs the 'write' scope"):
            write()
    transaction = reader.pipeline()  # MULTI/EXEC: the refused SET discards the whole transaction
    transaction.get("page").set("page", "defaced")
    with pytest.raises(redis.exceptions.ResponseError):
        transaction.execute()
    assert scoped.redis("app").get("page") == b"cached"
    assert reader.ping() is True  # connection commands need no scope
    queued = reader.pipeline()  # a subcommand's own scope is checked as MULTI queues it (CLIENT LIST needs admin)
    queued.execute_command("CLIENT", "LIST").get("page")
    with pytest.raises(redis.exceptions.NoPermissionError, match=r"'client\|list' command: it needs the 'admin'"):
        queued.execute(raise_on_error=False)  # EXECABORT; before, EXEC ran the GET and gave back its value


def test_a_write_only_key_writes_and_cannot_read(scoped: Scoped) -> None:
    writer = scoped.redis("writer")
    assert writer.set("event", "1") is True
    assert writer.incr("event") == 2
    with pytest.raises(redis.exceptions.NoPermissionError, match="run the 'get' command: it needs the 'read'"):
        writer.get("event")
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer.scan()
    for container, sub in (("CONFIG", "GET"), ("MEMORY", "USAGE")):  # NOPERM names the subcommand, as in Redis
        with pytest.raises(redis.exceptions.NoPermissionError, match=rf"run the '{container.lower()}\|{sub.lower()}' "
                           "command: it needs the 'read' scope"):
            writer.execute_command(container, sub, "event")
    assert scoped.redis("app").get("event") == b"2"


def test_scripts_pass_each_call_through_the_same_scope_check(scoped: Scoped) -> None:
    """A script is no way around a key's scopes: its calls are checked one by one, as Redis checks ACLs."""
    scoped.redis("app").set("page", "cached")
    reader, writer = scoped.redis("reader"), scoped.redis("writer")
    assert reader.eval("return redis.call('GET', KEYS[1])", 1, "page") == b"cached"
    assert reader.eval_ro("return redis.call('GET', KEYS[1])", 1, "page") == b"cached"
    with pytest.raises(redis.exceptions.NoPermissionError, match="'set' command: it needs the 'write' scope"):
        reader.eval("redis.call('SET', KEYS[1], 'defaced')", 1, "page")
    with pytest.raises(redis.exceptions.NoPermissionError, match="'get' command: it needs the 'read' scope"):
        writer.eval("return redis.call('GET', KEYS[1])", 1, "page")
    with pytest.raises(redis.exceptions.NoPermissionError, match="'eval_ro' command: it needs the 'read' scope"):
        writer.eval_ro("return 1", 0)
    assert writer.eval("return redis.call('INCR', KEYS[1])", 1, "hits") == 1
    assert scoped.redis("app").get("page") == b"cached"


def test_flushing_needs_the_admin_scope_and_empties_only_the_own_tenant(scoped: Scoped) -> None:
    app, owner, neighbour = scoped.redis("app"), scoped.redis("owner"), scoped.redis("neighbour")
    app.mset({"a": "1", "b": "2", "c": "3"})
    neighbour.set("theirs", "kept")
    for flush in (app.flushdb, app.flushall):
        with pytest.raises(redis.exceptions.NoPermissionError, match="needs the 'admin' scope"):
            flush()
    assert app.dbsize() == 3
    assert owner.flushall() is True
    assert app.dbsize() == 0 and app.get("a") is None
    assert neighbour.get("theirs") == b"kept" and neighbour.dbsize() == 1
    events = [json.loads(line) for line in scoped.audit.read_text().splitlines()]
    flushes = [e for e in events if e["action"] == "tenant.flush"]
    assert len(flushes) == 1
    assert flushes[0]["tenant"] == "acme" and flushes[0]["key_id"] == scoped.keys["owner"].key_id
    assert flushes[0]["details"] == {"via": "flushall", "keys_removed": 3}
    assert scoped.keys["owner"].secret not in scoped.audit.read_text()


@pytest.mark.parametrize("login", [("AUTH", "{}"), ("HELLO", "2", "AUTH", "default", "{}")])
def test_a_login_queued_inside_multi_does_not_carry_the_old_keys_scopes_into_exec(
        scoped: Scoped, login: tuple[str, ...]) -> None:
    """Redis 7.0 queues AUTH and HELLO AUTH inside MULTI; they switch key, and here tenant, at their turn in EXEC.
    The commands queued after them were checked against the old key: EXEC checks them again against the new."""
    scoped.redis("app").set("page", "cached")
    intruder = redis.Redis(port=scoped.svc.resp_port, ssl=True, ssl_ca_certs=str(scoped.pki.ca_cert),
                           password=scoped.keys["intruder"].secret, single_connection_client=True)
    assert intruder.ping() is True
    conn = intruder.connection
    assert conn is not None
    reader = tuple(part.format(scoped.keys["reader"].secret) for part in login)
    sent = [("MULTI",), reader, ("SET", "page", "defaced"), ("FLUSHALL",), ("GET", "page"), ("EXEC",)]
    for command in sent:
        conn.send_command(*command)
    replies = [conn.read_response() for _ in sent]
    assert replies[:5] == [b"OK"] + [b"QUEUED"] * 4
    switched, set_, flush, get = replies[5]
    assert switched == b"OK" or isinstance(switched, list)  # HELLO 2's map arrives as a flat array
    assert isinstance(set_, redis.exceptions.NoPermissionError) and "'write' scope" in str(set_)
    assert isinstance(flush, redis.exceptions.NoPermissionError) and "'admin' scope" in str(flush)
    assert get == b"cached"  # the read-only key may read: it runs on acme, the tenant now logged in
    app = scoped.redis("app")
    assert app.get("page") == b"cached" and app.dbsize() == 1
    with pytest.raises(redis.exceptions.NoPermissionError):  # the connection is the reader's from now on
        intruder.set("page", "defaced")


def test_http_checks_the_same_scopes(scoped: Scoped) -> None:
    with scoped.http() as http:
        assert http.put("/v1/keys/doc", content=b"v1", headers=scoped.bearer("app")).status_code == 204
        refused = http.put("/v1/keys/doc", content=b"v2", headers=scoped.bearer("reader"))
        assert refused.status_code == 403
        assert refused.json()["detail"] == "this API key lacks the 'write' scope this request needs"
        assert http.delete("/v1/keys/doc", headers=scoped.bearer("reader")).status_code == 403
        assert http.get("/v1/keys/doc", headers=scoped.bearer("reader")).content == b"v1"
        assert http.post("/v1/mget", json={"keys": ["doc"]}, headers=scoped.bearer("reader")).status_code == 200
        assert http.get("/v1/keys/doc", headers=scoped.bearer("writer")).status_code == 403
        assert http.get("/v1/stats", headers=scoped.bearer("writer")).status_code == 403
        assert http.put("/v1/keys/doc", content=b"v3", headers=scoped.bearer("writer")).status_code == 204
        assert http.get("/v1/keys/doc", headers=scoped.bearer("app")).content == b"v3"
        assert http.get("/v1/keys", headers=scoped.bearer("writer")).status_code == 403
        assert http.delete("/v1/keys", headers=scoped.bearer("app")).status_code == 403
        assert http.get("/v1/keys", headers=scoped.bearer("reader")).json()["keys"] == [
            {"key": "doc", "encoding": "utf-8"}]
        flushed = http.delete("/v1/keys", headers=scoped.bearer("owner"))
        assert flushed.status_code == 200 and flushed.json() == {"removed": 1}
        assert http.get("/v1/keys/doc", headers=scoped.bearer("app")).status_code == 404
    audited = [json.loads(line) for line in scoped.audit.read_text().splitlines()]
    assert [e["details"] for e in audited if e["action"] == "tenant.flush"] == [
        {"via": "DELETE /v1/keys", "keys_removed": 1}]


def test_client_list_info_and_kill_see_only_the_callers_tenant(scoped: Scoped) -> None:
    owner, app, neighbour = scoped.redis("owner"), scoped.redis("app"), scoped.redis("neighbour")
    owner.client_setname("admin-console")
    app.client_setname("web-1")
    neighbour.client_setname("theirs")
    app.set("page", "x" * 100)
    listed = owner.client_list()
    assert {c["name"] for c in listed} == {"admin-console", "web-1"}  # never globex's connection
    assert all(c["user"] == "acme" for c in listed)
    web = next(c for c in listed if c["name"] == "web-1")
    assert web["cmd"] == "set" and web["addr"].startswith("127.0.0.1:")
    me = owner.client_info()
    assert me["name"] == "admin-console" and me["cmd"] == "client|info"
    theirs = int(neighbour.client_id())
    assert owner.client_kill_filter(_id=theirs) == 0  # another tenant's connection cannot be touched
    assert neighbour.ping() is True
    with pytest.raises(redis.exceptions.NoPermissionError, match=r"'client\|list' command: it needs the 'admin'"):
        app.client_list()
    # In one read, so LIST runs before the killed connection's connection_lost: Redis frees a killed client at once
    kill_then_list = owner.pipeline(transaction=False).client_kill_filter(_id=int(web["id"])).client_list()
    killed, after = kill_then_list.execute()
    assert killed == 1 and web["id"] not in {c["id"] for c in after}
    assert owner.memory_usage("page") >= 100 + len("page") and owner.memory_usage("nope") is None
