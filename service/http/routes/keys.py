"""The key-value API under /v1, with the same semantics as the RESP commands of the same name."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated, TypeVar, cast
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from service import admin
from service.cache import KeyContended, PreconditionFailed, TenantCache
from service.http.deps import KeyspaceAdmin, Reader, State, Writer
from service.http.ranges import Unsatisfiable, byte_range
from service.http.validators import EntityTags, MalformedPrecondition, WritePreconditions, if_range_holds, none_match
from service.origin import OriginError, OriginTimeout, UnmappableKey
from service.resp.commands.strings import LLONG_MAX
from service.store import ValueTooLarge, now_ms
from service.store.pattern import PatternTooLong, compile_glob

router = APIRouter(prefix="/v1", tags=["keys"])

MAX_VALUE_BYTES = 64 * 1024 * 1024
MAX_MGET_BYTES = 16 * 1024 * 1024  # 10,000 keys of some 1.6 KB each, quoted
Answer = TypeVar("Answer")

_TOO_LARGE = HTTPStatus.REQUEST_ENTITY_TOO_LARGE  # starlette's name for 413 is deprecated, its new one too new


async def _read(tenant: TenantCache, key: bytes) -> bytes | None:
    return await _from_origin(tenant.get(key))


async def _from_origin(call: Awaitable[Answer]) -> Answer:
    """The result of a call that may read the origin, its failures as HTTP errors."""
    try:
        return await call
    except UnmappableKey as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"origin: {err}") from None
    except OriginTimeout as err:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, f"origin: {err}") from None
    except OriginError as err:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"origin: {err}") from None


_KEY_PATH = b"/v1/keys/"


def _key(request: Request, key: str) -> bytes:
    """The key's bytes as the client sent them, percent-decoded from the raw path: the server decodes the path
    as UTF-8 with replacement, so a key that is not UTF-8 (%FF, %FE) would be unreachable, and such keys would
    collide."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw.startswith(_KEY_PATH):
        return unquote_to_bytes(raw[len(_KEY_PATH):])
    return key.encode()


class KeyName(BaseModel):
    key: str = Field(description="The key, as text when it is UTF-8, else base64.")
    encoding: str = Field(description="'utf-8' or 'base64'.")


class KeyPage(BaseModel):
    cursor: str = Field(description="Pass it back for the next page; '0' when the listing is complete. A string: "
                        "cursors are 64-bit, beyond what JSON numbers carry exactly.")
    keys: list[KeyName]


def _name(key: bytes) -> KeyName:
    try:
        return KeyName(key=key.decode("utf-8"), encoding="utf-8")
    except UnicodeDecodeError:
        return KeyName(key=base64.b64encode(key).decode(), encoding="base64")


@router.get("/keys")
async def list_keys(
    tenant: Reader,
    match: Annotated[str, Query(description="Redis glob: *, ?, [a-z], [^x], \\ escapes.")] = "*",
    cursor: Annotated[str, Query(pattern=r"^[0-9]{1,20}$", description="'0' to start, then the cursor returned.")]
    = "0",
    count: Annotated[int, Query(ge=1, le=10_000, description="Keys examined per page (before `match`).")] = 100,
) -> KeyPage:
    """List the tenant's keys a page at a time, as SCAN does: a key present for the whole listing is returned
    at least once (some may come twice); a page may be short, or empty, before the cursor is '0'."""
    position = int(cursor)
    if position >= 2**64:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "cursor must be below 2**64")
    try:
        matches = compile_glob(match.encode())
    except PatternTooLong as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
    following, found = tenant.store.scan(position, count)
    names = cast("list[bytes]", found)  # a tenant's store is keyed by bytes
    return KeyPage(cursor=str(following), keys=[_name(key) for key in names if matches(key)])


class Flushed(BaseModel):
    removed: int = Field(description="How many keys the tenant's keyspace held.")


@router.delete("/keys")
async def delete_all_keys(request: Request, tenant: KeyspaceAdmin, state: State) -> Flushed:
    """Empty the tenant's keyspace (FLUSHDB); needs a key with the admin scope, and is audited. Keys read again
    come back from the origin."""
    client = request.client
    peer = f"{client.host}:{client.port}" if client else "?"
    key_id = getattr(request.state, "key_id", None)  # None: the dev tenant, which has no key
    return Flushed(removed=await admin.flush(state, tenant, key_id, peer, "DELETE /v1/keys"))


def _header(name: str, description: str) -> dict[str, object]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}


