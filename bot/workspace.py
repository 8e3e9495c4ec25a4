"""Workspaces on disk: one bare mirror per repository, one git worktree per session, and their setup.

Layout under the data folder (every folder mode 0700):

    git/                          Shepherd's empty HOME for git, the empty hooks folder, askpass
    mirrors/<owner>/<repo>.git    bare mirror; remote branches live under refs/remotes/origin/*
    worktrees/<owner>/<repo>/<slug>   one worktree per session (slug: the branch after "agent/")
    worktrees/<owner>/<repo>/.pool/<n>  ready worktrees, detached at the default branch's tip
    sessions/<session_id>         the session's control folder, outside every worktree

The fetch refspec is `+refs/heads/*:refs/remotes/origin/*` rather than a `--mirror` layout: the
mirror's own `refs/heads/*` then hold only the session branches that worktrees have checked out,
and a fetch can never move (or refuse to move) a branch an agent is working on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from bot.git import FETCH_REFSPEC, Git, GitError, Mirror, check_clone_url

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
EXCLUDE_HEADER = "# Shepherd: env_files copies, never committed"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_BRANCH = re.compile(r"^agent/[A-Za-z0-9._/-]+$")
POOL_FOLDER = ".pool"


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


def _mkdir_private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
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


class Workspaces:
    """Mirrors, worktrees, session folders and ports under one data folder."""

    def __init__(self, data_dir: Path, git: Git | None = None, *, pool_size: int = 0) -> None:
        self.data_dir = _mkdir_private(Path(data_dir))
        self.git = git or Git(self.data_dir / "git")
        self.pool_size = pool_size
        for name in ("mirrors", "worktrees", "sessions"):
            _mkdir_private(self.data_dir / name)
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

    # -- worktrees -------------------------------------------------------------------------

    def worktree_path(self, full_name: str, branch: str) -> Path:
        owner, repo = _split_name(full_name)
        return self.data_dir / "worktrees" / owner / repo / branch_slug(branch)

    def session_dir(self, session_id: str) -> Path:
        """The session's control folder (0700), created when missing."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", session_id) or session_id in (".", ".."):
            raise WorkspaceError(f"bad session id {session_id!r}")
        return _mkdir_private(self.data_dir / "sessions" / session_id)

    async def _rev(self, mirror: Mirror, ref: str) -> str | None:
        out = await self.git.run(
            "for-each-ref", "--format=%(objectname)", "--", ref, mirror=mirror
        )
        return out.split()[0] if out.split() else None

    async def create_worktree(
        self,
        full_name: str,
        branch: str,
        base: str,
        continue_from_existing: bool = False,
    ) -> Path:
        """Give a session its worktree on `branch`, started from the remote's `base` branch.

        With `continue_from_existing`, the session picks up the kept branch instead: its
        existing worktree, its local branch, or the pushed branch, in that order.
        """
        mirror = self.mirror(full_name)
        path = self.worktree_path(full_name, branch)
        local_ref = f"refs/heads/{branch}"
        async with self._lock(full_name):
            local = await self._rev(mirror, local_ref)
            if continue_from_existing:
                if path.is_dir() and (path / ".git").exists():
                    return path
                _mkdir_private(path.parent)
                if local is not None:
                    await self.git.run("worktree", "add", "--quiet", str(path), branch, mirror=mirror)
                    return path
                pushed = await self._rev(mirror, f"refs/remotes/origin/{branch}")
                if pushed is None:
                    raise WorkspaceError(NO_BRANCH_TO_CONTINUE.format(branch=branch))
                await self._add_worktree(mirror, path, branch, pushed)
                return path
            if local is not None or path.exists():
                raise WorkspaceError(BRANCH_EXISTS.format(branch=branch))
            start = await self._rev(mirror, f"refs/remotes/origin/{base}")
            if start is None:
                raise WorkspaceError(f"the remote has no branch {base!r}")
            _mkdir_private(path.parent)
            await self._add_worktree(mirror, path, branch, start)
        return path

    async def _add_worktree(self, mirror: Mirror, path: Path, branch: str, start: str) -> None:
        ready = await self._claim_ready(mirror)
        if ready is not None:
            await self.git.run("worktree", "move", str(ready), str(path), mirror=mirror)
            await self.git.run(
                "switch", "--quiet", "--no-track", "-c", branch, start,
                mirror=mirror, worktree=path,
            )
            return
        await self.git.run(
            "worktree", "add", "--quiet", "--no-track", "-b", branch, str(path), start,
            mirror=mirror,
        )

    # -- the pool of ready worktrees -------------------------------------------------------

    def pool_dir(self, full_name: str) -> Path:
        owner, repo = _split_name(full_name)
        return self.data_dir / "worktrees" / owner / repo / POOL_FOLDER

    async def _claim_ready(self, mirror: Mirror) -> Path | None:
        pool = self.pool_dir(mirror.full_name)
        if not pool.is_dir():
            return None
        for candidate in sorted(pool.iterdir()):
            if not (candidate / ".git").exists():
                continue
            try:
                # "normal" lists an untracked folder once instead of walking it: enough to
                # reject a tampered ready worktree, and cheaper on big trees.
                status = await self.git.run(
                    "status", "--porcelain", "--untracked-files=normal", "--no-renames",
                    mirror=mirror, worktree=candidate,
                )
                if status.strip():
                    continue
            except Exception:  # noqa: BLE001 - a broken ready worktree is skipped, not fatal
                log.warning("skipping broken ready worktree %s", candidate)
                continue
            return candidate
        return None

    async def fill_pool(self, full_name: str, base: str, size: int | None = None) -> list[Path]:
        """Pre-create detached worktrees at the tip of `base` until the pool holds `size`."""
        wanted = self.pool_size if size is None else size
        mirror = self.mirror(full_name)
        pool = _mkdir_private(self.pool_dir(full_name))
        async with self._lock(full_name):
            tip = await self._rev(mirror, f"refs/remotes/origin/{base}")
            if tip is None:
                raise WorkspaceError(f"the remote has no branch {base!r}")
            existing = [p for p in pool.iterdir() if (p / ".git").exists()]
            created: list[Path] = []
            number = 0
            while len(existing) + len(created) < wanted:
                candidate = pool / f"ready-{number}"
                number += 1
                if candidate.exists():
                    continue
                await self.git.run(
                    "worktree", "add", "--quiet", "--detach", str(candidate), tip, mirror=mirror
                )
                created.append(candidate)
        return created

    # -- setup -----------------------------------------------------------------------------

    def install_env_files(
        self, worktree: Path, env_files: Mapping[str, str]
    ) -> list[Path]:
        """Copy each `source -> target` inside the worktree and exclude the targets from commits."""
        full_name = self.repo_of(worktree)
        root = worktree.resolve()
        copied: list[Path] = []
        patterns: list[str] = []
        for source_name, target_name in env_files.items():
            source = (root / source_name).resolve()
            target_parent = (root / target_name).parent.resolve()
            target = target_parent / Path(target_name).name
            # Repository content is untrusted: a symlinked source could reveal Shepherd's files
            # and a symlinked target could overwrite them.
            if (
                not source.is_relative_to(root)
                or not target.is_relative_to(root)
                or target == root
                or target.is_symlink()
                or Path(target_name).is_absolute()
            ):
                raise WorkspaceError(BAD_ENV_FILE.format(source=source_name, target=target_name))
            if not source.is_file():
                log.warning("env_files source %s is missing in %s", source_name, full_name)
                continue
            target_parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.append(target)
            patterns.append("/" + target.relative_to(root).as_posix())
        self._exclude(full_name, patterns)
        return copied

    def _exclude(self, full_name: str, patterns: list[str]) -> None:
        exclude = self.mirror_path(full_name) / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.is_file() else []
        missing = [p for p in patterns if p not in lines]
        if not missing:
            return
        if EXCLUDE_HEADER not in lines:
            lines.append(EXCLUDE_HEADER)
        exclude.write_text("\n".join(lines + missing) + "\n")

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

    async def run_setup(
        self,
        commands: list[str],
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
        *,
        timeout: float | None = None,
    ) -> SetupResult:
        """Run each setup command through the shell as the agent would; stop at the first failure."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        total = len(commands)
        with open(log_path, "ab") as output:
            for index, command in enumerate(commands, start=1):
                output.write(f"$ {command}\n".encode())
                output.flush()
                process = await asyncio.create_subprocess_shell(
                    command,
                    cwd=str(cwd),
                    env=dict(env),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
                try:
                    code = await asyncio.wait_for(process.wait(), timeout)
                except asyncio.TimeoutError:
                    _kill_group(process.pid)
                    await process.wait()
                    message = SETUP_TIMED_OUT.format(index=index, total=total, command=command)
                    output.write(f"{message}\n".encode())
                    return SetupResult(False, command, index, None, message)
                except asyncio.CancelledError:
                    _kill_group(process.pid)
                    await process.wait()
                    raise
                if code != 0:
                    message = SETUP_FAILED.format(
                        index=index, total=total, code=code, command=command
                    )
                    output.write(f"{message}\n".encode())
                    return SetupResult(False, command, index, code, message)
        return SetupResult(True)

    # -- inspecting and committing ---------------------------------------------------------

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
        """Lines added and removed per file since the merge base with `base`, uncommitted included."""
        mirror = self.mirror(self.repo_of(worktree))
        merge_base = (
            await self.git.run(
                "merge-base", "HEAD", f"refs/remotes/origin/{base}", mirror=mirror, worktree=worktree
            )
        ).strip()
        out = await self.git.run(
            "diff", "--numstat", "-z", "--no-renames", "--no-ext-diff", "--no-textconv",
            merge_base, "--", mirror=mirror, worktree=worktree,
        )
        changes: dict[str, tuple[int, int]] = {}
        for record in out.split("\0"):
            if not record:
                continue
            added, removed, path = record.split("\t", 2)
            changes[path] = (_count(added), _count(removed))
        untracked = await self.git.run(
            "ls-files", "-z", "--others", "--exclude-standard", mirror=mirror, worktree=worktree
        )
        for path in untracked.split("\0"):
            if path:
                changes[path] = (_line_count(worktree / path), 0)
        return [(path, added, removed) for path, (added, removed) in sorted(changes.items())]

    async def is_dirty(self, worktree: Path) -> bool:
        """Whether the worktree has uncommitted changes or untracked files (excluded ones aside)."""
        out = await self.git.run(
            "status", "--porcelain", "--untracked-files=all", "--ignore-submodules=none",
            mirror=self.mirror(self.repo_of(worktree)), worktree=worktree,
        )
        return bool(out.strip())

    async def unpushed_count(self, worktree: Path) -> int:
        """How many commits of the worktree's HEAD no remote branch holds."""
        out = await self.git.run(
            "rev-list", "--count", "HEAD", "--not", "--remotes=origin",
            mirror=self.mirror(self.repo_of(worktree)), worktree=worktree,
        )
        return int(out.strip() or 0)

    async def has_unpushed(self, worktree: Path) -> bool:
        return await self.unpushed_count(worktree) > 0

    async def commit_all(
        self,
        worktree: Path,
        message: str,
        author_name: str,
        author_email: str,
    ) -> str | None:
        """Commit every leftover change as Shepherd; return the new commit id, or None if clean."""
        mirror = self.mirror(self.repo_of(worktree))
        await self.git.run("add", "--all", "--", ".", mirror=mirror, worktree=worktree)
        staged = await self.git.run(
            "diff", "--cached", "--name-only", "--no-ext-diff", mirror=mirror, worktree=worktree
        )
        if not staged.strip():
            return None
        identity = {
            "GIT_AUTHOR_NAME": author_name,
            "GIT_AUTHOR_EMAIL": author_email,
            "GIT_COMMITTER_NAME": author_name,
            "GIT_COMMITTER_EMAIL": author_email,
        }
        await self.git.run(
            "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message,
            mirror=mirror, worktree=worktree, env=identity,
        )
        return (await self.git.run("rev-parse", "HEAD", mirror=mirror, worktree=worktree)).strip()

    async def current_branch(self, worktree: Path) -> str | None:
        try:
            out = await self.git.run(
                "symbolic-ref", "--quiet", "HEAD",
                mirror=self.mirror(self.repo_of(worktree)), worktree=worktree,
            )
        except GitError:
            return None  # detached
        return out.strip().removeprefix("refs/heads/") or None

    async def remove_worktree(self, worktree: Path) -> None:
        """Remove a session's worktree and its local branch, unless that would lose work.

        Raises `WorkspaceKept` with the reason when the worktree has commits no remote branch
        holds, or uncommitted changes.
        """
        full_name = self.repo_of(worktree)
        mirror = self.mirror(full_name)
        if await self.is_dirty(worktree):
            raise WorkspaceKept(KEPT_DIRTY)
        count = await self.unpushed_count(worktree)
        if count:
            raise WorkspaceKept(KEPT_UNPUSHED.format(count=count))
        branch = await self.current_branch(worktree)
        async with self._lock(full_name):
            # Checked above; --force only lets the ignored env_files copies go with it.
            await self.git.run("worktree", "remove", "--force", str(worktree), mirror=mirror)
            if branch is not None and branch.startswith("agent/"):
                await self.git.run("branch", "--quiet", "-D", "--", branch, mirror=mirror)
            await self.git.run("worktree", "prune", mirror=mirror)


def _count(value: str) -> int:
    return int(value) if value.isdigit() else 0


def _line_count(path: Path) -> int:
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    if b"\0" in data[:8000]:
        return 0
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass
