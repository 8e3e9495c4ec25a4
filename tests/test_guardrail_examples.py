"""The guardrails' comments as a maintainer sees them (SPEC §8), written by the real Publisher to the fake
GitHub and compared with docs/examples (the README shows those files; tests/test_readme.py checks it)."""

from __future__ import annotations

import json

from bot.agent.watchdog import TurnWatchdog
from bot.core.bakeoff import AttemptFacts, comparison_table, judge
from bot.core.loops import LoopLimits
from bot.core.session import (
    BudgetRaised, DoneReported, PullRequestDeferred, SlotGranted, SpendReported, TurnExited, TurnStarted, WorkPushed,
    WorkspaceReady,
)
from tests.conversation_support import REPO, Bed, bed  # noqa: F401 - fixture
from tests.test_conversation import _check_example, started, status_comments


async def test_the_status_comment_of_a_session_stopped_at_its_budget(bed: Bed) -> None:
    session = await started(bed)
    bed.clock.advance(42)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted("agent-1"),
                                    BudgetRaised("alice", 2.0))
    bed.clock.advance(600)
    session = await bed.engine.feed(session, SpendReported(1, 2.04), TurnExited(-9, has_new_commits=True),
                                    WorkPushed("3f9c2e1"))
    body = status_comments(bed)[0]["body"]
    assert "Spend: $2.04 of $2.00" in body and "`/agent budget 4.00`" in body
    assert any(label["name"] == "agent:needs-human" for label in bed.fake.issue(REPO, 1)["labels"])
    _check_example("budget_status.md", body)


async def test_the_question_of_an_agent_stopped_for_repeating_a_failing_command(bed: Bed, tmp_path) -> None:
    session = await started(bed)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted("agent-1"))
    log = tmp_path / "turn-1.log"
    events = []
    for n in range(3):
        events.append({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": f"t{n}", "name": "Bash", "input": {"command": "npm test -- export.test.js"}}]}})
        events.append({"type": "user", "message": {"content": [{
            "type": "tool_result", "tool_use_id": f"t{n}", "is_error": True,
            "content": "Exit code 1\nFAIL test/export.test.js\n  ● quotes fields\n    Cannot find module 'csv-stringify'",
        }]}})
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    watchdog = TurnWatchdog(adapter="claude", turn=1, log_path=log, limits=LoopLimits(), file_states=None)
    [loop] = await watchdog.check()
    await bed.engine.feed(session, loop)
    [question] = [c for c in bed.fake.comments(REPO, 1) if "<!-- shepherd:question " in c["body"]]
    assert "Cannot find module 'csv-stringify'" in question["body"] and "@alice" in question["body"]
    _check_example("loop_question.md", question["body"])


async def test_the_status_comment_of_a_finished_session_whose_pull_request_waits_for_a_free_place(bed: Bed) -> None:
    session = await started(bed)
    bed.clock.advance(42)
    session = await bed.engine.feed(session, WorkspaceReady(), SlotGranted(), TurnStarted("agent-1"),
                                    DoneReported("CSV export added, with tests for quoting"))
    bed.clock.advance(300)
    session = await bed.engine.feed(session, TurnExited(0, has_new_commits=True))
    policy = bed.engine.contexts[session.id].policy
    bed.engine.set_context(session, queue_position=2, policy=policy.model_copy(update={"max_open_prs": 1}))
    bed.clock.advance(20)
    session = await bed.engine.feed(session, PullRequestDeferred(1))
    body = status_comments(bed)[-1]["body"]
    assert len(status_comments(bed)) == 1
    assert "its pull request waits for a free place" in body and "| Queue | 2nd in line |" in body
    assert "`max_open_prs`" in body
    assert bed.fake.pulls(REPO) == [] and "max_open_prs: 1" in body
    _check_example("pull_cap_status.md", body)


def test_the_comparison_a_bakeoff_puts_in_its_pull_request() -> None:
    claude = AttemptFacts(engine="claude", branch="agent/issue-1-add-csv-export-claude", test_command="pytest -q",
                          test_exit_code=0, files_changed=3, lines_added=85, lines_removed=3, cost_usd=1.42,
                          seconds=754)
    codex = AttemptFacts(engine="codex", branch="agent/issue-1-add-csv-export-codex", test_command="pytest -q",
                         test_exit_code=1, files_changed=2, lines_added=40, lines_removed=1, cost_usd=0.61,
                         seconds=512)
    verdict = judge(claude, codex)
    assert verdict.winner is claude  # the one whose tests pass, though it is bigger, slower and dearer
    table = comparison_table(verdict, "https://github.com/octo-org/widgets/tree/agent/issue-1-add-csv-export-codex")
    assert "agent/issue-1-add-csv-export-codex" in table
    _check_example("bakeoff_table.md", table)
