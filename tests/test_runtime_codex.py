"""The real Codex CLI through the engine: write a file, `shepherd ask`, resume the same Codex thread
with the reply, `shepherd done`, pushed.

Codex talks to the scripted model server's Responses API through a custom model provider in
``$CODEX_HOME/config.toml`` (agent_cli.md §3.1): no retries, so a script mistake fails at once, and
analytics, plugins and update checks off, so nothing but loopback is contacted.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from bot.agent.egress import read_stats
from bot.core.session import ReplyReceived, State
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.model import ModelServer, model_server  # noqa: F401 - fixture
from tests.runtime_support import (
    add_go_label, ASK_THEN_FINISH, CODEX_BIN, FAST_POLICY, REPO, build_codex_harness, issue_ref, prepare_repo, wait_for,
)

MARKER = "SHEPHERD-CODEX-E2E"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CODEX_BIN.exists(), reason="the Codex CLI is not installed in tests/vendor"),
]



def thread_started(log: str) -> list[str]:
    """The thread ids of the ``thread.started`` events in a turn's log."""
    ids = []
    for line in log.splitlines():
        if line.startswith("{") and (event := json.loads(line)).get("type") == "thread.started":
            ids.append(event["thread_id"])
    return ids


def history_calls(body: dict) -> list[str]:
    """What the tool calls in a Responses request's history did: patches and commands, in order."""
    calls = []
    for item in body["input"]:
        if item.get("type") == "custom_tool_call":
            calls.append(item["input"])
        elif item.get("type") == "function_call":
            calls.append(json.loads(item["arguments"])["cmd"])
    return calls


def user_texts(body: dict) -> list[str]:
    return [
        part.get("text", "")
        for item in body["input"]
        if item.get("type") == "message" and item.get("role") == "user"
        for part in item["content"]
    ]


async def test_codex_asks_is_resumed_with_the_reply_and_finishes(
    fake_github, git_remote, model_server: ModelServer, tmp_path
):
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY.replace("1\n", "2\n") + "agent: codex\n")
    fake_github.add_issue(REPO, title="Add a server", body=f"{MARKER}: add a server, ask which port.")
    harness = await build_codex_harness(fake_github, tmp_path, model_server.url)
    try:
        await harness.engine.start()
        worktree = harness.workspaces.worktree_path(REPO, "agent/issue-1-add-a-server")
        model_server.add_scenario(MARKER, ASK_THEN_FINISH, cwd=str(worktree))
        session = await add_go_label(harness, issue_ref(fake_github, 1))
        # Any settled state ends the wait, so a turn that never asked fails here at once.
        stuck = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.STUCK, State.COMPLETE, State.FAILED)
            and not s.running_turn and s, timeout=120,
        )
        session_dir = harness.engine.session_dir(session.id)
        assert stuck.state == State.STUCK, (session_dir / "turn-1.log").read_text()
        assert stuck.question.text == "Which port?" and stuck.question.options == ("8080", "9090")
        assert (worktree / "server.txt").read_text() == "listen\n"  # the apply_patch really ran
        thread_id = stuck.agent_session_id
        assert thread_started((session_dir / "turn-1.log").read_text()) == [thread_id]

        await harness.engine.signal(REPO, 1, ReplyReceived(77, "alice", "9090",
                                                           datetime.now(timezone.utc) + timedelta(seconds=1)))
        final = await wait_for(
            lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.COMPLETE, State.FAILED) and s,
            timeout=120,
        )
        assert final.state == State.COMPLETE, (session_dir / "turn-2.log").read_text()
        assert final.agent_session_id == thread_id  # resumed, not restarted
        assert thread_started((session_dir / "turn-2.log").read_text()) == [thread_id]

        requests = model_server.main_requests(MARKER)
        assert [(r.exchange, r.step) for r in requests] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        assert {r.headers.get("session-id") for r in requests} == {thread_id}
        assert {r.headers.get("thread-id") for r in requests} == {thread_id}
        first_turn, resumed = requests[2].body, requests[3].body
        # The resumed thread carries the whole first turn, then the reply as a new user message.
        assert first_turn["input"] == resumed["input"][: len(first_turn["input"])]
        assert history_calls(resumed)[:2] == [
            f"*** Begin Patch\n*** Add File: {worktree}/server.txt\n+listen\n*** End Patch\n",
            'shepherd ask "Which port?" --option 8080 --option 9090',
        ]
        assert "9090" in user_texts(resumed)[-1] and MARKER not in user_texts(resumed)[-1]

        branch = f"refs/heads/{session.branch}"
        assert git_remote.show(REPO, branch, "server.txt") == "listen\n"
        assert git_remote.show(REPO, branch, "port.txt") == "9090"
        assert "Port" in git_remote.messages(REPO, branch)
        # The box has no network: the model was reached only through Shepherd's egress proxy.
        stats = read_stats(session_dir / "channel" / "egress.json")
        assert stats["allowed"] >= 1 and stats["refused"] == 0
    finally:
        await harness.close()
