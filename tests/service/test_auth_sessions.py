"""The login cache under concurrency: logins for the same key that overlap while the key source is asked must
not trip over each other (found by the marketplace suite: two connections retrying a just-suspended key)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from service.auth import Authenticator
from service.tenancy import FileKeySource
from tests.service.harness import write_tenants_file


def test_overlapping_logins_with_a_key_that_just_stopped_working(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    key = write_tenants_file(path, {"acme": {}})["acme"].secret
    authenticator = Authenticator(FileKeySource(path), ttl=0.0)  # every login asks the source

    async def scenario() -> list[object]:
        assert await authenticator.login(key, peer="t", listener="resp") is not None  # a cached session
        document = json.loads(path.read_text())
        document["keys"] = []  # the key is revoked
        path.write_text(json.dumps(document))
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
        authenticator.source.tenants()  # the service re-reads the file on its refresh loop
        return await asyncio.gather(*(authenticator.login(key, peer="t", listener="resp") for _ in range(3)),
                                    return_exceptions=True)

    assert asyncio.run(scenario()) == [None, None, None]


def test_overlapping_logins_share_one_session_so_a_revocation_reaches_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    key = write_tenants_file(path, {"acme": {}})["acme"].secret
    authenticator = Authenticator(FileKeySource(path), ttl=30.0)

    async def scenario() -> list[object]:
        return await asyncio.gather(*(authenticator.login(key, peer="t", listener="resp") for _ in range(3)))

    sessions = asyncio.run(scenario())
    assert all(s is sessions[0] for s in sessions)  # one session the re-check loop can revoke for all three
