"""Reconciliation (SPEC §6) against the strict fake GitHub, through the real app: what happened while
Shepherd was down is caught up once, and running it again changes nothing."""

from __future__ import annotations

import pytest

from bot.ingest.reconcile import reconcile
from bot.core.session import State
from tests.e2e_support import (  # noqa: F401 - shepherd_with is a fixture
    FAST_POLICY,
    MAINTAINER,
    REPO,
    bot_comments,
    shepherd_with,
    status_comments,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

DONE_AGENT = """
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


async def reconcile_again(shepherd):
    assembly = shepherd.services.assembly
    return await reconcile(assembly.github, assembly.engine, policies=assembly.policies,
                           permissions=assembly.permissions, store=shepherd.services.store)


def put_label(fake, number: int, label: str) -> None:
    """A label added while Shepherd was down: on the issue, but no delivery ever arrives."""
    payloads.issue_labeled(fake, REPO, number, label, sender=MAINTAINER)


async def test_labelled_issue_without_a_session_gets_exactly_one(shepherd_with, fake_github, git_remote):
    async def before_start():
        fake_github.add_issue(REPO, title="Add a greeting", user=MAINTAINER)
        put_label(fake_github, 1, "agent:go")
        fake_github.add_issue(REPO, title="Not labelled", user=MAINTAINER)

    shepherd = await shepherd_with(DONE_AGENT, before_start=before_start)
    # The start-up sweep found the issue and started it as its author.
    session = await shepherd.until(lambda: shepherd.session(1))
    assert session.trigger_actor == MAINTAINER
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE
    assert shepherd.session(2) is None

    again = await reconcile_again(shepherd)
    await shepherd.settle()
    assert again.started == [] and again.linked == [] and again.ended == []
    assert len(fake_github.pulls(REPO)) == 1
    assert len(status_comments(fake_github, 1)) == 1
    assert fake_github.reactions(REPO, 1) == ["eyes"]
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "hello.txt") == "hello\n"


async def test_a_start_reads_the_policy_once_and_runs_on_the_base_that_reading_named(
        shepherd_with, fake_github, git_remote):
    """Issue 13: the label's meaning and the session come from one reading of `.github/shepherd.yml`. Here
    the file changes between a first and a second reading: the session must start on the first one's base."""
    readings: list[str | None] = []

    def policy_file(path: str, ref: str | None) -> str | None:
        if path != ".github/shepherd.yml":
            return None
        readings.append(ref)
        return FAST_POLICY + ("max_turns: 5\n" if len(readings) == 1 else "base_branch: elsewhere\n")

    async def before_start():
        fake_github.remove_file(REPO, ".github/shepherd.yml")
        fake_github.set_file_source(REPO, policy_file)
        fake_github.add_issue(REPO, title="Add a greeting", user=MAINTAINER)
        put_label(fake_github, 1, "agent:go")

    shepherd = await shepherd_with(DONE_AGENT, before_start=before_start)
    # The start-up sweep found the label, read the policy for its meaning, and started the session.
    session = await shepherd.until(lambda: shepherd.session(1))
    assert readings == ["main"]
    assert (session.base_branch, session.limits.max_turns) == ("main", 5)
    assert (await shepherd.ended(1)).state == State.COMPLETE
    [pull] = fake_github.pulls(REPO)
    assert pull["base"]["ref"] == "main"


async def test_a_label_added_by_someone_who_may_not_drive_is_skipped_quietly(shepherd_with, fake_github, git_remote):
    async def before_start():
        fake_github.set_permission(REPO, "carol", "read")
        fake_github.add_issue(REPO, title="From a reader", user=MAINTAINER)
        payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender="carol")

    shepherd = await shepherd_with(DONE_AGENT, before_start=before_start)
    done = await reconcile_again(shepherd)
    await shepherd.settle()
    assert done.skipped == [f"{REPO}#1"] and done.started == []
    assert shepherd.session(1) is None
    assert fake_github.comments(REPO, 1) == [] and fake_github.reactions(REPO, 1) == []


