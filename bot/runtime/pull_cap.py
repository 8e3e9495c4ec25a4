"""Keeps a repository's `max_open_prs` (SPEC §8): finished sessions wait in line, and the first of them is
woken when an agent PR of the repository is merged or closed.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.core import open_prs
from bot.core.session import Event, PullRequestClosed, PullRequestDeferred, PullRequestSlotFree, PullRequestState, Session

log = logging.getLogger(__name__)


class PullRequestCap:
    """The engine's view of each repository's open agent PRs and of the sessions waiting for one to close."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def _sessions(self, repo: str) -> list[Session]:
        return [stored.session for stored in self.engine.sessions.all_for_repository(repo)]

    def verdict(self, session: Session, cap: int) -> PullRequestDeferred | None:
        """`PullRequestDeferred` when `session` must wait before opening its PR, else None."""
        return open_prs.verdict(self._sessions(session.repo), session, cap)

    def position(self, session: Session) -> int | None:
        """The session's place in its repository's line, for the status comment."""
        if not open_prs.is_waiting(session):
            return None
        return open_prs.place(self._sessions(session.repo), session)

    async def observe(self, before: Session | None, after: Session, event: Event) -> None:
        """A merged or closed agent PR frees a place: the first session in line tries to open its PR."""
        if not isinstance(event, PullRequestClosed) or before is None:
            return
        if before.pr_state != PullRequestState.OPEN or after.pr_state == PullRequestState.OPEN:
            return
        line = open_prs.waiting_line(self._sessions(after.repo))
        if line:
            log.info("%s: an agent PR closed; %s may open its PR", after.repo, line[0].id)
            await self.engine.apply(line[0].id, PullRequestSlotFree())
