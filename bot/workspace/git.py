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
- a token, when one is needed, only in a pipe git inherits: Shepherd writes the credential into it
  and closes the write end before git starts, and a credential helper named on the command line
  (no secret in it) reads it back. Never in an environment variable, argv, a file or any
  configuration; the askpass helper answers nothing, so git fails rather than prompts.
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

from bot import redaction
from bot.agent.processes import signal_group

log = logging.getLogger(__name__)

TOKEN_USER = "x-access-token"
FETCH_REFSPEC = "+refs/heads/*:refs/remotes/origin/*"
REMOTE_NAME = "origin"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALLOWED_SCHEMES = ("https", "http")

# git asks askpass only when no credential helper answered. Shepherd never answers a prompt (the
# token comes through the helper's pipe or not at all): it fails, and with terminal prompts off git
# then stops with "could not read Username" instead of waiting.
ASKPASS_SCRIPT = """#!/bin/sh
exit 1
"""

# What git's credential helper prints for a credentialed command (git's credential protocol).
CREDENTIAL_TEXT = "username={user}\npassword={token}\n"
# git runs a `!` helper as `sh -c '<helper> <action>'`. This one drains the request git writes to it
# and answers only `get`, by reading the pipe whose write end Shepherd closed before git started:
# the first `get` reads the credential, any later one reads end-of-file at once and answers nothing,
# so git fails cleanly instead of hanging. `/dev/fd/N` because dash refuses `<&N` past 9.
CREDENTIAL_HELPER = '!f() {{ cat >/dev/null; if test "$1" = get; then cat /dev/fd/{fd}; fi; }}; f'
# The credential must fit the pipe's buffer, which is written whole before git starts; POSIX
# guarantees at least PIPE_BUF (4096 bytes) and GitHub tokens are far shorter.
MAX_CREDENTIAL_BYTES = 4096
BAD_TOKEN = "refusing a token that {why}"
TOKEN_WITHOUT_MIRROR = "a token is only used in a mirror with a known clone URL"

BAD_CLONE_URL = "refusing clone URL {url!r}: {why}"
_CONFIG_UNSAFE = re.compile(r'[\x00-\x20\x7f"\\;#]')


class GitError(Exception):
    """A git command failed; the message and stderr are redacted."""

    def __init__(
        self, args: list[str], returncode: int | None, stderr: str, secrets: tuple[str, ...] = ()
    ) -> None:
        # Redacted here, whoever raises it: the message reaches logs and issue comments.
        self.args_run = [redaction.redact(arg, secrets) for arg in args]
        self.returncode = returncode
        self.stderr = redaction.redact(stderr, secrets)
        super().__init__(
            f"git {' '.join(self.args_run[:3])} failed ({returncode}): {self.stderr.strip()[-2000:]}"
        )


def check_clone_url(url: str) -> str:
    """Return `url` if it is safe to write into a config file and to hand a token to."""
    if _CONFIG_UNSAFE.search(url):
        raise ValueError(BAD_CLONE_URL.format(url=url, why="it contains unsafe characters"))
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise ValueError(BAD_CLONE_URL.format(url=url, why="only https (or http) is allowed"))
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValueError(BAD_CLONE_URL.format(url=url, why="credentials never go in the URL"))
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
        # Rewritten before each credentialed command so an edited helper cannot answer for git.
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

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The whole environment of one git command; it never holds a token."""
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
        credential: list[str] = []
        pass_fds: tuple[int, ...] = ()
        if token is not None:
            if mirror is None or mirror.clone_url is None:
                raise ValueError(TOKEN_WITHOUT_MIRROR)
            scheme = urlsplit(mirror.clone_url).scheme
            self._write_askpass()
            # Whatever git or the remote prints later, this token is masked in every log line.
            redaction.register_secret(token)
            reader = credential_pipe(token)
            pass_fds = (reader,)
            # The empty value drops every helper configured anywhere; then only ours is asked.
            helper = CREDENTIAL_HELPER.format(fd=reader)
            credential = ["-c", "credential.helper=", "-c", f"credential.helper={helper}"]
        argv = [self.binary, *self.overrides(scheme), *credential, *args]
        secrets = (token,) if token else ()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=str(cwd) if cwd is not None else str(self.home),
                env=self.environment(extra),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        finally:
            # git holds its own copy now; ours must not outlive the spawn.
            for descriptor in pass_fds:
                os.close(descriptor)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            signal_group(process.pid)
            await process.wait()
            raise
        if process.returncode != 0:
            raise GitError(list(args), process.returncode, stderr.decode(errors="replace"), secrets)
        return stdout.decode(errors="replace")


def credential_pipe(token: str) -> int:
    """The read end of a pipe already holding git's credential for `token`, its write end closed.

    Both ends are created non-inheritable, so no other child of Shepherd gets them; git gets the
    read end through `pass_fds` only. Written whole before git starts, so nothing waits on git.
    """
    if not token or any(character in token for character in "\n\r\0"):
        raise ValueError(BAD_TOKEN.format(why="is empty or holds a line break or NUL"))
    data = CREDENTIAL_TEXT.format(user=TOKEN_USER, token=token).encode()
    if len(data) > MAX_CREDENTIAL_BYTES:
        raise ValueError(BAD_TOKEN.format(why=f"is longer than {MAX_CREDENTIAL_BYTES} bytes"))
    reader, writer = os.pipe()
    try:
        written = 0
        while written < len(data):
            written += os.write(writer, data[written:])
    except BaseException:
        os.close(reader)
        raise
    finally:
        os.close(writer)
    return reader


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
