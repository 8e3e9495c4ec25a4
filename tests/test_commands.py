"""The slash-command parser (contract): where a command may stand, its case, its text, and what is not one."""

from __future__ import annotations

import pytest

from bot.core.commands import SlashCommand, first_command, is_command, parse_commands


@pytest.mark.parametrize("body, expected", [
    ("/agent stop", SlashCommand("stop")),
    ("/AGENT Retry", SlashCommand("retry")),
    ("Thanks!\n/agent status\n", SlashCommand("status")),
    ("/agent approve   ", SlashCommand("approve")),
    ("/agent help", SlashCommand("help")),
    ("/agent revise use csv.writer", SlashCommand("revise", text="use csv.writer")),
    ("/agent revise\nfirst line\nsecond line", SlashCommand("revise", text="first line\nsecond line")),
    ("/agent dance", SlashCommand("help", unknown="dance")),
    ("/agent", SlashCommand("help", unknown="")),
    ("/agent revise", SlashCommand("help", unknown="revise")),
])
def test_commands_parse(body: str, expected: SlashCommand) -> None:
    assert first_command(body) == expected
    assert is_command(body)


@pytest.mark.parametrize("body", [
    "Please /agent stop now",  # not at the start of a line
    "> /agent stop",  # a quote of someone else's command
    "```\n/agent stop\n```",  # documentation in a code block
    "~~~~\n/agent retry\n~~~~",
    "/agents stop",
    "/agent-stop",
    "",
])
def test_text_that_is_not_a_command(body: str) -> None:
    assert first_command(body) is None
    assert not is_command(body)


def test_revise_text_ends_at_the_next_command_and_crlf_is_read() -> None:
    commands = parse_commands("/agent revise smaller\r\nplease\r\n/agent status")
    assert commands == [SlashCommand("revise", text="smaller\nplease"), SlashCommand("status")]


def test_a_command_after_a_closed_fence_counts() -> None:
    assert first_command("```\ncode\n```\n/agent stop") == SlashCommand("stop")
