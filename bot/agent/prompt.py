"""The agent's words: the first turn's prompt and later turns' messages, rendered from `templates/` (SPEC §1.4).

Everything taken from GitHub passes through `clean_for_agent`. Only comments by people who may drive
Shepherd, written before the trigger and not edited after it, reach the prompt: a later edit could
otherwise slip instructions in under an authorised name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


from bot.github.permissions import PermissionCache
from bot.core.payload import parse_time
from bot.runtime.publisher import COMMENTS_URL
from bot.views.render import environment
from bot.core.sanitize import clean_for_agent
from bot.core.session import Note, TurnKind




@dataclass(frozen=True)
class PromptComment:
    author: str
    body: str


async def gather_comments(
    gh: Any,
    owner: str,
    repo: str,
    issue_number: int,
    *,
    trigger_at: datetime,
    permissions: PermissionCache,
    minimum: str = "write",
) -> list[PromptComment]:
    """The issue's comments that may reach the agent, oldest first."""
    chosen: list[PromptComment] = []
    async for comment in gh.getiter(COMMENTS_URL, {"owner": owner, "repo": repo, "issue_number": issue_number}):
        created = parse_time(comment["created_at"])
        updated = parse_time(comment.get("updated_at") or comment["created_at"])
        if created is None or updated is None or created > trigger_at or updated > trigger_at:
            continue  # written after the trigger, or at a time that cannot be placed before it
        user = comment.get("user") or {}
        if not user.get("login") or not await permissions.may_drive(gh, owner, repo, user, minimum=minimum):
            continue
        body = clean_for_agent(comment.get("body"))
        if body:
            chosen.append(PromptComment(str(user["login"]), body))
    return chosen


def render_prompt(
    *,
    repo: str,
    issue_number: int,
    title: str,
    body: str | None,
    comments: Sequence[PromptComment],
    branch: str,
    base_branch: str,
    worktree: Path | str,
    mode: str,
) -> str:
    """The first turn's prompt."""
    return environment().get_template("prompt.md.j2").render(
        repo=repo,
        issue_number=issue_number,
        title=clean_for_agent(title),
        body=clean_for_agent(body),
        comments=list(comments),
        branch=branch,
        base_branch=base_branch,
        worktree=str(worktree),
        mode=mode,
    )


def render_turn_message(
    kind: TurnKind,
    reply: str | None,
    notes: Sequence[Note] = (),
    paths: Sequence[str] = (),
    *,
    base_branch: str | None = None,
    overlaps: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """What a resumed turn tells the agent: the answer, the approved plan, the feedback, and notes.

    `overlaps` maps another issue's reference (`#12`) to the files both sessions change."""
    return environment().get_template("turn.md.j2").render(
        kind=str(kind),
        reply=clean_for_agent(reply),
        notes=[{"author": note.author, "text": clean_for_agent(note.text)} for note in notes],
        paths=list(paths),
        base_branch=base_branch or "the base branch",
        overlaps=[{"issue": issue, "paths": list(files)} for issue, files in sorted((overlaps or {}).items())],
    ).strip() + "\n"
