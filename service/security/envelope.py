"""Envelope encryption for everything Foresight writes to disk (snapshots, model checkpoints, audit archives).

Each object gets a fresh 256-bit data key (DEK), wrapped by a KMS (`service.security.kms`); the data is
encrypted with AES-256-GCM in segments, so objects of any size stream through bounded memory.

Layout (version 1; all integers big-endian)::

    "FSE1" | segment size (u32) | nonce prefix (7 bytes) | key block length (u16) | key block | segments...

The key block is canonical JSON ``{"dek": base64 wrapped DEK, "key": key ref, "kms": provider}``. Each
segment is GCM ciphertext plus its 16-byte tag, encrypted with nonce ``prefix | counter (u32) | last (u8)``
and associated data ``magic | segment size | nonce prefix | caller's aad`` (the STREAM construction, as in
Tink's streaming AEAD), so edited, reordered, dropped, truncated or appended segments all fail.

The key block is deliberately *outside* the associated data: re-wrapping a DEK after a KMS key rotation
replaces only the key block and leaves every data byte as it was. That costs no integrity: a key block
that unwraps to any other DEK makes every segment fail authentication, and the KMS itself authenticates
the wrapped DEK.

Every failure to authenticate raises `TamperedEnvelope`; input that is not an envelope at all raises
`EnvelopeFormatError`; an unreachable KMS raises `KmsUnavailable` (never reported as tampering). All
methods block (KMS calls, file I/O).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import secrets
import shutil
import stat
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.security.kms.base import DEK_BYTES, KmsError, KmsProvider, KmsRejected, WrappedKey

MAGIC = b"FSE1"
DEFAULT_SEGMENT_SIZE = 256 * 1024
_TAG = 16
_PREFIX = 7
_FIXED = struct.Struct(">4sI7sH")  # magic, segment size, nonce prefix, key block length
_MAX_SEGMENTS = 2**32


class EnvelopeError(Exception):
    """Base class of envelope failures."""


class EnvelopeFormatError(EnvelopeError):
    """The input is not a Foresight envelope (wrong magic or unsupported version)."""


class TamperedEnvelope(EnvelopeError):
    """The envelope failed authentication: some byte of it was altered, dropped, reordered or added."""


class EnvelopeCipher:
    """Encrypts with `kms`; decrypts envelopes wrapped by `kms` or by any of `legacy` (provider migration)."""

    def __init__(
        self,
        kms: KmsProvider,
        *,
        legacy: Sequence[KmsProvider] = (),
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        if not 1 <= segment_size <= 64 * 1024 * 1024:
            raise ValueError("segment_size must be between 1 byte and 64 MiB")
        self.kms = kms
        self._providers = {p.name: p for p in (*legacy, kms)}
        self.segment_size = segment_size

    # -- bytes ---------------------------------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """An envelope of `plaintext`; `aad` binds it to a context (b"snapshot") that decrypt must repeat."""
        out = io.BytesIO()
        self.encrypt_stream(io.BytesIO(plaintext), out, aad)
        return out.getvalue()

    def decrypt(self, envelope: bytes, aad: bytes = b"") -> bytes:
        out = io.BytesIO()
        self.decrypt_stream(io.BytesIO(envelope), out, aad)
        return out.getvalue()

    def rewrap(self, envelope: bytes) -> bytes:
        """The same envelope with its DEK re-wrapped under the current KMS key; data bytes are untouched."""
        header, rest = _split_header(envelope)
        return self._rewrapped_header(header)[0] + rest

    # -- streams and files ---------------------------------------------------------------------------------

    def encrypt_stream(self, src: BinaryIO, dst: BinaryIO, aad: bytes = b"") -> None:
        with self.encrypting(dst, aad) as out:
            shutil.copyfileobj(src, out, self.segment_size)

    def decrypt_stream(self, src: BinaryIO, dst: BinaryIO, aad: bytes = b"") -> None:
        """Decrypts segment by segment. On TamperedEnvelope, `dst` holds a partial result: discard it."""
        for plaintext in self.decrypting(src, aad):
            dst.write(plaintext)

    def encrypting(self, dst: BinaryIO, aad: bytes = b"") -> EncryptingWriter:
        """A writer that encrypts what is written to it into `dst`, one segment at a time (the DEK is wrapped and
        the header written now). Use it in a `with` block: leaving it normally writes the last segment; leaving it
        by an exception leaves `dst` an incomplete envelope, which fails authentication: discard it."""
        dek = secrets.token_bytes(DEK_BYTES)
        wrapped = self.kms.wrap(dek)
        prefix = secrets.token_bytes(_PREFIX)
        dst.write(_header(self.segment_size, prefix, wrapped))
        return EncryptingWriter(dst, AESGCM(dek), prefix, _segment_aad(self.segment_size, prefix, aad),
                                self.segment_size)

    def decrypting(self, src: BinaryIO, aad: bytes = b"") -> Iterator[bytes]:
        """The plaintext of the envelope read from `src`, segment by segment, each authenticated before it is
        yielded. The header is read and the DEK unwrapped now (KMS errors raise here, not while iterating). A
        truncated or extended envelope raises TamperedEnvelope only at its end: act on nothing before the
        iteration has ended (or undo it)."""
        segment_size, prefix, wrapped = _read_header(src)
        gcm = AESGCM(self._unwrap(wrapped))
        return _decrypted_segments(src, gcm, prefix, _segment_aad(segment_size, prefix, aad), segment_size)

    def encrypt_file(self, src: Path, dst: Path, aad: bytes = b"") -> None:
        """Encrypt `src` into `dst` atomically (a temporary file renamed into place), mode 0600."""
        with src.open("rb") as inp, atomic_output(dst) as out:
            self.encrypt_stream(inp, out, aad)

    def decrypt_file(self, src: Path, dst: Path, aad: bytes = b"") -> None:
        """Decrypt `src` into `dst`; `dst` appears only if every segment authenticated, mode 0600."""
        with src.open("rb") as inp, atomic_output(dst) as out:
            self.decrypt_stream(inp, out, aad)

    def rewrap_file(self, path: Path, *, dry_run: bool = False) -> bool:
        """Re-wrap an encrypted file's DEK under the current KMS key version, in place; the data bytes are copied
        byte for byte. Returns whether the DEK was under another version: if not, nothing is written. `dry_run`
        asks the KMS (which changes nothing there) but never writes. The file is replaced atomically, keeping its
        mode and owner; on any failure it is left exactly as it was."""
        with path.open("rb") as inp:
            header, moved = self._rewrapped_header(_read_header_bytes(inp))
            if moved and not dry_run:
                with atomic_output(path, like=os.fstat(inp.fileno())) as out:
                    out.write(header)
                    shutil.copyfileobj(inp, out)
        return moved

    # -- internals -----------------------------------------------------------------------------------------

    def _unwrap(self, wrapped: WrappedKey) -> bytes:
        provider = self._providers.get(wrapped.provider)
        if provider is None:
            raise EnvelopeError(
                f"envelope's data key is wrapped by {wrapped.provider!r}; configured: {sorted(self._providers)}"
            )
        try:
            dek = provider.unwrap(wrapped)
        except KmsRejected as err:
            raise TamperedEnvelope(f"the KMS rejected the wrapped data key ({err})") from None
        if len(dek) != DEK_BYTES:
            raise TamperedEnvelope("the wrapped data key does not unwrap to a 256-bit key")
        return dek

    def _rewrapped_header(self, header: bytes) -> tuple[bytes, bool]:
        """The header with the DEK re-wrapped, and whether that moved it to another key version."""
        segment_size, prefix, wrapped = _parse_header(header)
        if wrapped.provider != self.kms.name:
            return _header(segment_size, prefix, self.kms.wrap(self._unwrap(wrapped))), True
        try:
            new = self.kms.rewrap(wrapped)
        except KmsRejected as err:
            raise TamperedEnvelope(f"the KMS rejected the wrapped data key ({err})") from None
        version = self.kms.version_of(wrapped)
        return _header(segment_size, prefix, new), version is None or version != self.kms.version_of(new)


class EncryptingWriter:
    """Encrypts the bytes written to it into segments of an envelope (from `EnvelopeCipher.encrypting`). Holds at
    most one segment: a full one is sealed only once more data follows, since the last segment is marked as such."""

    def __init__(self, dst: BinaryIO, gcm: AESGCM, prefix: bytes, base_aad: bytes, segment_size: int) -> None:
        self._dst, self._gcm, self._prefix, self._aad = dst, gcm, prefix, base_aad
        self._segment_size = segment_size
        self._pending = bytearray()
        self._counter = 0
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed envelope")
        view, pending, size = memoryview(data).cast("B"), self._pending, self._segment_size
        offset = 0
        while offset < len(view):
            if len(pending) == size:  # more data follows: this one is not the last
                self._seal(pending, last=False)
                pending.clear()
            if not pending and len(view) - offset > size:  # a whole segment with more after it: no copy
                self._seal(view[offset:offset + size], last=False)
                offset += size
                continue
            taken = min(size - len(pending), len(view) - offset)
            pending += view[offset:offset + taken]
            offset += taken
        return len(view)

    def close(self) -> None:
        """Seal what is pending as the last segment (an empty envelope has one empty segment)."""
        if not self._closed:
            self._closed = True
            self._seal(self._pending, last=True)
            self._pending = bytearray()

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # no last segment: the envelope cannot pass for a complete one

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> None:
        self._dst.write(self._gcm.encrypt(_nonce(self._prefix, self._counter, last), plaintext, self._aad))
        if not last:
            self._counter = _next(self._counter)


def _decrypted_segments(src: BinaryIO, gcm: AESGCM, prefix: bytes, base_aad: bytes,
                        segment_size: int) -> Iterator[bytes]:
    chunk = segment_size + _TAG
    current = _read_exact(src, chunk)
    counter = 0
    while True:
        following = _read_exact(src, chunk) if len(current) == chunk else b""
        last = not following
        try:
            plaintext = gcm.decrypt(_nonce(prefix, counter, last), current, base_aad)
        except InvalidTag:
            raise TamperedEnvelope(
                f"segment {counter} failed authentication (altered, reordered or truncated)"
            ) from None
        yield plaintext
        if last:
            return
        current, counter = following, _next(counter)


def wrapped_key_of(envelope_head: bytes) -> WrappedKey:
    """Which provider and key wrapped an envelope's DEK (reads only the header; no KMS call)."""
    return _parse_header(_split_header(envelope_head)[0])[2]


