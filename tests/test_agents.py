"""Agent adapters (argv and output parsing) and the agent's environment, seen from inside a real turn."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.agent import channel
from bot.agent.environment import (
    REPLY_LIMIT_BYTES,
    SECRET_NAMES,
    build_agent_env,
    refused_agent_env_names,
    truncate_reply,
    write_reply_file,
)
from bot.agent.adapters import (
    PROMPT_ARG_LIMIT_BYTES,
    AgentRunInfo,
    ClaudeAdapter,
    CodexAdapter,
    CommandAdapter,
    make_adapter,
)
from bot.agent.processes import kill_group, spawn_turn, wait_turn
from tests.fakes.model import bash, model_server, text, tool, write  # noqa: F401 - fixture

SECRETS = {
    "GITHUB_WEBHOOK_SECRET": "whsec-value-1111",
    "GITHUB_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----pem-value-2222",
    "GITHUB_PRIVATE_KEY_PATH": "/secret/key-path-3333.pem",
    "GITHUB_APP_ID": "app-id-4444",
    "SHEPHERD_DASHBOARD_TOKEN": "dashboard-token-5555",
    "GH_TOKEN": "ghp_" + "6" * 36,
    "GITHUB_TOKEN": "ghs_" + "7" * 36,
    "DEPLOY_TOKEN": "deploy-token-8888",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-9999",
}
ALLOWED = {
    "ANTHROPIC_API_KEY": "anthropic-key",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:1",
    "CLAUDE_CODE_OAUTH_TOKEN": "claude-oauth",  # the agent families may carry their own credentials
    "OPENAI_API_KEY": "openai-key",
    "CODEX_HOME": "/codex/home",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "MY_SETTING": "passed-through",
}
NOT_PASSED = {"UNLISTED_VARIABLE": "unlisted-value", "PYTHONPATH": "/elsewhere"}
# Shells add these on their own.
SHELL_NAMES = {"PWD", "SHLVL", "_", "OLDPWD"}


def test_refused_names() -> None:
    names = [
        "GITHUB_WEBHOOK_SECRET",
        "SHEPHERD_DASHBOARD_TOKEN",
        "GITHUB_ANYTHING",
        "GH_HOST",
        "SHEPHERD_REPLY",
        "NPM_TOKEN",
        "DB_PASSWORD",
        "bad-name",
        "IS_SANDBOX",
        "TMPDIR",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ]
    assert refused_agent_env_names(names) == names[:8]
    assert refused_agent_env_names(sorted(SECRET_NAMES)) == sorted(SECRET_NAMES)


def test_truncate_reply_cuts_utf8_safely() -> None:
    assert truncate_reply("short") == "short"
    long = "é" * REPLY_LIMIT_BYTES  # two bytes each
    cut = truncate_reply(long)
    assert len(cut.encode()) == REPLY_LIMIT_BYTES and set(cut) == {"é"}
    odd = "a" + "é" * REPLY_LIMIT_BYTES
    assert len(truncate_reply(odd).encode()) == REPLY_LIMIT_BYTES - 1


@pytest.fixture
def decoy_python(tmp_path: Path) -> Path:
    """A folder of `python`/`python3` that fail, as a repository's own virtualenv might shadow ours."""
    folder = tmp_path / "decoy"
    folder.mkdir()
    for name in ("python", "python3"):
        script = folder / name
        script.write_text("#!/bin/sh\necho decoy python >&2\nexit 99\n")
        script.chmod(0o755)
    return folder


