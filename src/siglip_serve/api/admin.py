"""Key administration (`/v1/admin/keys`, admin keys only) and usage (`GET /v1/usage`).

The gate (api.security) has already refused non-admin keys on /v1/admin/*; these handlers call the same
functions as `siglip-serve keys` (accounts.manage). Database calls run in threads: they are not on the hot
path, and a slow database must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

from fastapi import APIRouter, Query, Request

from siglip_serve.accounts import manage
from siglip_serve.accounts.keys import shown_prefix
from siglip_serve.accounts.types import NO_KEY_ID, KeyRecord, UsageRow
from siglip_serve.api import protocol as p
from siglip_serve.api.security import account_of
from siglip_serve.errors import AccountsUnavailableError, PermissionDeniedError

if TYPE_CHECKING:
    from siglip_serve.accounts.service import Accounts

router = APIRouter()


def accounts_of(request: Request) -> Accounts:
    accounts = getattr(request.app.state, "accounts", None)
    if accounts is None:
        raise AccountsUnavailableError("this server has no key database")
    return accounts


def _unix(when: dt.datetime | None) -> int | None:
    return None if when is None else int(when.replace(tzinfo=dt.UTC).timestamp())


def key_info(record: KeyRecord) -> p.KeyInfo:
    limits = record.limits
    return p.KeyInfo(id=record.id, prefix=shown_prefix(record.prefix), name=record.name, admin=record.admin,
                     created_at=_unix(record.created_at) or 0, expires_at=_unix(record.expires_at),
                     revoked_at=_unix(record.revoked_at),
                     models=list(record.models) if record.models is not None else None,
                     routes=list(record.routes) if record.routes is not None else None,
                     limits=p.KeyLimits(rpm=limits.rpm, images_per_minute=limits.images_per_minute,
                                        images_per_day=limits.images_per_day, credit_usd=limits.credit_usd))


@router.post("/v1/admin/keys", response_model=p.KeyCreated, status_code=201)
async def create_key(body: p.KeyCreateRequest, request: Request) -> p.KeyCreated:
    accounts = accounts_of(request)
    now = accounts.now()
    created = await asyncio.to_thread(manage.create_key, accounts.store, accounts.hasher, body.new_key(now), now=now)
    accounts.invalidate()
    return p.KeyCreated(**key_info(created.record).model_dump(), key=created.key)


@router.get("/v1/admin/keys", response_model=p.KeyList)
async def list_keys(request: Request, include_revoked: bool = False) -> p.KeyList:
    records = await asyncio.to_thread(accounts_of(request).store.list, include_revoked=include_revoked)
    return p.KeyList(data=[key_info(record) for record in records])


@router.get("/v1/admin/keys/{key}", response_model=p.KeyInfo)
async def get_key(key: str, request: Request) -> p.KeyInfo:
    """`key`: its id, or its prefix (as listed)."""
    return key_info(await asyncio.to_thread(manage.find_key, accounts_of(request).store, key))


@router.delete("/v1/admin/keys/{key}", response_model=p.KeyInfo)
async def revoke_key(key: str, request: Request) -> p.KeyInfo:
    """Revoke (the key and its usage stay listed, marked revoked); every server refuses it from the next request."""
    accounts = accounts_of(request)
    revoked = await asyncio.to_thread(manage.revoke_key, accounts.store, key, now=accounts.now())
    accounts.invalidate()  # refused here from the next request even with --key-cache-ttl-s
    return key_info(revoked)


@router.get("/v1/usage", response_model=p.UsageReport)
async def get_usage(request: Request, key: str | None = Query(None, description="Admins: a key id or prefix, or "
                                                                          "'all'. Others: their own key only."),
                    days: int = Query(30, ge=1, le=manage.MAX_USAGE_DAYS)) -> p.UsageReport:
    """Usage by UTC day and model (written each second; the last second may not show yet)."""
    accounts = accounts_of(request)
    account = account_of(request)
    own = account.principal.key_id if account is not None else NO_KEY_ID
    admin = account is not None and account.principal.admin
    if key is not None and not admin:
        raise PermissionDeniedError("only admin keys may read another key's usage", param="key")
    key_id: int | None = own
    if key == "all":
        key_id = None
    elif key is not None:
        key_id = (await asyncio.to_thread(manage.find_key, accounts.store, key)).id
    rows = await asyncio.to_thread(manage.usage_of, accounts.store, key_id, days=days, today=accounts.now().date())
    return usage_report(rows)


def usage_report(rows: list[UsageRow]) -> p.UsageReport:
    data = [p.UsageBucket(key_id=r.key_id, day=r.day.isoformat(), model=r.model, requests=r.requests,
                          errors=r.errors, images=r.images, text_tokens=r.text_tokens, cost_usd=r.cost_usd)
            for r in rows]
    return p.UsageReport(data=data, total_cost_usd=sum(r.cost_usd for r in rows))
