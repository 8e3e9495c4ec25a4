"""The dashboard issue as a control: ticked plan boxes, or `/agent approve all` there, approve plans in one go.

Only an authorised person's edit or comment counts, and only on the bot's own dashboard issue (the
marker is trusted only in an issue a bot wrote). Each ticked line carries its session id in a hidden
marker; the core ignores an approval of a plan that is no longer waiting, so a box ticked twice, or
an edit delivered twice, approves once.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gidgethub import routing, sansio

from bot.github.permissions import PermissionCache, is_bot
from bot.runtime.publisher import PostedRecords, issue_scope, react_once
from bot.runtime.dashboard_issue import is_dashboard_issue, ticked_sessions
from bot.github.labels import RepoPolicies
from bot.core.session import Approve, Detail, Session, State

log = logging.getLogger(__name__)

router = routing.Router()

APPROVE_ALL = re.compile(r"^\s*/agent\s+approve\s+all\s*$", re.IGNORECASE | re.MULTILINE)
DONE = "+1"
NOTHING = "confused"


async def _may_drive(gh: Any, event: sansio.Event, user: dict[str, Any] | None, permissions: Any,
                     policies: Any) -> bool:
    if not user or is_bot(user):
        return False
    repository = event.data["repository"]
    owner, repo = repository["owner"]["login"], repository["name"]
    policies = policies if policies is not None else RepoPolicies()
    loaded = await policies.get(gh, owner, repo, repository.get("default_branch") or "main")
    cache = permissions if permissions is not None else PermissionCache()
    return await cache.may_drive(gh, owner, repo, user, minimum=loaded.policy.min_permission)


def _awaiting(session: Session | None) -> bool:
    return session is not None and session.state == State.STUCK and session.detail == Detail.PLAN_AWAITING_APPROVAL


async def _approve(engine: Any, full_name: str, session_ids: list[str], actor: str) -> list[Session]:
    """Approve each named plan of `full_name` that still waits; returns the sessions approved."""
    approved = []
    for session_id in session_ids:
        repo, _, rest = session_id.rpartition("#")
        number = rest.split("/", 1)[0]
        if repo != full_name or not number.isdigit():
            continue  # a marker naming another repository is not this dashboard's to approve
        before = engine.last_session(full_name, int(number))
        if not _awaiting(before) or before.id != session_id:
            continue
        after = await engine.signal(full_name, int(number), Approve(actor))
        if after is not None and after != before:
            approved.append(after)
    log.info("%s: %s approved %d plan(s) from the dashboard issue", full_name, actor, len(approved))
    return approved


@router.register("issues", action="edited")
async def approve_ticked_plans(event: sansio.Event, gh: Any, *, engine: Any = None, permissions: Any = None,
                               policies: Any = None, **_: Any) -> None:
    """Ticking plan boxes on the dashboard issue and saving it approves those plans."""
    issue = event.data["issue"]
    sender = event.data.get("sender")
    if engine is None or not is_dashboard_issue(issue) or is_bot(sender):
        return
    before_body = ((event.data.get("changes") or {}).get("body") or {}).get("from")
    newly = [sid for sid in ticked_sessions(issue.get("body")) if sid not in ticked_sessions(before_body)]
    if not newly or not await _may_drive(gh, event, sender, permissions, policies):
        return
    await _approve(engine, event.data["repository"]["full_name"], newly, sender["login"])


@router.register("issue_comment", action="created")
async def approve_all_plans(event: sansio.Event, gh: Any, *, engine: Any = None, store: Any = None,
                            clock: Any = None, permissions: Any = None, policies: Any = None, **_: Any) -> None:
    """`/agent approve all` on the dashboard issue approves every plan waiting in the repository."""
    issue = event.data["issue"]
    comment = event.data["comment"]
    if engine is None or not is_dashboard_issue(issue) or not APPROVE_ALL.search(comment.get("body") or ""):
        return
    if not await _may_drive(gh, event, comment.get("user"), permissions, policies):
        return
    full_name = event.data["repository"]["full_name"]
    posted = PostedRecords(store)
    scope = issue_scope(full_name, int(issue["number"]))
    waiting = [s.id for s in engine.waiting_plans(full_name)] if hasattr(engine, "waiting_plans") else []
    approved = await _approve(engine, full_name, waiting, comment["user"]["login"])
    owner, repo = full_name.split("/", 1)
    await react_once(gh, posted, scope=scope, owner=owner, repo=repo, number=int(issue["number"]),
                     content=DONE if approved else NOTHING, comment_id=int(comment["id"]), now=clock())
