"""The trigger label in every earlier state of SPEC §1.1, refusals, bots, out-of-order deliveries, and
cancelling by label removal or by closing the issue (also while stuck)."""

from __future__ import annotations

from typing import Any

from bot.core.session import (
    Asked,
    Detail,
    PullRequestClosed,
    PullRequestOpened,
    SlotGranted,
    State,
    TurnExited,
    TurnStarted,
    WorkspaceFailed,
    WorkspaceReady,
)
from tests.conversation_support import REPO, Bed, bed  # noqa: F401 - fixture
from tests.fakes import payloads

pytest_plugins = ["tests.fakes.plugin"]

PR_URL = "https://github.com/octo-org/widgets/pull/7"


async def label(bed: Bed, name: str = "agent:go", sender: str = "alice") -> Any:
    await bed.deliver("issues", payloads.issue_labeled(bed.fake, REPO, 1, name, sender=sender))
    return bed.engine.last_session(REPO, 1)


def statuses(bed: Bed) -> list[str]:
    return [b for b in bed.bot_bodies() if "shepherd:status" in b]


async def running(bed: Bed) -> Any:
    session = await label(bed)
    return await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted())


async def complete(bed: Bed) -> Any:
    session = await running(bed)

    async def finish(session: Any, command: Any, context: Any) -> list:
        return [PullRequestOpened(7, PR_URL, "abc")]

    bed.engine.finish = finish
    return await bed.engine.feed(session, TurnExited(0, has_new_commits=True))


async def test_a_label_starts_a_session_with_eyes_and_one_status_comment(bed: Bed) -> None:
    session = await label(bed)
    assert session.state == State.REGISTERED and session.trigger_actor == "alice"
    assert bed.fake.reactions(REPO, 1) == ["eyes"]
    [status] = statuses(bed)
    assert status.startswith(f"<!-- shepherd:status session={session.id} -->\n### 🛠️ Shepherd: Preparing")


async def test_the_plan_label_starts_a_plan_first_session(bed: Bed) -> None:
    session = await label(bed, "agent:plan")
    assert str(session.mode) == "plan"
    assert "| Mode | plan first," in statuses(bed)[0]


async def test_a_label_on_a_live_session_does_nothing(bed: Bed) -> None:
    first = await running(bed)
    writes = len(bed.writes())
    await bed.deliver("issues", payloads.issue_labeled(bed.fake, REPO, 1, "agent:go", sender="bob"))
    assert bed.engine.last_session(REPO, 1) == first
    assert len(bed.writes()) == writes


async def test_a_label_after_cancel_continues_on_the_kept_branch(bed: Bed) -> None:
    first = await running(bed)
    await bed.deliver("issues", payloads.issue_unlabeled(bed.fake, REPO, 1, "agent:go"))
    assert bed.engine.last_session(REPO, 1).state == State.CANCELLED
    second = await label(bed)
    assert second.id != first.id and second.attempt == 2
    assert second.from_kept_branch and second.branch == first.branch
    # One status comment per issue (SPEC §1.5): the new session takes over the cancelled one's comment.
    [status] = statuses(bed)
    assert f"session={second.id}" in status and "### ⛔ Shepherd: Cancelled" not in status


async def test_a_label_after_failure_continues_on_the_kept_branch(bed: Bed) -> None:
    first = await label(bed)
    first = await bed.engine.feed(first, WorkspaceFailed("disk full"))
    assert first.state == State.FAILED
    assert "**Why it failed:** Shepherd could not prepare the workspace: disk full" in statuses(bed)[0]
    second = await label(bed)
    assert second.attempt == 2 and second.from_kept_branch
    # One status comment per issue (SPEC §1.5): the retry takes over the Failed comment, and says so.
    [status] = statuses(bed)
    # Its "Earlier on this issue" line comes from the real engine: tests/test_e2e_issue.py checks it.
    assert f"session={second.id}" in status and "Shepherd: Failed" not in status


async def test_a_label_on_complete_with_an_open_pr_points_to_the_pr(bed: Bed) -> None:
    done = await complete(bed)
    assert done.state == State.COMPLETE
    await label(bed, sender="bob")
    await label(bed, sender="bob")  # again: still one pointer
    assert bed.engine.last_session(REPO, 1).id == done.id
    assert sorted(bed.fake.reactions(REPO, 1)) == ["confused", "eyes"]
    pointers = [b for b in bed.bot_bodies() if "shepherd:pointer" in b]
    assert len(pointers) == 1
    assert f"pull request [#7]({PR_URL}), which is still open. Feedback belongs there" in pointers[0]


