"""Every slash command on the issue and on its PR, acknowledged 👍 when it did something and 😕 when it
did not apply; help and unknown commands answered; unauthorised commands ignored without any write."""

from __future__ import annotations

from typing import Any

from bot.core.session import (
    Asked,
    Detail,
    PlanSubmitted,
    PullRequestOpened,
    SlotGranted,
    State,
    TurnExited,
    TurnStarted,
    WorkspaceReady,
)
from tests.conversation_support import REPO, Bed, bed  # noqa: F401 - fixture
from tests.fakes import payloads

pytest_plugins = ["tests.fakes.plugin"]


async def start(bed: Bed, label: str = "agent:go") -> Any:
    await bed.deliver("issues", payloads.issue_labeled(bed.fake, REPO, 1, label))
    session = bed.engine.last_session(REPO, 1)
    return await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted())


async def command(bed: Bed, body: str, user: str = "bob", number: int = 1) -> dict:
    created = bed.fake.add_comment(REPO, number, body, user=user)
    await bed.deliver("issue_comment", payloads.issue_comment_created(bed.fake, REPO, number, created))
    return created


def reactions(bed: Bed, created: dict, number: int = 1) -> list[str]:
    return bed.fake.reactions(REPO, number, comment_id=created["id"])


async def test_stop_cancels_and_a_second_stop_does_not_apply(bed: Bed) -> None:
    await start(bed)
    first = await command(bed, "/agent stop")
    session = bed.engine.last_session(REPO, 1)
    assert session.state == State.CANCELLED and session.detail == Detail.STOP_COMMAND
    assert reactions(bed, first) == ["+1"]
    second = await command(bed, "/AGENT Stop")
    assert reactions(bed, second) == ["confused"]


async def test_stop_while_stuck_closes_the_question_and_the_label(bed: Bed) -> None:
    session = await start(bed)
    await bed.engine.feed(session, Asked("Which format?"))
    stop = await command(bed, "Never mind.\n/agent stop")
    assert reactions(bed, stop) == ["+1"]
    assert "agent:needs-input" not in bed.fake.labels(REPO, 1)
    [question] = [b for b in bed.bot_bodies() if "<!-- shepherd:question " in b]
    assert "Question closed" in question
    assert bed.engine.last_session(REPO, 1).forwarded_comment_ids == ()  # a command is never an answer


async def test_retry_starts_a_new_session_from_the_kept_branch(bed: Bed) -> None:
    first = await start(bed)
    not_yet = await command(bed, "/agent retry")
    assert reactions(bed, not_yet) == ["confused"]  # a live session: nothing to retry
    await command(bed, "/agent stop")
    retry = await command(bed, "/agent retry")
    second = bed.engine.last_session(REPO, 1)
    assert second.id != first.id and second.from_kept_branch and second.trigger_actor == "bob"
    assert reactions(bed, retry) == ["+1"]


async def test_status_on_a_live_session_is_acknowledged_and_keeps_one_status_comment(bed: Bed) -> None:
    await start(bed)
    before = [b for b in bed.bot_bodies() if "shepherd:status" in b]
    status = await command(bed, "/agent status")
    assert reactions(bed, status) == ["+1"]
    # The status comment is brought up to date in place: still one, never a second one.
    after = [b for b in bed.bot_bodies() if "shepherd:status" in b]
    assert len(before) == 1 and len(after) == 1


async def test_status_without_a_session_does_not_apply(bed: Bed) -> None:
    status = await command(bed, "/agent status")
    assert reactions(bed, status) == ["confused"]


