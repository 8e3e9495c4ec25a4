"""Security of Shepherd's git commands against a repository config an agent has tampered with."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from bot.git import Git, Mirror, check_clone_url, redact
from bot.push import push_branch
from bot.workspace import Workspaces
from tests.fakes.git_remote import TEST_TOKEN, GitRemote, accept_test_token, git_remote  # noqa: F401

REPO = "acme/web"
TRAP = "evil/trap"
BRANCH = "agent/issue-5-harden"
BOT = ("shepherd[bot]", "1+shepherd[bot]@users.noreply.github.com")


def agent_git(cwd: Path, *args: str) -> str:
    """Run git the way an agent in its worktree could: plain git, its own environment."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(cwd),
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
        },
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def marker_script(path: Path, marker: Path) -> Path:
    path.write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{marker}'\ncat > /dev/null\nexit 0\n")
    path.chmod(0o755)
    return path


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_file():
                continue
            if needle in path.read_bytes():
                hits.append(path)
    return hits


@pytest.fixture
def proxy_trap():
    """A listening socket an evil proxy setting would point at; it must see no connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def proxy_was_used(listener: socket.socket) -> bool:
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


async def test_git_runs_with_a_minimal_environment(tmp_path, monkeypatch):
    for name in ("GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET", "SHEPHERD_DASHBOARD_TOKEN"):
        monkeypatch.setenv(name, "super-secret-value")
    git = Git(tmp_path / "git")
    out = await git.run("-c", "alias.dumpenv=!env", "dumpenv")
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "super-secret-value" not in out
    assert env["HOME"] == str(git.home) and not any(git.home.iterdir())
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_ASKPASS"] == str(git.askpass)
    assert "SHEPHERD_GIT_PASSWORD" not in env  # no token asked for, none given


async def test_overrides_alone_stop_planted_hooks_and_fsmonitor(tmp_path):
    """Even in a repository whose config Shepherd does not rewrite, nothing planted runs."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    marker = tmp_path / "marker"
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "commit-msg", "post-commit", "reference-transaction"):
        marker_script(hooks / hook, marker)
    marker_script(repo / ".git" / "hooks" / "pre-commit", marker)
    agent_git(repo, "config", "core.hooksPath", str(hooks))
    agent_git(repo, "config", "core.fsmonitor", str(marker_script(tmp_path / "fsm", marker)))
    agent_git(repo, "config", "commit.gpgSign", "true")
    agent_git(repo, "config", "gpg.program", str(marker_script(tmp_path / "gpg", marker)))
    (repo / "a.txt").write_text("a\n")
    git = Git(tmp_path / "git")
    identity = {
        "GIT_AUTHOR_NAME": BOT[0], "GIT_AUTHOR_EMAIL": BOT[1],
        "GIT_COMMITTER_NAME": BOT[0], "GIT_COMMITTER_EMAIL": BOT[1],
    }
    await git.run("add", "a.txt", cwd=repo)
    await git.run("status", "--porcelain", cwd=repo)
    await git.run("commit", "-q", "-m", "x", cwd=repo, env=identity)
    assert agent_git(repo, "log", "--format=%s") == "x\n"
    assert not marker.exists()


async def test_tampered_config_cannot_redirect_run_code_or_see_the_token(
    tmp_path, git_remote, proxy_trap
):
    url = git_remote.create_repo(REPO, {"README.md": "# web\n"})
    trap_url = git_remote.create_repo(TRAP, {"README.md": "trap\n"})
    trap_refs = git_remote.refs(TRAP)
    spaces = Workspaces(tmp_path / "data")
    mirror = await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
    tree = await spaces.create_worktree(REPO, BRANCH, "main")

    # The agent, from its worktree, plants everything it can in the shared config.
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "marker"
    given = tmp_path / "credential-helper-saw"
    hooks = evil / "hooks"
    hooks.mkdir()
    for hook in ("pre-push", "reference-transaction", "post-checkout", "pre-commit",
                 "post-commit", "pre-auto-gc", "post-index-change"):
        marker_script(hooks / hook, marker)
    helper = evil / "helper"
    helper.write_text(f"#!/bin/sh\necho \"$*\" >> '{given}'\ncat >> '{given}'\n")
    helper.chmod(0o755)
    filter_script = marker_script(evil / "filter", marker)
    proxy = f"http://127.0.0.1:{proxy_trap.getsockname()[1]}"
    planted = [
        ("http.proxy", proxy),
        (f"http.{url}.proxy", proxy),
        ("core.hooksPath", str(hooks)),
        ("core.fsmonitor", str(marker_script(evil / "fsmonitor", marker))),
        ("credential.helper", str(helper)),
        (f"credential.{url}.helper", str(helper)),
        (f"url.{trap_url}.insteadOf", url),
        (f"url.{trap_url}.pushInsteadOf", url),
        ("remote.origin.url", trap_url),
        ("remote.origin.pushurl", trap_url),
        ("filter.evil.clean", str(filter_script)),
        ("filter.evil.smudge", str(filter_script)),
        ("diff.external", str(marker_script(evil / "diff", marker))),
        ("http.extraHeader", "X-Leak: yes"),
    ]
    for key, value in planted:
        agent_git(tree, "config", "--add", key, value)
    (mirror.path / "info").mkdir(exist_ok=True)
    (mirror.path / "info" / "attributes").write_text("* filter=evil diff=evil\n")
    assert str(helper) in agent_git(tree, "config", "--list")

    # Shepherd carries on: fetch, commit the leftovers, diff, push.
    human = git_remote.commit_on(REPO, "main", {"human.txt": "h\n"})
    await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
    (tree / "work.txt").write_text("work\n")
    sha = await spaces.commit_all(tree, "Leftovers", *BOT)
    assert await spaces.changed_files(tree, "main") == [("work.txt", 1, 0)]
    await push_branch(spaces.git, mirror, BRANCH, TEST_TOKEN, created_by_shepherd=True)

    # It went to the right remote, and nowhere else.
    assert git_remote.refs(REPO)[f"refs/heads/{BRANCH}"] == sha
    assert await spaces.git.run("rev-parse", "refs/remotes/origin/main", mirror=mirror) == human + "\n"
    assert git_remote.refs(TRAP) == trap_refs
    assert git_remote.requests_for(TRAP) == []
    assert not proxy_was_used(proxy_trap)
    # Nothing planted ran, and the credential helper never saw anything.
    assert not marker.exists(), marker.read_text()
    assert not given.exists()
    # The token is in no file Shepherd keeps and in no config an agent can list.
    assert files_containing(spaces.data_dir, TEST_TOKEN.encode()) == []
    assert TEST_TOKEN not in agent_git(tree, "config", "--list")
    assert TEST_TOKEN not in agent_git(mirror.path, "config", "--list")
    assert "insteadof" not in agent_git(mirror.path, "config", "--list").lower()


