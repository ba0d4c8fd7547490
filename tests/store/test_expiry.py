"""TTLs: lazy expiry on access and active expiry of keys nobody reads."""

from __future__ import annotations

from service.store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_lazy_expiry_hides_and_frees_expired_keys() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, "lru", clock=clock)
    store.set(b"k", b"v", expires_at=clock.now + 100)
    used = store.used
    assert store.get(b"k") == b"v"
    clock.now += 100
    assert store.get(b"k") is None
    assert used > 0 and store.used == 0 and store.stats.expired == 1
    assert len(store.policy) == 0


def test_active_expiry_reclaims_unread_keys_exactly() -> None:
    clock = Clock()
    store = MemoryStore(1 << 24, "s3fifo", clock=clock)
    for i in range(1000):
        store.set(b"t%d" % i, b"v", expires_at=clock.now + (10 if i % 2 else 1000))
    store.set(b"forever", b"v")
    clock.now += 10
    assert store.active_expire() == 500
    assert len(store) == 501 and len(store.policy) == 501
    clock.now += 1000
    assert store.active_expire(limit=100) == 100
    assert store.active_expire() == 400
    assert len(store) == 1 and b"forever" in store


def test_overwrite_and_persist_leave_no_stale_deadline() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, "lru", clock=clock)
    store.set(b"a", b"1", expires_at=clock.now + 5)
    store.set(b"a", b"2")  # plain SET clears the TTL
    store.set(b"b", b"1", expires_at=clock.now + 5)
    store.expire_at(b"b", 0)  # PERSIST
    store.set(b"c", b"1", expires_at=clock.now + 5)
    store.set(b"c", b"2", keep_ttl=True)
    clock.now += 10
    assert store.active_expire() == 1
    assert b"a" in store and b"b" in store and b"c" not in store


def test_ttl_expiry_over_resp(dev_service_port: int) -> None:
    import redis

    from tests.servers import wait_until

    client = redis.Redis(port=dev_service_port)
    client.set("short", "v", px=100)
    client.set("long", "v", ex=100)
    # Active expiry runs every 100 ms: the key goes without being read (INFO and DBSIZE read no key).
    wait_until(lambda: client.info("stats")["expired_keys"] >= 1, "the active expiry of the unread key", timeout=10)
    assert client.dbsize() == 1
