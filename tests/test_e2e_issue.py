"""End to end through the real webhook server: a labelled issue becomes one pull request (SPEC §1, §2, §5).

Signed real payloads → ingress → store → consumer → handlers → engine → publisher/finisher → the strict
fake GitHub and a real git remote. Only what a maintainer would see is asserted.
"""

from __future__ import annotations

import collections

import pytest

from bot.session import State
from tests.e2e_support import (
    MAINTAINER,
    REPO,
    agent_script,
    agent_settings,
    bot_comments,
    prepare_repo,
    start_shepherd,
    status_comments,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

DONE_AGENT = """
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd progress "wrote hello.txt"
shepherd done "Added hello.txt"
"""


@pytest.fixture
async def shepherd_with(aiohttp_client, fake_github, git_remote, tmp_path):
    async def start(agent_body: str, **env: str):
        prepare_repo(fake_github, git_remote)
        command = agent_script(tmp_path, agent_body)
        settings = agent_settings(fake_github, tmp_path / "data", command, **env)
        return await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)

    return start


async def test_label_to_pull_request(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(DONE_AGENT)
    issue = fake_github.add_issue(REPO, title="Add a greeting", body="Please add hello.txt", user="carol")
    writes_before = len(fake_github.writes())

    assert await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, issue["number"], "agent:go",
                                                                    sender=MAINTAINER)) == 202
    session = await shepherd.ended(issue["number"])

    assert session.state == State.COMPLETE
    branch = "agent/issue-1-add-a-greeting"
    assert session.branch == branch
    assert fake_github.reactions(REPO, 1) == ["eyes"]
    # The agent's commit is on the remote, pushed with an installation token (the remote accepts no other).
    assert git_remote.show(REPO, f"refs/heads/{branch}", "hello.txt") == "hello\n"
    assert "Add hello" in git_remote.messages(REPO, f"refs/heads/{branch}")
    pushes = [r for r in git_remote.requests_for(REPO) if r.write]
    # git asks without credentials first (401), then with the token.
    assert any(r.authorised and r.user == "x-access-token" for r in pushes)
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == branch and pull["base"]["ref"] == "main"
    assert pull["body"].startswith("Closes #1\n")
    assert "### Checked by Shepherd" in pull["body"] and "Add hello" in pull["body"]
    assert "Added hello.txt" in pull["body"]
    # One status comment, edited in place to say complete with the PR link.
    [status] = status_comments(fake_github, 1)
    assert len(bot_comments(fake_github, 1)) == 1
    assert "Complete" in status["body"] or "complete" in status["body"]
    assert f"[#{pull['number']}]({pull['html_url']})" in status["body"]
    assert fake_github.calls_to("issues/update-comment"), "the status comment was never edited in place"
    assert "agent:needs-input" not in fake_github.labels(REPO, 1)

    writes = fake_github.writes()[writes_before:]
    counted = collections.Counter(c.operation_id for c in writes)
    print(f"REPORT writes={len(writes)} {dict(counted)}")
