"""The agent's words: the first turn's prompt and later turns' messages, rendered from `templates/` (SPEC §1.4).

Everything taken from GitHub passes through `clean_for_agent`. Which comments reach the prompt is the
core's rule (`bot.core.prompt_comments`); the runtime reads them (`bot.runtime.prompt_comments`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.core.prompt_comments import PromptComment
from bot.core.sanitize import clean_for_agent
from bot.core.session import Note, TurnKind
from bot.views.render import environment

__all__ = ["PromptComment", "render_prompt", "render_turn_message"]


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
