"""Workspaces on disk: one bare mirror per repository, one repository of its own per session, and their setup.

Layout under the data folder (folders 0700 unless said otherwise):

    git/                          Shepherd's empty HOME for git and the empty hooks folder
    sandbox/                      the passwd and group files agents see inside their box
    mirrors/<owner>/<repo>.git    bare mirror, Shepherd's alone; remote branches under refs/remotes/origin/*,
                                  imported session branches under refs/heads/agent/*
    worktrees/<owner>/<repo>/<slug>     one session repository, owned by the agent's uid
    worktrees/<owner>/<repo>/.pool/<n>  ready repositories, detached at the default branch's tip
    exports/<n>/                  a short-lived folder where a box leaves the bundle of a session's work
    sessions/<session_id>         the session's control folder (0755: the agent reads its prompt there)

Why a repository of its own and not a `git worktree`: a worktree writes its objects, refs and config
into the mirror, so an agent could rewrite the mirror's config or another session's branch. Here
each session repository borrows the mirror's objects read-only (`objects/info/alternates`, the
mirror's `objects` bound read-only into the box) and writes only its own `.git`.

Trust: nothing an agent writes is read by a Shepherd git command. Every git command on a session
repository (create, status, diff, commit leftovers) runs inside the agent's sandbox, as the agent,
with no secret; its output is data with a size limit. The session's commits reach the mirror as a
bundle made in the box, copied out without following links, verified and fetched with `fsck`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Sequence

import psutil

from bot.core.attempts import split_attempt_id
from bot.core.session import Session
from bot.workspace.git import FETCH_REFSPEC, Git, GitError, Mirror, check_clone_url
from bot.agent.processes import signal_group
from bot.agent.sandbox import BOX_GIT_SCRIPT, Box, Sandbox

log = logging.getLogger(__name__)

KEPT_UNPUSHED = "the worktree has {count} commit(s) that were never pushed"
KEPT_DIRTY = "the worktree has uncommitted changes"
BAD_REPO_NAME = "not an owner/name repository name: {name!r}"
BAD_BRANCH = "not a session branch: {branch!r}"
BRANCH_EXISTS = "branch {branch!r} already exists; continue from it or pick a new name"
NO_BRANCH_TO_CONTINUE = "there is no branch {branch!r} to continue from"
UNKNOWN_MIRROR = "no mirror for {name}; fetch it first"
BAD_ENV_FILE = "env_files entry {source!r} -> {target!r} leaves the worktree"
SETUP_FAILED = "setup command {index} of {total} failed with exit code {code}: {command}"
SETUP_TIMED_OUT = "setup command {index} of {total} timed out: {command}"
BOX_FAILED = "git in the agent's sandbox failed ({code}): {stderr}"
BOX_TIMED_OUT = "git in the agent's sandbox took longer than {seconds:.0f} s and was stopped"
BAD_BUNDLE = "the session's work could not be taken from its sandbox: {why}"
EXCLUDE_HEADER = "# Shepherd: env_files copies, never committed"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_BRANCH = re.compile(r"^agent/[A-Za-z0-9._/-]+$")
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
POOL_FOLDER = ".pool"
DIRTY_EXIT = 3
BOX_TIMEOUT_S = 600.0
OUTPUT_LIMIT = 8 * 1024 * 1024
BUNDLE_LIMIT = 4 * 1024 * 1024 * 1024
BUNDLE_NAME = "work.bundle"

# Inside the box, every git command of Shepherd's starts through `bot/agent/box_git.py`: these options switch
# hooks, the fsmonitor and the pager off by name, and the script resets every filter driver the
# agent's configuration names, in nested repositories too.
GIT_OPTIONS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.pager=cat",
               "-c", "commit.gpgSign=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false")

# Run inside the box with Shepherd's interpreter: lines added and removed per changed file since the
# merge base, untracked files counted without following links and without reading FIFOs or devices.
CHANGED_FILES_SCRIPT = r"""
import json, os, stat, subprocess, sys
base, git = sys.argv[1], sys.argv[2:]
def run(*args):
    return subprocess.run(git + list(args), capture_output=True, check=True).stdout.decode("utf-8", "replace")
try:
    merge_base = run("merge-base", "HEAD", base).strip() or base
except subprocess.CalledProcessError:
    merge_base = base
changes = {}
for record in run("diff", "--numstat", "-z", "--no-renames", "--no-ext-diff", "--no-textconv", "--ignore-submodules=dirty", merge_base, "--").split("\0"):
    if record and record.count("\t") >= 2:
        added, removed, path = record.split("\t", 2)
        changes[path] = (int(added) if added.isdigit() else 0, int(removed) if removed.isdigit() else 0)
for path in run("ls-files", "-z", "--others", "--exclude-standard").split("\0")[:20000]:
    if not path:
        continue
    lines = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                data = os.read(fd, 8 << 20)
                if b"\0" not in data[:8000]:
                    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        finally:
            os.close(fd)
    except OSError:
        pass
    changes[path] = (lines, 0)
