"""The operator's log (issue 16): lines carry the repository, issue and session; JSON lines on request;
one line per state change with its reason; a failed turn names its log; a stop names the turns left
running; and a missing agent CLI is called that, on the issue and in the log."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from bot.core.session import State
from bot.views.log_lines import configure_logging
from tests.conftest import settings_for
from tests.e2e_support import (
    MAINTAINER,
    REPO,
    agent_script,
    prepare_repo,
    shepherd_with,  # noqa: F401 - fixture
    start_shepherd,
    status_comments,
    wait_blocking,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.ports import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
MISSING_CLI = "The agent CLI `claude` was not found on the server"


@pytest.fixture
def stderr_log():
    """The root logger as `python -m bot serve` configures it, writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buffer = io.StringIO()

    def use(log_format: str) -> io.StringIO:
        configure_logging(log_format, buffer)
        return buffer

    yield use
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_text_lines_carry_the_context_fields(stderr_log):
    buffer = stderr_log("text")
    logging.getLogger("bot.agent.processes").info(
        "turn started", extra={"session": "acme/web#3/1", "repository": "acme/web", "issue": 3, "pid": 99,
                               "log_path": "/data/sessions/a b/turn-1.log"})
    line = buffer.getvalue().strip()
    assert line.endswith('bot.agent.processes: turn started repository=acme/web issue=3 session=acme/web#3/1 '
                         'log_path="/data/sessions/a b/turn-1.log" pid=99')


def test_json_lines_are_one_object_each_with_the_context_as_keys(stderr_log):
    buffer = stderr_log("json")
    log = logging.getLogger("bot.runtime.engine")
    log.warning("session %s failed", "acme/web#3/1", extra={"repository": "acme/web", "issue": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler failed", extra={"delivery": "d-1"})
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["message"] == "session acme/web#3/1 failed" and first["level"] == "WARNING"
    assert (first["repository"], first["issue"], first["logger"]) == ("acme/web", 3, "bot.runtime.engine")
    assert second["delivery"] == "d-1" and "ValueError: boom" in second["traceback"]


async def test_a_missing_agent_cli_is_named_on_the_issue_and_in_the_log(
    aiohttp_client, fake_github, git_remote, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    prepare_repo(fake_github, git_remote)
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="claude")
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)  # no claude on PATH
    fake_github.add_issue(REPO, title="Add a greeting")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    assert session.state == State.FAILED
    await shepherd.settle()

    [status] = status_comments(fake_github, 1)
    assert MISSING_CLI in status["body"]
    assert "exited with code 127" not in status["body"]

    changes = [r for r in caplog.records if r.getMessage().startswith(f"session {session.id}: ")]
    assert [r.state for r in changes][-1] == "failed"
    assert [r.getMessage().split(": ", 1)[1].split(" (")[0] for r in changes][0] == "new -> registered"
    failed = changes[-1]
    assert (failed.repository, failed.issue, failed.session) == (REPO, 1, session.id)
    assert MISSING_CLI in failed.getMessage()
    assert failed.log_path.endswith("/turn-1.log") and Path(failed.log_path).is_file()


async def test_stopping_names_the_turns_left_running(aiohttp_client, fake_github, git_remote, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    prepare_repo(fake_github, git_remote)
    command = agent_script(tmp_path, "exec sleep 47\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command", SHEPHERD_AGENT_COMMAND=command)
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(REPO, title="Take your time")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.until(lambda: (s := shepherd.session(1)) and s.running_turn is not None and s)
    record = await shepherd.until(lambda: shepherd.engine.context_of(session.id).turn)
    handle = record.handle
    await shepherd.until(lambda: "sleep" in " ".join(psutil.Process(handle["pid"]).cmdline()))
    try:
        await shepherd.client.close()  # the server stops; the agent keeps running for the next start
        [line] = [r for r in caplog.records if "left running" in r.getMessage()]
        assert f"{session.id} (pid {handle['pid']})" in line.getMessage()
        assert psutil.pid_exists(handle["pid"])
    finally:
        try:
            os.killpg(handle["pid"], 9)
        except ProcessLookupError:
            pass


ONE_TURN_AGENT = """
echo hello > greeting.txt
git add -A
git commit -q -m "Add a greeting"
shepherd done "Added a greeting"
"""


async def test_every_turn_line_names_its_repository_issue_and_session(shepherd_with, fake_github, caplog):
    caplog.set_level(logging.INFO)
    shepherd = await shepherd_with(ONE_TURN_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE
    await shepherd.settle()

    turn_lines = [r for r in caplog.records if r.name.startswith("bot.") and r.levelno >= logging.INFO
                  and "turn" in r.getMessage()]
    messages = [r.getMessage() for r in turn_lines]
    assert "turn 1 started" in messages and "turn 1 ended (exit 0)" in messages
    for record in turn_lines:
        assert (getattr(record, "repository", None), getattr(record, "issue", None),
                getattr(record, "session", None)) == (REPO, 1, session.id), record.getMessage()
    [started] = [r for r in turn_lines if r.getMessage() == "turn 1 started"]
    assert started.log_path.endswith("/turn-1.log")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "turn group killed" in r.getMessage()]


def test_the_server_logs_json_lines_when_asked(tmp_path):
    port = free_port()
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
        "SHEPHERD_DATA_DIR": str(tmp_path / "data"), "SHEPHERD_AGENT": "command", "SHEPHERD_AGENT_COMMAND": "true",
        "PORT": str(port), "SHEPHERD_LOG_FORMAT": "json",
    }
    process = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"], cwd=tmp_path,
                               env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return process.poll() is not None

        wait_blocking(healthy, timeout=30)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    entries = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    assert any("/setup?code=" in entry["message"] for entry in entries)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
