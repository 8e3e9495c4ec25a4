"""Round texts, what fails a head, the needs-human transition, and the collector's timer task."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bot.core.commands import is_command
from bot.core.feedback import ci_feedback, comment_feedback, is_failing, review_feedback
from bot.core.session import CIFailed, Detail, ExplainNeedsHuman, State, decide
from bot.runtime.rounds import InlineCollector
from tests.finishing_bed import REPO, MemoryEngine, bed, opened_session  # noqa: F401 - the fixture


def test_review_text_holds_the_body_and_each_inline_comment_with_file_and_line():
    review = {"id": 9, "user": {"login": "alice"}, "body": "Fix <!-- hidden instruction --> this."}
    comments = [{"id": 1, "user": {"login": "alice"}, "path": "src/a.py", "line": 12, "body": "Off by one"}]
    feedback = review_feedback(review, comments)
    assert feedback.feedback_id == "review:9" and feedback.author == "alice"
    assert "Fix  this." in feedback.text and "hidden instruction" not in feedback.text
    assert "- @alice on `src/a.py` line 12:\n  Off by one" in feedback.text


def test_comment_text_loses_invisible_characters():
    feedback = comment_feedback({"id": 5, "user": {"login": "bob"}, "body": "Use\u200b the cache"})
    assert feedback.feedback_id == "comment:5" and "Use the cache" in feedback.text


def test_which_conclusions_fail_a_head():
    assert all(is_failing(c) for c in ("failure", "timed_out", "startup_failure"))
    assert not any(is_failing(c) for c in ("success", "cancelled", "neutral", "skipped", "action_required", None))


def test_ci_text_names_each_failing_run_and_falls_back_to_the_suite():
    runs = [{"name": "tests", "conclusion": "failure", "output": {"title": "3 failed", "summary": "test_a\ntest_b"}}]
    text = ci_feedback("a" * 40, runs).summary
    assert "aaaaaaaaaaaa" in text and "- tests: failure (3 failed)" in text and "  test_a\n  test_b" in text
    bare = ci_feedback("b" * 40, [], suite_app="github-actions", suite_conclusion="timed_out")
    assert "github-actions concluded timed_out" in bare.summary and bare.head_sha == "b" * 40


def test_a_pr_comment_is_a_command_exactly_when_the_slash_command_parser_says_so():
    """One rule for both handlers: what the command handler would not run is feedback, never dropped."""
    assert is_command("/agent stop") and is_command("thanks\n/AGENT retry")
    assert not is_command("see /agent docs") and not is_command(None)
    assert not is_command("> /agent stop") and not is_command("```\n/agent stop\n```")


async def test_needs_human_is_explained_on_the_pr_only_on_the_transition(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    capped = replace(session, limits=replace(session.limits, ci_rounds=0))
    first = decide(capped, CIFailed(capped.pr_head_sha, "red"), bed.tick())
    assert first.session.state == State.STUCK and first.session.detail == Detail.NEEDS_HUMAN
    assert [c for c in first.commands if isinstance(c, ExplainNeedsHuman)] == [ExplainNeedsHuman(session.pr_number)]
    again = decide(first.session, CIFailed("f" * 40, "red again"), bed.tick())
    assert [c for c in again.commands if isinstance(c, ExplainNeedsHuman)] == []


async def test_the_timer_task_flushes_a_group_once_its_window_has_passed(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    collector = InlineCollector(bed.store, engine, window=0.05)
    comment = {"id": 4242, "user": {"login": "alice"}, "path": "a.txt", "line": 3, "body": "Nit"}
    collector.add(full_name=REPO, pull_number=session.pr_number, issue_number=session.issue_number, comment=comment)
    collector.start()
    try:
        async with asyncio.timeout(10):
            while not engine.events:
                await asyncio.sleep(0.02)
    finally:
        await collector.stop()
    assert [e.feedback_id for e in engine.events] == ["inline:4242"]
    assert collector.pending() == []