json.dump(sorted([p, a, r] for p, (a, r) in changes.items()), sys.stdout)
"""


# The worktree's files that differ from the base, each with a digest of its content and, for a small text
# file, the content itself (the loop watch shows a flip-flopping change from it). Read in the box, like
# the changed files above, so a link the agent planted cannot show Shepherd a file outside the worktree.
FILE_STATES_SCRIPT = r"""
import hashlib, json, os, stat, subprocess, sys
base, limit, git = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def run(*args):
    return subprocess.run(git + list(args), capture_output=True, check=True).stdout.decode("utf-8", "replace")
try:
    merge_base = run("merge-base", "HEAD", base).strip() or base
except subprocess.CalledProcessError:
    merge_base = base
paths = set(p for p in run("diff", "--name-only", "-z", "--no-renames", "--ignore-submodules=dirty", merge_base, "--").split("\0") if p)
paths |= set(p for p in run("ls-files", "-z", "--others", "--exclude-standard").split("\0")[:20000] if p)
rows = []
for path in sorted(paths)[:500]:
    digest, text = "missing", None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                data = os.read(fd, 8 << 20)
                digest = hashlib.sha256(data).hexdigest()[:16]
                if len(data) <= limit and b"\0" not in data:
                    text = data.decode("utf-8", "replace")
            else:
                digest = "not-a-file"
        finally:
            os.close(fd)
    except OSError:
        pass
    rows.append([path, digest, text])
json.dump(rows, sys.stdout)
"""
FILE_STATE_TEXT_LIMIT = 32 * 1024


class WorkspaceError(Exception):
    """A workspace operation cannot be carried out."""


class WorkspaceKept(WorkspaceError):
    """A worktree was kept rather than removed, with the reason a person can read."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class SetupResult:
    """How the repository's setup commands went."""

    ok: bool
    failed_command: str | None = None
    failed_index: int | None = None
    returncode: int | None = None
    message: str | None = None


def _mkdir_private(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)
    return path


def _split_name(full_name: str) -> tuple[str, str]:
    if not _NAME.match(full_name) or ".." in full_name.split("/"):
        raise WorkspaceError(BAD_REPO_NAME.format(name=full_name))
    owner, repo = full_name.split("/")
    return owner, repo


def branch_slug(branch: str) -> str:
    """The worktree folder name of a session branch: the part after `agent/`, one level."""
    if not _BRANCH.match(branch) or ".." in branch:
        raise WorkspaceError(BAD_BRANCH.format(branch=branch))
    return branch.removeprefix("agent/").replace("/", "-")


def _making_path(path: Path) -> Path:
    """Where the repository that becomes `path` is made: beside it, hidden, never a session's own name."""
    return path.parent / f".{path.name}.making"


def default_sandbox(data_dir: Path) -> Sandbox:
    return Sandbox.build("bwrap", agent_user=None, state_dir=data_dir / "sandbox")


def session_folder(session_id: str) -> str:
    """`owner/repo#12/3` → `owner__repo__12__3`: the one folder name of a session (owners have no `_`)."""
    issue, _, attempt = session_id.rpartition("/")
    repo, _, number = issue.rpartition("#")
    owner, _, name = repo.partition("/")
    return f"{owner}__{name}__{number}__{attempt}"


def clear_stale_index_lock(worktree: Path) -> bool:
    """Remove `.git/index.lock` when no process works in the worktree: a git killed with Shepherd (its box
    dies with its parent) leaves the lock behind, and every later git that writes the index would refuse.
    A lock with a live process in the worktree is left to it. True when a lock was removed."""
    git_dir = worktree / ".git"
    lock = git_dir / "index.lock"
    if git_dir.is_symlink() or not git_dir.is_dir() or not lock.exists():
        return False  # a `.git` file or link (the agent's doing) is never followed
    inside = os.path.realpath(worktree)
    for process in psutil.process_iter(["cwd"]):
        where = process.info.get("cwd")
        if where and (where == inside or where.startswith(inside + os.sep)):
            return False
    lock.unlink(missing_ok=True)
    log.warning("removed a stale index.lock in %s (left by a git that was killed)", worktree)
    return True


def folder_of(session: Session) -> str:
    """The session's control folder (and box) name; a bake-off attempt's is `<the session's>-<name>`, and
    a judged bake-off goes on in its winner's, where the winning agent's own session (its HOME, for a
    native resume) lives."""
    session_id, name = split_attempt_id(session.id)
    if name is None and session.bakeoff_winner is not None and session.attempts:
        name = session.bakeoff_winner
    return session_folder(session_id) + (f"-{name}" if name is not None else "")


