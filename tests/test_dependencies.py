"""Dependencies end to end: a chain A → B → C runs in order as PRs merge, stacked mode bases the PR on the
dependency's branch, and a cycle is reported once on every issue in it."""

from __future__ import annotations

import pytest

from bot.core.session import Detail, State
from tests.e2e_support import FAST_POLICY, MAINTAINER, REPO, agent_script, agent_settings, bot_comments, wait_for, \
    prepare_repo, start_shepherd
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(240)

WORK_AGENT = """
echo "issue $SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add -A
git commit -q -m "Work on issue $SHEPHERD_ISSUE"
shepherd done "Did issue $SHEPHERD_ISSUE"
"""


@pytest.fixture
async def shepherd_for(aiohttp_client, fake_github, git_remote, tmp_path):
    async def start(policy: str = FAST_POLICY):
        prepare_repo(fake_github, git_remote, policy=policy)
        settings = agent_settings(fake_github, tmp_path / "data", agent_script(tmp_path, WORK_AGENT))
        return await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    return start


async def label(shepherd, fake, number):
    await shepherd.deliver("issues", payloads.issue_labeled(fake, REPO, number, "agent:go", sender=MAINTAINER))


def waiting(shepherd, number):
    s = shepherd.session(number)
    return s is not None and s.state == State.QUEUED and s.detail == Detail.WAITING_FOR_DEPENDENCIES


def pull_for(fake, branch):
    found = [p for p in fake.pulls(REPO) if p["head"]["ref"] == branch]
    return found[0] if found else None


async def merge(shepherd, fake, remote, session):
    """A maintainer merges the session's PR (fast-forward on the remote, then GitHub's webhook)."""
    pull = pull_for(fake, session.branch)
    remote.git(REPO, "update-ref", f"refs/heads/{pull['base']['ref']}", remote.refs(REPO)[f"refs/heads/{session.branch}"])
    await shepherd.deliver("pull_request", payloads.pull_request_closed(fake, REPO, pull["number"], merged=True))


async def test_chain_runs_in_order_as_pull_requests_merge(shepherd_for, fake_github, git_remote):
    shepherd = await shepherd_for()
    a = fake_github.add_issue(REPO, title="Step A", body="First step")["number"]
    b = fake_github.add_issue(REPO, title="Step B", body=f"Depends on #{a}")["number"]
    c = fake_github.add_issue(REPO, title="Step C", body=f"blocked by #{b}")["number"]
    for number in (c, b, a):
        await label(shepherd, fake_github, number)
    first = await shepherd.ended(a)
    assert first.state == State.COMPLETE
    assert waiting(shepherd, b) and waiting(shepherd, c)
    assert shepherd.session(b).waiting_for == (f"#{a}",)
    status_b = [x for x in bot_comments(fake_github, b) if "shepherd:status" in x["body"]][0]["body"]
    assert f"**Waiting for:** [#{a}](" in status_b and f"/{REPO}/issues/{a})" in status_b
    assert pull_for(fake_github, shepherd.session(b).branch) is None

    await merge(shepherd, fake_github, git_remote, first)
    second = await shepherd.ended(b)
    assert second.state == State.COMPLETE and waiting(shepherd, c)
    # B started from the updated default branch: A's work is under it.
    assert git_remote.show(REPO, f"refs/heads/{second.branch}", f"issue-{a}.txt") == f"issue {a}\n"

    await merge(shepherd, fake_github, git_remote, second)
    third = await shepherd.ended(c)
    assert third.state == State.COMPLETE
    for number in (a, b, c):
        assert git_remote.show(REPO, f"refs/heads/{third.branch}", f"issue-{number}.txt") == f"issue {number}\n"
    assert pull_for(fake_github, third.branch)["base"]["ref"] == "main"


async def test_stacked_pull_request_targets_the_dependency_branch(shepherd_for, fake_github, git_remote):
    shepherd = await shepherd_for(FAST_POLICY + "stack: true\n")
    a = fake_github.add_issue(REPO, title="Base work", body="First")["number"]
    b = fake_github.add_issue(REPO, title="On top", body=f"depends on #{a}")["number"]
    await label(shepherd, fake_github, b)
    await shepherd.until(lambda: waiting(shepherd, b))
    await label(shepherd, fake_github, a)
    branch_a = await shepherd.until(lambda: (s := shepherd.session(a)) and s.branch)
    # GitHub learns of pushed branches; the fake is told as soon as the remote has it.
    sha = await wait_for(lambda: git_remote.refs(REPO).get(f"refs/heads/{branch_a}"), timeout=60, poll=0.005)
    fake_github.set_ref(REPO, f"heads/{branch_a}", sha)
    first = await shepherd.ended(a)
    second = await shepherd.ended(b)  # A's PR is open, not merged: stacking is enough
    assert second.state == State.COMPLETE and second.base_branch == first.branch
    pull = pull_for(fake_github, second.branch)
    assert pull["base"]["ref"] == first.branch
    assert git_remote.show(REPO, f"refs/heads/{second.branch}", f"issue-{a}.txt") == f"issue {a}\n"


