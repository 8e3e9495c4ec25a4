"""Comments on the issue and its PR: slash commands (issue or PR) and human replies to the agent (issue only).

Comments by bots (Shepherd's own included) and by people without the repository's minimum permission
are dropped here, before anything is written or forwarded. A reply is cleaned for the agent and
handed to the core, which decides whether it answers the open question, waits as a note, or is
ignored; Shepherd reacts 👀 only when the core took it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from gidgethub import routing, sansio

from bot.core import commands as slash
from bot.views import render
from bot.github.permissions import PermissionCache, is_bot
from bot.runtime.publisher import (
    COMMAND,
    HELP,
    PostedRecords,
    ensure_comment,
    issue_scope,
    parse_time,
    react_once,
)
from bot.runtime.dashboard_issue import is_dashboard_issue
from bot.github.labels import RepoPolicies
from bot.github.pacing import Priority
from bot.core.sanitize import clean_for_agent
from bot.core.session import (
    Approve,
    Cancel,
    CancelReason,
    Event,
    ReplyReceived,
    Retry,
    Revise,
    Session,
    StatusRequested,
)
from handlers.triggers import issue_ref

log = logging.getLogger(__name__)

router = routing.Router()

PULL_URL = "/repos/{owner}/{repo}/pulls/{pull_number}"
DONE = "+1"
NOT_APPLICABLE = "confused"
SEEN = "eyes"
# GitHub's timestamps have whole seconds; comment ids give the order within one second.
SAME_SECOND_STEP = timedelta(milliseconds=1)


def _policies(policies: RepoPolicies | None) -> RepoPolicies:
    return policies if policies is not None else RepoPolicies()


def _permissions(permissions: PermissionCache | None) -> PermissionCache:
    return permissions if permissions is not None else PermissionCache()


def _changed(before: Session | None, after: Session | None) -> bool:
    """Did the core act? (a new session, or the same session in a different shape)"""
    if after is None:
        return False
    return before is None or after.id != before.id or after != before


def _event_for(command: slash.SlashCommand, actor: str) -> Event:
    return {
        slash.STOP: lambda: Cancel(CancelReason.STOP_COMMAND),
        slash.RETRY: lambda: Retry(actor),
        slash.STATUS: StatusRequested,
        slash.APPROVE: lambda: Approve(actor),
        slash.REVISE: lambda: Revise(actor, clean_for_agent(command.text)),
    }[command.name]()


def _reply_time(comment: dict[str, Any], session: Session) -> Any:
    """The comment's creation time, ordered after the question when its id says it came later."""
    created = parse_time(comment.get("created_at"))
    question = session.question
    if question is None or question.comment_id is None or question.posted_at is None or created is None:
        return created
    if int(comment["id"]) > question.comment_id and created <= question.posted_at:
        return question.posted_at + SAME_SECOND_STEP
    return created


@router.register("issue_comment", action="created")
async def handle_comment(
    event: sansio.Event,
    gh: Any,
    *,
    engine: Any = None,
    store: Any,
    github: Any,
    clock: Any,
    permissions: PermissionCache | None = None,
    policies: RepoPolicies | None = None,
    **_: Any,
) -> None:
    """Run a slash command, or forward a person's reply to the agent."""
    comment = event.data["comment"]
    author = comment.get("user")
    if engine is None or is_bot(author) or is_bot(event.data.get("sender")):
        return
    if is_dashboard_issue(event.data["issue"]):
        return  # the dashboard issue has its own commands (handlers/dashboard.py)
    command = slash.first_command(comment.get("body"))
    on_pull = "pull_request" in event.data["issue"]
    if command is None and on_pull:
        return  # PR conversation comments are review feedback, handled with the pull requests
    ref = issue_ref(event)
    if command is None and not _has_live_session(engine, ref):
        return  # a plain comment reaches an agent only through a live session: no GitHub call needed
    loaded = await _policies(policies).get(gh, ref.owner, ref.repo, ref.default_branch)
    minimum = loaded.policy.min_permission
    if not await _permissions(permissions).may_drive(gh, ref.owner, ref.repo, author, minimum=minimum):
        return  # unauthorised: no reply, no reaction, nothing forwarded
    posted = PostedRecords(store)
    if command is not None:
        await _run_command(gh, engine, posted, github, clock, ref, comment, command, on_pull)
        return
    await _forward_reply(gh, engine, posted, clock, ref, comment)


