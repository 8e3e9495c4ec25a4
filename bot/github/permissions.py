"""Who may drive Shepherd: bots never, people by their repository permission (cached ≤ 5 min)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import gidgethub
from cachetools import TTLCache

from bot.github.api import GitHubReader


PERMISSION_TTL = 300.0  # SPEC §1.1: a permission is trusted for at most 5 minutes
LEVELS = ("none", "read", "triage", "write", "maintain", "admin")
RANK = {level: rank for rank, level in enumerate(LEVELS)}
BOT_SUFFIX = "[bot]"


def is_bot(user: Mapping[str, Any] | None) -> bool:
    """A GitHub App's bot user or any other account GitHub marks as a bot."""
    if not user:
        return False
    return user.get("type") == "Bot" or str(user.get("login", "")).lower().endswith(BOT_SUFFIX)


def is_self(user: Mapping[str, Any] | None, bot_login: str) -> bool:
    """Shepherd's own bot user (its comments, labels and reactions come back as webhooks)."""
    return user is not None and str(user.get("login", "")).lower() == bot_login.lower()


def level_of(answer: Mapping[str, Any]) -> str:
    """The level named by GitHub's permission answer.

    `permission` folds maintain into write and triage into read; `role_name` keeps them. A
    custom role's name is not a level, so its base `permission` is used instead.
    """
    role = str(answer.get("role_name") or "").lower()
    if role in RANK:
        return role
    permission = str(answer.get("permission") or "none").lower()
    return permission if permission in RANK else "none"


def at_least(level: str, minimum: str) -> bool:
    """True when `level` is `minimum` or higher (none < read < triage < write < maintain < admin)."""
    return RANK.get(level, 0) >= RANK[minimum]


class PermissionCache:
    """Collaborator permission levels, read through the API and kept for at most five minutes."""

    def __init__(
        self,
        *,
        ttl: float = PERMISSION_TTL,
        maxsize: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._levels: TTLCache[tuple[str, str], str] = TTLCache(maxsize, min(ttl, PERMISSION_TTL), timer=clock)

    async def permission(self, gh: GitHubReader, owner: str, repo: str, login: str) -> str:
        """`login`'s level on `owner/repo`; "none" when GitHub does not know them there."""
        key = (f"{owner}/{repo}".lower(), login.lower())
        level = self._levels.get(key)
        if level is None:
            try:
                answer = await gh.getitem(
                    "/repos/{owner}/{repo}/collaborators/{username}/permission",
                    {"owner": owner, "repo": repo, "username": login},
                )
            except gidgethub.BadRequest as exc:
                if int(exc.status_code) != 404:
                    raise
                level = "none"
            else:
                level = level_of(answer)
            self._levels[key] = level
        return level

    async def may_drive(
        self, gh: GitHubReader, owner: str, repo: str, user: Mapping[str, Any], minimum: str = "write"
    ) -> bool:
        """True when `user` is a person with at least `minimum` permission on `owner/repo`."""
        if minimum not in RANK:
            raise ValueError(f"unknown permission level {minimum!r}; expected one of {', '.join(LEVELS)}")
        if is_bot(user):
            return False
        level = await self.permission(gh, owner, repo, str(user["login"]))
        return at_least(level, minimum)

    def forget(self, owner: str, repo: str, login: str) -> None:
        """Drop one cached level (e.g. after a `member` or `team` change is seen)."""
        self._levels.pop((f"{owner}/{repo}".lower(), login.lower()), None)
