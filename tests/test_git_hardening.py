"""Security of Shepherd's git commands against a repository config an agent has tampered with."""

from __future__ import annotations

import asyncio
import os
import socket
import shutil
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from bot.workspace.git import REMOTE_NAME as REMOTE
from bot.redaction import redact
from bot.workspace.git import Git, GitError, Mirror, check_clone_url
from bot.workspace.push import push_branch
from bot.workspace.workspaces import WorkspaceError, Workspaces
from tests.fakes.git_remote import TEST_TOKEN, GitRemote, accept_test_token, git_remote  # noqa: F401

REPO = "acme/web"
TRAP = "evil/trap"
BRANCH = "agent/issue-5-harden"
BOT = ("shepherd[bot]", "1+shepherd[bot]@users.noreply.github.com")


def agent_git(cwd: Path, *args: str) -> str:
    """Run git the way an agent in its worktree could: plain git, its own environment."""
    return subprocess.run(
        # The session repository belongs to the agent's uid; this test plays the agent as root.
        ["git", "-c", "safe.directory=*", *args],
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
    assert not any(name.endswith("PASSWORD") for name in env)  # a token never travels in the environment


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
    # In its own repository, and (as if it had escaped its box) in the mirror too.
    for key, value in planted:
        agent_git(tree, "config", "--add", key, value)
        agent_git(mirror.path, "config", "--add", key, value)
    (mirror.path / "info").mkdir(exist_ok=True)
    (mirror.path / "info" / "attributes").write_text("* filter=evil diff=evil\n")
    (tree / ".git" / "info" / "attributes").write_text("* filter=evil diff=evil\n")
    assert str(helper) in agent_git(tree, "config", "--list")

    # Shepherd carries on: fetch, commit the leftovers, diff, push.
    human = git_remote.commit_on(REPO, "main", {"human.txt": "h\n"})
    await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
    (tree / "work.txt").write_text("work\n")
    sha = await spaces.commit_all(tree, "Leftovers", *BOT)
    assert await spaces.changed_files(tree, "main") == [("work.txt", 1, 0)]
    assert await spaces.export_branch(tree, BRANCH) == sha
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
    shutil.rmtree(tree / ".git")
    (tree / ".git").write_text(f"gitdir: {decoy / '.git'}\n")
    (tree / "work.txt").write_text("work\n")
    # Shepherd's git on the session repository runs in the agent's box, where the decoy does not
    # exist: the commit fails with a clear error instead of landing anywhere.
    with pytest.raises(WorkspaceError):
        await spaces.commit_all(tree, "Work", *BOT)
    assert not marker.exists()
    assert await spaces.git.run("for-each-ref", f"refs/heads/{BRANCH}", mirror=mirror) == ""
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
        await spaces.export_branch(tree, BRANCH)
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
    assert "https://x-access-token:[redacted]@github.com/a/b.git/" in masked


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


# -- the token travels through an inherited pipe --------------------------------------------------


async def bare_mirror(tmp_path: Path, git: Git, url: str) -> Mirror:
    """A bare mirror of `url` made with Shepherd's runner alone (no workspace layer)."""
    path = tmp_path / "mirror.git"
    await git.run("init", "--quiet", "--bare", str(path))
    return Mirror(REPO, path, url)


def recording_git(folder: Path, runs: int = 1) -> Path:
    """A stand-in for the git binary that records its environment and arguments, then runs git `runs` times."""
    script = folder / "recording-git"
    body = "\n".join(['git "$@" || exit $?'] * (runs - 1) + ['exec git "$@"'])
    script.write_text(
        "#!/bin/sh\n"
        f"env > '{folder / 'environment'}'\n"
        f"printf '%s\\n' \"$@\" > '{folder / 'arguments'}'\n"
        f"{body}\n"
    )
    script.chmod(0o755)
    return script


def descendants_holding(needle: bytes, ancestor: int) -> tuple[list[str], list[str]]:
    """Scan every process below `ancestor`: where `needle` shows, and every command line seen."""
    hits, seen = [], []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if ancestor not in {parent.pid for parent in psutil.Process(int(entry.name)).parents()}:
                continue
            for name in ("environ", "cmdline"):
                data = Path(entry.path, name).read_bytes()
                if name == "cmdline":
                    seen.append(data.replace(b"\0", b" ").decode(errors="replace"))
                if needle in data:
                    hits.append(f"{entry.name}/{name}")
        except (OSError, psutil.Error):
            continue  # it ended while we looked
    return hits, seen


async def test_the_token_is_in_no_environment_or_command_line_of_any_process_during_fetch_and_push(tmp_path):
    """Every process below the test, read while a fetch and a push are held open by the remote."""
    sweeps_done = threading.Condition()
    sweeps = [0]
    held: set[bool] = set()
    hits: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def authorize(token: str, repo: str, write: bool) -> bool:
        if accept_test_token(token, repo, write) and write not in held:
            held.add(write)
            with sweeps_done:  # hold this request until the scanner swept a few times meanwhile
                target = sweeps[0] + 3
                sweeps_done.wait_for(lambda: sweeps[0] >= target, timeout=20)
        return accept_test_token(token, repo, write)

    def scan() -> None:
        while not stop.is_set():
            found, lines = descendants_holding(TEST_TOKEN.encode(), os.getpid())
            hits.extend(found)
            seen.extend(lines)
            with sweeps_done:
                sweeps[0] += 1
                sweeps_done.notify_all()

    remote = GitRemote(tmp_path / "remote", authorize)
    scanner = threading.Thread(target=scan, daemon=True)
    scanner.start()
    try:
        url = remote.create_repo(REPO, {"README.md": "# web\n"})
        git = Git(tmp_path / "git")
        mirror = await bare_mirror(tmp_path, git, url)
        await git.run("fetch", "--quiet", REMOTE, mirror=mirror, token=TEST_TOKEN, timeout=60)
        await git.run("update-ref", f"refs/heads/{BRANCH}", "refs/remotes/origin/main", mirror=mirror)
        await git.run(
            "push", "--quiet", url, f"refs/heads/{BRANCH}:refs/heads/{BRANCH}",
            mirror=mirror, token=TEST_TOKEN, timeout=60,
        )
    finally:
        stop.set()
        scanner.join(10)
        remote.stop()
    assert held == {False, True}  # both the fetch and the push were held while the scanner swept
    assert f"refs/heads/{BRANCH}" in remote.refs(REPO)
    # The scanner did see the credentialed commands, helper included, with no token anywhere.
    assert any("fetch" in line and "credential.helper=!" in line for line in seen)
    assert any("push" in line and "credential.helper=!" in line for line in seen)
    assert hits == []


async def test_a_credentialed_git_gets_no_token_in_its_environment_or_arguments(tmp_path, git_remote):
    url = git_remote.create_repo(REPO, {"README.md": "# web\n"})
    records = tmp_path / "records"
    records.mkdir()
    git = Git(tmp_path / "git", binary=str(recording_git(records)))
    mirror = await bare_mirror(tmp_path, git, url)
    await git.run("fetch", "--quiet", REMOTE, mirror=mirror, token=TEST_TOKEN, timeout=60)

    environment = (records / "environment").read_text()
    arguments = (records / "arguments").read_text()
    assert git_remote.refs(REPO)["refs/heads/main"] == (
        await git.run("rev-parse", "refs/remotes/origin/main", mirror=mirror)
    ).strip()  # the token did reach the remote, through the helper
    assert TEST_TOKEN not in environment and TEST_TOKEN not in arguments
    assert "GIT_TERMINAL_PROMPT=0" in environment.splitlines()
    assert "credential.helper=" in arguments.splitlines()  # every other helper dropped first
    assert any(line.startswith("credential.helper=!") for line in arguments.splitlines())
    # The askpass git would fall back to answers nothing.
    answer = subprocess.run([str(git.askpass), "Password for 'http://x-access-token@host': "],
                            capture_output=True, text=True)
    assert answer.returncode != 0 and answer.stdout == ""
    # And the environment the runner builds has no token to give.
    built = git.environment({"GIT_DIR": str(mirror.path)})
    assert TEST_TOKEN not in "".join(built.values())
    assert not any("PASSWORD" in name or "TOKEN" in name for name in built)


async def test_a_second_credential_request_gets_nothing_and_git_fails_instead_of_hanging(tmp_path, git_remote):
    """Two git runs share the one pipe: the first reads the credential, the second reads end-of-file."""
    url = git_remote.create_repo(REPO, {"README.md": "# web\n"})
    records = tmp_path / "records"
    records.mkdir()
    git = Git(tmp_path / "git", binary=str(recording_git(records, runs=2)))
    mirror = await bare_mirror(tmp_path, git, url)
    with pytest.raises(GitError) as failure:
        await git.run("fetch", "--quiet", REMOTE, mirror=mirror, token=TEST_TOKEN, timeout=30)
    message = str(failure.value)
    assert "terminal prompts disabled" in message  # no answer, no prompt: git gave up
    assert TEST_TOKEN not in message
    authorised = [r for r in git_remote.requests_for(REPO) if r.authorised]
    assert authorised  # the first run fetched with the token from the pipe


async def test_git_errors_never_carry_the_token(tmp_path, git_remote):
    url = git_remote.create_repo(REPO, {"README.md": "# web\n"})
    git = Git(tmp_path / "git")
    mirror = await bare_mirror(tmp_path, git, url)
    wrong = "ghs_" + "W" * 36
    with pytest.raises(GitError) as failure:
        await git.run("fetch", REMOTE, f"https://x-access-token:{wrong}@example.invalid/a/b.git",
                      mirror=mirror, token=wrong, timeout=60)
    error = failure.value
    assert wrong not in str(error) and wrong not in error.stderr and wrong not in " ".join(error.args_run)
    assert "x-access-token:[redacted]@example.invalid" in " ".join(error.args_run)
