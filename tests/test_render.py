"""The texts a person reads, rendered from templates: agent text defused, times absolute, strict templates."""

from __future__ import annotations

from datetime import datetime, timezone
from dataclasses import replace

import jinja2
import pytest

from bot.views import render
from bot.core.effects import EgressRefusals, SessionContext
from bot.core.policy import OperatorLimits, Problem, default_policy
from bot.core.session import Mode, PullRequestState, State, Trigger, decide_trigger

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = SessionContext(installation_id=1, owner="octo-org", repo="widgets",
                         clone_url="https://github.example.com/octo-org/widgets.git", default_branch="main",
                         policy=default_policy(OperatorLimits(), "main"))


def session(**changes):
    trigger = Trigger(repo="octo-org/widgets", issue_number=4, issue_title="Add export", mode=Mode.GO,
                      actor="alice", base_branch="main")
    return replace(decide_trigger(None, trigger, NOW).session, **changes)


def test_an_unchanged_session_renders_identically_later() -> None:
    first = render.render_status(session(), CONTEXT)
    assert render.render_status(session(), CONTEXT) == first
    assert "| Started | 2024-05-01 12:00:00 UTC |" in first
    assert first.startswith("<!-- shepherd:status session=octo-org/widgets#4/1 -->\n### 🛠️ Shepherd: Preparing")


def test_queue_position_shows_only_while_queued() -> None:
    queued = render.render_status(session(state=State.QUEUED), replace(CONTEXT, queue_position=3))
    assert "| Queue | 3rd in line |" in queued
    working = render.render_status(session(state=State.WORKING), replace(CONTEXT, queue_position=3))
    assert "Queue" not in working


def test_what_the_egress_proxy_refused_is_named_with_its_counts() -> None:
    refused = replace(CONTEXT, egress=EgressRefusals(3, {"z.example:443": 1, "a.example:80`<b>": 2}))
    shown = render.render_status(session(state=State.WORKING), refused)
    assert ("_The egress proxy refused what the agent tried to reach outside its allow-list: 3 connection(s) "
            "refused: `a.example:80<b>` (2), `z.example:443` (1)._") in shown
    for nothing in (None, EgressRefusals()):
        assert "egress proxy" not in render.render_status(session(state=State.WORKING), replace(CONTEXT, egress=nothing))


def test_earlier_sessions_and_the_sandbox_mode_come_from_the_context() -> None:
    earlier = session(state=State.FAILED, failure_reason="the agent crashed")
    shown = render.render_status(session(attempt=2), replace(CONTEXT, earlier=(earlier,), sandbox="none"))
    assert "attempt 1" in shown and "the agent crashed" in shown
    assert render.SANDBOX_OFF_SENTENCE in shown and render.SANDBOX_OFF_POLICY_LINE in shown
    assert render.SANDBOX_OFF_SENTENCE not in render.render_status(session(), CONTEXT)
    assert "sandbox: bwrap" in render.render_status(session(), CONTEXT)


def test_branch_and_pr_links_use_the_repository_web_address() -> None:
    body = render.render_status(
        session(state=State.COMPLETE, pr_number=9, pr_url="https://github.example.com/octo-org/widgets/pull/9",
                pr_state=PullRequestState.OPEN), CONTEXT)
    assert "[`agent/issue-4-add-export`](https://github.example.com/octo-org/widgets/tree/agent/issue-4-add-export)" in body
    assert "[#9](https://github.example.com/octo-org/widgets/pull/9)" in body


def test_agent_text_cannot_ping_close_or_forge_a_marker() -> None:
    body = render.render_question("s", "s/q1", "Ask @bob? Fixes #2 <!-- shepherd:status session=s -->",
                                  ("close #5",), "cc @team", "alice")
    assert body.startswith("<!-- shepherd:question session=s id=s/q1 -->")
    assert "@alice, the agent" in body  # the one intended ping
    assert "@\u200dbob" in body and "@\u200dteam" in body
    assert "Fixes issue #2" in body and "close issue #5" in body
    assert body.count("shepherd:status") == 0


def test_the_question_section_survives_the_answered_edit() -> None:
    asked = render.render_question("s", "s/q1", "CSV or JSON?", ("CSV", "JSON"), None, "alice")
    section = render.question_section(asked)
    answered = render.render_question_answered("s", "s/q1", section, "bob")
    assert "### ✅ Question answered by @bob" in answered
    assert render.question_section(answered) == section
    withdrawn = render.render_question_cancelled("s", "s/q1", section, withdrawn=True)
    assert render.WITHDRAWN_SENTENCE in withdrawn and "state=withdrawn" in withdrawn


def test_long_agent_text_is_cut() -> None:
    body = render.render_plan("s", "x" * (render.MAX_AGENT_TEXT_CHARS + 500), 2, "alice")
    assert "(revision 2)" in body and "x" * render.MAX_AGENT_TEXT_CHARS + " …" in body


def test_policy_problems_name_each_key() -> None:
    body = render.render_policy_problems("s", [Problem("max_turns", "must be a whole number of at least 1, got 0"),
                                              "(file): is not UTF-8 text"], ".github/shepherd.yml")
    assert "- `max_turns` must be a whole number of at least 1, got 0" in body
    assert "- `(file)` is not UTF-8 text" in body


def test_templates_refuse_a_missing_value() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render.render("pointer", marker="x", number=1)


def test_fence_outgrows_backticks() -> None:
    assert render.fence("a ```` b") == "`````"
    assert render.fence("plain") == "```"


@pytest.mark.parametrize("name", [
    "a`b.txt",
    "x`](https://evil.example)`y.md",
    "``two``",
    "pipe|and|more.txt",
    "line\nbreak - [ ] task.md",
    "tail`",
])
def test_a_hostile_file_name_stays_one_code_span_on_one_line(name: str) -> None:
    from bot.core.effects import ChangedFile

    body = render.render_status(session(state=State.WORKING), replace(CONTEXT, changed_files=(ChangedFile(name, 1, 0),)))
    [line] = [line for line in body.splitlines() if line.startswith("- ") and "+1 −0" in line]
    span = line[2:].rsplit(" +1 −0", 1)[0]
    ticks = len(span) - len(span.lstrip("`"))
    # One code span: opened and closed by the same run of backticks, none that long inside it.
    assert ticks >= 1 and span.endswith("`" * ticks) and not span.endswith("`" * (ticks + 1))
    inside = span[ticks:-ticks]
    assert "`" * ticks not in inside
    assert "\n" not in inside and len(body.splitlines()) == len(render.render_status(
        session(state=State.WORKING), replace(CONTEXT, changed_files=(ChangedFile("plain.txt", 1, 0),))).splitlines())
