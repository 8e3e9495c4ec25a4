"""The per-repository "Shepherd dashboard" issue: one issue, kept up to date like a dependency dashboard.

It lists the questions waiting for an answer, the plans waiting for approval (each a `- [ ]` line with
the session id in a hidden marker, for batch approval), the running sessions and the open PRs. It is
created on first use and found again through `bot.runtime.marked` (the `posted` table, or, when that row
is lost, the repository's open issues by the bot with its marker), so it is never duplicated. Edits go
at low priority through the installation's write gate and are skipped when the text is unchanged,
like the status comments; the text holds no clock time, so an unchanged repository renders the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from bot.github.pacing import Priority
from bot.core import open_prs
from bot.core.dashboard import APPROVE_MARKER_KIND, MARKER_KIND
from bot.core.sanitize import marker, neutralise_for_github
from bot.core.session import Detail, PullRequestState, Session, State
from bot.runtime.marked import ensure_marked, repository_issue
from bot.views.render import environment
from bot.store.database import Store, now_seconds
from bot.store.posted import PostedRecords

log = logging.getLogger(__name__)

POSTED_KIND = "dashboard-issue"

TITLE = "Shepherd dashboard"
INTRO = (
    "Shepherd keeps this issue up to date with its work in this repository. Edits to it are "
    "overwritten, except ticked plan boxes, which approve those plans; answer questions on their own issues."
)
PLANS_HINT = (
    "Tick the plans you approve and save this issue, or comment `/agent approve all` here to approve every "
    "plan below. To revise one, comment `/agent revise <text>` on its issue."
)
NONE_TEXT = "None."
FOOTER = "Closing this issue does not stop Shepherd; remove the agent label from an issue to stop its session."

_RUNNING = (State.REGISTERED, State.QUEUED, State.PLANNING, State.WORKING)

def _latest_per_issue(sessions: Iterable[Session], full_name: str) -> list[Session]:
    latest: dict[int, Session] = {}
    for session in sessions:
        if session.repo != full_name:
            continue
        known = latest.get(session.issue_number)
        if known is None or session.attempt > known.attempt:
            latest[session.issue_number] = session
    return [latest[number] for number in sorted(latest)]


def _line(text: str | None) -> str:
    return " ".join(neutralise_for_github(text or "").split())


def _shown(session: Session) -> dict[str, Any]:
    question = session.question.text if session.question is not None else session.stuck_reason
    pr_link = f"#{session.pr_number}" if session.pr_number else (session.pr_url or "")
    return {
        "issue_number": session.issue_number,
        "title": _line(session.issue_title),
        "state": str(session.state),
        "question": _line(question),
        "options": [_line(option) for option in session.question.options] if session.question else [],
        "checkpoint": _line(session.checkpoint),
        "branch": session.branch,
        "pr_link": pr_link,
        "approve_marker": marker(APPROVE_MARKER_KIND, session=session.id),
        "failure": _line(session.failure_reason),
    }


class DashboardRefresher:
    """Keeps each repository's dashboard issue current as sessions change, paced like status comments:
    changes are coalesced per repository (latest wins), at most one edit every `interval` seconds, and
    an unchanged text is never written (`refresh_dashboard` compares digests)."""

    def __init__(self, github: Any, store: Store, sessions: Any, *, interval: float = 3.0) -> None:
        self.github = github
        self.store = store
        self.sessions = sessions  # `bot.store.sessions.SessionStore`
        self.interval = interval
        self._dirty: dict[str, int] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def observe(self, before: Session | None, after: Session, event: Any) -> None:
        """A runtime observer: any change of state, detail, question or PR refreshes the repository's issue."""
        if before is not None and _dashboard_view(before) == _dashboard_view(after):
            return
        installation_id = self._installation_of(after)
        if installation_id is None:
            return
        self.schedule(installation_id, after.repo)

    def _installation_of(self, session: Session) -> int | None:
        """The session's installation, or None when there is none or its repository turned the issue off."""
        stored = self.sessions.get(session.id)
        if stored is None or not stored.context.policy.dashboard_issue:
            return None
        return int(stored.installation_id)

    def schedule(self, installation_id: int, full_name: str) -> None:
        self._dirty[full_name] = installation_id
        task = self._tasks.get(full_name)
        if task is None or task.done():
            self._tasks[full_name] = asyncio.create_task(self._run(full_name), name=f"dashboard {full_name}")

    async def _run(self, full_name: str) -> None:
        while full_name in self._dirty:
            installation_id = self._dirty.pop(full_name)
            sessions = [stored.session for stored in self.sessions.all_for_repository(full_name)]
            try:
                await refresh_dashboard(self.github, self.store, installation_id, full_name, sessions)
            except Exception:  # noqa: BLE001 - the dashboard is a view; the next change tries again
                log.warning("refreshing the dashboard of %s failed", full_name, exc_info=True)
            if full_name in self._dirty:
                await asyncio.sleep(self.interval)

    async def drain(self) -> None:
        """Wait for pending refreshes (tests, shutdown)."""
        while any(not task.done() for task in self._tasks.values()):
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _dashboard_view(session: Session) -> tuple[Any, ...]:
    return (session.state, session.detail, session.question, session.pr_state, session.pr_number,
            session.checkpoint, session.issue_title, session.failure_reason)


def render_dashboard_issue(full_name: str, sessions: Iterable[Session]) -> str:
    """The issue's body for these sessions of `full_name` (the latest session of each issue)."""
    current = _latest_per_issue(sessions, full_name)
    plans = [s for s in current if s.state == State.STUCK and s.detail == Detail.PLAN_AWAITING_APPROVAL]
    waiting = [s for s in current if s.state == State.STUCK and s not in plans]
    line = open_prs.waiting_line(current)
    running = [s for s in current if s.state in _RUNNING and s not in line]
    pulls = [s for s in current if s.pr_state == PullRequestState.OPEN and (s.pr_number or s.pr_url)]
    failed = [s for s in current if s.state == State.FAILED]
    return environment().get_template("dashboard_issue.md.j2").render(
        marker=marker(MARKER_KIND, repo=full_name),
        intro=INTRO,
        plans_hint=PLANS_HINT,
        none_text=NONE_TEXT,
        footer=FOOTER,
        waiting=[_shown(s) for s in waiting],
        plans=[_shown(s) for s in plans],
        running=[_shown(s) for s in running],
        pulls=[_shown(s) for s in pulls],
        failed=[_shown(s) for s in failed],
        pr_line=[{**_shown(s), "place": place} for place, s in enumerate(line, start=1)],
    )


async def refresh_dashboard(github: Any, store: Store, installation_id: int, full_name: str, sessions: Iterable[Session]) -> int:
    """Create or update `full_name`'s dashboard issue from `sessions`; returns its number.

    `github` is the `GitHubApp`; `sessions` may include other repositories' (they are left out).
    """
    body = render_dashboard_issue(full_name, sessions)
    owner, repo = full_name.split("/", 1)
    bot_login, _ = await github.bot_identity(installation_id)
    place = repository_issue(owner, repo, bot_login=bot_login, title=TITLE, kind=MARKER_KIND,
                             fields={"repo": full_name})
    done = await ensure_marked(
        github.installation(installation_id), PostedRecords(store), place, scope=full_name, kind=POSTED_KIND,
        key=full_name, bot_login=bot_login, body=body, now=now_seconds(), priority=Priority.LOW,
        create_priority=Priority.NORMAL,
    )
    if done.created:
        log.info("created the dashboard issue %s#%s", full_name, done.id)
    return done.id
