"""The Publisher against the strict fake GitHub: no duplicates across 502s, restarts and forged markers;
status edits skipped, throttled and prioritised; failures with a redacted log tail; the write budget of a
whole session; and the example comments the README shows (docs/examples, regenerated and compared)."""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any

import gidgethub
import pytest

from bot.runtime.publisher import Publisher
from bot.core.effects import ChangedFile
from bot.github.pacing import Priority
from bot.core.session import (
    Asked,
    DoneReported,
    PostStatus,
    Progress,
    PullRequestOpened,
    SlotGranted,
    State,
    StatusRequested,
    TurnExited,
    TurnFailed,
    FailureKind,
    TurnStarted,
    WorkspaceReady,
)
from bot.store.database import Store
from tests.conversation_support import INSTALLATION, OWNER, NAME, REPO, Bed, bed  # noqa: F401 - fixture
from tests.fakes import payloads

pytest_plugins = ["tests.fakes.plugin"]

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
CREATE_COMMENT = "issues/create-comment"
UPDATE_COMMENT = "issues/update-comment"
WRITE_BUDGET = 10


async def started(bed: Bed) -> Any:
    await bed.deliver("issues", payloads.issue_labeled(bed.fake, REPO, 1, "agent:go"))
    return bed.engine.last_session(REPO, 1)


def status_comments(bed: Bed) -> list[dict]:
    return [c for c in bed.fake.comments(REPO, 1)
            if "shepherd:status" in c["body"] and c["user"]["login"] == bed.fake.bot_login]


async def test_a_lost_502_on_the_first_write_leaves_one_status_comment(bed: Bed) -> None:
    # A create is never repeated by the client after a 5xx (it may have landed): one 502 fails the call.
    bed.fake.inject(CREATE_COMMENT, status=502, times=1)
    with pytest.raises(gidgethub.GitHubBroken):
        await started(bed)
    assert status_comments(bed) == []
    session = bed.engine.last_session(REPO, 1)
    context = bed.engine.contexts[session.id]
    await bed.publisher.publish(session, PostStatus(urgent=True), context)  # the runtime's retry
    await bed.publisher.publish(session, PostStatus(urgent=True), context)  # and a redelivery
    assert len(status_comments(bed)) == 1


async def test_a_502_whose_create_did_land_is_found_by_its_marker(bed: Bed) -> None:
    bed.fake.inject(CREATE_COMMENT, status=502, times=5)
    with pytest.raises(gidgethub.GitHubBroken):
        await started(bed)
    session = bed.engine.last_session(REPO, 1)
    context = bed.engine.contexts[session.id]
    # GitHub did create it although every answer was a 502.
    from bot.views.render import render_status
    landed = bed.fake.add_comment(REPO, 1, render_status(session, context), user=bed.fake.bot_login)
    creates = len(bed.fake.calls_to(CREATE_COMMENT))
    await bed.publisher.publish(session, PostStatus(urgent=True), context)
    assert [c["id"] for c in status_comments(bed)] == [landed["id"]]
    assert len(bed.fake.calls_to(CREATE_COMMENT)) == creates
    assert bed.fake.calls_to(UPDATE_COMMENT) == []  # same text: nothing to edit either


async def test_a_502_on_a_create_is_not_repeated_by_the_client_and_the_retry_makes_one(bed: Bed) -> None:
    """The client repeats no create after a 5xx (GitHub may have made it); the outbox's retry finds or makes it."""
    bed.fake.inject(CREATE_COMMENT, status=502, times=1)
    with pytest.raises(gidgethub.GitHubBroken):
        await started(bed)
    assert len(bed.fake.calls_to(CREATE_COMMENT)) == 1
    session = bed.engine.last_session(REPO, 1)
    await bed.publisher.publish(session, PostStatus(urgent=True), bed.engine.contexts[session.id])
    assert len(status_comments(bed)) == 1


async def test_a_restart_edits_the_same_comment_even_with_a_lost_database(bed: Bed, tmp_path: Path) -> None:
    session = await started(bed)
    context = bed.engine.contexts[session.id]
    session = await bed.engine.feed(session, WorkspaceReady())
    restarted = Publisher(bed.github, bed.store, clock=bed.clock)
    await restarted.publish(session, PostStatus(), context)
    fresh_store = Store.open(tmp_path / "lost.db")
    try:
        amnesiac = Publisher(bed.github, fresh_store, clock=bed.clock)
        bed.clock.advance(5)
        session = await bed.engine.feed(session, SlotGranted())
        await amnesiac.publish(session, PostStatus(), context)
    finally:
        fresh_store.close()
    [status] = status_comments(bed)
    assert "### 🔨 Shepherd: Working" in status["body"]


