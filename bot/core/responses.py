"""What Shepherd answers a person outside a session's own story (SPEC §1.1, §5): a refusal, the outcome
of a slash command, help.

Handlers ask the core what a comment or a label means and hand the answers, as `Response`s, to the
engine, whose Publisher writes each one once. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core import commands as slash
from bot.core.sanitize import clean_for_agent
from bot.core.budget import parse_usd
from bot.core.session import (
    Approve, BudgetRaised, Cancel, CancelReason, Event, Retry, Revise, Session, StatusRequested,
)

DONE = "+1"  # the command did something
NOT_APPLICABLE = "confused"  # nothing to do: no session, or the session was not in a state to take it


@dataclass(frozen=True)
class Refuse:
    """Tell a person who may not drive Shepherd why nothing happened (at most once an hour per person and issue)."""

    login: str
    label: str
    min_permission: str


@dataclass(frozen=True)
class Acknowledge:
    """React to a person's command comment with its outcome; once per comment, which marks it handled."""

    comment_id: int
    content: str


@dataclass(frozen=True)
class ShowHelp:
    """Answer `/agent help` (or a command Shepherd does not know) with the list of commands."""

    comment_id: int
    unknown: str | None


@dataclass(frozen=True)
class NotOffered:
    """Say, once per issue and label, that this Shepherd does not run what a person's label asks for, and why."""

    label: str
    reason: str


BAKEOFF_NOT_ON_TEMPORAL = (
    "a bake-off runs two agents under one session, and Shepherd's Temporal hosts do not run that yet. "
    "Run this Shepherd with `SHEPHERD_ENGINE=local` for bake-offs, or use `agent:go` or an engine label here"
)

Response = Refuse | Acknowledge | ShowHelp | NotOffered


def event_for(command: slash.SlashCommand, actor: str) -> Event:
    """The core event a (non-help) slash command stands for."""
    if command.name == slash.STOP:
        return Cancel(CancelReason.STOP_COMMAND)
    if command.name == slash.RETRY:
        return Retry(actor)
    if command.name == slash.STATUS:
        return StatusRequested()
    if command.name == slash.APPROVE:
        return Approve(actor)
    if command.name == slash.REVISE:
        return Revise(actor, clean_for_agent(command.text))
    if command.name == slash.BUDGET:
        amount = parse_usd(command.text)
        if amount is not None:
            return BudgetRaised(actor, amount)
    raise ValueError(f"no event for /agent {command.name}")


def took_effect(before: Session | None, after: Session | None) -> bool:
    """Did the core act on an event? (a new session, or the same session in a different shape)"""
    if after is None:
        return False
    return before is None or after.id != before.id or after != before


def command_outcome(command: slash.SlashCommand, before: Session | None, after: Session | None) -> str:
    """The reaction a command comment gets: 👍 when it did something, 😕 when there was nothing to do."""
    if before is None:
        return NOT_APPLICABLE
    if command.name == slash.STATUS:
        return DONE  # the core always refreshes the status comment of an existing session
    return DONE if took_effect(before, after) else NOT_APPLICABLE


def answer_help(command: slash.SlashCommand, comment_id: int) -> tuple[Response, ...]:
    """Help in a comment, and 😕 when the command was not one Shepherd knows."""
    outcome = NOT_APPLICABLE if command.unknown is not None else DONE
    return ShowHelp(comment_id, command.unknown), Acknowledge(comment_id, outcome)


def approvals_outcome(approved: int) -> str:
    """`/agent approve all` on the dashboard issue: 👍 when it approved a plan, 😕 when none waited."""
    return DONE if approved else NOT_APPLICABLE
