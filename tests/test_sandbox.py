"""The sandbox switch: on by default and said so; `SHEPHERD_SANDBOX=none` loud in the log, the status comment and doctor."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.views.doctor import Level, check_sandbox
from bot.agent.sandbox import NO_BWRAP, SANDBOX_OFF_WARNING, Sandbox, parse_sandbox_paths
from bot.core.session import State
from tests.conftest import settings_for
from tests.e2e_support import MAINTAINER, REPO, shepherd_with, status_comments  # noqa: F401 - fixture
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)

DONE_AGENT = """
echo hello > hello.txt
git add hello.txt && git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


async def test_no_sandbox_is_loud_in_the_log_the_status_comment_and_doctor(
    shepherd_with, fake_github, git_remote, caplog, tmp_path
):
    caplog.set_level(logging.WARNING)
    shepherd = await shepherd_with(DONE_AGENT, SHEPHERD_SANDBOX="none")
    assert SANDBOX_OFF_WARNING in caplog.text  # at start, before any agent ran
    fake_github.add_issue(REPO, title="Add a greeting")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE
    [status] = status_comments(fake_github, 1)
    assert "**Warning: no sandbox.**" in status["body"]
    assert "sandbox: none  # WARNING: agents run WITHOUT a sandbox" in status["body"]

    settings = settings_for(fake_github, tmp_path / "doctor", SHEPHERD_SANDBOX="none")
    [finding] = check_sandbox(settings)
    assert finding.level == Level.FAIL and "WITHOUT a sandbox" in finding.message


async def test_the_default_is_the_sandbox_and_the_status_comment_says_so(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(DONE_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    assert (await shepherd.ended(1)).state == State.COMPLETE
    [status] = status_comments(fake_github, 1)
    assert "sandbox: bwrap" in status["body"] and "no sandbox" not in status["body"]


def test_doctor_reports_the_sandbox_and_the_agent_uid(fake_github, tmp_path):
    [finding] = check_sandbox(settings_for(fake_github, tmp_path / "data"))
    assert finding.level in (Level.OK, Level.WARN)
    assert "bubblewrap sandbox" in finding.message


def test_agent_uid_is_never_shepherds_own(tmp_path):
    sandbox = Sandbox.build("bwrap", agent_user=None, state_dir=tmp_path)
    import os

    if os.geteuid() == 0:
        assert sandbox.agent_uid not in (None, 0)
    with pytest.raises(Exception, match="must not be Shepherd's own user or root"):
        Sandbox.build("bwrap", agent_user="root", state_dir=tmp_path)


def test_sandbox_paths_parse_and_refuse_relative_ones():
    assert [(p.path, p.writable) for p in parse_sandbox_paths("/opt/tools, /var/cache/x:rw")] == [
        ("/opt/tools", False), ("/var/cache/x", True)
    ]
    with pytest.raises(ValueError, match="not an absolute path"):
        parse_sandbox_paths("relative/dir")


def test_a_machine_without_bubblewrap_refuses_to_start_with_one_line(tmp_path):
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"  # a PATH with git and sh but no bwrap
    bin_dir.mkdir()
    for tool in ("sh", "git", "setpriv", "unshare"):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    done = subprocess.run(
        [sys.executable, "-m", "bot", "serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PATH": str(bin_dir), "SHEPHERD_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"shepherd: cannot start: {NO_BWRAP}"
    assert "Traceback" not in done.stderr


async def test_shepherd_agent_user_is_who_the_agent_runs_as(shepherd_with, fake_github, git_remote):
    # The operator's choice of uid works end to end: the agent reads its prompt, writes its worktree,
    # runs git and the shepherd tool, and Shepherd commits, exports and pushes what it did.
    shepherd = await shepherd_with("""
id -u > uid.txt
git add uid.txt && git commit -q -m "Who am I"
shepherd done "wrote my uid"
""", SHEPHERD_AGENT_USER="nobody")
    fake_github.add_issue(REPO, title="Who runs me")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE, session.failure_reason
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "uid.txt") == "65534\n"


async def test_webhooks_are_answered_while_an_agent_fork_bombs(shepherd_with, fake_github, git_remote):
    # The bomb is held to its own turn's cgroup: the server keeps answering, and the turn fails with
    # the limit named.
    shepherd = await shepherd_with("""
echo bomb > bomb.txt && git add bomb.txt && git commit -q -m bomb
touch "$HOME/bomb-started"
bomb() { bomb | bomb & }
bomb
sleep 120
""")
    fake_github.add_issue(REPO, title="Fork bomb")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    started = await shepherd.until(lambda: (s := shepherd.session(1)) and s.running_turn and s)
    home = shepherd.engine.session_dir(started.id) / "home"
    await shepherd.until(lambda: (home / "bomb-started").exists())
    answers = []
    for _ in range(5):
        health = await shepherd.client.get("/healthz")
        answers.append(health.status)
        answers.append(await shepherd.deliver("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}))
    assert answers == [200, 200] * 5
    session = await shepherd.ended(1, timeout=120)
    assert session.state == State.FAILED
    await shepherd.settle()
    [status] = status_comments(fake_github, 1)
    assert "went past a limit of its sandbox" in status["body"]
    assert "processes at once and was stopped" in status["body"]  # the limit, named in the log tail
