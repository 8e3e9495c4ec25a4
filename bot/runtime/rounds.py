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
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from bot.core.sanitize import clean_for_agent, marker
from bot.core.session import CIFailed, Detail, ReviewFeedback, Session, State
from bot.runtime.finisher import render
from bot.runtime.marked import ensure_marked, issue_comment
from bot.store.database import Store
from bot.store.inline_comments import PendingInlineComments, PendingPull
from bot.store.posted import PostedRecords

log = logging.getLogger(__name__)

INLINE_WINDOW_SECONDS = 30.0
FAILING_CONCLUSIONS = frozenset({"failure", "timed_out", "startup_failure"})
CHECK_OUTPUT_LIMIT = 1500
NEEDS_HUMAN_TEMPLATE = "needs_human.md.j2"
NEEDS_HUMAN_KIND = "needs-human"

REVIEW_HEADING = "Review by @{author}, requesting changes:"
COMMENT_HEADING = "Comment by @{author} on the pull request:"
INLINE_HEADING = "Inline comments on the pull request:"
INLINE_LINE = "- @{author} on `{path}`{where}:"
INLINE_WHERE = " line {line}"
CI_HEADING = "CI failed on the head commit {sha} of the pull request:"
CI_RUN_LINE = "- {name}: {conclusion}{title}"
CI_SUITE_ONLY = "- a check suite of {app} concluded {conclusion} without a failing check run to show."
NO_TEXT = "(no text)"

_SLASH_COMMAND = re.compile(r"(?im)^[ \t]*/agent\b")


def is_slash_command(text: str | None) -> bool:
    """A comment holding an `/agent ...` command at the start of a line (handled elsewhere, SPEC §1)."""
    return bool(text) and bool(_SLASH_COMMAND.search(text or ""))


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())


def _inline_lines(comments: Iterable[Mapping[str, Any]]) -> list[str]:
    lines = []
    for comment in comments:
        line = comment.get("line") or comment.get("original_line")
        where = INLINE_WHERE.format(line=line) if line else ""
        author = (comment.get("user") or {}).get("login") or comment.get("author") or "someone"
        lines.append(INLINE_LINE.format(author=author, path=comment.get("path") or "?", where=where))
        lines.append(_indent(clean_for_agent(comment.get("body")) or NO_TEXT))
    return lines


def review_feedback(review: Mapping[str, Any], comments: Sequence[Mapping[str, Any]]) -> ReviewFeedback:
    """One changes-requested review and its inline comments, as one round."""
    author = review["user"]["login"]
    parts = [REVIEW_HEADING.format(author=author), "", clean_for_agent(review.get("body")) or NO_TEXT]
    if comments:
        parts += ["", INLINE_HEADING, *_inline_lines(comments)]
    return ReviewFeedback(f"review:{review['id']}", author, "\n".join(parts))


def comment_feedback(comment: Mapping[str, Any]) -> ReviewFeedback:
    """One PR conversation comment, as one round."""
    author = comment["user"]["login"]
    text = "\n".join([COMMENT_HEADING.format(author=author), "", clean_for_agent(comment.get("body")) or NO_TEXT])
    return ReviewFeedback(f"comment:{comment['id']}", author, text)


def inline_feedback(comments: Sequence[Mapping[str, Any]]) -> ReviewFeedback:
    """Inline comments collected over the window, as one round named after the first of them."""
    first = comments[0]
    author = (first.get("user") or {}).get("login") or first.get("author") or "someone"
    text = "\n".join([INLINE_HEADING, *_inline_lines(comments)])
    return ReviewFeedback(f"inline:{first['id']}", author, text)


def is_failing(conclusion: str | None) -> bool:
    return conclusion in FAILING_CONCLUSIONS


