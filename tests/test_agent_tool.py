"""The agent-only `shepherd` executable, run as the agent runs it: installed, from PATH, in a subprocess."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bot.agent import channel
from bot.core.session import State
from tests.tool_source import TOOL_PATH, tool_constants

TOOL = tool_constants()
# The names and budgets the tool keeps its own copies of; Shepherd's side must read the same.
SHARED = ("TOOL_NAME", "CHANNEL_NAME", "REPORTS_NAME", "KINDS", "PHASES", "PLAN_LIMIT_BYTES", "TEXT_LIMIT_CHARS")


@pytest.fixture
def session(tmp_path: Path) -> Path:
    folder = tmp_path / "session"
    folder.mkdir()
    return folder


@pytest.fixture
def tool(tmp_path: Path, session: Path):
    """Run the installed tool with a turn's variables; returns the CompletedProcess."""
    path = channel.install_agent_tool(tmp_path / "bin")
    workdir = tmp_path / "work"
    workdir.mkdir()

    def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
        env = {
            "PATH": f"{path.parent}:/usr/bin:/bin",
            "SHEPHERD_SESSION_DIR": str(session),
            "SHEPHERD_STATUS_FILE": str(session / "status.json"),
            "SHEPHERD_TURN": "3",
            **(env_extra or {}),
        }
        return subprocess.run(["shepherd", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=30)

    return run


def lines(session: Path) -> list[dict]:
    path = session / channel.CHANNEL_NAME / channel.REPORTS_NAME
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_install_writes_an_executable_with_shepherds_interpreter(tmp_path: Path) -> None:
    path = channel.install_agent_tool(tmp_path / "bin", python="/opt/py/bin/python3")
    assert path == tmp_path / "bin" / "shepherd"
    assert path.read_text().splitlines()[0] == "#!/opt/py/bin/python3 -I"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    source = path.read_text()
    assert "import bot" not in source and "from bot" not in source  # self-contained


def test_each_command_appends_one_report_line(tool, session: Path, tmp_path: Path) -> None:
    progress = tool("progress", "tests written", "--phase", "working")
    ask = tool("ask", "Which port?", "--option", "8080", "--option", "9090", "--context", "both are free")
    plan_file = tmp_path / "work" / "PLAN.md"
    plan_file.write_text("1. add server\n2. add tests\n")
    plan = tool("plan", "PLAN.md")
    done = tool("done", "Server added")

    assert [p.returncode for p in (progress, ask, plan, done)] == [0, 0, 0, 0]
    assert progress.stdout == TOOL["CONFIRM_PROGRESS"] + "\n"
    assert ask.stdout == "Question posted. End your turn now; the reply will start your next turn.\n"
    assert plan.stdout == TOOL["CONFIRM_PLAN"] + "\n"
    assert done.stdout == TOOL["CONFIRM_DONE"] + "\n"
    reports = lines(session)
    for report in reports:
        assert report.pop("at").endswith("+00:00")
    assert reports == [
        {"seq": 1, "kind": "progress", "turn": 3, "note": "tests written", "phase": "working"},
        {"seq": 2, "kind": "ask", "turn": 3, "question": "Which port?", "options": ["8080", "9090"], "context": "both are free"},
        {"seq": 3, "kind": "plan", "turn": 3, "file": str(plan_file), "plan": "1. add server\n2. add tests"},
        {"seq": 4, "kind": "done", "turn": 3, "summary": "Server added"},
    ]
    assert [r["seq"] for r in channel.read_reports(session, 2)] == [3, 4]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["status", "working"],  # no command writes status.json
        ["merge"],
        ["progress"],
        ["progress", "   "],
        ["progress", "note", "--phase", "testing"],
        ["ask"],
        ["ask", "question", "--option"],
        ["plan", "missing.md"],
        ["done"],
        ["done", "x", "extra"],
    ],
)
def test_bad_usage_exits_2_and_records_nothing(tool, session: Path, args: list[str]) -> None:
    result = tool(*args)
    assert result.returncode == 2, result
    assert "error" in result.stderr
    assert lines(session) == []


def test_outside_a_session_it_refuses(tool, session: Path) -> None:
    result = tool("progress", "x", env_extra={"SHEPHERD_SESSION_DIR": str(session / "nope")})
    assert result.returncode == 1
    assert TOOL["ERROR_NO_SESSION"] in result.stderr


