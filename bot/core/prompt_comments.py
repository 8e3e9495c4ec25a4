"""Which of an issue's comments may reach the agent's prompt (SPEC §1.4): the pure rule.

A comment counts when it was written before the trigger and not edited after it (a later edit could slip
instructions in under an authorised name), when its cleaned text is not empty, and when its author may
drive Shepherd. The first two are decided here from the comment alone; the author's permission is a
question for GitHub, asked by the runtime for the candidates this module leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.core.payload import parse_time
from bot.core.sanitize import clean_for_agent


@dataclass(frozen=True)
class PromptComment:
    author: str
    body: str


@dataclass(frozen=True)
class Candidate:
    """A comment that may reach the prompt if its author may drive Shepherd."""

    user: Mapping[str, Any]
    comment: PromptComment


def written_before(comment: Mapping[str, Any], trigger_at: datetime) -> bool:
    """Created and last edited no later than the trigger; a time that cannot be read cannot be placed before it."""
    created = parse_time(comment.get("created_at"))
    updated = parse_time(comment.get("updated_at") or comment.get("created_at"))
    return created is not None and updated is not None and created <= trigger_at and updated <= trigger_at


def candidates(comments: Iterable[Mapping[str, Any]], trigger_at: datetime) -> list[Candidate]:
    """The comments that pass every rule but the author's permission, oldest first."""
    found: list[Candidate] = []
    for comment in comments:
        if not written_before(comment, trigger_at):
            continue
        user = comment.get("user") or {}
        login = user.get("login")
        body = clean_for_agent(comment.get("body"))
        if login and body:
            found.append(Candidate(user, PromptComment(str(login), body)))
    return found
