"""Agent adapters: the command line of each turn, and what Shepherd learns from the turn's output.

Every adapter puts ``--`` before the prompt or reply, because a human reply that starts with a dash
(a Markdown list, say) would otherwise be read as an option.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

# Linux caps one argument at 128 KiB; a longer prompt is read from the prompt file instead.
PROMPT_ARG_LIMIT_BYTES = 100 * 1024
PROMPT_FILE_INSTRUCTION = (
    "Your task is too long for the command line. It is in the file named by the environment "
    "variable SHEPHERD_PROMPT_FILE ({path}). Read that whole file first, then follow it."
)
REPLY_FILE_INSTRUCTION = (
    "The reply to your last turn is too long for the command line. It is in the file named by the "
    "environment variable SHEPHERD_REPLY_FILE. Read that whole file first, then continue."
)
ERROR_UNKNOWN_AGENT = "Unknown agent {name!r}: choose claude, codex or command."
ERROR_NO_COMMAND = "The command agent needs SHEPHERD_AGENT_COMMAND."
ERROR_NO_SESSION_ID = "Cannot resume: the previous turn reported no session id."

Command = list[str] | str

# The npm package and exact version of each named agent CLI: `scripts/serve` installs these, start-up
# and `shepherd doctor` ask for them, and the test suite runs these very versions (tests/vendor).
AGENT_CLI_PACKAGES = {
    "claude": ("@anthropic-ai/claude-code", "2.1.197"),
    "codex": ("@openai/codex", "0.169.0"),
}


def agent_cli_install_spec(agent: str) -> str | None:
    """`package@version` for `npm install`, or None for an agent Shepherd does not install (`command`)."""
    pinned = AGENT_CLI_PACKAGES.get(agent)
    return f"{pinned[0]}@{pinned[1]}" if pinned else None


@dataclasses.dataclass(frozen=True)
class AgentRunInfo:
    """What one turn's output says: ids, final text, cost and whether the agent reported an error."""

    session_id: str | None = None
    result_text: str | None = None
    cost_usd: float | None = None
    num_turns: int | None = None
    is_error: bool = False


class Adapter(Protocol):
    """How Shepherd runs one kind of agent CLI."""

    name: str

    def first_turn(
        self, prompt: str, prompt_file: str | os.PathLike[str], *, budget_usd: float | None = None
    ) -> Command:
        """The command of a session's first turn; `budget_usd` is what the session may still spend."""

    def resume_turn(self, agent_session_id: str | None, reply: str, *, budget_usd: float | None = None) -> Command:
        """The command of a later turn, answering ``reply`` in the same agent session."""

    def parse_output(self, output: str | Iterable[str]) -> AgentRunInfo:
        """Read a turn's log (stdout and stderr mixed) for what the agent reported."""


def budget_argument(amount: float) -> str:
    """`--max-budget-usd`'s value: plain decimals (no exponent), never below a millionth of a dollar."""
    return f"{max(amount, 0.000001):.6f}".rstrip("0").rstrip(".")


def _argument_text(text: str, instruction: str) -> str:
    if len(text.encode("utf-8")) > PROMPT_ARG_LIMIT_BYTES:
        return instruction
    return text


