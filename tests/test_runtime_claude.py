"""The real Claude Code CLI through the engine: write a file, `shepherd ask`, resume under the same
agent session with the reply, `shepherd done`, pushed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.agent.egress import read_stats
from bot.core.session import ReplyReceived, State
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.model import model_server  # noqa: F401 - fixture
from tests.runtime_support import (
    add_go_label, ASK_THEN_FINISH, CLAUDE_BIN, FAST_POLICY, REPO, build_claude_harness, issue_ref, prepare_repo, wait_for,
)

MARKER = "SHEPHERD-ENGINE-E2E"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CLAUDE_BIN.exists(), reason="Claude Code is not installed in tests/vendor"),
]


async def test_claude_asks_is_resumed_with_the_reply_and_finishes(fake_github, git_remote, model_server, tmp_path):
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY.replace("1\n", "2\n") + "agent: claude\n")
    fake_github.add_issue(REPO, title="Add a server", body=f"{MARKER}: add a server, ask which port.")
    harness = await build_claude_harness(fake_github, tmp_path, model_server.url)
    try:
        await harness.engine.start()
        worktree = harness.workspaces.worktree_path(REPO, "agent/issue-1-add-a-server")
        model_server.add_scenario(MARKER, ASK_THEN_FINISH, cwd=str(worktree))
        session = await add_go_label(harness, issue_ref(fake_github, 1))
        stuck = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.STUCK, State.FAILED)
            and not s.running_turn and s, timeout=120,
        )
        assert stuck.state == State.STUCK and stuck.question.text == "Which port?", stuck.failure_reason
        first_id = stuck.agent_session_id
        assert first_id
        await harness.engine.signal(REPO, 1, ReplyReceived(77, "alice", "9090",
                                                           datetime.now(timezone.utc) + timedelta(seconds=1)))
        final = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.COMPLETE, State.FAILED) and s,
            timeout=120,
        )
        assert final.state == State.COMPLETE, final.failure_reason
        assert final.agent_session_id == first_id  # resumed, not restarted
        log2 = (harness.engine.session_dir(session.id) / "turn-2.log").read_text()
        assert first_id in log2
        assert git_remote.show(REPO, f"refs/heads/{session.branch}", "server.txt") == "listen\n"
        assert git_remote.show(REPO, f"refs/heads/{session.branch}", "port.txt") == "9090"
        # The box has no network: the model was reached only through Shepherd's egress proxy.
        stats = read_stats(harness.engine.session_dir(session.id) / "channel" / "egress.json")
        assert stats["allowed"] >= 1 and stats["refused"] == 0
    finally:
        await harness.close()
