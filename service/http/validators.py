"""Entity tags and the conditional requests that use them (RFC 9110, sections 8.8.3 and 13).

A value's ETag is strong: the first 64 bits of the SHA-256 of its bytes, so it changes whenever the bytes do,
whichever node or process serves it. SHA-256 rather than BLAKE2b: with the SHA extensions of current CPUs (x86
since Ice Lake and Zen, Arm v8) it hashes three times faster (1.8 against 0.6 GB/s, measured).

Hashing costs as much CPU as serving the value (about 0.55 ms a MiB), so answers carry an ETag only when the
request can use one: it has a Range (the parts of a value fetched in pieces must come from one version of it),
If-Range or If-None-Match. A plain GET, the way values are streamed, pays nothing. The service keeps no
modification times: no Last-Modified, and an If-Range holding a date never matches (the whole value is sent).

A PUT or DELETE may be made conditional on the key's current value with If-Match and If-None-Match
(`WritePreconditions`); such a PUT answers with the new value's ETag, the one a GET would give, so that the
client can make its next write conditional on it.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import sha256
from typing import Literal

_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")\s*(?:,|$)')
_EMPTY_ELEMENTS = re.compile(r"[\s,]*")  # RFC 9110, 5.6.1.2: a recipient accepts and ignores empty list elements


def etag(value: bytes) -> str:
    """The strong entity tag of a value."""
    return f'"{sha256(value).hexdigest()[:16]}"'


class EntityTags:
    """`etag`, remembered for large values, and computed off the event loop for them.

    Up to `on_loop_bytes` a value is hashed on the event loop (tens of microseconds, about what a hop to a thread
    costs). A larger one is hashed in a worker thread, which needs no interpreter lock, and its tag remembered by
    the value's identity: the store hands out the same immutable object until the value changes, so ranges read
    from one large value cost one hash. The entries hold their values (an id is unique only while its object
    lives), at most `held_bytes` of them, least recently used first out.
    """

    def __init__(self, on_loop_bytes: int = 64 * 1024, held_bytes: int = 128 * 1024 * 1024) -> None:
        self.on_loop_bytes, self.held_bytes = on_loop_bytes, held_bytes
        self._tags: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        self._held = 0

    async def of(self, value: bytes) -> str:
        if len(value) <= self.on_loop_bytes:
            return etag(value)
        known = self._tags.get(id(value))
        if known is not None and known[0] is value:
            self._tags.move_to_end(id(value))
            return known[1]
        tag = await asyncio.to_thread(etag, value)
        self._remember(value, tag)
        return tag

    def _remember(self, value: bytes, tag: str) -> None:
        if len(value) > self.held_bytes:
            return
        replaced = self._tags.pop(id(value), None)  # the same value hashed twice at once, or a dead one's id
        if replaced is not None:
            self._held -= len(replaced[0])
        self._tags[id(value)] = (value, tag)
        self._held += len(value)
        while self._held > self.held_bytes:
            _, (old, _) = self._tags.popitem(last=False)
            self._held -= len(old)


def _entity_tags(header: str) -> list[tuple[bool, str]]:
    """(weak, opaque tag) for each entity tag of a list; a malformed list gives no tags."""
    tags, position = [], _skip_empty(header, 0)
    while position < len(header):
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            return []
        tags.append((match.group(1) is not None, match.group(2)))
        position = _skip_empty(header, match.end())
    return tags


def _skip_empty(header: str, position: int) -> int:
    skipped = _EMPTY_ELEMENTS.match(header, position)
    return skipped.end() if skipped else position


def none_match(header: str, current: str) -> bool:
    """Whether If-None-Match is false for a value whose tag is `current` (a GET then answers 304): the list
    names it by weak comparison, or is `*` (a value exists)."""
    if header.strip() == "*":
        return True
    return any(tag == current for _, tag in _entity_tags(header))


def if_range_holds(header: str, current: str) -> bool:
    """Whether If-Range lets a Range apply: a strong tag equal to `current`; a weak tag or a date never does."""
    tags = _entity_tags(header)
    return len(tags) == 1 and not tags[0][0] and tags[0][1] == current


class MalformedPrecondition(ValueError):
    """An If-Match or If-None-Match of a write that is neither `*` nor a list of entity tags."""


Condition = Literal["*"] | tuple[tuple[bool, str], ...]  # any current value, or (weak, opaque tag) pairs


def _condition(name: str, header: str) -> Condition:
    if header.strip() == "*":
        return "*"
    tags = _entity_tags(header)
    if not tags:
        raise MalformedPrecondition(f'{name} must be * or a comma-separated list of entity tags, each quoted and '
                                    'weak ones prefixed with W/ (e.g. "1a2b", W/"3c4d")')
    return tuple(tags)


@dataclass(frozen=True, slots=True)
class WritePreconditions:
    """The If-Match and If-None-Match of a PUT or DELETE (RFC 9110, 13.1.1 and 13.1.2), None where absent.

    A GET ignores a malformed If-None-Match (it only costs a 200 instead of a 304); a write refuses one (400),
    since ignoring it would write what the client meant to write only under a condition.
    """

    if_match: Condition | None
    if_none_match: Condition | None

    @classmethod
    def parse(cls, if_match: str | None, if_none_match: str | None) -> WritePreconditions | None:
        """The preconditions of a request's headers; None when it has neither. Raises MalformedPrecondition."""
        if if_match is None and if_none_match is None:
            return None
        return cls(None if if_match is None else _condition("If-Match", if_match),
                   None if if_none_match is None else _condition("If-None-Match", if_none_match))

    @property
    def needs_tag(self) -> bool:
        """Whether evaluating them needs the current value's ETag (they name tags, not only `*`)."""
        return isinstance(self.if_match, tuple) or isinstance(self.if_none_match, tuple)

    def failure(self, value: bytes | None, tag: str | None) -> str | None:
        """Why the write must not happen to a key whose current value is `value` (None: no value) with ETag
        `tag`, or None when they hold. If-Match first, as section 13.2.2 orders them; it compares strongly, so
        a weak tag never matches, while If-None-Match compares weakly."""
        if self.if_match is not None:
            if value is None:
                return "If-Match: the key has no value"
            if self.if_match != "*" and not any(not weak and opaque == tag for weak, opaque in self.if_match):
                return "If-Match: the value's ETag is not one of those given (weak tags never match)"
        if self.if_none_match is not None and value is not None:
            if self.if_none_match == "*":
                return "If-None-Match: * and the key has a value"
            if any(opaque == tag for _, opaque in self.if_none_match):
                return "If-None-Match: the value's ETag is one of those given"
        return None