async def test_command_agent_sees_only_the_allow_list(tmp_path: Path, decoy_python: Path) -> None:
    session = tmp_path / "session"
    worktree = tmp_path / "worktree"
    session.mkdir()
    worktree.mkdir()
    bin_dir = session / "bin"
    channel.install_agent_tool(bin_dir)
    reply = "9090 " + "x" * (REPLY_LIMIT_BYTES + 100)
    write_reply_file(session / "reply.txt", reply)
    parent = {
        "PATH": f"{decoy_python}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        **SECRETS,
        **ALLOWED,
        **NOT_PASSED,
    }
    env = build_agent_env(
        parent,
        extra_names=["MY_SETTING", "GITHUB_WEBHOOK_SECRET", "SHEPHERD_DASHBOARD_TOKEN", "DEPLOY_TOKEN"],
        session_dir=session,
        status_file=session / "status.json",
        repo="octo/demo",
        issue=12,
        branch="agent/issue-12-x",
        worktree=worktree,
        turn=2,
        prompt_file=session / "prompt.md",
        port=18081,
        reply=reply,
        reply_file=session / "reply.txt",
        bot_name="shepherd[bot]",
        bot_email="9+shepherd[bot]@users.noreply.github.com",
        tool_bin_dir=bin_dir,
    )
    adapter = make_adapter(
        "command",
        command=(
            'env -0 > "$SHEPHERD_SESSION_DIR/env.bin"; '
            'printf "%s\\n" "$0" "$@" > "$SHEPHERD_SESSION_DIR/argv.txt"; '
            'command -v shepherd > "$SHEPHERD_SESSION_DIR/which.txt"; '
            'shepherd progress "env dumped"'
        ),
    )
    command = adapter.resume_turn("ignored", reply)
    handle = spawn_turn(command, cwd=worktree, env=env, log_path=session / "turn.log", exit_path=session / "turn.exit")
    try:
        outcome = await wait_turn(handle, max_runtime_s=30, idle_timeout_s=30, heartbeat=lambda: None, poll=0.02)
    finally:
        kill_group(handle, 0)
    assert (outcome.reason, outcome.exit_code) == ("exited", 0), (session / "turn.log").read_text()

    dumped = (session / "env.bin").read_bytes()
    seen = dict(item.split("=", 1) for item in dumped.decode().split("\0") if item)
    for name, value in SECRETS.items():
        assert name not in seen
        assert value not in dumped.decode(), name
    for name, value in ALLOWED.items():
        assert seen[name] == value
    for name in NOT_PASSED:
        assert name not in seen
    expected = {
        "SHEPHERD_SESSION_DIR": str(session),
        "SHEPHERD_STATUS_FILE": str(session / "status.json"),
        "SHEPHERD_REPO": "octo/demo",
        "SHEPHERD_ISSUE": "12",
        "SHEPHERD_BRANCH": "agent/issue-12-x",
        "SHEPHERD_WORKTREE": str(worktree),
        "SHEPHERD_TURN": "2",
        "SHEPHERD_PROMPT_FILE": str(session / "prompt.md"),
        "SHEPHERD_REPLY_FILE": str(session / "reply.txt"),
        "PORT": "18081",
        "HOME": str(tmp_path / "home"),
        "PATH": f"{bin_dir}:{decoy_python}:/usr/bin:/bin",
        "GIT_AUTHOR_NAME": "shepherd[bot]",
        "GIT_COMMITTER_NAME": "shepherd[bot]",
        "GIT_AUTHOR_EMAIL": "9+shepherd[bot]@users.noreply.github.com",
        "GIT_COMMITTER_EMAIL": "9+shepherd[bot]@users.noreply.github.com",
    }
    for name, value in expected.items():
        assert seen[name] == value, name
    assert seen["SHEPHERD_REPLY"] == reply.encode()[:REPLY_LIMIT_BYTES].decode()
    assert (session / "reply.txt").read_text() == reply
    assert set(seen) - SHELL_NAMES == set(expected) | set(ALLOWED) | {"SHEPHERD_REPLY"}

    # The command ran through the shell; the secrets are not on its command line either.
    argv_text = (session / "argv.txt").read_text()
    assert argv_text == "/bin/sh\n"
    # `shepherd` is first on PATH and ran with Shepherd's interpreter despite the decoy pythons.
    assert (session / "which.txt").read_text().strip() == str(bin_dir / "shepherd")
    assert (bin_dir / "shepherd").read_text().splitlines()[0] == f"#!{sys.executable} -I"
    [report] = channel.read_reports(session, 0)
    assert (report["kind"], report["note"], report["turn"]) == ("progress", "env dumped", 2)
    assert "decoy python" not in (session / "turn.log").read_text()


