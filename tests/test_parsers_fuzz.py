"""Property: the parsers of what strangers and agents write never raise, never hang, and say what they
refused: `.github/shepherd.yml`, slash commands, and the agent's reports channel (issue 15)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.agent import channel as agent_channel
from bot.core import commands as slash
from bot.core.policy import MAX_POLICY_BYTES, OperatorLimits, RepoPolicy, parse_policy
from bot.agent.turns import report_event

OPERATOR = OperatorLimits(agent="claude", adapters=("claude", "codex"), max_per_repo=2, egress=("pypi.org",))
KEYS = sorted(RepoPolicy.model_fields)
# A fixed seed (derandomize) and a few thousand cases in CI; SHEPHERD_FUZZ_EXAMPLES=50000 runs more.
EXAMPLES = int(os.environ.get("SHEPHERD_FUZZ_EXAMPLES", "2000"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None)
@given(st.one_of(
    st.text(max_size=400),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), json_values, max_size=6).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)),
))
def test_any_policy_file_gives_a_policy_and_named_problems(text: str) -> None:
    loaded = parse_policy(text, OPERATOR, default_branch="main")
    assert loaded.policy.max_turns >= 1 and loaded.policy.min_permission in ("write", "maintain", "admin")
    assert set(loaded.policy.network.allow) <= {"pypi.org"}  # a file never widens the operator's egress
    for problem in loaded.problems:
        assert problem.key and problem.message


def test_a_policy_file_past_the_size_limit_is_refused_whole() -> None:
    loaded = parse_policy("max_turns: 3\n" + "#" * MAX_POLICY_BYTES, OPERATOR, default_branch="main")
    assert loaded.problems and loaded.policy.max_turns == 20


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None)
@given(st.text(max_size=300) | st.text(alphabet="/agent stop retry approve revise budget help\n \t\r", max_size=80))
def test_any_comment_is_a_command_or_not_and_never_an_error(body: str) -> None:
    command = slash.first_command(body)
    if command is not None:
        assert any(line.strip().lower().startswith("/agent") for line in body.replace("\r", "\n").split("\n"))


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"seq": st.integers(), "kind": st.sampled_from(agent_channel.KINDS + ("merge",))},
                          optional={"note": json_values, "question": json_values, "options": json_values,
                                    "summary": json_values, "plan": json_values, "phase": json_values,
                                    "context": json_values}).map(lambda d: json.dumps(d).encode()),
), max_size=20))
def test_whatever_the_agent_writes_to_its_channel_is_read_as_known_reports_or_skipped(tmp_path: Path, lines) -> None:
    channel = tmp_path / agent_channel.CHANNEL_NAME
    channel.mkdir(exist_ok=True)
    (channel / agent_channel.REPORTS_NAME).write_bytes(b"\n".join(lines) + b"\n")
    for report in agent_channel.read_reports(tmp_path):
        assert report["kind"] in agent_channel.KINDS and isinstance(report["seq"], int)
        report_event(report)  # an event, or None for a malformed one: never an exception


def test_a_report_written_around_the_tool_is_held_to_the_tools_budgets(tmp_path: Path) -> None:
    # The agent can write its channel directly, past the tool's own checks.
    channel = tmp_path / agent_channel.CHANNEL_NAME
    channel.mkdir()
    huge = "x" * (300 * 1024)
    reports = [
        {"seq": 1, "kind": "ask", "question": huge, "options": [huge] * 2 + ["o"] * 100, "context": huge},
        {"seq": 2, "kind": "plan", "plan": huge},
        {"seq": 3, "kind": "progress", "note": huge, "phase": {"not": "a phase"}},
        {"seq": 4, "kind": "ask", "question": "options that are not a list", "options": 7},
    ]
    (channel / agent_channel.REPORTS_NAME).write_text("".join(json.dumps(r) + "\n" for r in reports))
    asked, plan, progress, bad = [report_event(r) for r in agent_channel.read_reports(tmp_path)]
    assert len(asked.question) == agent_channel.TEXT_LIMIT_CHARS and len(asked.context) == agent_channel.TEXT_LIMIT_CHARS
    assert len(asked.options) <= 20 and all(len(o) <= agent_channel.TEXT_LIMIT_CHARS for o in asked.options)
    assert len(plan.text) == agent_channel.PLAN_LIMIT_BYTES
    assert len(progress.note) == agent_channel.TEXT_LIMIT_CHARS and progress.phase is None
    assert bad is None