def ci_feedback(head_sha: str, runs: Sequence[Mapping[str, Any]], *, suite_app: str | None = None,
                suite_conclusion: str | None = None) -> CIFailed:
    """The failing check runs of one head commit, as one CI round."""
    lines = [CI_HEADING.format(sha=head_sha[:12])]
    for run in runs:
        output = run.get("output") or {}
        title = output.get("title")
        lines.append(CI_RUN_LINE.format(
            name=run.get("name") or "?", conclusion=run.get("conclusion") or "?",
            title=f" ({clean_for_agent(title)})" if title else "",
        ))
        summary = clean_for_agent(output.get("summary"))
        if summary and summary != title:
            lines.append(_indent(summary[:CHECK_OUTPUT_LIMIT]))
    if not runs:
        lines.append(CI_SUITE_ONLY.format(app=suite_app or "CI", conclusion=suite_conclusion or "failure"))
    return CIFailed(head_sha, "\n".join(lines))


async def failing_check_runs(gh: Any, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
    """The latest run of each check on `sha` whose conclusion fails the head."""
    runs = []
    async for run in gh.getiter(
        "/repos/{owner}/{repo}/commits/{ref}/check-runs{?filter,per_page}",
        {"owner": owner, "repo": repo, "ref": sha, "filter": "latest", "per_page": 100},
        iterable_key="check_runs",
    ):
        if is_failing(run.get("conclusion")):
            runs.append(run)
    return sorted(runs, key=lambda run: str(run.get("name")))


async def review_comments(gh: Any, owner: str, repo: str, number: int, review_id: int) -> list[dict[str, Any]]:
    """The inline comments of one review, oldest first.

    Read from the PR's comment list filtered by review: those records carry `line`, which the
    per-review listing's older schema lacks (it has only the diff `position`).
    """
    comments = []
    async for comment in gh.getiter(
        "/repos/{owner}/{repo}/pulls/{pull_number}/comments{?per_page}",
        {"owner": owner, "repo": repo, "pull_number": number, "per_page": 100},
    ):
        if comment.get("pull_request_review_id") == review_id:
            comments.append(comment)
    return sorted(comments, key=lambda comment: comment["id"])


# --------------------------------------------------------------------------------------------------
# needs-human


def became_needs_human(before: Session | None, after: Session | None) -> bool:
    """Whether this event is the one that put the session at a cap (SPEC §1.9)."""
    def stuck(session: Session | None) -> bool:
        return session is not None and session.state == State.STUCK and session.detail == Detail.NEEDS_HUMAN

    return stuck(after) and not stuck(before)


async def post_needs_human(
    gh: Any, owner: str, repo: str, pull_number: int, session: Session, *, store: Store, bot_login: str,
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


AfterSignal = Callable[[PendingPull, Session | None, Session | None], Awaitable[None]]


class InlineCollector:
    """Collects inline PR comments outside a review for `window` seconds into one `ReviewFeedback`.

    `engine` is the runtime (`bot.core.effects.Engine`); `after_signal`, when given, sees the session
    before and after each flushed round (e.g. to post the needs-human comment on the PR).
    """

    def __init__(
        self,
        store: Store,
        engine: Any,
        *,
        window: float = INLINE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
        after_signal: AfterSignal | None = None,
    ) -> None:
        self._waiting = PendingInlineComments(store)
        self._engine = engine
        self._window = window
        self._clock = clock
        self._after_signal = after_signal
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
            before = self._engine.last_session(pull.repo, pull.issue_number)
            after = await self._engine.signal(pull.repo, pull.issue_number, feedback)
            # Forgotten only after the signal: a crash in between re-sends the same id, which the core ignores.
            self._waiting.forget([c["id"] for c in comments])
            flushed.append(feedback)
            if self._after_signal is not None:
                try:
                    await self._after_signal(pull, before, after)
                except Exception:  # noqa: BLE001 - the round is recorded; a missing explanation is logged
                    log.exception("after-signal hook failed for %s#%s", pull.repo, pull.pull_number)
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
