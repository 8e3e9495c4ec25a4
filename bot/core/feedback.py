"""PR feedback as the agent reads it (SPEC §1.9): one review, one PR comment, collected inline comments or one
failing head commit become one round's text, as a core event.

What counts as one round:
- one submitted review with changes requested, with its inline comments (`review:<id>`);
- one PR conversation comment that holds no slash command (`comment:<id>`);
- inline comments outside such a review, collected over a window (`inline:<first id>`);
- one failing head commit, however many suites and runs fail on it (`wants_ci_round` in the session core).

Which check conclusions fail a head: `failure`, `timed_out` and `startup_failure`. `cancelled` does
not: runs are cancelled when a newer push supersedes them or a person stops them, and neither is
something the agent could fix. `action_required` waits for a person, not for a code change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.core.sanitize import clean_for_agent
from bot.core.session import CIFailed, ReviewFeedback

FAILING_CONCLUSIONS = frozenset({"failure", "timed_out", "startup_failure"})
CHECK_OUTPUT_LIMIT = 1500

REVIEW_HEADING = "Review by @{author}, requesting changes:"
COMMENT_HEADING = "Comment by @{author} on the pull request:"
INLINE_HEADING = "Inline comments on the pull request:"
INLINE_LINE = "- @{author} on `{path}`{where}:"
INLINE_WHERE = " line {line}"
CI_HEADING = "CI failed on the head commit {sha} of the pull request:"
CI_RUN_LINE = "- {name}: {conclusion}{title}"
CI_SUITE_ONLY = "- a check suite of {app} concluded {conclusion} without a failing check run to show."
NO_TEXT = "(no text)"


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