def test_build_agent_env_first_turn_has_no_reply(tmp_path: Path) -> None:
    env = build_agent_env(
        {"PATH": "/usr/bin", "HOME": "/home/a"},
        extra_names=["ABSENT"],
        session_dir=tmp_path,
        status_file=tmp_path / "status.json",
        repo="o/r",
        issue=1,
        branch="agent/issue-1",
        worktree=tmp_path / "w",
        turn=1,
        prompt_file=tmp_path / "prompt.md",
        port=1,
        reply=None,
        reply_file=None,
        bot_name="b",
        bot_email="e",
        tool_bin_dir=tmp_path / "bin",
    )
    assert "SHEPHERD_REPLY" not in env and "SHEPHERD_REPLY_FILE" not in env and "ABSENT" not in env
    assert env["PATH"] == f"{tmp_path / 'bin'}:/usr/bin"


def test_claude_argv_first_and_resume() -> None:
    adapter = make_adapter("claude", claude_bin="/opt/claude")
    assert adapter.first_turn("Fix the bug", "/s/prompt.md") == [
        "/opt/claude", "-p", "--output-format", "stream-json", "--verbose",
        "--permission-mode", "bypassPermissions", "--", "Fix the bug",
    ]  # fmt: skip
    # A reply that starts with a dash stays an argument, not an option.
    assert adapter.resume_turn("sess-1", "- use 9090") == [
        "/opt/claude", "-p", "--resume", "sess-1", "--output-format", "stream-json", "--verbose",
        "--permission-mode", "bypassPermissions", "--", "- use 9090",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        adapter.resume_turn(None, "reply")


def test_claude_allowed_tools_replace_the_bypass() -> None:
    adapter = make_adapter("claude", allowed_tools=["Write", "Bash(git *)"])
    argv = adapter.first_turn("x", "/p")
    assert argv[argv.index("--allowedTools") + 1] == "Write,Bash(git *)"
    assert "--permission-mode" not in argv


def test_long_prompt_goes_through_the_prompt_file() -> None:
    adapter = ClaudeAdapter()
    prompt = "y" * (PROMPT_ARG_LIMIT_BYTES + 1)
    argv = adapter.first_turn(prompt, "/s/prompt.md")
    assert prompt not in argv
    assert "SHEPHERD_PROMPT_FILE" in argv[-1] and "/s/prompt.md" in argv[-1]
    assert "SHEPHERD_REPLY_FILE" in adapter.resume_turn("s", prompt)[-1]
    assert adapter.first_turn("y" * PROMPT_ARG_LIMIT_BYTES, "/p")[-1] == "y" * PROMPT_ARG_LIMIT_BYTES


CLAUDE_STREAM = [
    "some stderr warning",
    json.dumps({"type": "system", "subtype": "init", "session_id": "abc-123", "cwd": "/w", "tools": ["Bash"]}),
    json.dumps({"type": "assistant", "message": {"id": "m1", "content": [{"type": "text", "text": "hi"}]}, "session_id": "abc-123"}),
    json.dumps({"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t"}]}, "session_id": "abc-123"}),
    json.dumps({
        "type": "result", "subtype": "success", "is_error": False, "num_turns": 3, "result": "Done.",
        "session_id": "abc-123", "total_cost_usd": 0.0123,
    }),  # fmt: skip
]


def test_claude_parse_stream_json() -> None:
    info = ClaudeAdapter().parse_output("\n".join(CLAUDE_STREAM) + "\n")
    assert info == AgentRunInfo(session_id="abc-123", result_text="Done.", cost_usd=0.0123, num_turns=3, is_error=False)
    assert ClaudeAdapter().parse_output(iter(CLAUDE_STREAM)) == info