async def test_pull_request_merged_while_down_is_cleaned_up(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(DONE_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    [pull] = fake_github.pulls(REPO)
    worktree = shepherd.engine.workspaces.worktree_path(REPO, session.branch)
    assert worktree.is_dir()

    fake_github.merge_pull(REPO, pull["number"], by=MAINTAINER)  # no delivery reaches Shepherd
    done = await reconcile_again(shepherd)
    await shepherd.until(lambda: not worktree.exists(), timeout=30)
    await shepherd.settle()

    assert done.ended == [f"{REPO}#{pull['number']}"]
    assert shepherd.session(1).pr_state == "merged"
    [status] = status_comments(fake_github, 1)
    assert "merged" in status["body"]
    assert (await reconcile_again(shepherd)).ended == []
    assert len(bot_comments(fake_github, 1)) == 1


async def test_a_label_shepherd_refused_stays_refused_after_reconciliation(shepherd_with, fake_github, git_remote):
    """A triage user labels a maintainer's issue; Shepherd refuses once. The sweep (and a restart's
    start-up pass, the same function) must not start it "as its author", nor refuse a second time."""
    shepherd = await shepherd_with(DONE_AGENT)
    fake_github.set_permission(REPO, "tess", "triage")
    fake_github.add_issue(REPO, title="Add a greeting", user=MAINTAINER)
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender="tess"))
    await shepherd.settle()
    refusal = bot_comments(fake_github, 1)
    assert len(refusal) == 1 and shepherd.session(1) is None

    for _ in range(2):
        done = await reconcile_again(shepherd)
        await shepherd.settle()
        assert done.started == [] and done.skipped == [f"{REPO}#1"]
    assert shepherd.session(1) is None
    assert bot_comments(fake_github, 1) == refusal
    assert fake_github.reactions(REPO, 1) == []
    assert fake_github.pulls(REPO) == []


async def test_a_label_a_bot_added_starts_nothing(shepherd_with, fake_github, git_remote):
    async def before_start():
        fake_github.add_issue(REPO, title="Bump a dependency", user=MAINTAINER)
        payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender="renovate[bot]")

    shepherd = await shepherd_with(DONE_AGENT, before_start=before_start)
    done = await reconcile_again(shepherd)
    await shepherd.settle()
    assert done.started == [] and f"{REPO}#1" in done.skipped
    assert shepherd.session(1) is None
    assert fake_github.comments(REPO, 1) == [] and fake_github.reactions(REPO, 1) == []


async def test_a_maintainer_s_label_on_a_reader_s_issue_starts_as_the_maintainer(shepherd_with, fake_github, git_remote):
    async def before_start():
        fake_github.set_permission(REPO, "carol", "read")
        fake_github.add_issue(REPO, title="Add a greeting", user="carol")
        put_label(fake_github, 1, "agent:go")  # by the maintainer, while Shepherd was down

    shepherd = await shepherd_with(DONE_AGENT, before_start=before_start)
    session = await shepherd.until(lambda: shepherd.session(1))
    assert session.trigger_actor == MAINTAINER
    assert (await shepherd.ended(1)).state == State.COMPLETE
    assert len(fake_github.pulls(REPO)) == 1


async def test_an_engine_label_added_while_down_starts_that_engine(aiohttp_client, fake_github, git_remote, tmp_path):
    """SPEC §3 `engines`: an engine label is a trigger label, for reconciliation too."""
    from tests.conftest import settings_for
    from tests.e2e_support import start_shepherd
    from tests.runtime_support import FAST_POLICY, agent_script, prepare_repo

    prepare_repo(fake_github, git_remote, policy=FAST_POLICY + "engines:\n  agent:script: command\n")
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    put_label(fake_github, 1, "agent:script")
    command = agent_script(tmp_path, DONE_AGENT)
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="claude", SHEPHERD_AGENT_COMMAND=command)
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    session = await shepherd.until(lambda: shepherd.session(1))
    assert session.engine == "command" and session.trigger_actor == MAINTAINER
    assert (await shepherd.ended(1)).state == State.COMPLETE
    assert len(fake_github.pulls(REPO)) == 1


async def test_the_bakeoff_label_added_while_down_starts_a_bakeoff(aiohttp_client, fake_github, git_remote, tmp_path):
    """SPEC §8: the bake-off label is a trigger label, for reconciliation too: one session, two attempts."""
    from tests.conftest import settings_for
    from tests.e2e_support import start_shepherd
    from tests.runtime_support import FAST_POLICY, agent_script, prepare_repo

    prepare_repo(fake_github, git_remote, policy=FAST_POLICY)
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    put_label(fake_github, 1, "agent:bakeoff")
    command = agent_script(tmp_path, DONE_AGENT)
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command", SHEPHERD_AGENT_COMMAND=command)
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    session = await shepherd.until(lambda: shepherd.session(1))
    assert (session.engine, session.rival, session.trigger_actor) == ("command", "command", MAINTAINER)
    assert (await shepherd.ended(1)).state == State.COMPLETE
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"].startswith("agent/issue-1-add-a-greeting-command") and "Shepherd chose" in pull["body"]
