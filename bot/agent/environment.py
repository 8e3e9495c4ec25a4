"""The agent's process environment: a small allow-list, and never one of Shepherd's secrets (SPEC §4).

Which names are refused, and why:

- ``SECRET_NAMES``: Shepherd's own credentials, refused by name.
- Any name starting with ``GITHUB_`` or ``GH_``: GitHub credentials and settings belong to Shepherd,
  and tools such as ``gh`` and Actions helpers pick tokens up from these families.
- Any name starting with ``SHEPHERD_``: Shepherd's settings, and the ``SHEPHERD_*`` variables it sets
  itself for the agent, which a pass-through must not be able to replace.
- Any name containing ``TOKEN``, ``SECRET``, ``PASSWORD`` or ``PRIVATE_KEY``, because such a name
  almost always holds a credential of the operator's.

The agent families ``ANTHROPIC_*``, ``CLAUDE_*``, ``OPENAI_*`` and ``CODEX_*`` are exempt from the last
rule: the agent CLIs need their own credentials (``ANTHROPIC_AUTH_TOKEN``, ``CLAUDE_CODE_OAUTH_TOKEN``)
and those are the operator's deliberate choice to hand to the agent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.agent.channel import STATUS_NAME

SECRET_NAMES = frozenset(
    {
        "GITHUB_APP_ID",
        "GITHUB_PRIVATE_KEY",
        "GITHUB_PRIVATE_KEY_PATH",
        "GITHUB_WEBHOOK_SECRET",
        "GITHUB_TOKEN",
        "GH_TOKEN",
        "GH_ENTERPRISE_TOKEN",
        "GITHUB_ENTERPRISE_TOKEN",
        "SHEPHERD_DASHBOARD_TOKEN",
    }
)
AGENT_FAMILIES = ("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_")
REFUSED_PREFIXES = ("GITHUB_", "GH_", "SHEPHERD_")
REFUSED_FRAGMENTS = ("TOKEN", "SECRET", "PASSWORD", "PRIVATE_KEY")
LOCALE_NAMES = ("LANG", "LANGUAGE", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Linux refuses an environment string over 128 KiB; the whole reply always goes in the reply file.
REPLY_LIMIT_BYTES = 64 * 1024

# In the session's control folder: the first turn's prompt, and the folder holding the `shepherd` tool.
PROMPT_NAME = "prompt.md"
TOOL_BIN_NAME = "bin"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def refused_agent_env_names(names: Iterable[str]) -> list[str]:
    """Return the names of ``names`` that may never be passed to an agent, in the order given."""
    return [name for name in names if _is_refused(name)]


def _is_refused(name: str) -> bool:
    if not _NAME.match(name):
        return True
    upper = name.upper()
    if upper in SECRET_NAMES or upper.startswith(REFUSED_PREFIXES):
        return True
    if upper.startswith(AGENT_FAMILIES):
        return False
    return any(fragment in upper for fragment in REFUSED_FRAGMENTS)


def truncate_reply(reply: str) -> str:
    """Cut ``reply`` to at most ``REPLY_LIMIT_BYTES`` of UTF-8 without splitting a character."""
    encoded = reply.encode("utf-8")
    if len(encoded) <= REPLY_LIMIT_BYTES:
        return reply
    return encoded[:REPLY_LIMIT_BYTES].decode("utf-8", errors="ignore")


def write_reply_file(path: str | os.PathLike[str], reply: str) -> Path:
    """Write the whole reply text where ``SHEPHERD_REPLY_FILE`` points (replacing it atomically)."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(reply, encoding="utf-8")
    os.replace(temporary, target)
    return target


def build_agent_env(
    parent_env: Mapping[str, str],
    *,
    extra_names: Sequence[str],
    session_dir: str | os.PathLike[str],
    status_file: str | os.PathLike[str],
    repo: str,
    issue: int,
    branch: str,
    worktree: str | os.PathLike[str],
    turn: int,
    prompt_file: str | os.PathLike[str],
    port: int,
    reply: str | None,
    reply_file: str | os.PathLike[str] | None,
    bot_name: str,
    bot_email: str,
    tool_bin_dir: str | os.PathLike[str],
) -> dict[str, str]:
    """Return the environment of one agent turn, built only from the allow-list of SPEC §4.

    Refused names in ``extra_names`` are skipped here as a second line of defence; the settings
    loader already refuses them at start-up with ``refused_agent_env_names``.
    """
    env: dict[str, str] = {}
    for name, value in parent_env.items():
        if _is_passed_through(name) and not _is_refused(name):
            env[name] = value
    for name in extra_names:
        if name in parent_env and not _is_refused(name):
            env[name] = parent_env[name]
    parent_path = parent_env.get("PATH") or DEFAULT_PATH
    env["PATH"] = os.pathsep.join([os.fspath(tool_bin_dir), parent_path])
    if "HOME" in parent_env:
        env["HOME"] = parent_env["HOME"]
    env.update(
        {
            "GIT_AUTHOR_NAME": bot_name,
            "GIT_AUTHOR_EMAIL": bot_email,
            "GIT_COMMITTER_NAME": bot_name,
            "GIT_COMMITTER_EMAIL": bot_email,
            "SHEPHERD_SESSION_DIR": os.fspath(session_dir),
            "SHEPHERD_STATUS_FILE": os.fspath(status_file),
            "SHEPHERD_REPO": repo,
            "SHEPHERD_ISSUE": str(issue),
            "SHEPHERD_BRANCH": branch,
            "SHEPHERD_WORKTREE": os.fspath(worktree),
            "SHEPHERD_TURN": str(turn),
            "SHEPHERD_PROMPT_FILE": os.fspath(prompt_file),
            "PORT": str(port),
        }
    )
    if reply is not None:
        env["SHEPHERD_REPLY"] = truncate_reply(reply)
    if reply_file is not None:
        env["SHEPHERD_REPLY_FILE"] = os.fspath(reply_file)
    return env


@dataclass(frozen=True)
class SessionEnvironment:
    """Who and where one session is. Every process Shepherd starts for the session (its turns, its
    `setup` commands, its `test` command) gets its environment from here, so all of them are told the
    same branch, folders and `PORT`."""

    parent_env: Mapping[str, str]
    extra_names: Sequence[str]
    session_dir: Path
    worktree: Path
    repo: str
    issue: int
    branch: str
    port: int
    bot_name: str
    bot_email: str

    @property
    def prompt_file(self) -> Path:
        return self.session_dir / PROMPT_NAME

    @property
    def status_file(self) -> Path:
        return self.session_dir / STATUS_NAME

    @property
    def tool_bin_dir(self) -> Path:
        return self.session_dir / TOOL_BIN_NAME

    def build(self, turn: int, *, reply: str | None = None, reply_file: Path | None = None) -> dict[str, str]:
        """The environment of a process started during `turn` (0 before the first turn)."""
        return build_agent_env(
            self.parent_env,
            extra_names=self.extra_names,
            session_dir=self.session_dir,
            status_file=self.status_file,
            repo=self.repo,
            issue=self.issue,
            branch=self.branch,
            worktree=self.worktree,
            turn=turn,
            prompt_file=self.prompt_file,
            port=self.port,
            reply=reply,
            reply_file=reply_file,
            bot_name=self.bot_name,
            bot_email=self.bot_email,
            tool_bin_dir=self.tool_bin_dir,
        )


def _is_passed_through(name: str) -> bool:
    """The families every agent gets without being named in ``SHEPHERD_AGENT_ENV``."""
    return name in LOCALE_NAMES or name.startswith("LC_") or name.startswith(AGENT_FAMILIES)