def _header(segment_size: int, prefix: bytes, wrapped: WrappedKey) -> bytes:
    block = json.dumps(
        {"dek": base64.b64encode(wrapped.blob).decode(), "key": wrapped.key_ref, "kms": wrapped.provider},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    if len(block) > 0xFFFF:
        raise KmsError("wrapped data key is too large for the envelope header")
    return _FIXED.pack(MAGIC, segment_size, prefix, len(block)) + block


def _split_header(envelope: bytes) -> tuple[bytes, bytes]:
    if len(envelope) < _FIXED.size or envelope[:4] != MAGIC:
        raise EnvelopeFormatError("not a Foresight envelope (bad magic)")
    end = _FIXED.size + _FIXED.unpack_from(envelope)[3]
    if len(envelope) < end:
        raise TamperedEnvelope("envelope header is truncated")
    return envelope[:end], envelope[end:]


def _read_header_bytes(src: BinaryIO) -> bytes:
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) < _FIXED.size or fixed[:4] != MAGIC:
        raise EnvelopeFormatError("not a Foresight envelope (bad magic)")
    block = _read_exact(src, _FIXED.unpack(fixed)[3])
    header = fixed + block
    _parse_header(header)
    return header


def _read_header(src: BinaryIO) -> tuple[int, bytes, WrappedKey]:
    return _parse_header(_read_header_bytes(src))