def test_claude_parse_error_and_killed_runs() -> None:
    error = CLAUDE_STREAM[:2] + [
        json.dumps({"type": "result", "subtype": "success", "is_error": True, "result": "API Error: 500", "session_id": "abc-123"})
    ]
    assert ClaudeAdapter().parse_output(error).is_error
    killed = ClaudeAdapter().parse_output(CLAUDE_STREAM[:3])
    assert (killed.session_id, killed.is_error, killed.result_text) == ("abc-123", True, None)
    assert ClaudeAdapter().parse_output("").is_error


def test_codex_argv_first_and_resume() -> None:
    # Login shells are off on both turns: a profile resetting PATH would hide the `shepherd` tool.
    adapter = make_adapter("codex", codex_bin="/opt/codex")
    common = ["--json", "--dangerously-bypass-approvals-and-sandbox", "-c", "allow_login_shell=false"]
    assert adapter.first_turn("Fix it", "/p") == ["/opt/codex", "exec", *common, "--", "Fix it"]
    assert adapter.resume_turn("th-9", "-n 2") == ["/opt/codex", "exec", "resume", *common, "--", "th-9", "-n 2"]


CODEX_STREAM = [
    'Reading additional input from stdin...',
    json.dumps({"type": "thread.started", "thread_id": "th-9"}),
    json.dumps({"type": "turn.started"}),
    json.dumps({"type": "item.completed", "item": {"id": "i0", "type": "error", "message": "Model metadata not found"}}),
    json.dumps({"type": "item.completed", "item": {"id": "i1", "type": "command_execution", "command": "ls", "exit_code": 0}}),
    json.dumps({"type": "item.completed", "item": {"id": "i2", "type": "agent_message", "text": "All set."}}),
    json.dumps({"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 3}}),
]


def test_codex_parse_json_events() -> None:
    info = CodexAdapter().parse_output(CODEX_STREAM)
    assert info == AgentRunInfo(session_id="th-9", result_text="All set.", cost_usd=None, num_turns=1, is_error=False)
    failed = CodexAdapter().parse_output(CODEX_STREAM[:3] + [json.dumps({"type": "turn.failed", "error": {"message": "500"}})])
    assert (failed.session_id, failed.is_error) == ("th-9", True)


def test_command_adapter_and_factory_errors() -> None:
    adapter = make_adapter("command", command="./agent.sh")
    assert isinstance(adapter, CommandAdapter)
    assert adapter.first_turn("p", "/p") == adapter.resume_turn(None, "r") == "./agent.sh"
    assert adapter.parse_output("anything") == AgentRunInfo()
    with pytest.raises(ValueError, match="SHEPHERD_AGENT_COMMAND"):
        make_adapter("command")
    with pytest.raises(ValueError, match="Unknown agent"):
        make_adapter("aider")


def _post(url: str, body: dict, path: str = "/v1/messages?beta=true") -> tuple[int, str]:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_model_server_scripts_by_marker_exchange_and_step(model_server) -> None:
    model_server.add_scenario("MARK", [[[write("{cwd}/a.txt", "A")]], [[text("second exchange")]]], cwd="/w")
    tools = [{"name": "Write"}]
    first = {"role": "user", "content": [{"type": "text", "text": "<system-reminder/>"}, {"type": "text", "text": "MARK go"}]}
    status, stream = _post(model_server.url, {"stream": True, "tools": tools, "messages": [first]})
    events = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: ")]
    assert status == 200
    assert events == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert '"partial_json": "{\\"file_path\\": \\"/w/a.txt\\"' in stream
    assistant = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}
    _, after_tool = _post(model_server.url, {"stream": False, "tools": tools, "messages": [first, assistant, result]})
    assert json.loads(after_tool)["content"] == [{"type": "text", "text": "Finished."}]
    reply = {"role": "user", "content": "9090"}
    final = {"role": "assistant", "content": [{"type": "text", "text": "asked"}]}
    _, resumed = _post(model_server.url, {"stream": False, "tools": tools, "messages": [first, assistant, result, final, reply]})
    assert json.loads(resumed)["content"] == [{"type": "text", "text": "second exchange"}]
    assert [(r.exchange, r.step) for r in model_server.main_requests("MARK")] == [(0, 0), (0, 1), (1, 0)]

    status, side = _post(model_server.url, {"stream": False, "tools": [], "messages": [first]})
    assert (status, json.loads(side)["content"][0]["text"]) == (200, "Shepherd test")
    stranger = {"role": "user", "content": "no marker here"}
    status, body = _post(model_server.url, {"stream": True, "tools": tools, "messages": [stranger]})
    assert status == 500 and "no scripted scenario" in body


def _codex_user(text_: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text_}]}


