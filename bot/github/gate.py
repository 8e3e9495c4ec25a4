"""Who may drive Shepherd in a repository, decided in one place (SPEC §1.1): never a bot; a person with at
least the repository policy's `min_permission`, read through the permission cache.

Every handler asks the same question the same way, so a refusal on one path is a refusal on all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.github.api import GitHubReader
from bot.core.policy import LoadedPolicy
from bot.github.labels import RepoPolicies
from bot.github.permissions import PermissionCache, is_bot


class Gate:
    """The repository policy (briefly cached) and people's permissions (cached ≤ 5 min), asked together."""

    def __init__(self, permissions: PermissionCache | None = None, policies: RepoPolicies | None = None) -> None:
        self.permissions = permissions if permissions is not None else PermissionCache()
        self.policies = policies if policies is not None else RepoPolicies()

    async def policy(self, gh: GitHubReader, repository: Mapping[str, Any]) -> LoadedPolicy:
        """The repository's policy, from a webhook's `repository` object."""
        owner, repo = repository["owner"]["login"], repository["name"]
        return await self.policies.get(gh, owner, repo, repository.get("default_branch") or "main")

    async def allows(self, gh: GitHubReader, repository: Mapping[str, Any], user: Mapping[str, Any] | None) -> bool:
        """May `user` start, steer or answer sessions in this repository?"""
        if not user or is_bot(user):
            return False
        loaded = await self.policy(gh, repository)
        owner, repo = repository["owner"]["login"], repository["name"]
        return await self.permissions.may_drive(gh, owner, repo, user, minimum=loaded.policy.min_permission)


def gate_for(gate: Gate | None, permissions: PermissionCache | None, policies: RepoPolicies | None) -> Gate:
    """The app's one gate, or one made of the caches a caller passed (tests pass their own)."""
    if gate is not None:
        return gate
    return Gate(permissions, policies)
