"""Cost budgets with the real Claude Code CLI against the scripted model (SPEC §8): `--max-budget-usd` is
passed, the CLI's reported cost is summed across turns, the session stops at the cap with its work pushed
and the status comment saying why, and `/agent budget 5` resumes the same agent session."""

from __future__ import annotations


import pytest

from bot.core.session import BudgetRaised, Detail, PostStatus, State
from bot.views.render import render_status
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.model import bash, model_server, text, write  # noqa: F401 - fixture
from tests.runtime_support import (
    add_go_label, CLAUDE_BIN, FAST_POLICY, REPO, build_claude_harness, issue_ref, prepare_repo, wait_for,
)

MARKER = "SHEPHERD-BUDGET-E2E"
# Claude Code 2.1.197 prices each scripted reply (10 input, 5 output tokens of its default model) at
# $0.000175, and checks the budget after each reply: a $0.0005 cap stops the turn after the third.
COST_PER_REPLY = 0.000175
CAP = 0.0005

SPEND_THEN_GO_ON = [
    [
        [text("Starting."), write("{cwd}/a.txt", "first part\n")],
        [bash("git add -A && git commit -qm 'First part'")],
        [write("{cwd}/b.txt", "never written: the budget ran out before this\n")],
        [text("unreachable")],
    ],
    [
        [write("{cwd}/c.txt", "second part\n")],
        [bash('shepherd done "Both parts"')],
        [text("All done.")],
    ],
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CLAUDE_BIN.exists(), reason="Claude Code is not installed in tests/vendor"),
]


def last_status(harness, session_id: str) -> str:
    """The status comment as the publisher would write it for the newest status post."""
    calls = [(c, ctx) for sid, c, ctx in harness.publisher.calls if sid == session_id and isinstance(c, PostStatus)]
    _, context = calls[-1]
    return render_status(harness.engine.last_session(REPO, 1), context)


async def test_claude_stops_at_the_cap_with_its_work_pushed_and_goes_on_after_a_raise(
    fake_github, git_remote, model_server, tmp_path
):
    policy = FAST_POLICY + f"agent: claude\nmax_cost_usd: {CAP}\n"
    prepare_repo(fake_github, git_remote, policy=policy)
    fake_github.add_issue(REPO, title="Two parts", body=f"{MARKER}: write both parts.")
    harness = await build_claude_harness(fake_github, tmp_path, model_server.url)
    try:
        await harness.engine.start()
        worktree = harness.workspaces.worktree_path(REPO, "agent/issue-1-two-parts")
        model_server.add_scenario(MARKER, SPEND_THEN_GO_ON, cwd=str(worktree))
        session = await add_go_label(harness, issue_ref(fake_github, 1))
        held = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.STUCK, State.FAILED, State.COMPLETE)
            and not s.running_turn and not s.finishing and s, timeout=120,
        )
        assert (held.state, held.detail) == (State.STUCK, Detail.NEEDS_HUMAN), held.failure_reason
        assert held.spent_usd == pytest.approx(3 * COST_PER_REPLY)
        # The CLI was given the cap and stopped itself there.
        log1 = (harness.engine.session_dir(session.id) / "turn-1.log").read_text()
        assert f"Reached maximum budget (${CAP})" in log1
        # The work so far is pushed; the step after the cap never ran; no pull request for unfinished work.
        branch = f"refs/heads/{session.branch}"
        assert git_remote.show(REPO, branch, "a.txt") == "first part\n"
        assert not (worktree / "b.txt").exists()
        assert held.pr_number is None
        status = last_status(harness, session.id)
        assert "Spend: $0.000525 of $0.0005" in status
        assert "budget (`max_cost_usd`)" in status and "/agent budget" in status
        first_id = held.agent_session_id

        await harness.engine.signal(REPO, 1, BudgetRaised("alice", 5.0))
        final = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.COMPLETE, State.FAILED)
            and not s.finishing and s, timeout=120,
        )
        assert final.state == State.COMPLETE, final.failure_reason
        assert final.agent_session_id == first_id  # resumed, not restarted
        assert final.spent_usd == pytest.approx(6 * COST_PER_REPLY)  # both turns, summed
        assert git_remote.show(REPO, branch, "c.txt") == "second part\n"
        assert "Spend: $0.00105 of $5.00" in last_status(harness, session.id)
    finally:
        await harness.close()