async def test_a_redirected_git_file_does_not_steer_shepherds_commands(tmp_path, git_remote):
    url = git_remote.create_repo(REPO, {"README.md": "# web\n"})
    spaces = Workspaces(tmp_path / "data")
    mirror = await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
    tree = await spaces.create_worktree(REPO, BRANCH, "main")
    decoy = tmp_path / "decoy"
    subprocess.run(["git", "init", "-q", str(decoy)], check=True)
    marker = tmp_path / "marker"
    agent_git(decoy, "config", "filter.evil.clean", str(marker_script(tmp_path / "f", marker)))
    (decoy / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    (tree / ".git").write_text(f"gitdir: {decoy / '.git'}\n")
    (tree / "work.txt").write_text("work\n")
    sha = await spaces.commit_all(tree, "Work", *BOT)
    assert not marker.exists()
    assert (await spaces.git.run("rev-parse", f"refs/heads/{BRANCH}", mirror=mirror)).strip() == sha
    assert agent_git(decoy, "rev-list", "--all") == ""  # nothing was committed into the decoy


async def test_token_is_never_on_a_command_line_while_a_push_is_in_flight(tmp_path):
    in_flight = threading.Event()
    captured = threading.Event()

    def authorize(token: str, repo: str, write: bool) -> bool:
        if write and not in_flight.is_set():
            in_flight.set()
            captured.wait(20)  # hold the push open until the test has looked at every process
        return accept_test_token(token, repo, write)

    remote = GitRemote(tmp_path / "remote", authorize)
    try:
        url = remote.create_repo(REPO, {"README.md": "# web\n"})
        spaces = Workspaces(tmp_path / "data")
        mirror = await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
        tree = await spaces.create_worktree(REPO, BRANCH, "main")
        (tree / "work.txt").write_text("work\n")
        sha = await spaces.commit_all(tree, "Work", *BOT)
        push = asyncio.create_task(
            push_branch(spaces.git, mirror, BRANCH, TEST_TOKEN, created_by_shepherd=True)
        )
        assert await asyncio.to_thread(in_flight.wait, 20)
        processes = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        captured.set()
        await push
    finally:
        captured.set()
        remote.stop()
    assert any("push" in line and url in line for line in processes.splitlines())
    assert TEST_TOKEN not in processes
    assert remote.refs(REPO)[f"refs/heads/{BRANCH}"] == sha


def test_redaction_masks_tokens_and_url_credentials():
    text = "fatal: unable to access 'https://x-access-token:abc123@github.com/a/b.git/': ghs_abcdefghijklmnop"
    masked = redact(text, ("abc123",))
    assert "abc123" not in masked and "ghs_abcdefghijklmnop" not in masked
    assert "https://***@github.com/a/b.git/" in masked


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/a/b.git\n[core]\n\tfsmonitor = /tmp/x",
        "https://x-access-token:t@github.com/a/b.git",
        "ext::sh -c touch% /tmp/x",
        "file:///tmp/repo.git",
        "ssh://git@github.com/a/b.git",
        'https://github.com/a/b.git" evil',
    ],
)
async def test_unsafe_clone_urls_are_refused_before_git_runs(tmp_path, url):
    with pytest.raises(ValueError):
        check_clone_url(url)
    spaces = Workspaces(tmp_path / "data")
    with pytest.raises(ValueError):
        await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
    assert not spaces.mirror_path(REPO).exists()
    with pytest.raises(ValueError):
        Mirror(REPO, tmp_path / "m.git", url).known_good_config()
