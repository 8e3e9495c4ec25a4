"""`kill -9` of a real `python -m bot serve` process and a restart (SPEC §6): nothing is lost, nothing is done twice.

The server runs as its own process against the strict fake GitHub and a real git remote; deliveries are
signed real payloads POSTed over loopback, as GitHub sends them.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e_support import (
    MAINTAINER,
    REPO,
    agent_script,
    bot_comments,
    prepare_repo,
    status_comments,
    wait_blocking,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.ports import free_port

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent


class Server:
    """Starts, kills and restarts `python -m bot serve` on one port and one data folder."""

    def __init__(self, fake, folder: Path, agent_command: str) -> None:
        self.fake = fake
        self.folder = folder
        self.port = free_port()
        self.data_dir = folder / "data"
        self.environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(folder),
            "PYTHONPATH": str(ROOT),
            "GITHUB_APP_ID": str(fake.app_id),
            "GITHUB_PRIVATE_KEY": fake.private_key_pem,
            "GITHUB_WEBHOOK_SECRET": fake.webhook_secret,
            "GITHUB_API_URL": fake.url,
            "SHEPHERD_DATA_DIR": str(self.data_dir),
            "SHEPHERD_WRITE_SPACING_SECONDS": "0",
            "SHEPHERD_DASHBOARD_TOKEN": "test-dashboard-token",
            "SHEPHERD_AGENT": "command",
            "SHEPHERD_AGENT_COMMAND": agent_command,
            "PORT": str(self.port),
        }
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen:
        log = open(self.folder / f"server-{len(self.processes)}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"],
                                   cwd=self.folder, env=self.environ, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_blocking(self._healthy, timeout=30)
        return process

    def _healthy(self) -> bool:
        if self.processes[-1].poll() is not None:
            raise AssertionError(f"the server exited: {self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        process = self.processes[-1]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def deliver(self, event: str, payload: dict) -> int:
        body, headers = payloads.fake_delivery(self.fake, event, payload)
        request = urllib.request.Request(f"{self.url}/webhook", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status

    def deliveries(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.data_dir / "shepherd.db") as db:
            return db.execute("SELECT id, event, status FROM deliveries ORDER BY seq").fetchall()

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.folder.glob("server-*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def server_for(fake_github, git_remote, tmp_path) -> Iterator:
    made: list[Server] = []

    def make(agent_body: str) -> Server:
        prepare_repo(fake_github, git_remote)
        server = Server(fake_github, tmp_path, agent_script(tmp_path, agent_body))
        made.append(server)
        return server

    yield make
    fake_github.release()
    for server in made:
        server.stop()


DONE_AGENT = """
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


def finished_once(fake, server: Server) -> None:
    """One 👀, one status comment saying complete with the PR link, one PR that closes the issue."""
    pulls = wait_blocking(lambda: fake.pulls(REPO), timeout=60)
    wait_blocking(lambda: any(f"/pull/{pulls[0]['number']})" in c["body"] for c in status_comments(fake, 1)))
    [pull] = fake.pulls(REPO)
    assert pull["body"].startswith("Closes #1\n")
    assert fake.reactions(REPO, 1) == ["eyes"]
    [status] = status_comments(fake, 1)
    assert "Complete" in status["body"]
    assert len(bot_comments(fake, 1)) == 1, server.log()


def test_delivery_stored_before_kill_is_handled_after_restart(server_for, fake_github, git_remote):
    server = server_for(DONE_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    server.start()
    # The start-up reconciliation reads GitHub too: let it finish, so what is held below is the handler.
    wait_blocking(lambda: fake_github.calls_to("pulls/list"))

    fake_github.hold()
    assert server.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER)) == 202
    fake_github.wait_until_held()
    server.kill()
    [(delivery_id, event, status)] = server.deliveries()
    assert (event, status) == ("issues", "pending")
    fake_github.release()

    server.start()
    finished_once(fake_github, server)
    assert git_remote.show(REPO, "refs/heads/agent/issue-1-add-a-greeting", "hello.txt") == "hello\n"
    wait_blocking(lambda: server.deliveries()[0][2] != "pending")
    assert [row[0] for row in server.deliveries()] == [delivery_id]


def test_kill_during_a_turn_finishes_once_with_the_same_agent(server_for, fake_github, git_remote, tmp_path):
    # The agent runs in its box as its own uid: the operator widens the box with this folder, where the
    # agent notes each start and the test drops the go file.
    observed = tmp_path / "observed"
    observed.mkdir()
    observed.chmod(0o777)
    pids = observed / "pids"
    go = observed / "go"
    server = server_for(f"""
echo $$ >> {pids}
while [ ! -f {go} ]; do sleep 0.1; done
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
""")
    server.environ["SHEPHERD_SANDBOX_PATHS"] = f"{observed}:rw"
    script = str(tmp_path / "agent.sh")

    def agent() -> psutil.Process | None:
        """The agent's shell on the host: its `$$` is the box's own pid, so find it by command line."""
        for process in psutil.process_iter(["cmdline", "status"]):
            cmdline = process.info["cmdline"] or []
            if process.info["status"] != psutil.STATUS_ZOMBIE and cmdline[:2] == ["sh", script]:
                return process
        return None

    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    server.start()
    assert server.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER)) == 202
    wait_blocking(lambda: pids.exists() and pids.read_text().strip())
    [agent_pid] = pids.read_text().split()  # the agent's pid inside its box
    process = wait_blocking(agent, timeout=10)
    try:
        server.kill()
        assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE  # the agent outlives Shepherd
        server.start()
        go.write_text("go")
        finished_once(fake_github, server)
    finally:
        if process.is_running():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
    assert pids.read_text().split() == [agent_pid]  # the same agent finished: it was never started again
    assert agent() is None
    assert git_remote.show(REPO, "refs/heads/agent/issue-1-add-a-greeting", "hello.txt") == "hello\n"
