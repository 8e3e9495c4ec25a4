"""GitHub App credentials: the App JWT, cached installation tokens, and repository-scoped push tokens."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import TTLCache

from bot import redaction
from bot.core.payload import parse_time

log = logging.getLogger(__name__)

JWT_BACKDATE_SECONDS = 60
JWT_LIFETIME_SECONDS = 540  # from now; GitHub refuses an exp more than 10 minutes ahead
INSTALLATION_TOKEN_TTL = 50 * 60  # GitHub's tokens live 1 h; never hand out one that old
REFRESH_MARGIN_SECONDS = 5 * 60
PUSH_TOKEN_PERMISSIONS = {"contents": "write", "pull_requests": "write"}


def make_jwt(app_id: int | str, private_key_pem: str | bytes, now: float) -> str:
    """The App's RS256 JWT: issued 60 s before `now` (clock drift), expiring 540 s after it.

    PyJWT directly rather than gidgethub's `apps.get_jwt`: that one reads `time.time()` itself and
    derives `exp` from its backdated `iat`, so neither the clock nor the exact claims can be pinned
    by a caller or a test; here both `iat` and `exp` are stated from the `now` we are given.
    """
    # The key may come from the setup flow rather than the settings built at start: register it here.
    if isinstance(private_key_pem, bytes):
        redaction.register_secret(private_key_pem.decode(errors="replace"), lasting=True)
    else:
        redaction.register_secret(private_key_pem, lasting=True)
    now = int(now)
    claims = {
        "iat": now - JWT_BACKDATE_SECONDS,
        "exp": now + JWT_LIFETIME_SECONDS,
        "iss": str(app_id),
    }
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


@dataclass(frozen=True)
class InstallationToken:
    """An installation access token and when GitHub says it expires (epoch seconds)."""

    token: str
    expires_at: float

    def __post_init__(self) -> None:
        # Every installation token Shepherd holds is minted through here: mask it wherever it shows.
        redaction.register_secret(self.token)

    def __repr__(self) -> str:  # tokens must never reach a log line through repr()
        return f"InstallationToken(token=<redacted>, expires_at={self.expires_at})"

    @classmethod
    def from_response(cls, data: dict[str, Any]) -> InstallationToken:
        expires_at = parse_time(data["expires_at"])
        if expires_at is None:
            raise ValueError(f"GitHub sent an installation token without a readable expiry: {data['expires_at']!r}")
        return cls(token=data["token"], expires_at=expires_at.timestamp())


def push_token_request(repo: str) -> dict[str, Any]:
    """The body that narrows a new installation token to one repository, contents and PRs."""
    return {"repositories": [repo], "permissions": dict(PUSH_TOKEN_PERMISSIONS)}


Mint = Callable[[int], Awaitable[InstallationToken]]


class TokenCache:
    """Installation tokens per installation id, minted on demand, one mint at a time per id."""

    def __init__(
        self,
        mint: Mint,
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = INSTALLATION_TOKEN_TTL,
        maxsize: int = 4096,
    ) -> None:
        self._mint = mint
        self._clock = clock
        self._tokens: TTLCache[int, InstallationToken] = TTLCache(maxsize, ttl, timer=clock)
        self._locks: dict[int, asyncio.Lock] = {}

    async def token(self, installation_id: int) -> str:
        """A token for `installation_id` with at least five minutes of life left."""
        cached = self._fresh(installation_id)
        if cached is not None:
            return cached.token
        lock = self._locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            cached = self._fresh(installation_id)  # another task may have minted meanwhile
            if cached is None:
                cached = await self._mint(installation_id)
                self._tokens[installation_id] = cached
                log.info("minted an installation token", extra={"installation_id": installation_id})
            return cached.token

    def forget(self, installation_id: int) -> None:
        """Drop the token of an installation (uninstalled, suspended, or answered 401)."""
        self._tokens.pop(installation_id, None)

    def _fresh(self, installation_id: int) -> InstallationToken | None:
        cached = self._tokens.get(installation_id)
        if cached is None or cached.expires_at - self._clock() <= REFRESH_MARGIN_SECONDS:
            return None
        return cached