def test_status_json_is_only_read(tool, session: Path) -> None:
    status = session / "status.json"
    channel.write_status(status, {"status": "cancelled", "issueNumber": 5})
    before = status.read_bytes(), status.stat().st_mtime_ns
    result = tool("progress", "still here")
    assert result.returncode == 0
    assert "marked this session cancelled" in result.stdout
    for args in (["done", "status.json"], ["plan", str(status)]):
        assert tool(*args).returncode == 0
    assert (status.read_bytes(), status.stat().st_mtime_ns) == before
    assert stat.S_IMODE(status.stat().st_mode) == 0o644


def test_concurrent_calls_get_distinct_sequence_numbers(tmp_path: Path, session: Path) -> None:
    path = channel.install_agent_tool(tmp_path / "bin")
    env = {"PATH": "/usr/bin:/bin", "SHEPHERD_SESSION_DIR": str(session)}
    runs = [subprocess.Popen([str(path), "progress", f"note {i}"], env=env, stdout=subprocess.DEVNULL) for i in range(12)]
    assert [p.wait(timeout=30) for p in runs] == [0] * 12
    reports = lines(session)
    assert sorted(r["seq"] for r in reports) == list(range(1, 13))
    assert sorted(r["note"] for r in reports) == sorted(f"note {i}" for i in range(12))


def test_read_reports_skips_what_is_not_a_whole_known_report(session: Path) -> None:
    (session / channel.CHANNEL_NAME).mkdir(exist_ok=True)
    (session / channel.CHANNEL_NAME / channel.REPORTS_NAME).write_text(
        '{"seq": 1, "kind": "progress", "note": "a"}\n'
        "not json\n"
        '{"seq": 2, "kind": "merge"}\n'
        '{"seq": "3", "kind": "done"}\n'
        '{"seq": 4, "kind": "done", "summary": "b"}\n'
        '{"seq": 5, "kind": "ask", "quest'
    )
    assert [r["seq"] for r in channel.read_reports(session, 0)] == [1, 4]
    assert channel.read_reports(session, 4) == []
    assert channel.read_reports(session / "missing", 0) == []


def test_write_status_replaces_atomically(session: Path) -> None:
    status = session / "status.json"
    channel.write_status(status, {"status": "working"})
    channel.write_status(status, {"status": "stuck", "stuckReason": "Which port?"})
    assert json.loads(status.read_text()) == {"status": "stuck", "stuckReason": "Which port?"}
    assert sorted(p.name for p in session.iterdir()) == ["status.json"]


def test_without_a_turn_number_the_report_has_none(tmp_path: Path, session: Path) -> None:
    path = channel.install_agent_tool(tmp_path / "bin")
    env = {"PATH": "/usr/bin:/bin", "SHEPHERD_SESSION_DIR": str(session)}
    asked = subprocess.run([str(path), "ask", "Why?"], env=env, capture_output=True, text=True, timeout=30)
    assert (asked.returncode, asked.stdout) == (0, TOOL["CONFIRM_ASK"] + "\n")
    [report] = lines(session)
    assert (report["question"], report["options"], "turn" in report) == ("Why?", [], False)
    empty = subprocess.run([str(path), "ask", ""], env=env, capture_output=True, text=True, timeout=30)
    assert empty.returncode == 2 and TOOL["ERROR_EMPTY"].format(what="The question") in empty.stderr
    assert len(lines(session)) == 1


@pytest.mark.parametrize("name", SHARED)
def test_the_tool_and_shepherd_agree_on_the_channel(name: str) -> None:
    # The tool cannot import Shepherd's names, so it keeps copies; a drift would lose reports silently.
    assert TOOL[name] == getattr(channel, name)


def test_the_tools_finished_statuses_are_states_of_the_session() -> None:
    assert set(TOOL["FINISHED_STATUSES"]) == {str(State.CANCELLED), str(State.FAILED), str(State.COMPLETE)}


def test_the_tool_is_self_contained() -> None:
    # It runs with `python -I` in the agent's box: only the standard library is there, never `bot`.
    tree = ast.parse(TOOL_PATH.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