# Read from the request rather than declared as Header parameters: FastAPI spends about 12 us validating each
# (measured), some 5% of a small GET each. They are documented here instead.
_READ_HEADERS = {"parameters": [
    _header("Range", "One byte range, e.g. bytes=0-1023 (206 Partial Content; 416 when it starts past the end)."),
    _header("If-Range", "Apply Range only while the value still has this ETag; otherwise the whole value (200)."),
    _header("If-None-Match", "ETags the client holds: 304 Not Modified when the value has one of them."),
]}
_WRITE_HEADERS = {"parameters": [
    _header("If-Match", "Write only if the key has a value (*) whose strong ETag is one of these; else 412."),
    _header("If-None-Match", "Write only if the key has no value (*) or its ETag is none of these; else 412."),
]}


@router.head("/keys/{key:path}", response_class=Response, include_in_schema=False)  # GET's, without the body
@router.get("/keys/{key:path}", response_class=Response, openapi_extra=_READ_HEADERS,
            responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "The byte range"},
                       304: {"description": "The value still has the tag If-None-Match names"},
                       404: {"description": "No such key"}, 416: {"description": "The range starts past the end"}})
async def get_key(key: str, request: Request, tenant: Reader) -> Response:
    """Read a key (reading through to the origin on a miss), or one byte range of it; HEAD answers the same
    status and headers (its length among them) without the body. A request with Range, If-Range or
    If-None-Match gets the value's ETag (a hash of it); a plain one none, since hashing costs."""
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if_none_match = request.headers.get("if-none-match")
    name = _key(request, key)
    value = await _read(tenant, name)
    if value is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such key")
    entry = tenant.store.entry(name)
    headers = {"Accept-Ranges": "bytes"}
    if entry is not None and entry.expires_at:
        headers["Foresight-TTL-Ms"] = str(max(entry.expires_at - now_ms(), 0))
    if range_header is not None or if_range is not None or if_none_match is not None:  # see validators.py
        tags: EntityTags = request.app.state.entity_tags
        headers["ETag"] = tag = await tags.of(value)
        if if_none_match is not None and none_match(if_none_match, tag):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        if if_range is not None and not if_range_holds(if_range, tag):
            range_header = None  # the value changed since the client's first part: all of it (RFC 9110, 13.1.5)
    try:
        span = byte_range(range_header, len(value)) if range_header else None
    except Unsatisfiable:
        raise HTTPException(status.HTTP_416_RANGE_NOT_SATISFIABLE, f"the value has {len(value)} bytes",
                            headers={"Content-Range": f"bytes */{len(value)}"}) from None
    if span is None:
        return Response(value, media_type="application/octet-stream", headers=headers)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{len(value)}"
    return Response(value[first:last + 1], status.HTTP_206_PARTIAL_CONTENT, headers,
                    media_type="application/octet-stream")


@router.put("/keys/{key:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
            openapi_extra=_WRITE_HEADERS, responses={412: {"description": "If-Match or If-None-Match is false"}})
async def put_key(
    key: str,
    request: Request,
    tenant: Writer,
    ttl: Annotated[int | None, Query(gt=0, description="Expire after this many seconds.")] = None,
    ttl_header: Annotated[int | None, Header(alias="Foresight-TTL", gt=0,
                                             description="Expire after this many seconds.")] = None,
) -> Response:
    """Write a key from the raw request body; TTL from `?ttl=` or the `Foresight-TTL` header. With If-Match or
    If-None-Match, only while they hold, and the answer carries the new value's ETag."""
    if ttl is not None and ttl_header is not None and ttl != ttl_header:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "ttl query and Foresight-TTL header disagree")
    seconds = ttl if ttl is not None else ttl_header
    deadline = now_ms() + seconds * 1000 if seconds else 0
    if seconds and (seconds > LLONG_MAX // 1000 or deadline > LLONG_MAX):  # EXPIRE's and SET EX's bound
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "ttl too large: the deadline in milliseconds must fit in "
                            "a signed 64-bit integer, as for EXPIRE")
    preconditions = _preconditions(request)
    value = await _body(request, tenant, MAX_VALUE_BYTES, "values are")
    name = _key(request, key)

    def write() -> None:
        try:
            tenant.store.set(name, value, deadline)
        except ValueTooLarge as err:
            raise HTTPException(_TOO_LARGE, str(err)) from None

    if preconditions is None:
        write()
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    await _write_if(request, tenant, name, preconditions, write)
    tags: EntityTags = request.app.state.entity_tags
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"ETag": await tags.of(value)})


def _preconditions(request: Request) -> WritePreconditions | None:
    """A write's If-Match and If-None-Match (each header's lines joined, as one list); 400 when malformed."""
    headers = request.headers
    if_match, if_none_match = headers.getlist("if-match"), headers.getlist("if-none-match")
    try:
        return WritePreconditions.parse(", ".join(if_match) if if_match else None,
                                        ", ".join(if_none_match) if if_none_match else None)
    except MalformedPrecondition as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None


