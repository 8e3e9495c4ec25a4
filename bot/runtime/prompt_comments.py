"""The issue's comments that reach the agent's first prompt: read from GitHub, chosen by the core's rule
(`bot.core.prompt_comments`), each remaining author's permission asked through the shared cache."""

from __future__ import annotations

from datetime import datetime

from bot.core.prompt_comments import PromptComment, candidates
from bot.github.api import GitHub
from bot.github.permissions import PermissionCache
from bot.runtime.marked import COMMENTS_URL


async def gather_comments(
    gh: GitHub,
    owner: str,
    repo: str,
    issue_number: int,
    *,
    trigger_at: datetime,
    permissions: PermissionCache,
    minimum: str = "write",
) -> list[PromptComment]:
    """The issue's comments that may reach the agent, oldest first."""
    listed = [comment async for comment in gh.getiter(COMMENTS_URL, {"owner": owner, "repo": repo,
                                                                     "issue_number": issue_number})]
    return [
        candidate.comment
        for candidate in candidates(listed, trigger_at)
        if await permissions.may_drive(gh, owner, repo, candidate.user, minimum=minimum)
    ]
