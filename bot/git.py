"""The hardened runner through which every git command Shepherd runs goes.

Repository configuration is attacker-controlled: an agent can run `git config` in its worktree and
so write the mirror's shared `config`. Each command therefore runs with

- a minimal environment (no Shepherd secret, `HOME` an empty Shepherd-owned folder, global and
  system configuration ignored, no terminal prompt);
- command-line overrides for the keys that run programs or redirect traffic (command-line
  configuration has the highest precedence, and an empty value resets the multi-valued lists of
  `credential.helper` and `http.extraHeader`);
- for commands on a mirror, its `config` file rewritten first to the known-good content Shepherd
  wrote at clone time. URL-scoped keys (`url.<x>.insteadOf`, `http.<url>.proxy`,
  `filter.<driver>.*`, `diff.<driver>.textconv`, ...) cannot all be named on a command line,
  so the rewrite is what removes them;
- for commands in a worktree, `GIT_DIR`, `GIT_COMMON_DIR` and `GIT_WORK_TREE` set from Shepherd's
  own knowledge, so a `.git` file or `commondir` edited by the agent cannot point git elsewhere;
- a token, when one is needed, only in the environment of the askpass helper git runs: never in
  argv, a file or any configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TOKEN_USER = "x-access-token"
PASSWORD_VARIABLE = "SHEPHERD_GIT_PASSWORD"
FETCH_REFSPEC = "+refs/heads/*:refs/remotes/origin/*"
REMOTE_NAME = "origin"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALLOWED_SCHEMES = ("https", "http")

# Answers git's two prompts. The username is not secret; the password comes from this process's
# environment only, which is the environment Shepherd gave the one git command.
ASKPASS_SCRIPT = f"""#!/bin/sh
case "$1" in
  Username*|username*) printf '%s\\n' '{TOKEN_USER}' ;;
  *) printf '%s\\n' "${PASSWORD_VARIABLE}" ;;
esac
"""

BAD_CLONE_URL = "refusing clone URL {url!r}: {why}"
_USERINFO = re.compile(r"(?i)(://)[^/@\s]*@")
_TOKEN_LIKE = re.compile(r"\b(?:ghs|ghu|gho|ghp|ghr|github_pat)_[A-Za-z0-9_]{8,}")
_CONFIG_UNSAFE = re.compile(r'[\x00-\x20\x7f"\\;#]')


class GitError(Exception):
    """A git command failed; the message and stderr are redacted."""

    def __init__(self, args: list[str], returncode: int | None, stderr: str) -> None:
        self.args_run = args
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"git {' '.join(args[:3])} failed ({returncode}): {stderr.strip()[-2000:]}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Mask the given secrets, URL userinfo and anything shaped like a GitHub token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\1***@", text)
    return _TOKEN_LIKE.sub("***", text)


def check_clone_url(url: str) -> str:
    """Return `url` if it is safe to write into a config file and to hand a token to."""
    if _CONFIG_UNSAFE.search(url):
        raise ValueError(BAD_CLONE_URL.format(url=url, why="it contains unsafe characters"))
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise ValueError(BAD_CLONE_URL.format(url=url, why="only https (or http) is allowed"))
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValueError(BAD_CLONE_URL.format(url=url, why="credentials belong in askpass"))
    if not parts.hostname:
        raise ValueError(BAD_CLONE_URL.format(url=url, why="it has no host"))
    return url


@dataclass(frozen=True)
class Mirror:
    """A bare mirror of one repository and the clone URL the payload gave for it."""

    full_name: str
    path: Path
    clone_url: str | None = None

    def known_good_config(self) -> str:
        """The whole `config` file Shepherd wants; anything an agent added is dropped."""
        text = (
            "[core]\n"
            "\trepositoryformatversion = 0\n"
            "\tfilemode = true\n"
            "\tbare = true\n"
            "\tlogallrefupdates = false\n"
        )
        if self.clone_url is not None:
            text += (
                f'[remote "{REMOTE_NAME}"]\n'
                f"\turl = {check_clone_url(self.clone_url)}\n"
                f"\tfetch = {FETCH_REFSPEC}\n"
            )
        return text

    def restore_config(self) -> None:
        """Atomically replace the mirror's config with the known-good content."""
        _replace_file(self.path / "config", self.known_good_config(), 0o644)