class Workspaces:
    """Mirrors, session repositories, session folders and ports under one data folder."""

    def __init__(
        self,
        data_dir: Path,
        git: Git | None = None,
        *,
        pool_size: int = 0,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.data_dir = _mkdir_private(Path(data_dir))
        self.git = git or Git(self.data_dir / "git")
        self.pool_size = pool_size
        for name in ("mirrors", "worktrees", "sessions", "exports"):
            _mkdir_private(self.data_dir / name)
        self.sandbox = sandbox if sandbox is not None else default_sandbox(self.data_dir)
        self._mirrors: dict[str, Mirror] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ports: set[int] = set()

    # -- mirrors ---------------------------------------------------------------------------

    def mirror_path(self, full_name: str) -> Path:
        owner, repo = _split_name(full_name)
        return self.data_dir / "mirrors" / owner / f"{repo}.git"

    def mirror(self, full_name: str) -> Mirror:
        """The mirror of `full_name`; its clone URL is known once `ensure_mirror` ran."""
        known = self._mirrors.get(full_name)
        if known is not None:
            return known
        path = self.mirror_path(full_name)
        if not path.is_dir():
            raise WorkspaceError(UNKNOWN_MIRROR.format(name=full_name))
        return Mirror(full_name, path)

    def _lock(self, full_name: str) -> asyncio.Lock:
        return self._locks.setdefault(full_name, asyncio.Lock())

    async def ensure_mirror(self, full_name: str, clone_url: str, token: str) -> Mirror:
        """Create the bare mirror when missing, then fetch every branch from `clone_url`."""
        check_clone_url(clone_url)
        path = self.mirror_path(full_name)
        mirror = Mirror(full_name, path, clone_url)
        async with self._lock(full_name):
            if not (path / "HEAD").is_file():
                _mkdir_private(path.parent)
                await self.git.run("init", "--quiet", "--bare", f"--template={self.git.hooks}", str(path))
            self._mirrors[full_name] = mirror
            await self.git.run(
                "fetch", "--quiet", "--prune", "--no-tags", "--no-recurse-submodules",
                "--", clone_url, FETCH_REFSPEC,
                mirror=mirror, token=token,
            )
        return mirror

    async def _rev(self, mirror: Mirror, ref: str) -> str | None:
        out = await self.git.run(
            "for-each-ref", "--format=%(objectname)", "--", ref, mirror=mirror
        )
        return out.split()[0] if out.split() else None

    async def _known_commits(self, mirror: Mirror, branch: str | None = None) -> list[str]:
        """Every commit a remote branch holds (and, with `branch`, the session's imported tip)."""
        refs = ["refs/remotes/origin/"] + ([f"refs/heads/{branch}"] if branch else [])
        out = await self.git.run("for-each-ref", "--format=%(objectname)", "--", *refs, mirror=mirror)
        return sorted(set(out.split()))

    # -- the box -----------------------------------------------------------------------------

    @property
    def box_git(self) -> list[str]:
        """The command that starts git in the box, with everything the agent could make it run off:
        for commands that read the working tree (status, add, diff, checkout), which could meet a filter."""
        return [self.sandbox.python, "-I", str(BOX_GIT_SCRIPT), *GIT_OPTIONS, "--"]

    @property
    def box_plumbing(self) -> list[str]:
        """Plain git with the same options, for commands that never read the working tree (refs,
        commits, bundles): no filter can run there, so no need to look for one."""
        return ["git", *GIT_OPTIONS]

    def _box(self, repo: Path, mirror: Mirror, *, extra: Sequence[str] = ()) -> Box:
        return Box(worktree=str(repo), readonly=(str(mirror.path / "objects"), *extra), cwd=str(repo))

    def _box_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_AUTHOR_NAME": "Shepherd",
            "GIT_AUTHOR_EMAIL": "shepherd@localhost",
            "GIT_COMMITTER_NAME": "Shepherd",
            "GIT_COMMITTER_EMAIL": "shepherd@localhost",
        }
        env.update(extra or {})
        return env

    async def run_boxed(
        self,
        argv: Sequence[str],
        box: Box,
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float = BOX_TIMEOUT_S,
        check: bool = True,
    ) -> tuple[int, str]:
        """Run `argv` in the agent's sandbox; return (exit code, stdout). Output past the limit is cut."""
        process = await asyncio.create_subprocess_exec(
            *self.sandbox.wrap(list(argv), box),
            env=self._box_env(env),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(_bounded_communicate(process, stdin), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as error:
            signal_group(process.pid)
            await process.wait()
            if isinstance(error, asyncio.TimeoutError):
                raise WorkspaceError(BOX_TIMED_OUT.format(seconds=timeout)) from None
            raise
        code = process.returncode if process.returncode is not None else -1
        if check and code != 0:
            raise WorkspaceError(BOX_FAILED.format(code=code, stderr=stderr.decode(errors="replace").strip()[-500:]))
        return code, stdout.decode(errors="replace")

    async def _git_in(self, repo: Path, *args: str, env: Mapping[str, str] | None = None,
                      stdin: bytes | None = None, check: bool = True, files: bool = False) -> tuple[int, str]:
        """git in the box of `repo`; `files` when the command reads the working tree."""
        mirror = self.mirror(self.repo_of(repo))
        git = self.box_git if files else self.box_plumbing
        return await self.run_boxed([*git, *args], self._box(repo, mirror), env=env, stdin=stdin, check=check)

    async def _script_in(self, repo: Path, script: str, *args: str, env: Mapping[str, str] | None = None,
                         mirror: Mirror | None = None) -> str:
        mirror = mirror or self.mirror(self.repo_of(repo))
        _, out = await self.run_boxed(["/bin/sh", "-c", script, "shepherd-git", *args], self._box(repo, mirror), env=env)
        return out

    # -- session repositories -------------------------------------------------------------------

    def worktree_path(self, full_name: str, branch: str) -> Path:
        owner, repo = _split_name(full_name)
        return self.data_dir / "worktrees" / owner / repo / branch_slug(branch)

    def session_dir(self, session_id: str) -> Path:
        """The session's control folder (0755, Shepherd's), created when missing; `session_id` is the folder's
        name, `session_folder(session.id)`."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", session_id) or session_id in (".", ".."):
            raise WorkspaceError(f"bad session id {session_id!r}")
        return _mkdir_private(self.data_dir / "sessions" / session_id, 0o755)

    async def create_worktree(
        self,
        full_name: str,
        branch: str,
        base: str,
        continue_from_existing: bool = False,
    ) -> Path:
        """Give a session its repository on `branch`, started from the remote's `base` branch.

        With `continue_from_existing`, the session picks up the kept branch instead: its existing
        repository, the branch Shepherd imported from it, or the pushed branch, in that order.
        """
        mirror = self.mirror(full_name)
        path = self.worktree_path(full_name, branch)
        async with self._lock(full_name):
            imported = await self._rev(mirror, f"refs/heads/{branch}")
            if continue_from_existing:
                if (path / ".git").is_dir():
                    return path
                start = imported or await self._rev(mirror, f"refs/remotes/origin/{branch}")
                if start is None:
                    raise WorkspaceError(NO_BRANCH_TO_CONTINUE.format(branch=branch))
                await self._make_repo(mirror, path, branch, start, base)
                return path
            if imported is not None or path.exists():
                raise WorkspaceError(BRANCH_EXISTS.format(branch=branch))
            start = await self._rev(mirror, f"refs/remotes/origin/{base}")
            if start is None:
                raise WorkspaceError(f"the remote has no branch {base!r}")
            if await self._claim_ready(mirror, path, branch, start, base):
                return path
            await self._make_repo(mirror, path, branch, start, base)
        return path

    async def _make_repo(self, mirror: Mirror, path: Path, branch: str | None, start: str, base: str) -> None:
        """A new repository at `path`, made in the box, borrowing the mirror's objects, checked out at
        `start`, with `origin/<base>` where the mirror has it (the agent rebases onto it).

        It is made beside `path` and renamed into place whole: a `kill -9` in the middle leaves no
        half-made repository at `path` (one with no branch, or no files checked out) for a re-run to take."""
        if not _SHA.match(start):
            raise WorkspaceError(f"not a commit id: {start!r}")
        base_sha = await self._rev(mirror, f"refs/remotes/origin/{base}") or start
        _mkdir_private(path.parent)
        making = _making_path(path)
        await asyncio.to_thread(shutil.rmtree, making, True)  # what an earlier crash left
        self.sandbox.own(making, 0o755)
        head = ["symbolic-ref", "HEAD", f"refs/heads/{branch}"] if branch else ["update-ref", "--no-deref", "HEAD", start]
        script = (
            'set -e; objects=$1; start=$2; base=$3; base_sha=$4; shift 4; '
            'git init --quiet --template= . ; mkdir -p .git/info; '
            'printf "%s\\n" "$objects" > .git/objects/info/alternates; '
            + (f'git update-ref refs/heads/{branch} "$start"; ' if branch else "")
            + 'git update-ref "refs/remotes/origin/$base" "$base_sha"; "$@"; '
            'git -c core.hooksPath=/dev/null reset --quiet --hard "$start"'
        )
        await self._script_in(making, script, str(mirror.path / "objects"), start, base, base_sha, "git", *head,
                              mirror=mirror)
        os.rename(making, path)

    async def make_scratch(self, full_name: str, path: Path, commit: str, base: str, *,
                           base_files: Sequence[str] = (), drop_files: Sequence[str] = ()) -> None:
        """A throwaway repository at `path` (which must not exist), made in the box like a session's and
        borrowing the mirror's objects, detached at `commit`, with `base_files` put back as the remote's
        `base` has them and `drop_files` left out (the bake-off's fact check, SPEC §8). Nothing is written
        into the mirror; the caller removes `path`."""
        mirror = self.mirror(full_name)
        await self._make_repo(mirror, path, None, commit, base)
        if not base_files and not drop_files:
            return
        script = (
            'set -e; base=$1; restore=$2; shift 2; i=0; for p in "$@"; do i=$((i+1)); '
            'if [ "$i" -le "$restore" ]; then '
            'git -c core.hooksPath=/dev/null checkout --quiet "refs/remotes/origin/$base" -- "$p"; '
            'else rm -f -- "$p"; fi; done'
        )
        await self._script_in(path, script, base, str(len(base_files)), *base_files, *drop_files, mirror=mirror)

    # -- the pool of ready repositories ----------------------------------------------------------

    def pool_dir(self, full_name: str) -> Path:
        owner, repo = _split_name(full_name)
        return self.data_dir / "worktrees" / owner / repo / POOL_FOLDER

    async def _claim_ready(self, mirror: Mirror, path: Path, branch: str, start: str, base: str) -> bool:
        """Move a ready repository to `path` on `branch` at `start`; False when none is ready.

        Only the box that made it ever saw it; one that is not spotless (ignored files included) is
        thrown away rather than handed to a session. Check and switch are one box.
        """
        pool = self.pool_dir(mirror.full_name)
        if not pool.is_dir():
            return False
        git = shlex.join(self.box_git)
        script = (
            f'set -e; test -d .git; test -z "$({git} status --porcelain --untracked-files=all --ignored=matching '
            f'--ignore-submodules=dirty)" || exit {DIRTY_EXIT}; '
            # At the tip it was made at (the usual case), the branch is only a ref: no index to refresh.
            f'if [ "$({shlex.join(self.box_plumbing)} rev-parse HEAD)" = "$2" ]; then '
            f'{shlex.join(self.box_plumbing)} update-ref "refs/heads/$1" "$2" && '
            f'{shlex.join(self.box_plumbing)} symbolic-ref HEAD "refs/heads/$1"; '
            f'else {git} checkout --quiet --no-track -B "$1" "$2"; fi; '
            f'{shlex.join(self.box_plumbing)} update-ref "refs/remotes/origin/$3" "$2"'
        )
        for candidate in sorted(pool.iterdir()):
            if not candidate.name.endswith(".ready"):
                continue
            _mkdir_private(path.parent)
            making = _making_path(path)  # switched beside `path`, then renamed: never half-switched there
            await asyncio.to_thread(shutil.rmtree, making, True)
            os.rename(candidate, making)
            code, _ = await self.run_boxed(["/bin/sh", "-c", script, "shepherd-claim", branch, start, base],
                                           self._box(making, mirror), check=False)
            if code == 0:
                os.rename(making, path)
                return True
            log.warning("discarding a ready repository that is not clean (%s): %s", code, candidate.name)
            await asyncio.to_thread(shutil.rmtree, making, True)
        return False

    async def fill_pool(self, full_name: str, base: str, size: int | None = None) -> list[Path]:
        """Pre-create detached repositories at the tip of `base` until the pool holds `size`."""
        wanted = self.pool_size if size is None else size
        mirror = self.mirror(full_name)
        pool = _mkdir_private(self.pool_dir(full_name))
        async with self._lock(full_name):
            tip = await self._rev(mirror, f"refs/remotes/origin/{base}")
            if tip is None:
                raise WorkspaceError(f"the remote has no branch {base!r}")
            existing = [p for p in pool.iterdir() if p.name.endswith(".ready")]
        created: list[Path] = []
        while len(existing) + len(created) < wanted:
            name = secrets.token_hex(6)
            building = pool / f"{name}.building"
            await self._make_repo(mirror, building, None, tip, base)
            ready = pool / f"{name}.ready"
            os.rename(building, ready)  # only a whole repository is ever claimed
            created.append(ready)
        return created

    # -- setup -----------------------------------------------------------------------------

    async def install_env_files(self, worktree: Path, env_files: Mapping[str, str]) -> list[Path]:
        """Copy each `source -> target` inside the worktree, in the box, and exclude the targets from commits."""
        root = worktree.resolve()
        pairs: list[str] = []
        for source_name, target_name in env_files.items():
            target = Path(os.path.normpath(root / target_name))
            source = Path(os.path.normpath(root / source_name))
            if (
                Path(target_name).is_absolute()
                or Path(source_name).is_absolute()
                or not target.is_relative_to(root)
                or not source.is_relative_to(root)
                or target == root
            ):
                raise WorkspaceError(BAD_ENV_FILE.format(source=source_name, target=target_name))
            pairs += [source.relative_to(root).as_posix(), target.relative_to(root).as_posix()]
        if not pairs:
            return []
        # In the box a symlinked source can only reach what the agent itself may read, but it is
        # still refused: the copy must be the repository's file, not something it points at.
        script = (
            'header=$1; shift; copied=""; '
            'while [ $# -gt 0 ]; do src=$1; dst=$2; shift 2; '
            '  if [ -L "$src" ] || [ -L "$dst" ]; then echo "refused:$src" >&2; exit 3; fi; '
            '  case "$(realpath -m -- "$src")/" in "$PWD"/*) ;; *) echo "refused:$src" >&2; exit 3;; esac; '
            '  case "$(realpath -m -- "$dst")/" in "$PWD"/*) ;; *) echo "refused:$dst" >&2; exit 3;; esac; '
            '  [ -f "$src" ] || continue; '
            '  mkdir -p -- "$(dirname -- "$dst")"; cp -- "$src" "$dst"; '
            '  grep -qxF -- "$header" .git/info/exclude 2>/dev/null || printf "%s\\n" "$header" >> .git/info/exclude; '
            '  grep -qxF -- "/$dst" .git/info/exclude || printf "/%s\\n" "$dst" >> .git/info/exclude; '
            '  printf "%s\\0" "$dst"; '
            'done'
        )
        mirror = self.mirror(self.repo_of(worktree))
        code, out = await self.run_boxed(
            ["/bin/sh", "-c", "mkdir -p .git/info; " + script, "shepherd-env", EXCLUDE_HEADER, *pairs],
            self._box(worktree, mirror), check=False,
        )
        if code == 3:
            names = list(env_files.items())
            raise WorkspaceError(BAD_ENV_FILE.format(source=names[0][0], target=names[0][1]))
        if code != 0:
            raise WorkspaceError(BOX_FAILED.format(code=code, stderr="copying env_files"))
        return [root / name for name in out.split("\0") if name]

    def allocate_port(self) -> int:
        """A free loopback port that no other live session holds."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in self._ports:
                self._ports.add(port)
                return port

    def reserve_port(self, port: int) -> None:
        """Mark a stored session's port as taken again (after a restart)."""
        self._ports.add(port)

    def release_port(self, port: int) -> None:
        self._ports.discard(port)

    # -- inspecting and committing (all in the box) -----------------------------------------

    def repo_of(self, worktree: Path) -> str:
        """The `owner/name` whose worktree folder `worktree` is."""
        try:
            parts = Path(worktree).resolve().relative_to(
                (self.data_dir / "worktrees").resolve()
            ).parts
        except ValueError:
            raise WorkspaceError(f"{worktree} is not one of Shepherd's worktrees") from None
        if len(parts) < 3:
            raise WorkspaceError(f"{worktree} is not one of Shepherd's worktrees")
        return f"{parts[0]}/{parts[1]}"

    async def changed_files(
        self, worktree: Path, base: str
    ) -> list[tuple[str, int, int]]:
        """Lines added and removed per file since the merge base with `base`, uncommitted included.

        Computed in the box, so it is the agent's own account: good for the status comment, never
        for a decision (the finisher reads the imported branch in the mirror instead).
        """
        mirror = self.mirror(self.repo_of(worktree))
        base_sha = await self._rev(mirror, f"refs/remotes/origin/{base}")
        if base_sha is None:
            raise WorkspaceError(f"the remote has no branch {base!r}")
        _, out = await self.run_boxed(
            [self.sandbox.python, "-I", "-c", CHANGED_FILES_SCRIPT, base_sha, *self.box_git],
            self._box(worktree, mirror),
        )
        try:
            rows = json.loads(out)
            return [(str(path), int(added), int(removed)) for path, added, removed in rows]
        except (ValueError, TypeError):
            raise WorkspaceError("the changed files could not be read") from None

    async def file_states(self, worktree: Path, base: str) -> list[tuple[str, str, str | None]]:
        """(path, content digest, content of a small text file or None) of each file that differs from
        the merge base with `base`, uncommitted and untracked ones included; read in the box."""
        mirror = self.mirror(self.repo_of(worktree))
        base_sha = await self._rev(mirror, f"refs/remotes/origin/{base}")
        if base_sha is None:
            raise WorkspaceError(f"the remote has no branch {base!r}")
        _, out = await self.run_boxed(
            [self.sandbox.python, "-I", "-c", FILE_STATES_SCRIPT, base_sha, str(FILE_STATE_TEXT_LIMIT), *self.box_git],
            self._box(worktree, mirror),
        )
        try:
            rows = json.loads(out)
            return [(str(path), str(digest), text if isinstance(text, str) else None) for path, digest, text in rows]
        except (ValueError, TypeError):
            raise WorkspaceError("the worktree's files could not be read") from None

    async def is_dirty(self, worktree: Path) -> bool:
        """Whether the worktree has uncommitted changes or untracked files (excluded ones aside)."""
        _, out = await self._git_in(
            worktree, "status", "--porcelain", "--untracked-files=all", "--ignore-submodules=dirty", files=True
        )
        return bool(out.strip())

    async def unpushed_count(self, worktree: Path) -> int:
        """How many commits of the worktree's HEAD no remote branch holds."""
        mirror = self.mirror(self.repo_of(worktree))
        known = await self._known_commits(mirror)
        code, out = await self._git_in(
            worktree, "rev-list", "--count", "--ignore-missing", "HEAD", "--stdin",
            stdin="".join(f"^{sha}\n" for sha in known).encode(), check=False,
        )
        if code != 0:
            return 0  # no commit at all (an unborn HEAD) has nothing unpushed
        return int(out.strip() or 0)

    async def has_unpushed(self, worktree: Path) -> bool:
        return await self.unpushed_count(worktree) > 0

    async def share_base(self, worktree: Path, base: str) -> None:
        """Show the agent the base as the mirror has it now, as `origin/<base>` (e.g. for a rebase turn).

        Only a ref is written; its objects are already there through the mirror's alternates.
        """
        mirror = self.mirror(self.repo_of(worktree))
        sha = await self._rev(mirror, f"refs/remotes/origin/{base}")
        if sha is None or not _SHA.match(sha):
            return
        await self._git_in(worktree, "update-ref", f"refs/remotes/origin/{base}", sha)

    async def head(self, worktree: Path) -> str:
        """The commit the agent's HEAD points at (as the agent's repository says)."""
        _, out = await self._git_in(worktree, "rev-parse", "--verify", "HEAD^{commit}")
        return out.strip()

    async def commit_all(
        self,
        worktree: Path,
        message: str,
        author_name: str,
        author_email: str,
    ) -> str | None:
        """Commit every leftover change as Shepherd, in the box; return the new commit id, or None if clean."""
        clear_stale_index_lock(worktree)
        identity = {
            "GIT_AUTHOR_NAME": author_name,
            "GIT_AUTHOR_EMAIL": author_email,
            "GIT_COMMITTER_NAME": author_name,
            "GIT_COMMITTER_EMAIL": author_email,
        }
        git, plumbing = shlex.join(self.box_git), shlex.join(self.box_plumbing)
        script = (
            f'set -e; {git} add --all -- . ; '
            f'if {plumbing} diff --cached --quiet --no-ext-diff; then exit 0; fi; '
            f'{git} commit --quiet --no-verify --no-gpg-sign -m "$1"; '
            f'{plumbing} rev-parse HEAD'
        )
        out = await self._script_in(worktree, script, message, env=identity)
        return out.strip() or None

    async def current_branch(self, worktree: Path) -> str | None:
        code, out = await self._git_in(worktree, "symbolic-ref", "--quiet", "HEAD", check=False)
        if code != 0:
            return None  # detached
        return out.strip().removeprefix("refs/heads/") or None

    async def export_branch(self, worktree: Path, branch: str) -> str:
        """Bring the session's HEAD into the mirror as `refs/heads/<branch>`; return its commit.

        The box writes a bundle of the commits the mirror lacks into a fresh folder; Shepherd copies
        it out without following links, verifies it and fetches it with every object checked, under the
        mirror's lock, as every other change of the mirror.
        """
        full_name = self.repo_of(worktree)
        async with self._lock(full_name):
            return await self._export_branch(worktree, branch, full_name)

    async def _export_branch(self, worktree: Path, branch: str, full_name: str) -> str:
        mirror = self.mirror(full_name)
        known = await self._known_commits(mirror, branch)
        outbox = self.sandbox.own(self.data_dir / "exports" / secrets.token_hex(8))
        try:
            git = shlex.join(self.box_plumbing)  # refs, commits and a bundle: no working tree read
            script = (
                f'set -e; out=$1; head=$({git} rev-parse --verify "HEAD^{{commit}}"); '
                f'count=$({git} rev-list --count --ignore-missing HEAD --stdin < "$out/known"); '
                f'if [ "$count" -gt 0 ]; then {git} bundle create --quiet "$out/{BUNDLE_NAME}" HEAD --stdin < "$out/known"; fi; '
                'printf "%s" "$head"'
            )
            (outbox / "known").write_text("".join(f"^{sha}\n" for sha in known))
            (outbox / "known").chmod(0o644)
            box = Box(worktree=str(worktree), readonly=(str(mirror.path / "objects"),), cwd=str(worktree),
                      channel=str(outbox))
            _, reported = await self.run_boxed(["/bin/sh", "-c", script, "shepherd-export", str(outbox)], box)
            bundle = _copy_out(outbox / BUNDLE_NAME, self.git.state_dir / f"{outbox.name}.bundle")
            if bundle is None:
                head = reported.strip()
                if not _SHA.match(head) or head not in known:
                    raise WorkspaceError(BAD_BUNDLE.format(why="no bundle and an unknown HEAD"))
                await self.git.run("update-ref", f"refs/heads/{branch}", head, mirror=mirror)
                return head
            try:
                return await self._import_bundle(mirror, bundle, branch)
            finally:
                bundle.unlink(missing_ok=True)
        finally:
            shutil.rmtree(outbox, ignore_errors=True)

    async def _import_bundle(self, mirror: Mirror, bundle: Path, branch: str) -> str:
        try:
            heads = await self.git.run("bundle", "list-heads", str(bundle), mirror=mirror)
            head = next((line.split()[0] for line in heads.splitlines() if line.endswith(" HEAD")), None)
            if head is None or not _SHA.match(head):
                raise WorkspaceError(BAD_BUNDLE.format(why="the bundle names no HEAD"))
            await self.git.run("bundle", "verify", "--quiet", str(bundle), mirror=mirror)
            await self.git.run(
                "-c", "protocol.file.allow=always", "-c", "fetch.fsckObjects=true", "-c", "transfer.fsckObjects=true",
                "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                str(bundle), f"+HEAD:refs/heads/{branch}", mirror=mirror,
            )
        except GitError as error:
            raise WorkspaceError(BAD_BUNDLE.format(why=error.stderr.strip()[-300:])) from None
        return head

    async def branch_changes(self, full_name: str, ref: str, base: str) -> list[tuple[str, int, int]]:
        """Lines added and removed per file between `base` and `ref`, read from the mirror alone."""
        mirror = self.mirror(full_name)
        out = await self.git.run(
            "diff", "--numstat", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
            f"refs/remotes/origin/{base}...{ref}", "--", mirror=mirror,
        )
        changes = []
        for record in out.split("\0"):
            if record.count("\t") >= 2:
                added, removed, path = record.split("\t", 2)
                changes.append((path, int(added) if added.isdigit() else 0, int(removed) if removed.isdigit() else 0))
        return sorted(changes)

    async def reason_to_keep(self, worktree: Path) -> str | None:
        """Why removing this worktree would lose work (uncommitted changes, unpushed commits), or None.

        `remove_worktree` asks this too, so `shepherd prune --dry-run` lists exactly what a real run does."""
        if await self.is_dirty(worktree):
            return KEPT_DIRTY
        count = await self.unpushed_count(worktree)
        if count:
            return KEPT_UNPUSHED.format(count=count)
        return None

    async def remove_worktree(self, worktree: Path) -> None:
        """Remove a session's repository and its imported branch, unless that would lose work.

        Raises `WorkspaceKept` with the reason when the repository has commits no remote branch
        holds, or uncommitted changes.
        """
        full_name = self.repo_of(worktree)
        mirror = self.mirror(full_name)
        reason = await self.reason_to_keep(worktree)
        if reason is not None:
            raise WorkspaceKept(reason)
        branch = await self.current_branch(worktree)
        async with self._lock(full_name):
            await asyncio.to_thread(shutil.rmtree, worktree)
            if branch is not None and branch.startswith("agent/"):
                if await self._rev(mirror, f"refs/heads/{branch}") is not None:
                    await self.git.run("update-ref", "-d", f"refs/heads/{branch}", mirror=mirror)

    # -- setup commands --------------------------------------------------------------------------

    async def run_setup(
        self,
        commands: list[str],
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        *,
        timeout: float | None = None,
        run: Callable[[str, int, float | None], Awaitable[int | None]] | None = None,
    ) -> SetupResult:
        """Run each setup command through the shell, in the agent's box; stop at the first failure.

        `run(command, index, timeout)` runs one command and returns its exit code, or None when it
        timed out or was stopped; the runtime's runs it with the session's egress proxy and limits,
        the default in a plain box of the worktree.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        run = run or self._setup_runner(env, cwd, log_path)
        total = len(commands)
        for index, command in enumerate(commands, start=1):
            _append(log_path, f"$ {command}\n")
            code = await run(command, index, timeout)
            if code == 0:
                continue
            if code is None:
                message = SETUP_TIMED_OUT.format(index=index, total=total, command=command)
            else:
                message = SETUP_FAILED.format(index=index, total=total, code=code, command=command)
            _append(log_path, f"{message}\n")
            return SetupResult(False, command, index, code, message)
        return SetupResult(True)

    def _setup_runner(
        self, env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> Callable[[str, int, float | None], Awaitable[int | None]]:
        box = self._box(cwd, self.mirror(self.repo_of(cwd)))

        async def run(command: str, index: int, timeout: float | None) -> int | None:
            with open(log_path, "ab") as output:
                process = await asyncio.create_subprocess_exec(
                    *self.sandbox.wrap(["/bin/sh", "-c", command], box),
                    cwd=str(cwd), env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                    stdout=output, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                )
            try:
                return await asyncio.wait_for(process.wait(), timeout)
            except asyncio.TimeoutError:
                return None
            finally:
                if process.returncode is None:
                    signal_group(process.pid)
                    await process.wait()

        return run


async def _bounded_communicate(process: asyncio.subprocess.Process, stdin: bytes | None) -> tuple[bytes, bytes]:
    """Like `communicate`, but keeps at most OUTPUT_LIMIT bytes of each stream (the rest is drained)."""
    async def drain(stream: asyncio.StreamReader | None) -> bytes:
        if stream is None:
            return b""
        kept = bytearray()
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return bytes(kept)
            if len(kept) < OUTPUT_LIMIT:
                kept += chunk[: OUTPUT_LIMIT - len(kept)]

    async def feed() -> None:
        if process.stdin is None:
            return
        try:
            if stdin:
                process.stdin.write(stdin)
                await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            process.stdin.close()

    _, out, err = await asyncio.gather(feed(), drain(process.stdout), drain(process.stderr))
    await process.wait()
    return out, err


def _copy_out(source: Path, target: Path) -> Path | None:
    """Copy a file the agent wrote to a private place: no links followed, regular files only, bounded."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise WorkspaceError(BAD_BUNDLE.format(why=f"the bundle cannot be opened ({error.strerror})")) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise WorkspaceError(BAD_BUNDLE.format(why="the bundle is not a regular file"))
        if info.st_size > BUNDLE_LIMIT:
            raise WorkspaceError(BAD_BUNDLE.format(why="the bundle is larger than 4 GiB"))
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            copied = 0
            while True:
                chunk = os.read(descriptor, 1 << 20)
                if not chunk:
                    break
                copied += len(chunk)
                if copied > BUNDLE_LIMIT:
                    raise WorkspaceError(BAD_BUNDLE.format(why="the bundle is larger than 4 GiB"))
                os.write(out, chunk)
        finally:
            os.close(out)
    finally:
        os.close(descriptor)
    return target


def _append(path: Path, text: str) -> None:
    with open(path, "ab") as output:
        output.write(text.encode())


