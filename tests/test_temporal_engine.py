"""The Temporal engine (SPEC §7) on a real `temporal server start-dev`: front ends, worker hosts, one session.

Signed payloads go into the real app running as a front end (`SHEPHERD_ENGINE=temporal`); the issue's
workflow runs the session core and its activities run on worker hosts with their own data folders,
against the strict fake GitHub and a real git remote. Only what a maintainer sees is asserted.
"""

from __future__ import annotations

import pytest

from bot.core.session import State
from tests.e2e_support import MAINTAINER, bot_comments, status_comments
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import agent_script
from tests.temporal_support import REPO, temporal_bed, temporal_server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]

DONE_AGENT = """
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd progress "wrote hello.txt"
shepherd done "Added hello.txt"
"""


async def test_label_to_pull_request_through_temporal(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    front = await bed.front_end()
    bed.host("host-a")
    issue = fake_github.add_issue(REPO, title="Add a greeting", body="Please add hello.txt", user="carol")

    assert await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, issue["number"], "agent:go",
                                                                 sender=MAINTAINER)) == 202
    session = await front.ended(1)

    assert session.state == State.COMPLETE, session
    branch = "agent/issue-1-add-a-greeting"
    assert git_remote.show(REPO, f"refs/heads/{branch}", "hello.txt") == "hello\n"
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == branch and pull["body"].startswith("Closes #1\n")
    assert "Added hello.txt" in pull["body"]
    [status] = status_comments(fake_github, 1)
    assert len(bot_comments(fake_github, 1)) == 1
    assert f"[#{pull['number']}]({pull['html_url']})" in status["body"]
    assert fake_github.reactions(REPO, 1) == ["eyes"]
    # The session ran on the host: its worktree is in that host's data folder, not the front end's.
    assert str(bed.tmp / "host-a") in front.engine.sessions.get(session.id).context["worktree"]
