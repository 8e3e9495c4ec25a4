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

Inline comments wait in SQLite (`bot.store.inline_comments`), so a restart inside the window
loses none of them; the collector's timer task flushes every group whose window has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from bot.github.api import GitHub
from bot.core.feedback import inline_feedback
from bot.core.sanitize import marker
from bot.core.session import ReviewFeedback, Session
from bot.runtime.marked import ensure_marked, issue_comment
from bot.store.database import Store
from bot.store.inline_comments import PendingInlineComments
from bot.store.posted import PostedRecords
from bot.views.render import render

log = logging.getLogger(__name__)

INLINE_WINDOW_SECONDS = 30.0
NEEDS_HUMAN_TEMPLATE = "needs_human"
NEEDS_HUMAN_KIND = "needs-human"


# --------------------------------------------------------------------------------------------------
# needs-human


async def post_needs_human(
    gh: GitHub, owner: str, repo: str, pull_number: int, session: Session, *, store: Store, bot_login: str,
    clock: Callable[[], float] = time.time,
) -> int:
    """Post (once per session and PR) the comment explaining why Shepherd stopped iterating; its id."""
    body = render(
        NEEDS_HUMAN_TEMPLATE,
        reason=session.stuck_reason or "",
        actor=session.trigger_actor,
        branch=session.branch,
        marker=marker(NEEDS_HUMAN_KIND, session=session.id),
    )
    done = await ensure_marked(
        gh, PostedRecords(store), issue_comment(owner, repo, pull_number, NEEDS_HUMAN_KIND, {"session": session.id}),
        scope=session.id, kind=NEEDS_HUMAN_KIND, key=str(pull_number), bot_login=bot_login, body=body, now=clock(),
        edit=False,
    )
    return done.id


# --------------------------------------------------------------------------------------------------
# The inline-comment collector


class InlineCollector:
    """Collects inline PR comments outside a review for `window` seconds into one `ReviewFeedback`.

    `engine` is the runtime (`bot.core.effects.Engine`); a round that reaches a cap is explained on the PR
    by the core's own `ExplainNeedsHuman`, as for reviews and CI.
    """

    def __init__(
        self,
        store: Store,
        engine: Any,
        *,
        window: float = INLINE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._waiting = PendingInlineComments(store)
        self._engine = engine
        self._window = window
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, *, full_name: str, pull_number: int, issue_number: int, comment: Mapping[str, Any]) -> bool:
        """Store one comment for its PR's group; False when it was already stored (a redelivery)."""
        added = self._waiting.add(
            repo=full_name, pull_number=int(pull_number), issue_number=int(issue_number), comment_id=int(comment["id"]),
            author=comment["user"]["login"], path=comment.get("path"),
            line=comment.get("line") or comment.get("original_line"), body=comment.get("body") or "", now=self._clock(),
        )
        self._wakeup.set()
        return added

    def pending(self) -> list[dict[str, Any]]:
        return self._waiting.rows()

    def next_due(self) -> float | None:
        pulls = self._waiting.pulls()
        return min(pull.first_received_at for pull in pulls) + self._window if pulls else None

    async def flush_due(self) -> list[ReviewFeedback]:
        """Signal every group whose window has passed; return the rounds it produced."""
        now = self._clock()
        flushed = []
        for pull in self._waiting.pulls():
            if pull.first_received_at + self._window > now:
                continue
            comments = self._waiting.of_pull(pull.repo, pull.pull_number)
            feedback = inline_feedback(comments)
            await self._engine.signal(pull.repo, pull.issue_number, feedback)
            # Forgotten only after the signal: a crash in between re-sends the same id, which the core ignores.
            self._waiting.forget([c["id"] for c in comments])
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
