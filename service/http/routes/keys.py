"""The key-value API under /v1, with the same semantics as the RESP commands of the same name."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from service.cache import TenantCache
from service.http.deps import Reader, Writer
from service.origin import OriginError, OriginTimeout, UnmappableKey
from service.store import ValueTooLarge, now_ms

router = APIRouter(prefix="/v1", tags=["keys"])

MAX_VALUE_BYTES = 64 * 1024 * 1024


async def _read(tenant: TenantCache, key: str) -> bytes | None:
    try:
        return await tenant.get(key.encode())
    except UnmappableKey as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"origin: {err}") from None
    except OriginTimeout as err:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, f"origin: {err}") from None
    except OriginError as err:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"origin: {err}") from None


@router.get("/keys/{key:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, 404: {"description": "No such key"}})
async def get_key(key: str, tenant: Reader) -> Response:
    """Read a key (reading through to the origin on a miss)."""
    value = await _read(tenant, key)
    if value is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such key")
    entry = tenant.store.entry(key.encode())
    headers = {}
    if entry is not None and entry.expires_at:
        headers["Foresight-TTL-Ms"] = str(max(entry.expires_at - now_ms(), 0))
    return Response(value, media_type="application/octet-stream", headers=headers)


@router.put("/keys/{key:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def put_key(
    key: str,
    request: Request,
    tenant: Writer,
    ttl: Annotated[int | None, Query(gt=0, description="Expire after this many seconds.")] = None,
    ttl_header: Annotated[int | None, Header(alias="Foresight-TTL", gt=0,
                                             description="Expire after this many seconds.")] = None,
) -> Response:
    """Write a key from the raw request body; TTL from `?ttl=` or the `Foresight-TTL` header."""
    if ttl is not None and ttl_header is not None and ttl != ttl_header:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "ttl query and Foresight-TTL header disagree")
    seconds = ttl if ttl is not None else ttl_header
    value = await request.body()
    if len(value) > MAX_VALUE_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"values are limited to {MAX_VALUE_BYTES} bytes")
    try:
        tenant.store.set(key.encode(), value, now_ms() + seconds * 1000 if seconds else 0)
    except ValueTooLarge as err:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(err)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/keys/{key:path}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_key(key: str, tenant: Writer) -> Response:
    """Delete a key; 404 when it did not exist."""
    if not tenant.store.delete(key.encode()):
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


@router.post("/mget")
async def mget(body: MGetRequest, tenant: Reader) -> MGetResponse:
    """Read many keys at once, in order (misses read through to the origin)."""
    return MGetResponse(items=[_item(key, await _read(tenant, key)) for key in body.keys])