async def test_a_label_after_the_pr_was_merged_starts_fresh_on_a_new_branch(bed: Bed) -> None:
    done = await complete(bed)
    done = await bed.engine.feed(done, PullRequestClosed(merged=True))
    assert "The pull request was merged." in statuses(bed)[0]
    fresh = await label(bed)
    assert fresh.id != done.id and not fresh.from_kept_branch
    assert fresh.branch == done.branch + "-2"


async def test_an_unauthorised_label_gets_one_polite_refusal_an_hour(bed: Bed) -> None:
    assert await label(bed, sender="eve") is None
    assert await label(bed, sender="eve") is None
    [refusal] = bed.bot_bodies()
    assert "Hi @eve, thanks for the label. Only people with write access or more" in refusal
    assert bed.fake.reactions(REPO, 1) == []
    bed.clock.advance(3601)
    await label(bed, sender="eve")
    assert len(bed.bot_bodies()) == 2
    assert bed.engine.last_session(REPO, 1) is None


async def test_bots_never_trigger(bed: Bed) -> None:
    await label(bed, sender="renovate[bot]")
    assert bed.engine.last_session(REPO, 1) is None
    assert bed.writes() == []


async def test_a_label_already_removed_again_starts_nothing(bed: Bed) -> None:
    payload = payloads.issue_labeled(bed.fake, REPO, 1, "agent:go")
    payloads.issue_unlabeled(bed.fake, REPO, 1, "agent:go")  # the later state, delivered first
    await bed.deliver("issues", payload)
    assert bed.engine.last_session(REPO, 1) is None
    assert bed.writes() == []


async def test_other_labels_are_ignored(bed: Bed) -> None:
    await label(bed, "bug")
    assert bed.engine.last_session(REPO, 1) is None
    assert bed.writes() == []


async def test_the_repository_policy_names_the_labels(bed: Bed) -> None:
    bed.fake.set_file(REPO, ".github/shepherd.yml", "labels:\n  go: shepherd-go\n")
    assert await label(bed, "agent:go") is None
    session = await label(bed, "shepherd-go")
    assert session is not None


async def test_policy_problems_are_reported_once_per_session(bed: Bed) -> None:
    from bot.core.policy import Problem
    session = await label(bed)
    bed.engine.set_context(session, policy_problems=(Problem("max_turns", "must be a whole number"),))
    await bed.engine.feed(session, WorkspaceReady(), SlotGranted())
    problems = [b for b in bed.bot_bodies() if "shepherd:policy" in b]
    assert len(problems) == 1
    assert "- `max_turns` must be a whole number" in problems[0]


async def test_removing_the_label_while_stuck_cancels_and_closes_the_question(bed: Bed) -> None:
    session = await running(bed)
    await bed.engine.feed(session, Asked("Which format?", ("CSV", "JSON")))
    assert "agent:needs-input" in bed.fake.labels(REPO, 1)
    await bed.deliver("issues", payloads.issue_unlabeled(bed.fake, REPO, 1, "agent:go"))
    session = bed.engine.last_session(REPO, 1)
    assert session.state == State.CANCELLED and session.detail == Detail.LABEL_REMOVED
    assert "agent:needs-input" not in bed.fake.labels(REPO, 1)
    [question] = [b for b in bed.bot_bodies() if "<!-- shepherd:question " in b]
    assert "### ➖ Question closed\n\nThe session ended before this question was answered." in question
    status = statuses(bed)[0]
    assert "### ⛔ Shepherd: Cancelled" in status and "The trigger label was removed." in status


async def test_closing_the_issue_cancels(bed: Bed) -> None:
    await running(bed)
    await bed.deliver("issues", payloads.issue_closed(bed.fake, REPO, 1))
    session = bed.engine.last_session(REPO, 1)
    assert session.state == State.CANCELLED and session.detail == Detail.ISSUE_CLOSED
    assert "The issue was closed." in statuses(bed)[0]


async def test_a_close_delivered_after_a_reopen_cancels_nothing(bed: Bed) -> None:
    await running(bed)
    payload = payloads.issue_closed(bed.fake, REPO, 1)
    payloads.issue_reopened(bed.fake, REPO, 1)
    await bed.deliver("issues", payload)
    assert bed.engine.last_session(REPO, 1).state == State.WORKING