async def test_a_forged_marker_from_a_person_is_not_adopted(bed: Bed) -> None:
    forged = bed.fake.add_comment(REPO, 1, "<!-- shepherd:status session=octo-org/widgets#1/1 -->\nowned", user="eve")
    await started(bed)
    [status] = status_comments(bed)
    assert status["id"] != forged["id"] and status["user"]["login"] == bed.fake.bot_login
    assert bed.fake.comments(REPO, 1)[0]["body"].endswith("owned")  # untouched


async def test_unchanged_status_is_not_written_and_progress_is_throttled(bed: Bed) -> None:
    session = await started(bed)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted())
    context = bed.engine.contexts[session.id]
    edits = len(bed.fake.calls_to(UPDATE_COMMENT))
    await bed.publisher.publish(session, PostStatus(), context)
    assert len(bed.fake.calls_to(UPDATE_COMMENT)) == edits  # same text
    bed.clock.advance(60)
    session = await bed.engine.feed(session, Progress("Reading the code"))
    assert len(bed.fake.calls_to(UPDATE_COMMENT)) == edits  # within status_interval_seconds
    bed.clock.advance(130)
    session = await bed.engine.feed(session, Progress("Writing the exporter"))
    assert len(bed.fake.calls_to(UPDATE_COMMENT)) == edits + 1
    assert "**Last checkpoint:** Writing the exporter" in status_comments(bed)[0]["body"]


async def test_writes_carry_the_priority_the_core_asked_for(bed: Bed, monkeypatch: Any) -> None:
    session = await started(bed)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted())
    seen: list[tuple[str, Any]] = []
    gh = bed.github.installation(INSTALLATION)
    original_patch, original_post = gh.patch, gh.post

    async def patch(url: str, url_vars: Any = {}, **kwargs: Any) -> Any:
        seen.append(("patch", kwargs.get("priority")))
        return await original_patch(url, url_vars, **kwargs)

    async def post(url: str, url_vars: Any = {}, **kwargs: Any) -> Any:
        seen.append((url.rsplit("/", 1)[-1], kwargs.get("priority")))
        return await original_post(url, url_vars, **kwargs)

    monkeypatch.setattr(gh, "patch", patch)
    monkeypatch.setattr(gh, "post", post)
    bed.clock.advance(200)
    session = await bed.engine.feed(session, Progress("Halfway"))
    assert seen[-1] == ("patch", Priority.LOW)
    await bed.engine.feed(session, Asked("CSV or JSON?"))
    assert ("comments", Priority.URGENT) in seen  # the question
    assert seen[-1] == ("patch", Priority.URGENT)  # the stuck status


async def test_a_failure_shows_the_reason_and_a_redacted_log_tail_that_stays(bed: Bed) -> None:
    session = await started(bed)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted())
    tail = "Running tests\nauth: ghs_abcdefghijklmnopqrstuvwxyz0123456789\nTraceback ```boom```"
    session = await bed.engine.feed(session, TurnFailed(FailureKind.IDLE, tail))
    assert session.state == State.FAILED
    body = status_comments(bed)[0]["body"]
    assert "### ❌ Shepherd: Failed" in body
    assert "**Why it failed:** The agent was silent for longer than idle_timeout_minutes." in body
    assert "auth: [redacted]" in body and "ghs_" not in body
    assert "````text\nRunning tests" in body  # a fence the log cannot close
    await bed.engine.signal(REPO, 1, StatusRequested())
    assert "auth: [redacted]" in status_comments(bed)[0]["body"]


async def _finish_with_a_pull_request(bed: Bed) -> Any:
    async def finish(session: Any, command: Any, context: Any) -> list:
        bed.fake.set_ref(REPO, f"heads/{session.branch}", "a" * 40)
        pull = await bed.gh.post("/repos/{owner}/{repo}/pulls", {"owner": OWNER, "repo": NAME}, data={
            "title": session.issue_title, "head": session.branch, "base": "main", "body": "Closes #1",
        })
        return [PullRequestOpened(pull["number"], pull["html_url"], pull["head"]["sha"])]

    return finish


