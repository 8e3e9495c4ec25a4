"""Comments on the issue and its PR: slash commands (issue or PR) and human replies to the agent (issue only).

Comments by bots (Shepherd's own included) and by people without the repository's minimum permission
are dropped here, before anything is written or forwarded. A reply is cleaned for the agent and
handed to the core, which decides whether it answers the open question, waits as a note, or is
ignored, and reacts 👀 itself when it took it. A command's outcome, help and refusals are the core's
answers (`bot.core.responses`), carried out by the engine's Publisher.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import Engine
from bot.github.api import GitHubReader
from bot.core import commands as slash
from bot.core import responses
from bot.core.sanitize import clean_for_agent
from bot.core.session import ReplyReceived, Session
from bot.core.payload import parse_time
from bot.github.gate import Gate, gate_for
from bot.github.labels import RepoPolicies
from bot.github.permissions import PermissionCache, is_bot
from handlers.dashboard import is_own_dashboard
from handlers.triggers import issue_ref

log = logging.getLogger(__name__)

router = routing.Router()

PULL_URL = "/repos/{owner}/{repo}/pulls/{pull_number}"
# GitHub's timestamps have whole seconds; comment ids give the order within one second.
SAME_SECOND_STEP = timedelta(milliseconds=1)


def _reply_time(comment: dict[str, Any], session: Session) -> Any:
    """The comment's creation time, ordered after the question when its id says it came later."""
    created = parse_time(comment.get("created_at"))
    # A bake-off's attempts each have their own question (SPEC §8): the comment follows each it came after.
    questions = [session.question, *(attempt.session.question for attempt in session.attempts)]
    for question in questions:
        if question is None or question.comment_id is None or question.posted_at is None or created is None:
            continue
        if int(comment["id"]) > question.comment_id and created <= question.posted_at:
            created = question.posted_at + SAME_SECOND_STEP
    return created


@router.register("issue_comment", action="created")
async def handle_comment(
    event: sansio.Event,
    gh: GitHubReader,
    *,
    engine: Engine | None = None,
    gate: Gate | None = None,
    permissions: PermissionCache | None = None,
    policies: RepoPolicies | None = None,
    github: Any = None,
    **_: Any,
) -> None:
    """Run a slash command, or forward a person's reply to the agent."""
    comment = event.data["comment"]
    author = comment.get("user")
    if engine is None or is_bot(author) or is_bot(event.data.get("sender")):
        return
    if await is_own_dashboard(event, github):
        return  # the dashboard issue has its own commands (handlers/dashboard.py)
    command = slash.first_command(comment.get("body"))
    on_pull = "pull_request" in event.data["issue"]
    if command is None and on_pull:
        return  # PR conversation comments are review feedback, handled with the pull requests
    ref = issue_ref(event)
    if command is None and not _has_live_session(engine, ref):
        return  # a plain comment reaches an agent only through a live session: no GitHub call needed
    if command is not None and engine.answered(ref.full_name, ref.number, int(comment["id"])):
        return  # the same comment, delivered again: it already ran and was acknowledged
    if not await gate_for(gate, permissions, policies).allows(gh, event.data["repository"], author):
        return  # unauthorised: no reply, no reaction, nothing forwarded
    if command is not None:
        await _run_command(gh, engine, ref, comment, command, on_pull)
        return
    await _forward_reply(engine, ref, comment)


def _has_live_session(engine: Engine, ref: Any) -> bool:
    session = engine.last_session(ref.full_name, ref.number)
    return session is not None and session.is_live


async def _session_for(gh: GitHubReader, engine: Engine, ref: Any, on_pull: bool) -> Session | None:
    if not on_pull:
        return engine.last_session(ref.full_name, ref.number)
    pull = await gh.getitem(PULL_URL, {"owner": ref.owner, "repo": ref.repo, "pull_number": ref.number})
    return engine.session_for_branch(ref.full_name, pull["head"]["ref"])


async def _run_command(gh: GitHubReader, engine: Engine, ref: Any, comment: dict[str, Any], command: slash.SlashCommand,
                       on_pull: bool) -> None:
    comment_id = int(comment["id"])
    if command.is_help:
        answers = responses.answer_help(command, comment_id)
    else:
        before = await _session_for(gh, engine, ref, on_pull)
        after = None
        if before is not None:
            event = responses.event_for(command, comment["user"]["login"])
            after = await engine.signal(before.repo, before.issue_number, event)
        answers = (responses.Acknowledge(comment_id, responses.command_outcome(command, before, after)),)
    await engine.respond(ref.installation_id, ref.full_name, ref.number, answers)


async def _forward_reply(engine: Engine, ref: Any, comment: dict[str, Any]) -> None:
    before = engine.last_session(ref.full_name, ref.number)
    if before is None or not before.is_live:
        return  # nothing listens; after `complete`, feedback belongs on the PR
    text = clean_for_agent(comment.get("body"))
    if not text:
        return
    comment_id = int(comment["id"])
    reply = ReplyReceived(comment_id, comment["user"]["login"], text, _reply_time(comment, before))
    after = await engine.signal(ref.full_name, ref.number, reply)
    if after is not None and comment_id in after.forwarded_comment_ids and comment_id not in before.forwarded_comment_ids:
        log.info("%s#%s: comment %s forwarded to %s", ref.full_name, ref.number, comment_id, after.id)
