"""The dashboard issue as a control: ticked plan boxes, or `/agent approve all` there, approve plans in one go.

Only an authorised person's edit or comment counts, and only on Shepherd's own dashboard issue (the
marker is trusted only in an issue Shepherd's own bot login wrote, never another App's). Each ticked line carries its session id in a hidden
marker; the core ignores an approval of a plan that is no longer waiting, so a box ticked twice, or
an edit delivered twice, approves once.
"""

from __future__ import annotations

import logging
from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import Engine
from bot.github.api import GitHubReader
from bot.core import responses
from bot.core.commands import approves_all
from bot.core.dashboard import carries_dashboard_marker, is_dashboard_issue, ticked_sessions
from bot.core.session import Approve, Detail, Session, State
from bot.github.gate import Gate, gate_for
from bot.github.permissions import is_bot

log = logging.getLogger(__name__)

router = routing.Router()


async def is_own_dashboard(event: sansio.Event, github: Any) -> bool:
    """Is the delivery's issue Shepherd's own dashboard issue? Shepherd's bot login (read once, then kept by
    the client) is asked only when the issue carries the dashboard marker at all."""
    issue = event.data["issue"]
    if github is None or not carries_dashboard_marker(issue):
        return False
    installation = (event.data.get("installation") or {}).get("id")
    login, _email = await github.bot_identity(int(installation) if installation is not None else None)
    return is_dashboard_issue(issue, str(login))


def _awaiting(session: Session | None) -> bool:
    return session is not None and session.state == State.STUCK and session.detail == Detail.PLAN_AWAITING_APPROVAL


async def _approve(engine: Engine, full_name: str, session_ids: list[str], actor: str) -> list[Session]:
    """Approve each named plan of `full_name` that still waits; returns the sessions approved."""
    approved = []
    for session_id in session_ids:
        repo, _, rest = session_id.rpartition("#")
        number = rest.split("/", 1)[0]
        if repo != full_name or not number.isdigit():
            continue  # a marker naming another repository is not this dashboard's to approve
        before = engine.last_session(full_name, int(number))
        if before is None or not _awaiting(before) or before.id != session_id:
            continue
        after = await engine.signal(full_name, int(number), Approve(actor))
        if after is not None and after != before:
            approved.append(after)
    log.info("%s: %s approved %d plan(s) from the dashboard issue", full_name, actor, len(approved))
    return approved


@router.register("issues", action="edited")
async def approve_ticked_plans(event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, gate: Gate | None = None,
                               permissions: Any = None, policies: Any = None, github: Any = None,
                               **_: Any) -> None:
    """Ticking plan boxes on the dashboard issue and saving it approves those plans."""
    issue = event.data["issue"]
    sender = event.data.get("sender")
    if engine is None or is_bot(sender) or not await is_own_dashboard(event, github):
        return
    before_body = ((event.data.get("changes") or {}).get("body") or {}).get("from")
    newly = [sid for sid in ticked_sessions(issue.get("body")) if sid not in ticked_sessions(before_body)]
    if not newly or not await gate_for(gate, permissions, policies).allows(gh, event.data["repository"], sender):
        return
    await _approve(engine, event.data["repository"]["full_name"], newly, sender["login"])


@router.register("issue_comment", action="created")
async def approve_all_plans(event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, gate: Gate | None = None,
                            permissions: Any = None, policies: Any = None, github: Any = None, **_: Any) -> None:
    """`/agent approve all` on the dashboard issue approves every plan waiting in the repository."""
    issue = event.data["issue"]
    comment = event.data["comment"]
    if engine is None or not approves_all(comment.get("body")) or not await is_own_dashboard(event, github):
        return
    full_name = event.data["repository"]["full_name"]
    number, comment_id = int(issue["number"]), int(comment["id"])
    if engine.answered(full_name, number, comment_id):
        return  # the same comment, delivered again
    if not await gate_for(gate, permissions, policies).allows(gh, event.data["repository"], comment.get("user")):
        return
    waiting = [s.id for s in engine.waiting_plans(full_name)]
    approved = await _approve(engine, full_name, waiting, comment["user"]["login"])
    outcome = responses.Acknowledge(comment_id, responses.approvals_outcome(len(approved)))
    await engine.respond(int(event.data["installation"]["id"]), full_name, number, (outcome,))
