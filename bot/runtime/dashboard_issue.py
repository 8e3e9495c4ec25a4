"""The per-repository "Shepherd dashboard" issue: one issue, kept up to date like a dependency dashboard.

It lists the questions waiting for an answer, the plans waiting for approval (each a `- [ ]` line with
the session id in a hidden marker, for batch approval), the running sessions and the open PRs. It is
created on first use and found again through the `posted` table, or, when that row is lost, by
searching the repository's open issues by the bot for its marker, so it is never duplicated. Edits go
at low priority through the installation's write gate and are skipped when the text is unchanged,
like the status comments; the text holds no clock time, so an unchanged repository renders the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Iterable
from typing import Any

import gidgethub

from bot.github.pacing import Priority
from bot.core.dashboard import APPROVE_MARKER_KIND, MARKER_KIND
from bot.core.sanitize import find_marker, marker, neutralise_for_github
from bot.core.session import Detail, PullRequestState, Session, State
from bot.views.render import environment
from bot.store.database import Store, now_seconds

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

# One lock per store and repository: two refreshes at once must not both create the issue.
_locks: weakref.WeakKeyDictionary[Store, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


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
        stored = self.sessions.get(session.id)
        return stored.installation_id if stored is not None else None

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
            session.checkpoint, session.issue_title)


def render_dashboard_issue(full_name: str, sessions: Iterable[Session]) -> str:
    """The issue's body for these sessions of `full_name` (the latest session of each issue)."""
    current = _latest_per_issue(sessions, full_name)
    plans = [s for s in current if s.state == State.STUCK and s.detail == Detail.PLAN_AWAITING_APPROVAL]
    waiting = [s for s in current if s.state == State.STUCK and s not in plans]
    running = [s for s in current if s.state in _RUNNING]
    pulls = [s for s in current if s.pr_state == PullRequestState.OPEN and (s.pr_number or s.pr_url)]
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
    )


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _stored(store: Store, full_name: str) -> tuple[int, str | None] | None:
    row = store.db.execute(
        "SELECT github_id, body_sha FROM posted WHERE session_id = ? AND kind = ? AND key = ?",
        (full_name, POSTED_KIND, full_name),
    ).fetchone()
    return (int(row[0]), row[1]) if row else None


def _remember(store: Store, full_name: str, number: int, body_sha: str) -> None:
    store.db.execute(
        "INSERT INTO posted (session_id, kind, key, github_id, body_sha, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (session_id, kind, key) DO UPDATE SET github_id = excluded.github_id,"
        " body_sha = excluded.body_sha, updated_at = excluded.updated_at",
        (full_name, POSTED_KIND, full_name, number, body_sha, now_seconds()),
    )


def _forget(store: Store, full_name: str) -> None:
    store.db.execute(
        "DELETE FROM posted WHERE session_id = ? AND kind = ? AND key = ?", (full_name, POSTED_KIND, full_name)
    )


async def _find_issue(gh: Any, bot_login: str, owner: str, repo: str, full_name: str) -> dict[str, Any] | None:
    """The bot's open issue carrying this repository's dashboard marker (markers count only from the bot)."""
    async for issue in gh.getiter(
        "/repos/{owner}/{repo}/issues{?state,creator,per_page}",
        {"owner": owner, "repo": repo, "state": "open", "creator": bot_login, "per_page": 100},
    ):
        if "pull_request" in issue or (issue.get("user") or {}).get("login") != bot_login:
            continue
        fields = find_marker(issue.get("body"), MARKER_KIND)
        if fields is not None and fields.get("repo") == full_name:
            return issue
    return None


async def refresh_dashboard(github: Any, store: Store, installation_id: int, full_name: str, sessions: Iterable[Session]) -> int:
    """Create or update `full_name`'s dashboard issue from `sessions`; returns its number.

    `github` is the `GitHubApp`; `sessions` may include other repositories' (they are left out).
    """
    body = render_dashboard_issue(full_name, sessions)
    digest = _digest(body)
    owner, repo = full_name.split("/", 1)
    gh = github.installation(installation_id)
    lock = _locks.setdefault(store, {}).setdefault(full_name, asyncio.Lock())
    async with lock:
        stored = _stored(store, full_name)
        if stored is not None:
            number, known_digest = stored
            if known_digest == digest:
                return number
            try:
                await gh.patch(
                    "/repos/{owner}/{repo}/issues/{issue_number}",
                    {"owner": owner, "repo": repo, "issue_number": number},
                    data={"body": body},
                    priority=Priority.LOW,
                )
            except gidgethub.BadRequest as error:
                if int(error.status_code) not in (404, 410):
                    raise
                # Deleted or transferred: look for another one, else start a new one.
                log.warning("dashboard issue %s#%s is gone (%s)", full_name, number, error.status_code)
                _forget(store, full_name)
            else:
                _remember(store, full_name, number, digest)
                return number

        bot_login, _ = await github.bot_identity(installation_id)
        found = await _find_issue(gh, bot_login, owner, repo, full_name)
        if found is not None:
            number = int(found["number"])
            if found.get("body") != body:
                await gh.patch(
                    "/repos/{owner}/{repo}/issues/{issue_number}",
                    {"owner": owner, "repo": repo, "issue_number": number},
                    data={"body": body},
                    priority=Priority.LOW,
                )
        else:
            created = await gh.post(
                "/repos/{owner}/{repo}/issues",
                {"owner": owner, "repo": repo},
                data={"title": TITLE, "body": body},
                priority=Priority.NORMAL,
            )
            number = int(created["number"])
            log.info("created the dashboard issue %s#%s", full_name, number)
        _remember(store, full_name, number, digest)
        return number