def _codex_items(stream: str) -> list[dict]:
    """The items of the ``response.output_item.done`` events of a Responses API stream."""
    events = [json.loads(line[len("data: "):]) for line in stream.splitlines() if line.startswith("data: ")]
    return [e["item"] for e in events if e["type"] == "response.output_item.done"]


def test_model_server_speaks_the_responses_api_for_codex(model_server) -> None:
    model_server.add_scenario(
        "MARK",
        [[[text("Writing."), write("{cwd}/a.txt", "A\nB\n")], [bash("ls"), bash("pwd")], [tool("Edit")]], [[text("second")]]],
    )
    tools = [{"type": "function", "name": "exec_command"}]
    context = [_codex_user("<environment_context>\n  <cwd>/old</cwd>\n</environment_context>"), _codex_user("MARK go")]
    status, stream = _post(model_server.url, {"stream": True, "tools": tools, "input": context}, "/v1/responses")
    assert status == 200
    assert [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: ")] == [
        "response.created", "response.output_item.added", "response.output_item.done",
        "response.output_item.added", "response.output_item.done", "response.completed",
    ]  # fmt: skip
    message, patch = _codex_items(stream)
    assert message["content"] == [{"type": "output_text", "text": "Writing.", "annotations": []}]
    # Without a harness cwd, the last <cwd> of the conversation counts (Codex appends one on resume).
    moved = [*context, _codex_user("<environment_context>\n  <cwd>/w</cwd>\n</environment_context>")]
    _, stream = _post(model_server.url, {"stream": True, "tools": tools, "input": moved}, "/v1/responses")
    patch = _codex_items(stream)[1]
    assert (patch["type"], patch["name"]) == ("custom_tool_call", "apply_patch")
    assert patch["input"] == "*** Begin Patch\n*** Add File: /w/a.txt\n+A\n+B\n*** End Patch\n"
    output = {"type": "custom_tool_call_output", "call_id": patch["call_id"], "output": "ok"}
    _, stream = _post(model_server.url, {"stream": True, "tools": tools, "input": [*moved, message, patch, output]}, "/v1/responses")
    calls = _codex_items(stream)
    assert [json.loads(c["arguments"]) for c in calls] == [{"cmd": "ls", "workdir": "/w"}, {"cmd": "pwd", "workdir": "/w"}]
    # Two calls of one response, then their outputs, are one step.
    outputs = [{"type": "function_call_output", "call_id": c["call_id"], "output": "ok"} for c in calls]
    history = [*moved, message, patch, output, *calls, *outputs]
    status, body = _post(model_server.url, {"stream": True, "tools": tools, "input": history}, "/v1/responses")
    assert status == 500 and "no mapping for the Edit tool" in body
    final = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "asked"}]}
    _, stream = _post(model_server.url, {"stream": True, "tools": tools, "input": [*history, final, _codex_user("9090")]}, "/v1/responses")
    assert _codex_items(stream)[0]["content"][0]["text"] == "second"
    assert [(r.exchange, r.step) for r in model_server.main_requests("MARK")] == [(0, 0), (0, 0), (0, 1), (0, 2), (1, 0)]

    _, side = _post(model_server.url, {"stream": True, "tools": [], "input": context}, "/v1/responses")
    assert _codex_items(side)[0]["content"][0]["text"] == "Shepherd test"
    status, body = _post(model_server.url, {"stream": True, "tools": tools, "input": [_codex_user("no marker")]}, "/v1/responses")
    assert status == 500 and "no scripted scenario" in body
