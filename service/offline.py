"""What the commands that work on the service's files while it is stopped share (`foresight kms rewrap`,
`foresight snapshot merge`): its settings with a KMS, the check that it is stopped, and its cipher. Each refuses
with `Refused`, before anything is written, with what to fix."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings
    from service.security.envelope import EnvelopeCipher


class Refused(Exception):
    """Nothing was attempted; the message says what to fix."""


def offline_settings(config: Path | None) -> Settings:
    """The service's settings (FORESIGHT_* or its settings file), which must name a KMS: every file these commands
    touch is an envelope."""
    from service.bootstrap import check_local_keyring
    from service.config import ConfigError, load_settings

    try:
        settings = load_settings(config)
        check_local_keyring(settings)
    except ConfigError as err:
        raise Refused(str(err)) from None
    if settings.kms_provider == "none":
        raise Refused("no KMS configured: set the service's FORESIGHT_KMS_PROVIDER and FORESIGHT_KMS_KEY_ID "
                      "(and FORESIGHT_VAULT_* for vault-transit), or pass its --config")
    return settings


@contextmanager
def service_stopped(settings: Settings) -> Iterator[None]:
    """Hold the audit log's writer lock, which the running service holds, for the whole command: a service
    started meanwhile refuses to start, and one running now makes this refuse (it rewrites the snapshot at its stop
    and deletes old checkpoints, so a file changed behind it could be put back stale)."""
    from service.security.audit import AuditLogError, lock_exclusively

    audit = settings.audit_path
    if audit is None or not audit.parent.is_dir():
        yield  # no audit log, so no lock to check: nothing of the service has ever run here
        return
    try:
        fd = lock_exclusively(audit)
    except AuditLogError:
        raise Refused(f"the service is running (its audit log {audit} is open for writing): stop it first, since "
                      "a change racing it could be undone by the files it writes") from None
    except OSError as err:
        raise Refused(f"cannot check whether the service is running ({audit}): {err.strerror}") from None
    try:
        yield
    finally:
        os.close(fd)


def failure_reason(err: Exception) -> str:
    """What to say of a file these commands could not read or write: our own errors' words, an OSError's, and of
    anything else (a KMS SDK's own error, whose message may carry secrets) only its type."""
    from service.security.envelope import EnvelopeError
    from service.security.kms import KmsError
    from service.snapshot import SnapshotFormatError

    if isinstance(err, EnvelopeError | KmsError | SnapshotFormatError):
        return str(err)
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    return f"unexpected {type(err).__name__} from the KMS client"


@contextmanager
def offline_envelope_cipher(settings: Settings) -> Iterator[EnvelopeCipher]:
    from service.bootstrap import offline_cipher
    from service.config import ConfigError

    with ExitStack() as stack:
        try:
            cipher = stack.enter_context(offline_cipher(settings))
        except ConfigError as err:
            raise Refused(str(err)) from None
        assert cipher is not None  # kms_provider is not "none"
        yield cipher