def json_objects(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``lines`` (text or bytes), skipping whatever else stderr mixed into a log."""
    for line in lines:
        text = (line.decode("utf-8", "replace") if isinstance(line, bytes) else line).strip()
        if not text.startswith("{"):
            continue
        try:
            event = json.loads(text)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _json_lines(output: str | Iterable[str]) -> Iterable[dict[str, Any]]:
    """The JSON objects of a turn's ``output``."""
    return json_objects(output.splitlines() if isinstance(output, str) else output)


@dataclasses.dataclass(frozen=True)
class ClaudeAdapter:
    """Claude Code headless, with stream-json output (SPEC §4)."""

    binary: str = "claude"
    allowed_tools: Sequence[str] | None = None
    name: str = "claude"

    def _common(self, budget_usd: float | None = None) -> list[str]:
        options = ["--output-format", "stream-json", "--verbose"]
        if budget_usd is not None:
            # The CLI stops itself at the session's remaining budget; Shepherd checks the reported cost too.
            options += ["--max-budget-usd", budget_argument(budget_usd)]
        if self.allowed_tools:
            options += ["--allowedTools", ",".join(self.allowed_tools)]
        else:
            options += ["--permission-mode", "bypassPermissions"]
        return options

    def first_turn(
        self, prompt: str, prompt_file: str | os.PathLike[str], *, budget_usd: float | None = None
    ) -> list[str]:
        text = _argument_text(prompt, PROMPT_FILE_INSTRUCTION.format(path=os.fspath(prompt_file)))
        return [self.binary, "-p", *self._common(budget_usd), "--", text]

    def resume_turn(self, agent_session_id: str | None, reply: str, *, budget_usd: float | None = None) -> list[str]:
        if not agent_session_id:
            raise ValueError(ERROR_NO_SESSION_ID)
        text = _argument_text(reply, REPLY_FILE_INSTRUCTION)
        return [self.binary, "-p", "--resume", agent_session_id, *self._common(budget_usd), "--", text]

    def parse_output(self, output: str | Iterable[str]) -> AgentRunInfo:
        session_id = None
        result = None
        for event in _json_lines(output):
            if event.get("type") == "system" and event.get("subtype") == "init":
                session_id = event.get("session_id") or session_id
            elif event.get("type") == "result":
                result = event
                session_id = event.get("session_id") or session_id
        if result is None:
            # No result line: the CLI died or was killed before it finished the turn.
            return AgentRunInfo(session_id=session_id, is_error=True)
        cost = result.get("total_cost_usd")
        turns = result.get("num_turns")
        return AgentRunInfo(
            session_id=session_id,
            result_text=result.get("result") if isinstance(result.get("result"), str) else None,
            cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
            num_turns=turns if isinstance(turns, int) else None,
            is_error=bool(result.get("is_error")) or result.get("subtype") != "success",
        )


@dataclasses.dataclass(frozen=True)
class CodexAdapter:
    """OpenAI Codex CLI, ``codex exec --json``; the worktree is the sandbox, so Codex's own is off.

    Codex runs the model's commands in a login shell by default, and a login shell's profile may
    reset ``PATH`` (Debian's ``/etc/profile`` does), which hides the ``shepherd`` tool from the
    agent. ``allow_login_shell=false`` makes Codex run them in a plain shell with Shepherd's ``PATH``.
    """

    binary: str = "codex"
    name: str = "codex"

    def _common(self) -> list[str]:
        return ["--json", "--dangerously-bypass-approvals-and-sandbox", "-c", "allow_login_shell=false"]

    def first_turn(
        self, prompt: str, prompt_file: str | os.PathLike[str], *, budget_usd: float | None = None
    ) -> list[str]:
        text = _argument_text(prompt, PROMPT_FILE_INSTRUCTION.format(path=os.fspath(prompt_file)))
        return [self.binary, "exec", *self._common(), "--", text]

    def resume_turn(self, agent_session_id: str | None, reply: str, *, budget_usd: float | None = None) -> list[str]:
        if not agent_session_id:
            raise ValueError(ERROR_NO_SESSION_ID)
        text = _argument_text(reply, REPLY_FILE_INSTRUCTION)
        return [self.binary, "exec", "resume", *self._common(), "--", agent_session_id, text]

    def parse_output(self, output: str | Iterable[str]) -> AgentRunInfo:
        thread_id = None
        result_text = None
        turns = 0
        failed = False
        finished = False
        for event in _json_lines(output):
            kind = event.get("type")
            if kind == "thread.started":
                thread_id = event.get("thread_id") or thread_id
            elif kind == "item.completed":
                # "error" items are warnings (e.g. unknown model metadata) and do not fail the turn.
                item = event.get("item") or {}
                if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                    result_text = item["text"]
            elif kind == "turn.completed":
                turns += 1
                finished = True
            elif kind in ("turn.failed", "error"):
                failed = True
        return AgentRunInfo(
            session_id=thread_id,
            result_text=result_text,
            cost_usd=None,
            num_turns=turns or None,
            is_error=failed or not finished,
        )


@dataclasses.dataclass(frozen=True)
class CommandAdapter:
    """The operator's ``SHEPHERD_AGENT_COMMAND``, run through the shell for every turn."""

    command: str
    name: str = "command"

    def first_turn(
        self, prompt: str, prompt_file: str | os.PathLike[str], *, budget_usd: float | None = None
    ) -> str:
        return self.command

    def resume_turn(self, agent_session_id: str | None, reply: str, *, budget_usd: float | None = None) -> str:
        return self.command

    def parse_output(self, output: str | Iterable[str]) -> AgentRunInfo:
        # A plain command reports through the `shepherd` tool and its exit code, not its output.
        return AgentRunInfo()


def make_adapter(
    name: str,
    *,
    command: str | None = None,
    claude_bin: str = "claude",
    codex_bin: str = "codex",
    allowed_tools: Sequence[str] | None = None,
) -> Adapter:
    """Build the adapter called ``name`` (``claude``, ``codex`` or ``command``)."""
    if name == "claude":
        return ClaudeAdapter(binary=claude_bin, allowed_tools=tuple(allowed_tools) if allowed_tools else None)
    if name == "codex":
        return CodexAdapter(binary=codex_bin)
    if name == "command":
        if not command:
            raise ValueError(ERROR_NO_COMMAND)
        return CommandAdapter(command=command)
    raise ValueError(ERROR_UNKNOWN_AGENT.format(name=name))
