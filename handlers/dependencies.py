"""Dependencies between issues: a closed dependency, or an edited `depends on` line, re-checks the waiting sessions.

A dependency's PR merging needs no handler: the runtime's observer sees the session's PR become merged
and re-checks then. Here only what the runtime cannot see arrives: an issue closed by hand (done when
closed as completed) and a person editing a waiting issue's body.
"""

from __future__ import annotations

import logging
from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import Engine
from bot.github.api import GitHubReader
from bot.core.session import Detail
from bot.github.gate import Gate, gate_for
from bot.github.permissions import is_bot
from handlers.dashboard import is_own_dashboard

log = logging.getLogger(__name__)

router = routing.Router()


@router.register("issues", action="closed")
async def recheck_after_close(event: sansio.Event, gh: GitHubReader, *, dependencies: Any = None, **_: Any) -> None:
    """An issue closed (e.g. by a merged PR's `Closes #n`) may be the last thing another issue waits for."""
    if dependencies is None or "pull_request" in event.data["issue"]:
        return
    await dependencies.recheck()


@router.register("issues", action="edited")
async def recheck_after_edit(event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, dependencies: Any = None,
                             gate: Gate | None = None, permissions: Any = None, policies: Any = None,
                             github: Any = None, **_: Any) -> None:
    """A person edited a waiting issue: its `depends on` lines may have changed (a cycle broken, say)."""
    issue = event.data["issue"]
    sender = event.data.get("sender")
    if engine is None or dependencies is None or is_bot(sender) or await is_own_dashboard(event, github):
        return
    if "body" not in (event.data.get("changes") or {}):
        return
    repository = event.data["repository"]
    full_name = repository["full_name"]
    session = engine.last_session(full_name, int(issue["number"]))
    if session is None or session.detail != Detail.WAITING_FOR_DEPENDENCIES:
        return
    if not await gate_for(gate, permissions, policies).allows(gh, repository, sender):
        return  # only people who may start Shepherd may change what it waits for
    await dependencies.recheck_issue(full_name, int(issue["number"]), issue.get("body") or "")