def _has_live_session(engine: Any, ref: Any) -> bool:
    session = engine.last_session(ref.full_name, ref.number)
    return session is not None and session.is_live


async def _session_for(gh: Any, engine: Any, ref: Any, on_pull: bool) -> Session | None:
    if not on_pull:
        return engine.last_session(ref.full_name, ref.number)
    pull = await gh.getitem(PULL_URL, {"owner": ref.owner, "repo": ref.repo, "pull_number": ref.number})
    return engine.session_for_branch(ref.full_name, pull["head"]["ref"])


async def _run_command(gh: Any, engine: Any, posted: PostedRecords, github: Any, clock: Any, ref: Any,
                       comment: dict[str, Any], command: slash.SlashCommand, on_pull: bool) -> None:
    comment_id = int(comment["id"])
    scope = issue_scope(ref.full_name, ref.number)
    done = posted.get(scope, COMMAND, str(comment_id))
    if done is not None:
        return  # the same comment, delivered again: it already ran and was acknowledged
    if command.is_help:
        bot_login, _email = await github.bot_identity(ref.installation_id)
        await ensure_comment(
            gh, posted, scope=scope, kind=HELP, key=str(comment_id), owner=ref.owner, repo=ref.repo,
            number=ref.number, bot_login=bot_login, marker_fields={"comment": str(comment_id)},
            body=render.render_help(comment_id, command.unknown), now=clock(), edit=False,
        )
        outcome = NOT_APPLICABLE if command.unknown is not None else DONE
    else:
        outcome = await _signal(gh, engine, ref, command, comment["user"]["login"], on_pull)
    await react_once(gh, posted, scope=scope, owner=ref.owner, repo=ref.repo, number=ref.number, content=outcome,
                     comment_id=comment_id, now=clock(), priority=Priority.NORMAL)
    posted.put(scope, COMMAND, str(comment_id), comment_id, outcome, clock())


async def _signal(gh: Any, engine: Any, ref: Any, command: slash.SlashCommand, actor: str, on_pull: bool) -> str:
    before = await _session_for(gh, engine, ref, on_pull)
    if before is None:
        return NOT_APPLICABLE
    after = await engine.signal(before.repo, before.issue_number, _event_for(command, actor))
    if command.name == slash.STATUS:
        return DONE  # the core always refreshes the status comment of an existing session
    return DONE if _changed(before, after) else NOT_APPLICABLE


async def _forward_reply(gh: Any, engine: Any, posted: PostedRecords, clock: Any, ref: Any,
                         comment: dict[str, Any]) -> None:
    before = engine.last_session(ref.full_name, ref.number)
    if before is None or not before.is_live:
        return  # nothing listens; after `complete`, feedback belongs on the PR
    text = clean_for_agent(comment.get("body"))
    if not text:
        return
    comment_id = int(comment["id"])
    reply = ReplyReceived(comment_id, comment["user"]["login"], text, _reply_time(comment, before))
    after = await engine.signal(ref.full_name, ref.number, reply)
    if after is None or comment_id in before.forwarded_comment_ids or comment_id not in after.forwarded_comment_ids:
        return
    await react_once(gh, posted, scope=after.id, owner=ref.owner, repo=ref.repo, number=ref.number, content=SEEN,
                     comment_id=comment_id, now=clock())
    log.info("%s#%s: comment %s forwarded to %s", ref.full_name, ref.number, comment_id, after.id)

