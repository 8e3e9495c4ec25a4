"""`kill -9` of Shepherd mid-turn, then a restart: the session finishes exactly once (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bot.agent.processes import WRAPPER_NAME
from tests.conftest import settings_for
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import FAST_POLICY, INSTALLATION, REPO, prepare_repo

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def _wait(predicate, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def driver(fake_github, git_remote, tmp_path):
    started: list[subprocess.Popen] = []
    # The agent runs in its box as its own uid: the operator widens the box with this folder, where the
    # agent leaves its marks and the test drops the release file.
    observed = _observed(tmp_path)
    observed.mkdir(exist_ok=True)
    observed.chmod(0o777)

    def run(script_body: str, *, trigger: bool) -> subprocess.Popen:
        script = tmp_path / "agent.sh"
        script.write_text(script_body)
        script.chmod(0o644)
        settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                                SHEPHERD_AGENT_COMMAND=f"sh {script}",
                                SHEPHERD_SANDBOX_PATHS=f"{observed}:rw")
        environ = {
            "GITHUB_APP_ID": str(fake_github.app_id),
            "GITHUB_PRIVATE_KEY": fake_github.private_key_pem,
            "GITHUB_WEBHOOK_SECRET": fake_github.webhook_secret,
            "GITHUB_API_URL": fake_github.url,
            "SHEPHERD_DATA_DIR": str(settings.data_dir),
            "SHEPHERD_WRITE_SPACING_SECONDS": "0",
            "SHEPHERD_DASHBOARD_TOKEN": "test-dashboard-token",
            "SHEPHERD_AGENT": "command",
            "SHEPHERD_AGENT_COMMAND": f"sh {script}",
            "SHEPHERD_SANDBOX_PATHS": f"{observed}:rw",
        }
        issue = fake_github.issue(REPO, 1)
        config = {
            "environ": environ,
            "parent_env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
            "publisher_log": str(tmp_path / "published.jsonl"),
            "finisher_log": str(tmp_path / "finished.jsonl"),
            "trigger": trigger,
            "issue": {"installation_id": INSTALLATION, "owner": "octo-org", "repo": "widgets", "number": 1,
                      "title": issue["title"], "body": issue["body"] or "",
                      "clone_url": fake_github.repo(REPO)["clone_url"], "default_branch": "main",
                      "author": "alice"},
        }
        path = tmp_path / f"driver-{len(started)}.json"
        path.write_text(json.dumps(config))
        process = subprocess.Popen([sys.executable, "-m", "tests.runtime_driver", str(path)], cwd=ROOT,
                                   stdout=open(tmp_path / f"driver-{len(started)}.log", "w"),
                                   stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _observed(tmp_path: Path) -> Path:
    return tmp_path / "observed"


def _agent_process(script: Path) -> psutil.Process | None:
    """The agent's shell on the host: inside its box `$$` is the box's own pid, so find it by command line."""
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and cmdline[:2] == ["sh", str(script)]:
            return process
    return None


def _kill_turn_of(agent: psutil.Process) -> None:
    """Kill the turn's whole process group, led by Shepherd's turn wrapper, the box and the agent with it."""
    wrappers = [p for p in agent.parents() if WRAPPER_NAME in (p.cmdline() or [])]
    assert wrappers, "the agent runs under no turn wrapper"
    for wrapper in wrappers:
        try:
            os.killpg(wrapper.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


AGENT = """
echo "$$" >> {pids}
if [ ! -e {release} ]; then
  touch {started}
  while [ ! -e {release} ]; do sleep 0.05; done