async def _write_if(request: Request, tenant: TenantCache, name: bytes, preconditions: WritePreconditions,
                    write: Callable[[], Answer]) -> Answer:
    """`write`, if the preconditions hold of the key's current value at the moment it runs (TenantCache.write_if);
    412 when they do not, 409 when other writes kept changing the key."""
    tags: EntityTags = request.app.state.entity_tags

    async def failure(value: bytes | None) -> str | None:
        tag = await tags.of(value) if value is not None and preconditions.needs_tag else None
        return preconditions.failure(value, tag)

    try:
        return await _from_origin(tenant.write_if(name, failure, write))
    except PreconditionFailed as failed:
        raise HTTPException(status.HTTP_412_PRECONDITION_FAILED, f"precondition failed: {failed}") from None
    except KeyContended as contended:
        raise HTTPException(status.HTTP_409_CONFLICT, str(contended)) from None


async def _body(request: Request, tenant: TenantCache, limit: int, what: str) -> bytes:
    """The request body, refused (413) by its declared length before any of it is read, or once more than the
    limit has arrived: a client cannot make the server buffer more than one value's worth. What has arrived counts
    in the tenant's requests in flight (TenantCache.requests_held, with its RESP connections'), refused (413) once
    over its memory budget: many bodies at once cannot grow the process past it either."""
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else 0
    chunks: list[bytes] = []
    held = 0
    try:
        if size <= limit:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
                held += len(chunk)
                tenant.requests_held += len(chunk)
                if (why := tenant.requests_over_budget()) is not None:
                    raise HTTPException(_TOO_LARGE, why)
    finally:
        tenant.requests_held -= held
    if size > limit:
        raise HTTPException(_TOO_LARGE, f"{what} limited to {limit} bytes")
    return b"".join(chunks)


@router.delete("/keys/{key:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               openapi_extra=_WRITE_HEADERS, responses={412: {"description": "If-Match or If-None-Match is false"}})
async def delete_key(key: str, request: Request, tenant: Writer) -> Response:
    """Delete a key; 404 when it did not exist. With If-Match or If-None-Match, only while they hold."""
    preconditions = _preconditions(request)
    name = _key(request, key)
    if preconditions is None:
        deleted = await tenant.delete(name)
    else:
        deleted = await _write_if(request, tenant, name, preconditions, lambda: tenant.store.delete(name))
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such key")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class MGetRequest(BaseModel):
    keys: list[str] = Field(min_length=1, max_length=10_000, description="Keys to read, in order.")


class MGetItem(BaseModel):
    key: str
    value: str | None = Field(description="The value; null when the key does not exist.")
    encoding: str = Field(description="'utf-8' when the value is text, else 'base64'.")


class MGetResponse(BaseModel):
    items: list[MGetItem]


def _item(key: str, value: bytes | None) -> MGetItem:
    if value is None:
        return MGetItem(key=key, value=None, encoding="utf-8")
    try:
        return MGetItem(key=key, value=value.decode("utf-8"), encoding="utf-8")
    except UnicodeDecodeError:
        return MGetItem(key=key, value=base64.b64encode(value).decode(), encoding="base64")


def _mget_request(raw: bytes) -> MGetRequest:
    """The body as FastAPI would parse a declared one (json.loads, so a lone surrogate reaches _utf8's clear
    error), with its 422s. Declaring it would have FastAPI read and parse it before the key is checked."""
    try:
        return MGetRequest.model_validate(json.loads(raw))
    except json.JSONDecodeError as err:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": err.msg}}]) from None
    except ValidationError as err:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in err.errors(include_url=False)]) from None
    except (ValueError, RecursionError):  # not UTF-8, or nested past the parser's depth: FastAPI's own answer
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "There was an error parsing the body") from None


@router.post("/mget", openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": MGetRequest.model_json_schema()}}}})
async def mget(request: Request, tenant: Reader) -> MGetResponse:
    """Read many keys at once, in order (misses read through to the origin). The body is read only once the key
    has been checked, and only up to MAX_MGET_BYTES."""
    body = _mget_request(await _body(request, tenant, MAX_MGET_BYTES, "mget bodies are"))
    names = [_utf8(key, index) for index, key in enumerate(body.keys)]  # all checked before any is read
    return MGetResponse(items=[_item(key, await _read(tenant, name))
                               for key, name in zip(body.keys, names, strict=True)])


def _utf8(key: str, index: int) -> bytes:
    """A key's bytes. JSON can spell a lone surrogate (\\udcff), which is no text: refused with a message that
    does not echo it (a validation error would, and JSON cannot encode it either)."""
    try:
        return key.encode()
    except UnicodeEncodeError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"keys[{index}] is not Unicode text (it holds a lone "
                            "surrogate); keys that are not UTF-8 are read with GET /v1/keys/{key}") from None
