"""Turns run in their own process group, record their exit code, time out, and survive a restart."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bot.agent import processes
from bot.agent.processes import TurnHandle, attach, kill_group, log_tail, spawn_turn, wait_turn

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def turns(tmp_path: Path):
    """Start turns in tmp_path; whatever is left of them is killed after the test."""
    started: list[TurnHandle] = []

    def start(command, name: str = "turn", **kwargs) -> TurnHandle:
        handle = spawn_turn(
            command,
            cwd=kwargs.pop("cwd", tmp_path),
            env=kwargs.pop("env", {"PATH": os.environ["PATH"]}),
            log_path=tmp_path / f"{name}.log",
            exit_path=tmp_path / f"{name}.exit",
            **kwargs,
        )
        started.append(handle)
        return handle

    yield start
    for handle in started:
        kill_group(handle, 0)


def is_gone(process: psutil.Process) -> bool:
    """Dead: a killed grandchild may stay a zombie until its new parent (pid 1 here) reaps it."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def no_heartbeat() -> None:
    return None


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = psutil.time.monotonic() + timeout
    while psutil.time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        psutil.time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


async def test_exit_code_is_recorded_by_the_wrapper(turns, tmp_path: Path) -> None:
    handle = turns("echo working; exit 7")
    outcome = await wait_turn(handle, max_runtime_s=30, idle_timeout_s=30, heartbeat=no_heartbeat, poll=0.02)
    assert (outcome.reason, outcome.exit_code) == ("exited", 7)
    assert (tmp_path / "turn.exit").read_text() == "7\n"
    assert (tmp_path / "turn.log").read_text() == "working\n"
    assert not attach(handle)


async def test_argv_command_runs_in_cwd_with_given_env(turns, tmp_path: Path) -> None:
    handle = turns([sys.executable, "-c", "import os; print(os.getcwd(), os.environ['ONLY'])"], env={"ONLY": "this"})
    outcome = await wait_turn(handle, max_runtime_s=30, idle_timeout_s=30, heartbeat=no_heartbeat, poll=0.02)
    assert outcome.exit_code == 0
    assert (tmp_path / "turn.log").read_text() == f"{tmp_path} this\n"