async def test_cycle_is_reported_once_on_every_issue(shepherd_for, fake_github, git_remote):
    shepherd = await shepherd_for()
    one = fake_github.add_issue(REPO, title="One", body="depends on #2")["number"]
    two = fake_github.add_issue(REPO, title="Two", body="depends on #3")["number"]
    three = fake_github.add_issue(REPO, title="Three", body="blocked by #1 and #99")["number"]
    await label(shepherd, fake_github, one)
    await label(shepherd, fake_github, three)
    await shepherd.until(lambda: waiting(shepherd, one) and waiting(shepherd, three))
    await shepherd.settle()
    for number in (one, two, three):
        cycles = [x for x in bot_comments(fake_github, number) if "shepherd:dependency-cycle" in x["body"]]
        assert len(cycles) == 1, number
        assert "#1 → #2 → #3 → #1" in cycles[0]["body"] or "#3 → #1 → #2 → #3" in cycles[0]["body"]
    # The dependency Shepherd cannot see is reported once, on the issue that names it.
    unseen = [x for x in bot_comments(fake_github, three) if "shepherd:dependency-unseen" in x["body"]]
    assert len(unseen) == 1 and "`#99`" in unseen[0]["body"]
    assert fake_github.pulls(REPO) == []

    # Breaking the cycle by editing #1 lets it start.
    await shepherd.deliver("issues", payloads.issue_edited(fake_github, REPO, one, body="No dependencies now",
                                                           sender=MAINTAINER))
    assert (await shepherd.ended(one)).state == State.COMPLETE


async def test_a_dependency_in_another_installations_repository_is_reported_once_and_not_waited_for(
    shepherd_for, fake_github, git_remote
):
    shepherd = await shepherd_for()
    # The App is installed on other-org too, but that installation's token is not this one's: from
    # octo-org/widgets' installation, GitHub answers 404 for other-org/tools, as for a missing repository.
    fake_github.add_installation(8, account="other-org", repositories=["other-org/tools"])
    fake_github.add_repo("other-org/tools")
    elsewhere = fake_github.add_issue("other-org/tools", title="Upstream fix", body="Not ours")["number"]
    mine = fake_github.add_issue(REPO, title="Use the fix", body=f"blocked by other-org/tools#{elsewhere}")["number"]
    await label(shepherd, fake_github, mine)
    ended = await shepherd.ended(mine)

    assert ended.state == State.COMPLETE  # not held back by what it cannot see
    unseen = [x for x in bot_comments(fake_github, mine) if "shepherd:dependency-unseen" in x["body"]]
    assert len(unseen) == 1 and f"`other-org/tools#{elsewhere}`" in unseen[0]["body"]
    assert pull_for(fake_github, ended.branch) is not None
    # Nothing was written to the other installation's repository; the one refused call was the read
    # of the dependency, which GitHub answers 404 for a repository outside the token's installation.
    assert fake_github.comments("other-org/tools", elsewhere) == []
    refused = fake_github.take_violations()
    assert refused and all(f"GET /repos/other-org/tools/issues/{elsewhere} " in v for v in refused), refused


async def test_a_reader_who_drops_the_depends_on_line_changes_nothing(shepherd_for, fake_github, git_remote):
    """Only people who may start Shepherd may change what a session waits for: a read-only person's edit of
    a waiting issue leaves it waiting, and its status comment as it was."""
    shepherd = await shepherd_for()
    fake_github.set_permission(REPO, "rita", "read")
    first = fake_github.add_issue(REPO, title="Step A", body="First step")["number"]
    second = fake_github.add_issue(REPO, title="Step B", body=f"Depends on #{first}")["number"]
    await label(shepherd, fake_github, second)
    await shepherd.until(lambda: waiting(shepherd, second))
    await shepherd.settle()
    before = bot_comments(fake_github, second)
    assert before and all(f"#{first}" in c["body"] for c in before if "shepherd:status" in c["body"])

    await shepherd.deliver("issues", payloads.issue_edited(fake_github, REPO, second, body="No dependencies now",
                                                           sender="rita"))
    await shepherd.settle()

    assert waiting(shepherd, second)
    assert bot_comments(fake_github, second) == before
    assert fake_github.pulls(REPO) == []