async def test_approve_and_revise_a_plan(bed: Bed) -> None:
    session = await start(bed, "agent:plan")
    assert session.state == State.PLANNING
    session = await bed.engine.feed(session, PlanSubmitted("1. Add an exporter\n2. Test it"))
    [plan] = [b for b in bed.bot_bodies() if "shepherd:plan" in b]
    assert "### 📝 The agent's plan\n\n@alice, the agent proposes this plan" in plan
    revise = await command(bed, "/agent revise Use the csv module\nand keep it small")
    assert reactions(bed, revise) == ["+1"]
    session = bed.engine.last_session(REPO, 1)
    assert session.pending_turn.reply == "Use the csv module\nand keep it small"
    session = await bed.engine.feed(session, TurnExited(0), SlotGranted(), TurnStarted(),
                                    PlanSubmitted("1. Use csv.writer"))
    plans = [b for b in bed.bot_bodies() if "shepherd:plan" in b]
    assert len(plans) == 1 and "(revision 1)" in plans[0] and "csv.writer" in plans[0]
    approve = await command(bed, "/agent approve")
    assert reactions(bed, approve) == ["+1"]
    assert bed.engine.last_session(REPO, 1).plan_approved
    again = await command(bed, "/agent approve")
    assert reactions(bed, again) == ["confused"]


async def test_help_and_unknown_commands_get_the_help(bed: Bed) -> None:
    asked = await command(bed, "/agent help")
    unknown = await command(bed, "/agent dance")
    helps = [b for b in bed.bot_bodies() if "shepherd:help" in b]
    assert len(helps) == 2
    assert "| `/agent retry` | start a new session that continues from the kept branch |" in helps[0]
    assert helps[1].splitlines()[1] == "Shepherd does not know `/agent dance`. These are the commands:"
    assert reactions(bed, asked) == ["+1"]
    assert reactions(bed, unknown) == ["confused"]


async def test_unauthorised_commands_are_ignored_without_a_write(bed: Bed) -> None:
    await start(bed)
    writes = len(bed.writes())
    for body in ("/agent stop", "/agent help", "/agent dance"):
        await command(bed, body, user="eve")
    await command(bed, "/agent stop", user="ci[bot]")
    assert len(bed.writes()) == writes + 0
    assert bed.engine.last_session(REPO, 1).state == State.WORKING


async def test_a_command_on_the_pr_reaches_the_session_of_its_branch(bed: Bed) -> None:
    session = await start(bed)
    pull = bed.fake.add_pull(REPO, head=session.branch, title="Add CSV export", user=bed.fake.bot_login)

    async def finish(session: Any, command: Any, context: Any) -> list:
        return [PullRequestOpened(pull["number"], pull["html_url"], "abc")]

    bed.engine.finish = finish
    await bed.engine.feed(session, TurnExited(0, has_new_commits=True))
    status = await command(bed, "/agent status", number=pull["number"])
    assert reactions(bed, status, number=pull["number"]) == ["+1"]
    stop = await command(bed, "/agent stop", number=pull["number"])
    assert reactions(bed, stop, number=pull["number"]) == ["confused"]  # complete: Shepherd never closes a PR
    assert bed.engine.last_session(REPO, 1).state == State.COMPLETE


async def test_a_replayed_command_runs_once(bed: Bed) -> None:
    await start(bed)
    stop = await command(bed, "/agent stop")
    payload = payloads.issue_comment_created(bed.fake, REPO, 1, bed.fake.comments(REPO, 1)[-1])
    await bed.deliver("issue_comment", payload, delivery_id="replayed")
    assert reactions(bed, stop) == ["+1"]


async def test_budget_raises_the_cap_only_for_authorised_people(bed: Bed) -> None:
    """`/agent budget <usd>` (SPEC §8): a write-access person raises the cap; anyone else changes nothing."""
    await start(bed)
    writes = len(bed.writes())
    await command(bed, "/agent budget 50", user="eve")
    assert len(bed.writes()) == writes and bed.engine.last_session(REPO, 1).limits.max_cost_usd is None
    raised = await command(bed, "/agent budget $5")
    assert bed.engine.last_session(REPO, 1).limits.max_cost_usd == 5.0
    assert reactions(bed, raised) == ["+1"]
    same = await command(bed, "/agent budget 5")
    assert reactions(bed, same) == ["confused"]  # already the cap: nothing to do
    wrong = await command(bed, "/agent budget lots")
    assert reactions(bed, wrong) == ["confused"]
    assert "Shepherd does not know `/agent budget lots`" in [b for b in bed.bot_bodies() if "shepherd:help" in b][-1]
