"""The slash-command parser (contract): `/agent stop|retry|status|approve|revise <text>|budget <usd>|help` at the start of a line.

Pure text in, commands out. A command line starts with `/agent` (any case) at the very beginning of a
line; lines inside fenced code blocks and quoted lines (`> /agent stop`) are not commands, so quoting
or documenting a command never runs it. `/agent revise` takes the rest of its line and the lines
after it (up to the next command line) as the revision text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.core.budget import parse_usd

STOP = "stop"
RETRY = "retry"
STATUS = "status"
APPROVE = "approve"
REVISE = "revise"
BUDGET = "budget"
HELP = "help"
KNOWN = (STOP, RETRY, STATUS, APPROVE, REVISE, BUDGET, HELP)

_COMMAND_LINE = re.compile(r"^/agent(?![\w-])[ \t]*(?P<rest>.*)$", re.IGNORECASE)
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")


@dataclass(frozen=True)
class SlashCommand:
    """One parsed command. `name` is one of `KNOWN`; `unknown` holds what was typed when it was not."""

    name: str
    text: str = ""
    unknown: str | None = None

    @property
    def is_help(self) -> bool:
        return self.name == HELP


def _command_lines(body: str) -> list[tuple[int, str]]:
    lines = body.replace("\r\n", "\n").split("\n")
    found: list[tuple[int, str]] = []
    fence: str | None = None
    for index, line in enumerate(lines):
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        match = _COMMAND_LINE.match(line)
        if match:
            found.append((index, match.group("rest")))
    return found


def parse_commands(body: str | None) -> list[SlashCommand]:
    """Every slash command in a comment, in order. Unknown or empty subcommands parse as help."""
    if not body:
        return []
    lines = body.replace("\r\n", "\n").split("\n")
    found = _command_lines(body)
    commands: list[SlashCommand] = []
    for position, (index, rest) in enumerate(found):
        word, _, argument = rest.strip().partition(" ")
        name = word.lower()
        if name == REVISE:
            end = found[position + 1][0] if position + 1 < len(found) else len(lines)
            text = "\n".join([argument, *lines[index + 1 : end]]).strip()
            if not text:
                commands.append(SlashCommand(HELP, unknown=rest.strip()))
                continue
            commands.append(SlashCommand(REVISE, text=text))
        elif name == BUDGET:
            # `/agent budget 5`: a positive amount in USD, or the help says how to write one.
            if parse_usd(argument) is None:
                commands.append(SlashCommand(HELP, unknown=rest.strip()))
                continue
            commands.append(SlashCommand(BUDGET, text=argument.strip()))
        elif name in KNOWN:
            commands.append(SlashCommand(name))
        else:
            commands.append(SlashCommand(HELP, unknown=rest.strip()))
    return commands


def first_command(body: str | None) -> SlashCommand | None:
    """The command a comment carries (Shepherd acts on the first one), or None for an ordinary comment."""
    commands = parse_commands(body)
    return commands[0] if commands else None


def is_command(body: str | None) -> bool:
    """True when the comment holds a slash command (such a comment is never an answer to a question)."""
    return bool(_command_lines(body or ""))


def approves_all(body: str | None) -> bool:
    """`/agent approve all`, the dashboard issue's command: its first command line is exactly that."""
    found = _command_lines(body or "")
    return bool(found) and [word.lower() for word in found[0][1].split()] == [APPROVE, "all"]
