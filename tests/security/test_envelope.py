"""Envelope encryption: round trips, tamper detection anywhere in the envelope, re-wrapping without re-encryption."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from service.security.envelope import (
    EnvelopeCipher,
    EnvelopeError,
    EnvelopeFormatError,
    TamperedEnvelope,
    wrapped_key_of,
)
from service.security.kms.local import LocalKms

SEGMENT = 64
_FIXED = 17  # magic 4 + segment size 4 + nonce prefix 7 + key block length 2


def header_length(envelope: bytes) -> int:
    return _FIXED + struct.unpack_from(">H", envelope, 15)[0]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.fixture
def kms() -> LocalKms:
    return LocalKms.generate()


@pytest.fixture
def cipher(kms: LocalKms) -> EnvelopeCipher:
    return EnvelopeCipher(kms, segment_size=SEGMENT)


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 10 * SEGMENT + 7])
def test_round_trip_of_any_size(cipher: EnvelopeCipher, size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256 + 1)
    plaintext = plaintext[:size]
    envelope = cipher.encrypt(plaintext, b"snapshot")
    assert cipher.decrypt(envelope, b"snapshot") == plaintext
    assert len(plaintext) < 16 or plaintext not in envelope


def test_each_object_gets_a_fresh_data_key_and_nonce(cipher: EnvelopeCipher) -> None:
    first, second = cipher.encrypt(b"same"), cipher.encrypt(b"same")
    assert wrapped_key_of(first).blob != wrapped_key_of(second).blob
    assert first[8:15] != second[8:15]
    assert first[header_length(first) :] != second[header_length(second) :]


def test_header_names_provider_and_key_without_plaintext_key(cipher: EnvelopeCipher, kms: LocalKms) -> None:
    envelope = cipher.encrypt(b"x")
    wrapped = wrapped_key_of(envelope)
    assert (wrapped.provider, wrapped.key_ref) == ("local", kms.key_ref)
    block = json.loads(envelope[_FIXED : header_length(envelope)])
    assert set(block) == {"dek", "key", "kms"}


def test_flipping_any_single_byte_is_detected(cipher: EnvelopeCipher) -> None:
    envelope = cipher.encrypt(b"a" * (2 * SEGMENT + 5), b"ctx")
    for index in range(len(envelope)):
        with pytest.raises(EnvelopeError):
            cipher.decrypt(flip(envelope, index), b"ctx")


def test_wrong_context_is_detected(cipher: EnvelopeCipher) -> None:
    envelope = cipher.encrypt(b"checkpoint bytes", b"checkpoint:tenant-a")
    with pytest.raises(TamperedEnvelope, match="segment 0"):
        cipher.decrypt(envelope, b"checkpoint:tenant-b")


def test_truncation_at_a_segment_boundary_is_detected(cipher: EnvelopeCipher) -> None:
    envelope = cipher.encrypt(b"b" * (3 * SEGMENT))
    body_start = header_length(envelope)
    without_last = envelope[: body_start + 2 * (SEGMENT + 16)]
    with pytest.raises(TamperedEnvelope, match="truncated"):
        cipher.decrypt(without_last)


def test_appended_and_reordered_segments_are_detected(cipher: EnvelopeCipher) -> None:
    envelope = cipher.encrypt(b"c" * SEGMENT + b"d" * SEGMENT + b"e" * 10)
    start, seg = header_length(envelope), SEGMENT + 16
    first, second = envelope[start : start + seg], envelope[start + seg : start + 2 * seg]
    swapped = envelope[:start] + second + first + envelope[start + 2 * seg :]
    with pytest.raises(TamperedEnvelope):
        cipher.decrypt(swapped)
    with pytest.raises(TamperedEnvelope):
        cipher.decrypt(envelope + first)


def test_key_block_swapped_from_another_object_is_detected(cipher: EnvelopeCipher) -> None:
    victim, other = cipher.encrypt(b"victim"), cipher.encrypt(b"other")
    spliced = other[: header_length(other)] + victim[header_length(victim) :]
    with pytest.raises(TamperedEnvelope):
        cipher.decrypt(spliced)


def test_not_an_envelope_is_a_format_error(cipher: EnvelopeCipher) -> None:
    with pytest.raises(EnvelopeFormatError):
        cipher.decrypt(b"PK\x03\x04 a zip file")
    with pytest.raises(EnvelopeFormatError):
        cipher.decrypt(b"")


def test_rewrap_after_rotation_changes_only_the_key_block(cipher: EnvelopeCipher, kms: LocalKms) -> None:
    envelope = cipher.encrypt(b"model weights" * 50)
    old_version = wrapped_key_of(envelope).key_ref
    kms.rotate()
    rewrapped = cipher.rewrap(envelope)
    assert wrapped_key_of(rewrapped).key_ref == kms.key_ref != old_version
    assert rewrapped[header_length(rewrapped) :] == envelope[header_length(envelope) :]
    assert rewrapped[:15] == envelope[:15]
    assert cipher.decrypt(rewrapped) == b"model weights" * 50


def test_migration_to_another_provider_via_legacy(kms: LocalKms) -> None:
    old = EnvelopeCipher(kms, segment_size=SEGMENT)
    envelope = old.encrypt(b"move me")
    new_kms = LocalKms.generate()
    new_kms.name = "local-2"  # a second provider id, as another KMS would have
    migrating = EnvelopeCipher(new_kms, legacy=[kms], segment_size=SEGMENT)
    moved = migrating.rewrap(envelope)
    assert wrapped_key_of(moved).provider == "local-2"
    assert EnvelopeCipher(new_kms).decrypt(moved) == b"move me"
    with pytest.raises(EnvelopeError, match="wrapped by 'local'"):
        EnvelopeCipher(new_kms).decrypt(envelope)


def test_files_round_trip_and_tampered_file_leaves_no_output(cipher: EnvelopeCipher, tmp_path: Path) -> None:
    src, enc, out = tmp_path / "snap.bin", tmp_path / "snap.fse", tmp_path / "snap.out"
    src.write_bytes(b"z" * (5 * SEGMENT + 3))
    cipher.encrypt_file(src, enc, b"snapshot")
    assert enc.stat().st_mode & 0o777 == 0o600
    cipher.decrypt_file(enc, out, b"snapshot")
    assert out.read_bytes() == src.read_bytes()
    out.unlink()
    data = enc.read_bytes()
    enc.write_bytes(flip(data, len(data) - 20))
    with pytest.raises(TamperedEnvelope):
        cipher.decrypt_file(enc, out, b"snapshot")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rewrap_file_keeps_ciphertext_bytes(cipher: EnvelopeCipher, kms: LocalKms, tmp_path: Path) -> None:
    src, enc = tmp_path / "ckpt.pt", tmp_path / "ckpt.pt.fse"
    src.write_bytes(b"w" * (4 * SEGMENT))
    cipher.encrypt_file(src, enc)
    before = enc.read_bytes()
    kms.rotate()
    cipher.rewrap_file(enc)
    after = enc.read_bytes()
    assert after[header_length(after) :] == before[header_length(before) :]
    assert wrapped_key_of(after).key_ref == kms.key_ref
    assert cipher.decrypt(after) == src.read_bytes()


def test_streams_use_bounded_memory_per_segment(cipher: EnvelopeCipher) -> None:
    class CountingReader(io.BytesIO):
        biggest = 0

        def read(self, size: int | None = -1) -> bytes:
            CountingReader.biggest = max(CountingReader.biggest, size or 0)
            return super().read(size)

    out = io.BytesIO()
    cipher.encrypt_stream(CountingReader(b"q" * 100 * SEGMENT), out)
    assert 0 < CountingReader.biggest <= SEGMENT
    assert cipher.decrypt(out.getvalue()) == b"q" * 100 * SEGMENT


def test_local_keyring_file_is_private_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    kms = LocalKms.generate(path)
    envelope = EnvelopeCipher(kms).encrypt(b"dev data")
    kms.rotate()
    assert path.stat().st_mode & 0o777 == 0o600
    reloaded = LocalKms.from_file(path)
    assert reloaded.key_ref == "v2"
    assert EnvelopeCipher(reloaded).decrypt(envelope) == b"dev data"
