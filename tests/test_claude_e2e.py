"""The real Claude Code CLI (pinned 2.1.197) through the claude adapter, the process supervisor and the
agent-only tool, against the scripted model server: ask, resume with the reply, done."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bot.agent import channel
from bot.agent.environment import build_agent_env, write_reply_file
from bot.agent.adapters import make_adapter
from bot.agent.processes import log_tail, spawn_turn, wait_turn
from tests.fakes.model import bash, model_server, text, write  # noqa: F401 - fixture
from tests.tool_source import tool_constants

CLAUDE_BIN = Path(__file__).resolve().parent / "vendor" / "node_modules" / ".bin" / "claude"
CLAUDE_VERSION = "2.1.197"
MARKER = "SHEPHERD-E2E-PORT"
SECRET = "whsec-do-not-leak-4242"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not CLAUDE_BIN.exists(), reason="Claude Code is not installed in tests/vendor"),
]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    worktree = tmp_path / "repo"
    worktree.mkdir()
    _git(worktree, "init", "-q", "-b", "main")
    (worktree / "README.md").write_text("demo\n")
    _git(worktree, "add", "README.md")
    _git(worktree, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init")
    return worktree


def _turn_env(tmp_path: Path, session: Path, repo: Path, url: str, *, turn: int, reply: str | None) -> dict:
    home = tmp_path / "home"
    scratch = tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    parent = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(scratch),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "CLAUDE_CODE_TMPDIR": str(scratch),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "dummy",
        # We run as root: Claude Code refuses bypassPermissions there unless IS_SANDBOX is passed.
        "IS_SANDBOX": "1",
        "GITHUB_WEBHOOK_SECRET": SECRET,
    }
    reply_file = session / f"reply-{turn}.txt"
    if reply is not None:
        write_reply_file(reply_file, reply)
    return build_agent_env(
        parent,
        extra_names=["IS_SANDBOX", "TMPDIR"],
        session_dir=session,
        status_file=session / "status.json",
        repo="octo/demo",
        issue=7,
        branch="agent/issue-7-port",
        worktree=repo,
        turn=turn,
        prompt_file=session / "prompt.md",
        port=18080,
        reply=reply,
        reply_file=reply_file if reply is not None else None,
        bot_name="shepherd-test[bot]",
        bot_email="1+shepherd-test[bot]@users.noreply.github.com",
        tool_bin_dir=session / "bin",
    )


async def _run(argv, *, repo: Path, env: dict, session: Path, turn: int):
    reports = channel.reports_path(session)

    def heartbeat() -> float | None:
        return reports.stat().st_mtime if reports.exists() else None

    log_path = session / f"turn-{turn}.log"
    handle = spawn_turn(argv, cwd=repo, env=env, log_path=log_path, exit_path=session / f"turn-{turn}.exit")
    outcome = await wait_turn(handle, max_runtime_s=90, idle_timeout_s=60, heartbeat=heartbeat)
    return outcome, log_path.read_text()


def _flatten(messages: list) -> str:
    return json.dumps(messages)


async def test_ask_then_resume_with_reply_then_done(tmp_path: Path, repo: Path, model_server) -> None:
    version = subprocess.run([CLAUDE_BIN, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith(CLAUDE_VERSION), version
    session = tmp_path / "session"
    session.mkdir()
    channel.install_agent_tool(session / "bin")
    channel.write_status(session / "status.json", {"status": "working", "issueNumber": 7})
    model_server.add_scenario(
        MARKER,
        [
            [  # turn 1: write a file, ask, end the turn
                [text("Writing the server file."), write("{cwd}/server.txt", "listen\n")],
                [bash('shepherd ask "Which port?" --option 8080 --option 9090')],
                [text("I asked which port; ending my turn.")],
            ],
            [  # turn 2, answering the reply: write the port, report done
                [write("{cwd}/port.txt", "9090\n")],
                [bash('shepherd done "Server listens on 9090"')],
                [text("All done.")],
            ],
        ],
        cwd=str(repo),
    )
    adapter = make_adapter("claude", claude_bin=str(CLAUDE_BIN))
    prompt = f"{MARKER}: add a server and ask the humans which port it should listen on."
    (session / "prompt.md").write_text(prompt)

    env = _turn_env(tmp_path, session, repo, model_server.url, turn=1, reply=None)
    outcome, output = await _run(adapter.first_turn(prompt, session / "prompt.md"), repo=repo, env=env, session=session, turn=1)
    assert (outcome.reason, outcome.exit_code) == ("exited", 0), log_tail(session / "turn-1.log")
    first = adapter.parse_output(output)
    assert first.session_id and not first.is_error, output
    assert first.num_turns == 3
    assert (repo / "server.txt").read_text() == "listen\n"
    [ask] = channel.read_reports(session, 0)
    assert (ask["kind"], ask["question"], ask["options"], ask["turn"]) == ("ask", "Which port?", ["8080", "9090"], 1)
    turn1_requests = model_server.main_requests(MARKER)
    assert [(r.exchange, r.step) for r in turn1_requests] == [(0, 0), (0, 1), (0, 2)]
    # The agent saw the tool's confirmation telling it to end its turn.
    assert tool_constants()["CONFIRM_ASK"] in _flatten(turn1_requests[-1].body["messages"])

    env = _turn_env(tmp_path, session, repo, model_server.url, turn=2, reply="9090")
    argv = adapter.resume_turn(first.session_id, "9090")
    assert argv[argv.index("--resume") + 1] == first.session_id
    outcome, output = await _run(argv, repo=repo, env=env, session=session, turn=2)
    assert (outcome.reason, outcome.exit_code) == ("exited", 0), log_tail(session / "turn-2.log")
    second = adapter.parse_output(output)
    assert second.session_id == first.session_id
    assert not second.is_error
    assert (repo / "port.txt").read_text() == "9090\n"
    [done] = channel.read_reports(session, ask["seq"])
    assert (done["kind"], done["summary"], done["turn"]) == ("done", "Server listens on 9090", 2)

    turn2_requests = model_server.main_requests(MARKER)[len(turn1_requests) :]
    assert [(r.exchange, r.step) for r in turn2_requests] == [(1, 0), (1, 1), (1, 2)]
    resumed = turn2_requests[0].body["messages"]
    history = _flatten(resumed)
    # The resumed conversation carries turn 1 (prompt, the Write, the ask) and then the reply.
    assert MARKER in history
    assert "server.txt" in history and "Which port?" in history
    last_user = [m for m in resumed if m["role"] == "user"][-1]
    assert "9090" in _flatten(last_user["content"])
    assert turn2_requests[0].headers.get("X-Claude-Code-Session-Id") == first.session_id
    # Shepherd's webhook secret from the parent environment never reached the model.
    assert all(SECRET not in json.dumps(r.body) for r in model_server.requests)