async def test_a_simple_session_stays_within_the_write_budget(bed: Bed) -> None:
    bed.engine.finish = await _finish_with_a_pull_request(bed)
    session = await started(bed)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted("agent-1"))
    for minute_half in range(1, 20):
        bed.clock.advance(30)
        session = await bed.engine.feed(session, Progress(f"step {minute_half}"))
    bed.clock.advance(30)
    session = await bed.engine.feed(session, DoneReported("CSV export"), TurnExited(0, has_new_commits=True))
    assert session.state == State.COMPLETE
    writes = bed.writes()
    count = len(writes)
    print(f"\nREPORT write count of a simple label → done session (progress every 30 s for 10 min): {count}")
    assert count <= WRITE_BUDGET, [f"{c.method} {c.path}" for c in writes]
    assert "### ✅ Shepherd: Complete" in status_comments(bed)[0]["body"]
    _check_example("write_count.txt", f"{count}\n")


def _check_example(name: str, text: str) -> None:
    """Fail when docs/examples/<name> differs from what Shepherd writes now; never write it.

    Regenerating is a separate, explicit step: `SHEPHERD_REGENERATE_EXAMPLES=1 scripts/test
    tests/test_conversation.py`, then review the diff and commit it."""
    path = EXAMPLES / name
    old = path.read_text(encoding="utf-8") if path.exists() else None
    if old == text:
        return
    if os.environ.get("SHEPHERD_REGENERATE_EXAMPLES") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    diff = "\n".join(difflib.unified_diff((old or "").splitlines(), text.splitlines(), str(path), "now", lineterm=""))
    pytest.fail(f"{path} is out of date (set SHEPHERD_REGENERATE_EXAMPLES=1 to rewrite it):\n{diff}")


async def test_the_readme_examples_are_what_shepherd_writes(bed: Bed) -> None:
    session = await started(bed)
    bed.clock.advance(42)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted("agent-1"))
    bed.engine.set_context(session, changed_files=(
        ChangedFile("src/export.py", 48, 0), ChangedFile("tests/test_export.py", 31, 2), ChangedFile("README.md", 6, 1),
    ))
    bed.clock.advance(200)
    session = await bed.engine.feed(session, Progress("Exporter written; adding tests for quoting"))
    _check_example("status.md", status_comments(bed)[0]["body"])
    session = await bed.engine.feed(session, Asked(
        "Should the export quote every field, or only fields that need it?",
        ("Quote every field", "Quote only when needed (csv.QUOTE_MINIMAL)"),
        "Excel opens both; some importers in the issue's linked tools expect every field quoted.",
    ))
    [question] = [c for c in bed.fake.comments(REPO, 1) if "<!-- shepherd:question " in c["body"]]
    _check_example("question.md", question["body"])
    answer = bed.fake.add_comment(REPO, 1, "2", user="bob")
    await bed.deliver("issue_comment", payloads.issue_comment_created(bed.fake, REPO, 1, answer))
    [answered] = [c for c in bed.fake.comments(REPO, 1) if "<!-- shepherd:question " in c["body"]]
    _check_example("question_answered.md", answered["body"])


def test_an_out_of_date_example_fails_and_is_left_as_it_was(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "EXAMPLES", tmp_path)
    monkeypatch.delenv("SHEPHERD_REGENERATE_EXAMPLES", raising=False)
    (tmp_path / "status.md").write_text("committed\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="out of date"):
        _check_example("status.md", "what Shepherd writes now\n")
    assert (tmp_path / "status.md").read_text(encoding="utf-8") == "committed\n"
    monkeypatch.setenv("SHEPHERD_REGENERATE_EXAMPLES", "1")
    _check_example("status.md", "what Shepherd writes now\n")
    assert (tmp_path / "status.md").read_text(encoding="utf-8") == "what Shepherd writes now\n"


async def test_a_marker_in_another_bots_comment_is_not_adopted(bed: Bed) -> None:
    """Only Shepherd's own bot login is trusted: another App's comment with the same marker is left alone."""
    forged = bed.fake.add_comment(REPO, 1, "<!-- shepherd:status session=octo-org/widgets#1/1 -->\nmine",
                                  user="other-app[bot]")
    await started(bed)
    [status] = status_comments(bed)
    assert status["id"] != forged["id"]
    assert [c["body"] for c in bed.fake.comments(REPO, 1) if c["id"] == forged["id"]] == [forged["body"]]
