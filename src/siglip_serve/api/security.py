"""Bearer API keys (OpenAI's `Authorization: Bearer KEY`), checked in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from siglip_serve.errors import AuthenticationError


async def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.api_key
    if not keys:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
        raise AuthenticationError("invalid API key")
