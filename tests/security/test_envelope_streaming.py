"""Envelope streaming: a writer and a segment iterator that hold one segment, in the format `encrypt` writes."""

from __future__ import annotations

import io
import os

import pytest

from service.security.envelope import EnvelopeCipher, TamperedEnvelope
from service.security.kms.base import KmsUnavailable, WrappedKey
from service.security.kms.local import LocalKms

SEGMENT = 64


@pytest.fixture
def cipher() -> EnvelopeCipher:
    return EnvelopeCipher(LocalKms.generate(), segment_size=SEGMENT)


def written(cipher: EnvelopeCipher, data: bytes, chunk: int) -> bytes:
    out = io.BytesIO()
    with cipher.encrypting(out, b"ctx") as plaintext:
        for start in range(0, len(data), chunk):
            plaintext.write(data[start:start + chunk])
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 5])
@pytest.mark.parametrize("chunk", [1, 7, SEGMENT, SEGMENT + 1, 5 * SEGMENT])
def test_written_in_any_pieces_the_envelope_is_the_one_encrypt_makes(cipher: EnvelopeCipher, size: int,
                                                                     chunk: int) -> None:
    data = os.urandom(size)
    envelope = written(cipher, data, chunk)
    assert len(envelope) == len(cipher.encrypt(data, b"ctx"))  # the same segments: no empty one after a full one
    assert cipher.decrypt(envelope, b"ctx") == data


def test_segments_come_back_one_at_a_time_each_authenticated(cipher: EnvelopeCipher) -> None:
    data = os.urandom(3 * SEGMENT + 5)
    segments = list(cipher.decrypting(io.BytesIO(cipher.encrypt(data, b"ctx")), b"ctx"))
    assert [len(s) for s in segments] == [SEGMENT, SEGMENT, SEGMENT, 5] and b"".join(segments) == data


def test_a_writer_left_by_an_exception_leaves_an_envelope_that_never_authenticates(cipher: EnvelopeCipher) -> None:
    out = io.BytesIO()

    def encode_then_fail() -> None:
        with cipher.encrypting(out, b"ctx") as plaintext:
            plaintext.write(os.urandom(3 * SEGMENT))
            raise RuntimeError("the encoder failed")

    with pytest.raises(RuntimeError):
        encode_then_fail()
    with pytest.raises(TamperedEnvelope):
        cipher.decrypt(out.getvalue(), b"ctx")


def test_a_truncated_envelope_fails_only_at_its_end_so_callers_must_wait_for_it(cipher: EnvelopeCipher) -> None:
    envelope = cipher.encrypt(os.urandom(3 * SEGMENT + 5), b"ctx")
    segments = cipher.decrypting(io.BytesIO(envelope[:-(5 + 16)]), b"ctx")  # the last segment dropped
    assert len(next(segments)) == SEGMENT
    with pytest.raises(TamperedEnvelope):
        list(segments)


def test_the_kms_is_asked_when_decrypting_starts_not_while_iterating(monkeypatch: pytest.MonkeyPatch) -> None:
    kms = LocalKms.generate()
    cipher = EnvelopeCipher(kms)
    envelope = cipher.encrypt(b"data", b"ctx")

    def unavailable(_wrapped: WrappedKey) -> bytes:
        raise KmsUnavailable("throttled")

    monkeypatch.setattr(kms, "unwrap", unavailable)
    with pytest.raises(KmsUnavailable):
        cipher.decrypting(io.BytesIO(envelope), b"ctx")
