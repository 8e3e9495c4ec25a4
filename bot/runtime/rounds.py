"""PR feedback as review and CI rounds (SPEC §1.9): the feedback text an agent gets, the 30 s inline-comment
collector, the failing checks of a head commit, and the one needs-human comment on a PR.

What counts as one round:
- one submitted review with changes requested, with its inline comments (`review:<id>`);
- one PR conversation comment (`comment:<id>`);
- inline comments outside such a review, collected over `INLINE_WINDOW_SECONDS` (`inline:<first id>`);
- one failing head commit, however many suites and runs fail on it (the core dedupes per SHA).

Which check conclusions fail a head: `failure`, `timed_out` and `startup_failure`. `cancelled` does
not: runs are cancelled when a newer push supersedes them or a person stops them, and neither is
something the agent could fix. `action_required` waits for a person, not for a code change.

Inline comments wait in SQLite (`pending_inline_comments`, schema v3), so a restart inside the window
loses none of them; the collector's timer task flushes every group whose window has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.github.permissions import is_bot
from bot.views.render import render
from bot.core.feedback import inline_feedback
from bot.core.sanitize import find_marker, marker
from bot.core.session import ReviewFeedback, Session

log = logging.getLogger(__name__)

INLINE_WINDOW_SECONDS = 30.0
NEEDS_HUMAN_TEMPLATE = "needs_human"
NEEDS_HUMAN_KIND = "needs-human"


# --------------------------------------------------------------------------------------------------
# needs-human


async def post_needs_human(
    gh: Any, owner: str, repo: str, pull_number: int, session: Session, *, store: Any = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Post (once per session and PR) the comment explaining why Shepherd stopped iterating; its id."""
    key = str(pull_number)
    if store is not None:
        row = store.db.execute(
            "SELECT github_id FROM posted WHERE session_id = ? AND kind = ? AND key = ?",
            (session.id, NEEDS_HUMAN_KIND, key),
        ).fetchone()
        if row is not None:
            return int(row[0])
    found = None
    async for comment in gh.getiter(
        "/repos/{owner}/{repo}/issues/{issue_number}/comments{?per_page}",
        {"owner": owner, "repo": repo, "issue_number": pull_number, "per_page": 100},
    ):
        if is_bot(comment.get("user")) and (find_marker(comment.get("body"), NEEDS_HUMAN_KIND) or {}).get(
            "session"
        ) == session.id:
            found = comment
            break
    if found is None:
        body = render(
            NEEDS_HUMAN_TEMPLATE,
            reason=session.stuck_reason or "",
            actor=session.trigger_actor,
            branch=session.branch,
            marker=marker(NEEDS_HUMAN_KIND, session=session.id),
        )
        found = await gh.post(
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            {"owner": owner, "repo": repo, "issue_number": pull_number},
            data={"body": body},
        )
    if store is not None:
        store.db.execute(
            "INSERT OR IGNORE INTO posted (session_id, kind, key, github_id, body_sha, updated_at) "
            "VALUES (?, ?, ?, ?, NULL, ?)",
            (session.id, NEEDS_HUMAN_KIND, key, int(found["id"]), clock()),
        )
    return int(found["id"])


# --------------------------------------------------------------------------------------------------
# The inline-comment collector


@dataclass(frozen=True)
class PendingGroup:
    repo: str
    pull_number: int
    issue_number: int


class InlineCollector:
    """Collects inline PR comments outside a review for `window` seconds into one `ReviewFeedback`.

    `engine` is the runtime (`bot.core.effects.Engine`); a round that reaches a cap is explained on the PR
    by the core's own `ExplainNeedsHuman`, as for reviews and CI.
    """

    def __init__(
        self,
        store: Any,
        engine: Any,
        *,
        window: float = INLINE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._engine = engine
        self._window = window
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, *, full_name: str, pull_number: int, issue_number: int, comment: Mapping[str, Any]) -> bool:
        """Store one comment for its PR's group; False when it was already stored (a redelivery)."""
        cursor = self._store.db.execute(
            "INSERT OR IGNORE INTO pending_inline_comments "
            "(comment_id, repo, pull_number, issue_number, author, path, line, body, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                int(comment["id"]), full_name, int(pull_number), int(issue_number), comment["user"]["login"],
                comment.get("path"), comment.get("line") or comment.get("original_line"),
                comment.get("body") or "", self._clock(),
            ),
        )
        self._wakeup.set()
        return cursor.rowcount == 1

    def pending(self) -> list[dict[str, Any]]:
        rows = self._store.db.execute(
            "SELECT * FROM pending_inline_comments ORDER BY received_at, comment_id"
        ).fetchall()
        return [dict(row) for row in rows]

    def _groups(self) -> list[tuple[PendingGroup, float]]:
        rows = self._store.db.execute(
            "SELECT repo, pull_number, issue_number, MIN(received_at) AS first "
            "FROM pending_inline_comments GROUP BY repo, pull_number ORDER BY first"
        ).fetchall()
        return [(PendingGroup(row["repo"], row["pull_number"], row["issue_number"]), row["first"]) for row in rows]

    def next_due(self) -> float | None:
        groups = self._groups()
        return min(first for _, first in groups) + self._window if groups else None

    async def flush_due(self) -> list[ReviewFeedback]:
        """Signal every group whose window has passed; return the rounds it produced."""
        now = self._clock()
        flushed = []
        for group, first in self._groups():
            if first + self._window > now:
                continue
            rows = self._store.db.execute(
                "SELECT * FROM pending_inline_comments WHERE repo = ? AND pull_number = ? "
                "ORDER BY received_at, comment_id",
                (group.repo, group.pull_number),
            ).fetchall()
            comments = [
                {"id": row["comment_id"], "author": row["author"], "path": row["path"], "line": row["line"],
                 "body": row["body"]}
                for row in rows
            ]
            feedback = inline_feedback(comments)
            await self._engine.signal(group.repo, group.issue_number, feedback)
            # Deleted only after the signal: a crash in between re-sends the same id, which the core ignores.
            self._store.db.executemany(
                "DELETE FROM pending_inline_comments WHERE comment_id = ?", [(c["id"],) for c in comments]
            )
            flushed.append(feedback)
        return flushed

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="shepherd-inline-collector")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.flush_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep collecting; the rows stay and are retried
                log.exception("flushing inline comments failed")
            due = self.next_due()
            timeout = None if due is None else max(0.05, due - self._clock())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