fi
echo "turn $SHEPHERD_TURN" > work.txt
git add work.txt && git commit -q -m "Work"
shepherd done "Worked"
"""


def _agent(tmp_path: Path) -> tuple[str, Path, Path, Path]:
    observed = _observed(tmp_path)
    pids, started, release = observed / "pids", observed / "started", observed / "release"
    return AGENT.format(pids=pids, started=started, release=release), pids, started, release


def _killed_mid_turn(fake_github, git_remote, driver, tmp_path: Path, title: str):
    """Shepherd started on a new issue and killed with -9 while its agent waits for the release file; the
    agent outlives it. Returns the agent's script body, its pids file, the release file and its process."""
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY)
    fake_github.add_issue(REPO, title=title)
    body, pids, started, release = _agent(tmp_path)
    first = driver(body, trigger=True)
    _wait(started.exists)
    agent = _agent_process(tmp_path / "agent.sh")
    assert agent is not None
    first.send_signal(signal.SIGKILL)
    first.wait()
    return body, pids, release, agent


def test_agent_running_across_a_kill_is_reattached_not_rerun(fake_github, git_remote, driver, tmp_path):
    body, pids, release, agent = _killed_mid_turn(fake_github, git_remote, driver, tmp_path, "Survive a restart")
    [agent_pid] = pids.read_text().split()  # the agent's pid inside its box
    assert agent.is_running() and agent.status() != psutil.STATUS_ZOMBIE  # it outlives Shepherd
    second = driver(body, trigger=False)
    time.sleep(0.5)
    assert agent.is_running()
    release.touch()
    assert second.wait(timeout=60) == 0, (tmp_path / "driver-1.log").read_text()
    assert pids.read_text().split() == [agent_pid]  # re-attached, never re-run
    assert _agent_process(tmp_path / "agent.sh") is None
    [push] = _lines(tmp_path / "finished.jsonl")
    assert git_remote.show(REPO, f"refs/heads/{push['branch']}", "work.txt") == "turn 1\n"


def test_agent_lost_with_shepherd_is_rerun_and_finishes_once(fake_github, git_remote, driver, tmp_path):
    body, pids, release, agent = _killed_mid_turn(fake_github, git_remote, driver, tmp_path, "Lose the agent")
    _kill_turn_of(agent)  # the machine lost the agent too
    _wait(lambda: _agent_process(tmp_path / "agent.sh") is None, timeout=10)
    release.touch()
    second = driver(body, trigger=False)
    assert second.wait(timeout=60) == 0, (tmp_path / "driver-1.log").read_text()
    assert len(pids.read_text().split()) == 2  # the lost turn ran again
    [push] = _lines(tmp_path / "finished.jsonl")  # pushed and "opened" exactly once
    assert git_remote.show(REPO, f"refs/heads/{push['branch']}", "work.txt") == "turn 1\n"
    published = [entry["command"] for entry in _lines(tmp_path / "published.jsonl")]
    assert published.count("React") == 1  # the eyes reaction was not repeated


def test_an_agent_started_just_before_a_kill_whose_start_was_not_recorded_is_adopted(
        fake_github, git_remote, driver, tmp_path):
    """`kill -9` between spawning the agent and recording its turn: the restart finds the turn's wrapper by
    its command line and watches it instead of killing it and running the turn again (found by the chaos
    test, seed 3: the first try asked its question, the second, seeing the first try's mark, said done)."""
    import sqlite3

    body, pids, release, agent = _killed_mid_turn(fake_github, git_remote, driver, tmp_path, "Start once")
    # What a kill in that window leaves: the turn is due and its agent runs, but no record names it.
    database = sqlite3.connect(tmp_path / "data" / "shepherd.db")
    with database:
        database.execute("UPDATE sessions SET context = json_remove(context, '$.turn')")
    database.close()
    [agent_pid] = pids.read_text().split()
    second = driver(body, trigger=False)
    time.sleep(1.0)
    assert agent.is_running(), "the restart killed the running agent"
    release.touch()
    assert second.wait(timeout=60) == 0, (tmp_path / "driver-1.log").read_text()
    assert pids.read_text().split() == [agent_pid]  # adopted, never run twice
    [push] = _lines(tmp_path / "finished.jsonl")
    assert git_remote.show(REPO, f"refs/heads/{push['branch']}", "work.txt") == "turn 1\n"
