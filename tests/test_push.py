"""The one push function: what it refuses before git runs, and what lands on the remote."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.workspace.git import GitError
from bot.workspace.push import PushRefused, agent_branch, push_branch
from bot.workspace.workspaces import Workspaces
from tests.fakes.git_remote import TEST_TOKEN, GitRemote, git_remote  # noqa: F401

REPO = "acme/web"
BRANCH = "agent/issue-3-fix-typo"
BOT = ("shepherd[bot]", "1+shepherd[bot]@users.noreply.github.com")


@pytest.fixture
async def session(tmp_path: Path, git_remote: GitRemote):
    url = git_remote.create_repo(REPO, {"README.md": "# web\n"})
    spaces = Workspaces(tmp_path / "data")
    mirror = await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
    tree = await spaces.create_worktree(REPO, BRANCH, "main")
    (tree / "fix.txt").write_text("fixed\n")
    sha = await spaces.commit_all(tree, "Fix the typo", *BOT)
    await spaces.export_branch(tree, BRANCH)  # the agent's commits reach the mirror only this way
    return spaces, mirror, tree, sha


REFUSED = [
    "main",
    "refs/heads/main",
    "agent/../main",
    "agent/./x",
    "agent//x",
    "agent",
    "agent/",
    "+agent/x",
    ":agent/x",
    "agent/x:refs/heads/main",
    "refs/tags/v1",
    "refs/tags/agent/x",
    "refs/heads/refs/heads/main",
    "refs/notes/agent/x",
    "agent/x.lock",
    "agent/x y",
    "agent/x@{1}",
    "agent/-x",
    "Agent/x",
    "",
]


@pytest.mark.parametrize("branch", REFUSED)
async def test_refs_outside_agent_are_refused_before_git_runs(session, git_remote, branch):
    spaces, mirror, _, _ = session
    before = list(git_remote.requests)
    refs_before = git_remote.refs(REPO)
    with pytest.raises(PushRefused):
        await push_branch(spaces.git, mirror, branch, TEST_TOKEN, created_by_shepherd=True)
    assert git_remote.requests == before  # nothing reached the remote
    assert git_remote.refs(REPO) == refs_before


def test_agent_branches_are_accepted_in_both_spellings():
    assert agent_branch("agent/issue-3-fix-typo") == "agent/issue-3-fix-typo"
    assert agent_branch("refs/heads/agent/issue-3-fix-typo") == "agent/issue-3-fix-typo"
    assert agent_branch("agent/stack/issue-4") == "agent/stack/issue-4"


async def test_push_lands_on_the_remote_with_token_auth(session, git_remote):
    spaces, mirror, _, sha = session
    pushed = await push_branch(spaces.git, mirror, BRANCH, TEST_TOKEN, created_by_shepherd=True)
    assert pushed == sha
    assert git_remote.refs(REPO)[f"refs/heads/{BRANCH}"] == sha
    assert git_remote.show(REPO, BRANCH, "fix.txt") == "fixed\n"
    assert git_remote.messages(REPO, BRANCH)[0] == "Fix the typo"
    writes = [r for r in git_remote.requests_for(REPO) if r.write]
    assert writes and any(r.authorised and r.user == "x-access-token" for r in writes)
    assert all(r.authorised for r in writes if r.method == "POST")


async def test_push_with_a_wrong_token_is_rejected_and_redacted(session, git_remote):
    spaces, mirror, _, _ = session
    wrong = "ghs_WrongTokenWrongTokenWrongToken000"
    with pytest.raises(GitError) as failure:
        await push_branch(spaces.git, mirror, BRANCH, wrong, created_by_shepherd=True)
    assert wrong not in str(failure.value)
    assert f"refs/heads/{BRANCH}" not in git_remote.refs(REPO)


async def test_a_branch_shepherd_did_not_create_is_never_force_pushed(session, git_remote):
    spaces, mirror, _, _ = session
    human = git_remote.commit_on(REPO, BRANCH, {"human.txt": "mine\n"})
    with pytest.raises(GitError):
        await push_branch(
            spaces.git, mirror, BRANCH, TEST_TOKEN,
            created_by_shepherd=False, expected_remote_sha=human,
        )
    assert git_remote.refs(REPO)[f"refs/heads/{BRANCH}"] == human


async def test_own_branch_is_overwritten_only_under_a_matching_lease(session, git_remote):
    spaces, mirror, _, sha = session
    someone = git_remote.commit_on(REPO, BRANCH, {"other.txt": "x\n"})
    stale = "0" * 40
    with pytest.raises(GitError):
        await push_branch(
            spaces.git, mirror, BRANCH, TEST_TOKEN,
            created_by_shepherd=True, expected_remote_sha=stale,
        )
    assert git_remote.refs(REPO)[f"refs/heads/{BRANCH}"] == someone
    with pytest.raises(GitError):  # no lease: a plain push, which the remote rejects
        await push_branch(spaces.git, mirror, BRANCH, TEST_TOKEN, created_by_shepherd=True)
    await push_branch(
        spaces.git, mirror, BRANCH, TEST_TOKEN,
        created_by_shepherd=True, expected_remote_sha=someone,
    )
    assert git_remote.refs(REPO)[f"refs/heads/{BRANCH}"] == sha


async def test_a_lease_that_is_not_a_commit_id_is_refused(session, git_remote):
    spaces, mirror, _, _ = session
    before = list(git_remote.requests)
    with pytest.raises(PushRefused):
        await push_branch(
            spaces.git, mirror, BRANCH, TEST_TOKEN,
            created_by_shepherd=True, expected_remote_sha="main",
        )
    assert git_remote.requests == before


async def test_two_sessions_push_at_once_from_one_mirror(session, git_remote):
    spaces, mirror, _, sha = session
    other = "agent/issue-4-second"
    tree = await spaces.create_worktree(REPO, other, "main")
    (tree / "second.txt").write_text("2\n")
    second = await spaces.commit_all(tree, "Second", *BOT)
    await spaces.export_branch(tree, other)
    await asyncio.gather(
        push_branch(spaces.git, mirror, BRANCH, TEST_TOKEN, created_by_shepherd=True),
        push_branch(spaces.git, mirror, other, TEST_TOKEN, created_by_shepherd=True),
    )
    refs = git_remote.refs(REPO)
    assert refs[f"refs/heads/{BRANCH}"] == sha and refs[f"refs/heads/{other}"] == second