async def test_stdin_is_closed(turns, tmp_path: Path) -> None:
    handle = turns([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
    outcome = await wait_turn(handle, max_runtime_s=30, idle_timeout_s=30, heartbeat=no_heartbeat, poll=0.02)
    assert outcome.exit_code == 0
    assert (tmp_path / "turn.log").read_text() == "''\n"


def test_kill_group_kills_child_and_grandchild(turns, tmp_path: Path) -> None:
    handle = turns("sleep 300 & echo $! > grandchild.pid; sleep 301")
    grandchild_pid = int(wait_for_file(tmp_path / "grandchild.pid"))
    leader = psutil.Process(handle.pid)
    grandchild = psutil.Process(grandchild_pid)
    # A new session and process group of its own, not ours.
    assert os.getsid(handle.pid) == handle.pid
    assert os.getpgid(handle.pid) == handle.pid != os.getpgid(0)
    assert os.getpgid(grandchild_pid) == handle.pgid
    members = processes.group_members(handle)
    assert {leader.pid, grandchild_pid} <= {p.pid for p in members}

    kill_group(handle, grace_s=2)

    for process in [leader, grandchild, *members]:
        assert is_gone(process)
    assert processes.group_members(handle) == []
    kill_group(handle, grace_s=0)  # already gone: no error


def test_kill_group_escalates_to_sigkill(turns, tmp_path: Path) -> None:
    handle = turns("trap '' TERM; echo ready > ready; while :; do sleep 0.05; done")
    wait_for_file(tmp_path / "ready")
    kill_group(handle, grace_s=0.2)
    assert not attach(handle)
    assert processes.group_members(handle) == []


async def test_runtime_limit_kills_the_group(turns, tmp_path: Path) -> None:
    handle = turns("sleep 300 & echo $! > grandchild.pid; sleep 301")
    grandchild_pid = int(wait_for_file(tmp_path / "grandchild.pid"))
    grandchild = psutil.Process(grandchild_pid)
    outcome = await wait_turn(handle, max_runtime_s=0.3, idle_timeout_s=60, heartbeat=no_heartbeat, poll=0.02)
    assert (outcome.reason, outcome.exit_code) == ("runtime", None)
    assert outcome.elapsed_s >= 0.3
    assert not attach(handle)
    assert is_gone(grandchild)


async def test_idle_timeout_kills_a_silent_turn(turns) -> None:
    handle = turns("echo started; sleep 300")
    outcome = await wait_turn(handle, max_runtime_s=60, idle_timeout_s=0.3, heartbeat=no_heartbeat, poll=0.02)
    assert (outcome.reason, outcome.exit_code) == ("idle", None)
    assert not attach(handle)


async def test_heartbeat_keeps_a_silent_turn_alive(turns, tmp_path: Path) -> None:
    beat = tmp_path / "reports.jsonl"
    beat.touch()
    # Silent on its log for about 2 s but touching the heartbeat file every 50 ms.
    handle = turns(f"i=0; while [ $i -lt 40 ]; do touch {beat}; sleep 0.05; i=$((i+1)); done; exit 0")
    outcome = await wait_turn(
        handle, max_runtime_s=60, idle_timeout_s=1.0, heartbeat=lambda: beat.stat().st_mtime, poll=0.02
    )
    assert (outcome.reason, outcome.exit_code) == ("exited", 0)


async def test_vanished_when_the_wrapper_dies_without_an_exit_code(turns, tmp_path: Path) -> None:
    handle = turns("sleep 300 & echo $! > grandchild.pid; sleep 301")
    grandchild = psutil.Process(int(wait_for_file(tmp_path / "grandchild.pid")))
    os.kill(handle.pid, signal.SIGKILL)
    outcome = await wait_turn(handle, max_runtime_s=60, idle_timeout_s=60, heartbeat=no_heartbeat, poll=0.02)
    assert (outcome.reason, outcome.exit_code) == ("vanished", None)
    assert is_gone(grandchild)  # leftovers of the group do not outlive the turn


async def test_attach_after_restart_then_read_exit_code(tmp_path: Path) -> None:
    # Another Python process plays the Shepherd that started the turn and then died.
    starter = (
        "import json, sys\n"
        "from bot.agent.processes import spawn_turn\n"
        "h = spawn_turn('while [ ! -e go ]; do sleep 0.02; done; exit 3', cwd=sys.argv[1],"
        " env={'PATH': '/usr/bin:/bin'}, log_path=sys.argv[1] + '/turn.log', exit_path=sys.argv[1] + '/turn.exit')\n"
        "print(json.dumps(h.to_json()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", starter, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    handle = TurnHandle.from_json(json.loads(result.stdout))
    try:
        assert handle.pid not in processes._children  # not our child: no waitpid possible
        assert attach(handle)
        impostor = TurnHandle.from_json({**handle.to_json(), "create_time": handle.create_time - 100})
        assert not attach(impostor)  # same pid, other create time: a recycled pid, not our turn

        (tmp_path / "go").touch()
        outcome = await wait_turn(handle, max_runtime_s=30, idle_timeout_s=30, heartbeat=no_heartbeat, poll=0.02)
        assert (outcome.reason, outcome.exit_code) == ("exited", 3)
        assert not attach(handle)
    finally:
        kill_group(handle, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_run_as_user_drops_privileges_but_wrapper_records_exit(turns, tmp_path: Path) -> None:
    handle = turns("id -u; exit 4", run_as_user="nobody")
    outcome = await wait_turn(handle, max_runtime_s=30, idle_timeout_s=30, heartbeat=no_heartbeat, poll=0.02)
    assert outcome.exit_code == 4
    assert (tmp_path / "turn.log").read_text().strip() == str(pwd.getpwnam("nobody").pw_uid)
    assert (tmp_path / "turn.exit").stat().st_uid == 0


def test_log_tail_redacts_secrets_and_token_shapes(tmp_path: Path) -> None:
    log = tmp_path / "turn.log"
    lines = [f"line {i}" for i in range(100)] + [
        "push https://x-access-token:abc123SECRET@github.com/o/r.git",
        "token ghs_" + "A" * 36 + " and github_pat_" + "B" * 40,
        "Authorization: Bearer sk-live-123",
        "the webhook secret is hunter2hunter2",
    ]
    log.write_text("\n".join(lines) + "\n")
    tail = log_tail(log, lines=5, redact=["hunter2hunter2"])
    assert tail.splitlines() == [
        "line 99",
        "push https://x-access-token:[redacted]@github.com/o/r.git",
        "token [redacted] and [redacted]",
        "Authorization: [redacted]",
        "the webhook secret is [redacted]",
    ]
    assert log_tail(tmp_path / "missing.log") == ""


def test_log_tail_of_a_big_log_drops_the_cut_first_line(tmp_path: Path) -> None:
    log = tmp_path / "turn.log"
    secret = "s3cr3t-value"
    # Lay the file out so that the tail read starts in the middle of the secret.
    after = "\n" + "filler\n" * 9000
    after += "y" * (processes.TAIL_READ_BYTES - 6 - len(after) - len("last\n")) + "last\n"
    log.write_text("head " + secret + after)
    tail = log_tail(log, lines=100_000, redact=[secret])
    assert tail.endswith("last") and tail.startswith("filler")
    assert "cr3t" not in tail
