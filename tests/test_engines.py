"""Engine labels and the open-PR cap (SPEC §3 `engines`, `max_open_prs`; §8), end to end through the real
webhook server, handlers, engine, publisher and finisher, with command agents and a real git remote.
"""

from __future__ import annotations

import pytest

from bot.core.session import Detail, State
from tests.conftest import settings_for
from tests.e2e_support import (  # noqa: F401 - shepherd_with is a fixture
    FAST_POLICY,
    MAINTAINER,
    REPO,
    agent_script,
    prepare_repo,
    start_shepherd,
    status_comments,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

DONE_AGENT = """
echo "$SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add -A
git commit -q -m "Work on issue $SHEPHERD_ISSUE"
shepherd done "Did issue $SHEPHERD_ISSUE"
"""


def dashboard_body(fake_github) -> str | None:
    """The body of the repository's "Shepherd dashboard" issue, once it exists."""
    found = fake_github.issues_titled(REPO, "Shepherd dashboard")
    return str(found[0]["body"]) if found else None


async def start(aiohttp_client, fake_github, git_remote, tmp_path, policy: str, **env: str):
    """Shepherd with the operator's `env` and the repository's `policy`; the agent script is DONE_AGENT."""
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY + policy)
    settings = settings_for(fake_github, tmp_path / "data", **env)
    return await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)


async def test_an_engine_label_runs_its_adapter_and_the_status_comment_names_it(
        aiohttp_client, fake_github, git_remote, tmp_path):
    # The operator's default agent is Claude Code; the repository maps `agent:script` to the command adapter.
    # Issue 1's agent finishes; a later issue's agent works until it is stopped, so its label comes off
    # while it is live.
    agent = f'[ "$SHEPHERD_ISSUE" = 1 ] || sleep 300\n{DONE_AGENT}'
    shepherd = await start(aiohttp_client, fake_github, git_remote, tmp_path, "engines:\n  agent:script: command\n",
                           SHEPHERD_AGENT="claude", SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, agent))
    fake_github.add_issue(REPO, title="Say which issue", user="carol")

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:script", sender=MAINTAINER))
    session = await shepherd.ended(1)

    assert session.state == State.COMPLETE and session.engine == "command"
    [pull] = fake_github.pulls(REPO)
    assert git_remote.show(REPO, f"refs/heads/{pull['head']['ref']}", "issue-1.txt") == "1\n"
    [status] = status_comments(fake_github, 1)
    assert "| Engine | `command` |" in status["body"]
    # Taking the engine label off a later live session is what cancels it; another label is not.
    # Its number comes from the fake: the dashboard issue may have taken #2 meanwhile.
    number = fake_github.add_issue(REPO, title="Second", user="carol")["number"]
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:script",
                                                            sender=MAINTAINER))
    # The handler re-reads the issue: the label must still be on it when the delivery is handled.
    await shepherd.until(lambda: (s := shepherd.session(number)) is not None and s.state == State.WORKING)
    await shepherd.deliver("issues", payloads.issue_unlabeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER))
    await shepherd.deliver("issues", payloads.issue_unlabeled(fake_github, REPO, number, "agent:script",
                                                              sender=MAINTAINER))
    second = await shepherd.ended(number)
    assert second.engine == "command"
    assert second.state == State.CANCELLED and second.detail == Detail.LABEL_REMOVED


async def test_an_engine_the_operator_did_not_set_up_is_a_policy_problem_on_the_issue(
        aiohttp_client, fake_github, git_remote, tmp_path):
    # No SHEPHERD_AGENT_COMMAND: the command adapter is not set up, so `agent:script` cannot pick it.
    shepherd = await start(aiohttp_client, fake_github, git_remote, tmp_path,
                           "engines:\n  agent:script: command\n", SHEPHERD_AGENT="codex")
    fake_github.add_issue(REPO, title="Say which issue", user="carol")

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:script", sender=MAINTAINER))
    await shepherd.until(lambda: any("shepherd:policy" in c["body"] for c in fake_github.comments(REPO, 1)))
    await shepherd.deliver("issues", payloads.issue_unlabeled(fake_github, REPO, 1, "agent:script", sender=MAINTAINER))
    session = await shepherd.ended(1)

    assert session.engine is None  # the defaults run, as for an invalid `agent`
    [problem] = [c["body"] for c in fake_github.comments(REPO, 1) if "shepherd:policy" in c["body"]]
    assert "`engines.agent:script`" in problem and "SHEPHERD_AGENT_COMMAND" in problem
    [status] = status_comments(fake_github, 1)
    assert "| Engine | `codex` |" in status["body"]


async def test_with_max_open_prs_1_the_second_pull_request_waits_for_the_first_to_be_merged(
        aiohttp_client, fake_github, git_remote, tmp_path):
    shepherd = await start(aiohttp_client, fake_github, git_remote, tmp_path, "max_open_prs: 1\n",
                           SHEPHERD_AGENT="command", SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, DONE_AGENT))
    fake_github.add_issue(REPO, title="First", user="carol")
    fake_github.add_issue(REPO, title="Second", user="carol")

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    first = await shepherd.ended(1)
    assert first.state == State.COMPLETE
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 2, "agent:go", sender=MAINTAINER))
    waiting = await shepherd.until(
        lambda: (s := shepherd.session(2)) is not None and s.detail == Detail.WAITING_FOR_PULL_REQUEST_SLOT and s)
    await shepherd.settle()

    assert waiting.state == State.QUEUED
    [pull] = fake_github.pulls(REPO)  # only the first session's
    assert pull["head"]["ref"] == first.branch
    [status] = status_comments(fake_github, 2)
    assert "its pull request waits for a free place" in status["body"]
    assert "`max_open_prs`" in status["body"] and "| Queue | 1st in line |" in status["body"]
    dashboard = await shepherd.until(lambda: (body := dashboard_body(fake_github)) and "#2 Second" in body and body)
    assert "## Waiting to open a pull request" in dashboard and "- #2 Second: 1st in line," in dashboard

    merged = payloads.pull_request_closed(fake_github, REPO, pull["number"], merged=True, sender=MAINTAINER)
    await shepherd.deliver("pull_request", merged)
    second = await shepherd.until(lambda: (s := shepherd.session(2)).state == State.COMPLETE and s)
    await shepherd.settle()

    second_pulls = [p for p in fake_github.pulls(REPO) if p["head"]["ref"] == second.branch]
    assert len(second_pulls) == 1 and len(fake_github.pulls(REPO)) == 2
    assert second_pulls[0]["body"].startswith("Closes #2\n")
    [status] = status_comments(fake_github, 2)
    assert f"[#{second.pr_number}]" in status["body"]
    assert fake_github.calls_to("pulls/merge") == []