class Git:
    """Runs git with Shepherd's hardening; one instance per data folder."""

    def __init__(self, state_dir: Path, *, path: str = DEFAULT_PATH, binary: str = "git") -> None:
        self.state_dir = state_dir
        self.home = state_dir / "home"
        self.hooks = state_dir / "no-hooks"
        self.askpass = state_dir / "askpass"
        self.path = path
        self.binary = binary
        for folder in (state_dir, self.home, self.hooks):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
        self._write_askpass()

    def _write_askpass(self) -> None:
        # Rewritten before each credentialed command so an edited helper never sees a token.
        _replace_file(self.askpass, ASKPASS_SCRIPT, 0o700)

    def overrides(self, allowed_scheme: str | None) -> list[str]:
        """The `-c` options placed before every command."""
        pairs = [
            ("core.hooksPath", str(self.hooks)),
            ("core.fsmonitor", "false"),
            ("core.sshCommand", "false"),
            ("core.gitProxy", ""),
            ("core.askPass", str(self.askpass)),
            ("core.pager", "cat"),
            ("core.editor", "true"),
            ("core.alternateRefsCommand", ""),
            ("credential.helper", ""),
            ("http.proxy", ""),
            ("http.extraHeader", ""),
            ("http.sslVerify", "true"),
            ("http.cookieFile", ""),
            ("diff.external", ""),
            ("uploadpack.packObjectsHook", ""),
            ("commit.gpgSign", "false"),
            ("tag.gpgSign", "false"),
            ("push.gpgSign", "false"),
            ("submodule.recurse", "false"),
            ("fetch.recurseSubmodules", "false"),
            ("filter.lfs.process", ""),
            ("filter.lfs.smudge", ""),
            ("filter.lfs.clean", ""),
            ("filter.lfs.required", "false"),
            ("protocol.allow", "never"),
        ]
        if allowed_scheme is not None:
            pairs.append((f"protocol.{allowed_scheme}.allow", "always"))
        options: list[str] = []
        for key, value in pairs:
            options += ["-c", f"{key}={value}"]
        return options

    def environment(
        self, token: str | None = None, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The whole environment of one git command."""
        env = {
            "PATH": self.path,
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": str(self.askpass),
            "GIT_PAGER": "cat",
            "GIT_EDITOR": "true",
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_ATTR_NOSYSTEM": "1",
        }
        if extra:
            env.update(extra)
        if token is not None:
            env[PASSWORD_VARIABLE] = token
        return env

    async def run(
        self,
        *args: str,
        cwd: Path | None = None,
        mirror: Mirror | None = None,
        worktree: Path | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run one git command and return its stdout; raise `GitError` on failure.

        With `mirror`, the mirror's config is restored first and git runs in the mirror (or in
        `worktree`, a worktree of it). A `token` needs a mirror that knows its clone URL, and only
        that URL's scheme may be used.
        """
        extra = dict(env or {})
        scheme = None
        if mirror is not None:
            mirror.restore_config()
            extra["GIT_COMMON_DIR"] = str(mirror.path)
            if worktree is not None:
                extra["GIT_DIR"] = str(find_admin_dir(mirror, worktree))
                extra["GIT_WORK_TREE"] = str(worktree)
                cwd = worktree
            else:
                extra["GIT_DIR"] = str(mirror.path)
                cwd = mirror.path
        if token is not None:
            if mirror is None or mirror.clone_url is None:
                raise ValueError("a token is only used in a mirror with a known clone URL")
            scheme = urlsplit(mirror.clone_url).scheme
            self._write_askpass()
        argv = [self.binary, *self.overrides(scheme), *args]
        secrets = (token,) if token else ()
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd) if cwd is not None else str(self.home),
            env=self.environment(token, extra),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            _kill_group(process)
            await process.wait()
            raise
        if process.returncode != 0:
            raise GitError(
                list(args), process.returncode, redact(stderr.decode(errors="replace"), secrets)
            )
        return stdout.decode(errors="replace")


def _replace_file(path: Path, text: str, mode: int) -> None:
    """Atomically give `path` exactly `text`; concurrent callers each use their own temp file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass


def find_admin_dir(mirror: Mirror, worktree: Path) -> Path:
    """The `worktrees/<name>` folder in `mirror` that belongs to `worktree`."""
    wanted = (worktree / ".git").resolve()
    admin_root = mirror.path / "worktrees"
    if admin_root.is_dir():
        for admin in sorted(admin_root.iterdir()):
            gitdir = admin / "gitdir"
            try:
                recorded = Path(gitdir.read_text().strip()).resolve()
            except OSError:
                continue
            if recorded == wanted:
                return admin
    raise GitError(["worktree"], None, f"{worktree} is not a worktree of {mirror.full_name}")
