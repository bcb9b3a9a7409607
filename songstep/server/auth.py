"""API keys: sha256 digests at rest, constant-time comparison, several keys.

A request proves a key with `Authorization: Bearer KEY` (or a bare `Authorization: KEY`, as
upstream accepts) or with upstream's body field `ai_token` (JSON or form). With no keys
configured every route is open; with keys, every route but `/health` needs one.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import HTTPException, Request

from songstep.server.settings import hash_key


def key_matches(candidate: str | None, hashes: tuple[str, ...]) -> bool:
    if not candidate:
        return False
    digest = hash_key(candidate)
    ok = False
    for h in hashes:  # compare against every key: the time does not depend on which one matched
        ok |= hmac.compare_digest(digest, h)
    return ok


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    return header[7:].strip() if header[:7].lower() == "bearer " else header.strip()


async def _body_token(request: Request) -> str | None:
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    ctype = (request.headers.get("content-type") or "").lower()
    try:
        if "json" in ctype:
            body: Any = json.loads(await request.body() or b"null")
        elif "form" in ctype:
            body = await request.form()
        else:
            return None
    except (ValueError, UnicodeDecodeError):
        return None
    token = body.get("ai_token") if hasattr(body, "get") else None
    return token if isinstance(token, str) else None


async def require_key(request: Request) -> None:
    """FastAPI dependency: 401 unless the request carries a configured key."""
    hashes: tuple[str, ...] = request.app.state.settings.api_key_hashes
    if not hashes:
        return
    token = _bearer(request) or await _body_token(request)
    if token is None:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer KEY' or the body field ai_token",
                            headers={"WWW-Authenticate": "Bearer"})
    if not key_matches(token, hashes):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