def _parse_header(header: bytes) -> tuple[int, bytes, WrappedKey]:
    _magic, segment_size, prefix, length = _FIXED.unpack_from(header)
    if len(header) != _FIXED.size + length:
        raise TamperedEnvelope("envelope header is truncated")
    if segment_size == 0:
        raise TamperedEnvelope("envelope header is corrupt (segment size 0)")
    try:
        block = json.loads(header[_FIXED.size :])
        wrapped = WrappedKey(str(block["kms"]), str(block["key"]), base64.b64decode(block["dek"], validate=True))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TamperedEnvelope("envelope key block is corrupt") from None
    return segment_size, prefix, wrapped


def _segment_aad(segment_size: int, prefix: bytes, aad: bytes) -> bytes:
    return MAGIC + struct.pack(">I", segment_size) + prefix + struct.pack(">I", len(aad)) + aad


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def _next(counter: int) -> int:
    if counter + 1 >= _MAX_SEGMENTS:
        raise EnvelopeError("object too large for one envelope (2**32 segments)")
    return counter + 1


def _read_exact(src: BinaryIO, size: int) -> bytes:
    parts, remaining = [], size
    while remaining:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


class atomic_output:  # lower case: used like a function, `with atomic_output(path) as out`
    """A temporary file next to `path` (a random name ending in .tmp), fsynced and renamed over it on success (then
    the directory is fsynced, so the rename survives a power loss), removed on failure. Mode 0600, or the mode and
    owner of `like` (the file being replaced: a rewrap run as root must not leave the service a file it cannot
    read)."""

    def __init__(self, path: Path, *, like: os.stat_result | None = None) -> None:
        self.path = path
        self.like = like
        self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")

    def __enter__(self) -> BinaryIO:
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:  # named after the file being written, not its passing temporary name
            raise type(err)(err.errno, err.strerror, str(self.path)) from None
        try:
            if self.like is not None:
                _copy_mode_and_owner(fd, self.like, self.path)
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            try:
                if exc_type is None:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        fsync_directory(self.path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the renames, creations and deletions in `directory` so far survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_mode_and_owner(fd: int, like: os.stat_result, path: Path) -> None:
    os.fchmod(fd, stat.S_IMODE(like.st_mode))
    created = os.fstat(fd)
    if (created.st_uid, created.st_gid) == (like.st_uid, like.st_gid):
        return
    try:
        os.fchown(fd, like.st_uid, like.st_gid)
    except PermissionError:
        raise EnvelopeError(
            f"cannot give the rewritten {path.name} its owner {like.st_uid}:{like.st_gid}: run as that user or root"
        ) from None
