"""Encrypted model checkpoints are bound to the tenant's incarnation: a tenant deleted and created again under
the same name never loads the deleted one's model, whatever plaintext files around it were edited."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from service.cache import TenantRegistry
from service.prefetch.mlops.checkpoints import CheckpointError, CheckpointRegistry
from service.prefetching import PrefetchManager
from service.security.envelope import EnvelopeCipher
from service.security.kms.local import LocalKms
from service.tenancy import TenantSpec
from tests.service.test_prefetching import _learned_tenants

STATE = {"weights": [1.0, 2.0], "model_config": {"dim": 2}}


@pytest.fixture
def cipher() -> EnvelopeCipher:
    return EnvelopeCipher(LocalKms.generate())


def _index(directory: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((directory / "index.json").read_text())


def test_a_checkpoint_written_for_one_incarnation_does_not_load_for_another(
    tmp_path: Path, cipher: EnvelopeCipher
) -> None:
    first = CheckpointRegistry(tmp_path, "acme", cipher, incarnation="a1")
    version = first.save(STATE, 0.9)
    assert first.promote_if_better(version)
    assert CheckpointRegistry(tmp_path, "acme", cipher, incarnation="a1").load(version)["weights"] == [1.0, 2.0]

    index = _index(tmp_path)
    assert index["incarnation"] == "a1"
    index["incarnation"] = "b2"  # whoever can write the data dir claims the versions are the new tenant's
    (tmp_path / "index.json").write_text(json.dumps(index))
    second = CheckpointRegistry(tmp_path, "acme", cipher, incarnation="b2")
    assert second.serving == version
    with pytest.raises(CheckpointError, match="does not decrypt"):
        second.load(version)


def test_versions_of_another_incarnation_are_dropped_on_open(tmp_path: Path, cipher: EnvelopeCipher) -> None:
    first = CheckpointRegistry(tmp_path, "acme", cipher, incarnation="a1")
    first.promote_if_better(first.save(STATE, 0.9))
    second = CheckpointRegistry(tmp_path, "acme", cipher, incarnation="b2")
    assert second.serving is None and not list(tmp_path.glob("v*.ckpt"))
    assert _index(tmp_path)["incarnation"] == "b2"


def test_the_upgrade_drops_unbound_checkpoints_once_and_says_so(
    tmp_path: Path, cipher: EnvelopeCipher, caplog: pytest.LogCaptureFixture
) -> None:
    """Checkpoints from a release before the binding would not decrypt: one warning, then a new model."""
    old = CheckpointRegistry(tmp_path, "acme", cipher)  # a tenant without an incarnation keeps the old context...
    old.promote_if_better(old.save(STATE, 0.9))
    assert "incarnation" not in _index(tmp_path) or _index(tmp_path)["incarnation"] is None
    index = _index(tmp_path)
    index.pop("incarnation", None)  # ...and an older release's index has no such field
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert CheckpointRegistry(tmp_path, "acme", cipher).load(1)["weights"] == [1.0, 2.0]  # no cost without one
    with caplog.at_level(logging.WARNING, logger="service.prefetch.mlops.checkpoints"):
        upgraded = CheckpointRegistry(tmp_path, "acme", cipher, incarnation="a1")
        assert upgraded.serving is None
        assert caplog.text.count("they cannot load, so they are deleted") == 1
        caplog.clear()
        upgraded.promote_if_better(upgraded.save(STATE, 0.5))
        again = CheckpointRegistry(tmp_path, "acme", cipher, incarnation="a1")
        assert again.load(again.serving or 0)["weights"] == [1.0, 2.0]
    assert caplog.text == ""


async def test_a_recreated_tenant_never_loads_the_deleted_ones_model_even_with_its_files_edited(
    tmp_path: Path, cipher: EnvelopeCipher, caplog: pytest.LogCaptureFixture
) -> None:
    settings, _ = _learned_tenants(tmp_path, ["acme"])
    models = tmp_path / "data" / "models" / "acme"

    async def start(incarnation: str) -> int | None:
        """A service start serving acme of this incarnation: the version it loaded, after checkpointing one."""
        registry = TenantRegistry(settings)
        registry.sync([TenantSpec(name="acme", incarnation=incarnation)])
        manager = PrefetchManager(settings, cipher)
        try:
            with caplog.at_level(logging.INFO, logger="service.prefetching"):
                await manager.sync(registry)
            running = manager.running["acme"]
            assert running.checkpoints is not None
            state = await running.run_blocking(running.engine.prefetcher.state_dict)
            running.checkpoints.promote_if_better(running.checkpoints.save(state, 0.9))
            return running.checkpoints.serving if "loaded model" in caplog.text else None
        finally:
            caplog.clear()
            await manager.stop()
            registry.close()

    await start("a1")
    assert await start("a1") is not None  # the same tenant, restarted: its model comes back
    assert _index(models)["incarnation"] == "a1"  # the checkpoints are bound to it
    (models / "incarnation").write_text("b2")  # acme deleted and created again; the plaintext marker edited
    index = _index(models)
    index["incarnation"] = "b2"  # and the unauthenticated index too
    (models / "index.json").write_text(json.dumps(index))
    assert await start("b2") is None
