"""Spend with the real Codex CLI (SPEC §8): its token usage priced by the operator's table, summed over
turns. Codex reports the resumed thread's usage from the thread's start, so a resumed turn must count
only what it added."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.core.session import ReplyReceived, State
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.model import ModelServer, model_server  # noqa: F401 - fixture
from tests.runtime_support import (
    add_go_label, ASK_THEN_FINISH, CODEX_BIN, FAST_POLICY, REPO, build_codex_harness, issue_ref, prepare_repo, wait_for,
)

MARKER = "SHEPHERD-CODEX-SPEND"
# The operator's price, per million tokens; the scripted model reports 10 input and
# 5 output tokens per reply, and each turn of ASK_THEN_FINISH takes three replies.
# Codex's events do not name the model, so its price is the table's `codex` entry.
PRICES = '{"codex": {"input": 1000, "output": 4000}}'
TURN_COST = (30 * 1000 + 15 * 4000) / 1_000_000

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CODEX_BIN.exists(), reason="the Codex CLI is not installed in tests/vendor"),
]


async def test_codex_spend_is_priced_and_summed_without_counting_a_resumed_thread_twice(
    fake_github, git_remote, model_server: ModelServer, tmp_path
):
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY.replace("1\n", "2\n") + "agent: codex\n")
    fake_github.add_issue(REPO, title="Add a server", body=f"{MARKER}: add a server, ask which port.")
    harness = await build_codex_harness(fake_github, tmp_path, model_server.url, SHEPHERD_MODEL_PRICES=PRICES)
    try:
        await harness.engine.start()
        worktree = harness.workspaces.worktree_path(REPO, "agent/issue-1-add-a-server")
        model_server.add_scenario(MARKER, ASK_THEN_FINISH, cwd=str(worktree))
        await add_go_label(harness, issue_ref(fake_github, 1))
        stuck = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.STUCK, State.COMPLETE, State.FAILED)
            and not s.running_turn and s, timeout=120,
        )
        assert stuck.state == State.STUCK, stuck.failure_reason
        assert stuck.spent_usd == pytest.approx(TURN_COST)
        await harness.engine.signal(REPO, 1, ReplyReceived(77, "alice", "9090",
                                                           datetime.now(timezone.utc) + timedelta(seconds=1)))
        final = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.COMPLETE, State.FAILED) and s,
            timeout=120,
        )
        assert final.state == State.COMPLETE, final.failure_reason
        assert final.spent_usd == pytest.approx(2 * TURN_COST)  # not 3x: the resumed thread's total counts once
    finally:
        await harness.close()
