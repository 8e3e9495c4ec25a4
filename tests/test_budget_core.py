"""Cost budgets in the pure core (SPEC §8): the spend summed over turns, the stop at the cap, the work kept
and pushed, `needs-human` with the way out, and `/agent budget <usd>` resuming the same agent session."""

from __future__ import annotations

import json

import pytest

from bot.core import budget
from bot.core import commands as slash
from bot.core import responses
from bot.core.session import (
    AddLabel, BudgetRaised, Cancel, CancelReason, Detail, DoneReported, FinishWork, LabelKind, Limits,
    PostStatus, PullRequestOpened, PushFailed, Recovered, RemoveLabel, RequestSlot, ReviewFeedback, SlotGranted,
    SpendReported, StartTurn, State, StopAgent, TurnExited, TurnFailed, FailureKind, TurnKind, 
    WorkPushed, decide, to_status_json,
)
from tests.test_session_core import Clock, drive, running

CAPPED = Limits(max_cost_usd=1.0)


def test_the_first_turn_is_told_the_whole_budget_and_later_turns_what_is_left():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    s = drive(s, SpendReported(1, 0.25), SpendReported(1, 0.40), clock=clock).session
    assert s.spent_usd == pytest.approx(0.40)  # running totals of one turn are not added twice
    s = drive(s, DoneReported("done"), TurnExited(0, has_new_commits=True),
              PullRequestOpened(7, "https://github.test/acme/web/pull/7", "sha1"), clock=clock).session
    decision = drive(s, ReviewFeedback("review:1", "bob", "rename it"), SlotGranted(), clock=clock)
    start = [c for c in decision.commands if isinstance(c, StartTurn)]
    assert start and start[0].max_cost_usd == pytest.approx(0.60)
    s = drive(decision.session, SpendReported(2, 0.10), clock=clock).session
    assert s.spent_usd == pytest.approx(0.50)  # summed across turns


def test_no_cap_means_no_budget_argument_and_no_stop():
    clock = Clock()
    s = running(clock=clock)
    assert s.limits.max_cost_usd is None
    decision = drive(s, SpendReported(1, 500.0), clock=clock)
    assert decision.session.spent_usd == 500.0
    assert not any(isinstance(c, StopAgent) for c in decision.commands)


def test_reaching_the_cap_stops_the_turn_now_and_pushes_the_work_without_a_pull_request():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    decision = drive(s, SpendReported(1, 1.02), clock=clock)
    assert StopAgent(0) in decision.commands and decision.session.budget_stop
    decision = drive(decision.session, TurnExited(-9, has_new_commits=True), clock=clock)
    finish = [c for c in decision.commands if isinstance(c, FinishWork)]
    assert finish == [FinishWork(decision.session.branch, None, None, open_pull_request=False)]
    assert decision.session.state == State.WORKING and decision.session.finishing
    decision = drive(decision.session, WorkPushed("abc123"), clock=clock)
    s = decision.session
    assert (s.state, s.detail, s.budget_hold) == (State.STUCK, Detail.NEEDS_HUMAN, True)
    assert AddLabel(LabelKind.NEEDS_HUMAN) in decision.commands
    assert "$1.02 of its $1.00 budget" in s.stuck_reason and "`/agent budget 2.00`" in s.stuck_reason
    assert s.pr_number is None


def test_a_turn_stopped_at_the_cap_with_nothing_to_keep_goes_straight_to_needs_human():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    decision = drive(s, SpendReported(1, 1.5), TurnExited(1), clock=clock)
    assert decision.session.state == State.STUCK and decision.session.detail == Detail.NEEDS_HUMAN
    assert not any(isinstance(c, FinishWork) for c in decision.commands)


def test_a_killed_turn_at_the_cap_still_keeps_its_work_and_a_failed_push_still_holds():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    decision = drive(s, SpendReported(1, 1.5), TurnFailed(FailureKind.CRASH), clock=clock)
    assert any(isinstance(c, FinishWork) and not c.open_pull_request for c in decision.commands)
    decision = drive(decision.session, PushFailed("nothing to push"), clock=clock)
    assert decision.session.state == State.STUCK and decision.session.budget_hold


def test_a_turn_that_reported_done_before_the_cap_finishes_normally_but_the_next_turn_is_held():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    decision = drive(s, DoneReported("all done"), SpendReported(1, 1.2), TurnExited(0, has_new_commits=True), clock=clock)
    assert any(isinstance(c, FinishWork) and c.open_pull_request for c in decision.commands)
    s = drive(decision.session, PullRequestOpened(7, "https://github.test/acme/web/pull/7", "sha1"), clock=clock).session
    decision = drive(s, ReviewFeedback("review:1", "bob", "rename it"), clock=clock)
    assert decision.session.state == State.STUCK and decision.session.budget_hold
    assert not any(isinstance(c, RequestSlot) for c in decision.commands)


def held(clock: Clock):
    s = running(limits=CAPPED, clock=clock)
    return drive(s, SpendReported(1, 1.02), TurnExited(-9, has_new_commits=True), WorkPushed("abc"), clock=clock).session


def test_raising_the_cap_resumes_the_same_agent_session_at_the_front():
    clock = Clock()
    s = held(clock)
    decision = drive(s, BudgetRaised("alice", 5.0), clock=clock)
    assert RemoveLabel(LabelKind.NEEDS_HUMAN) in decision.commands
    assert RequestSlot(front=True) in decision.commands
    s = decision.session
    assert s.limits.max_cost_usd == 5.0 and not s.budget_hold and s.state == State.QUEUED
    decision = drive(s, SlotGranted(), clock=clock)
    start = next(c for c in decision.commands if isinstance(c, StartTurn))
    assert start.kind == TurnKind.REPLY and start.resume_session_id == "agent-1"
    assert start.max_cost_usd == pytest.approx(5.0 - 1.02)
    assert "raised to $5.00" in start.reply


def test_a_cap_not_above_the_spend_changes_nothing():
    clock = Clock()
    s = held(clock)
    assert drive(s, BudgetRaised("alice", 1.0), clock=clock).session == s
    assert drive(s, BudgetRaised("alice", 0.5), clock=clock).session == s


def test_raising_the_cap_of_a_running_session_only_changes_the_cap():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    decision = drive(s, BudgetRaised("alice", 3.0), clock=clock)
    assert decision.session.limits.max_cost_usd == 3.0 and decision.session.state == State.WORKING
    assert decision.commands == (PostStatus(urgent=True),)


def test_a_late_spend_report_of_an_earlier_turn_is_ignored():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    assert drive(s, SpendReported(2, 0.3), clock=clock).session.spent_usd == 0.0


def test_cancel_clears_the_budget_hold_and_its_label():
    clock = Clock()
    s = held(clock)
    decision = drive(s, Cancel(CancelReason.STOP_COMMAND), clock=clock)
    assert decision.session.state == State.CANCELLED and not decision.session.budget_hold
    assert RemoveLabel(LabelKind.NEEDS_HUMAN) in decision.commands


def test_a_restart_while_keeping_the_work_pushes_again_without_a_pull_request():
    clock = Clock()
    s = running(limits=CAPPED, clock=clock)
    s = drive(s, SpendReported(1, 1.5), TurnExited(-9, has_new_commits=True), clock=clock).session
    decision = decide(s, Recovered(turn_alive=False), clock.tick())
    assert [c for c in decision.commands if isinstance(c, FinishWork)] == [
        FinishWork(s.branch, None, None, open_pull_request=False)
    ]


def test_the_spend_survives_json_and_shows_in_status_json():
    clock = Clock()
    s = held(clock)
    assert type(s).from_dict(json.loads(json.dumps(s.to_dict()))) == s
    data = to_status_json(s)
    assert data["spentUsd"] == pytest.approx(1.02) and data["maxCostUsd"] == 1.0


# --- the slash command ------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "amount"), [("/agent budget 5", 5.0), ("/AGENT budget $2.50", 2.5),
                                               ("/agent budget  0.75 ", 0.75)])
def test_budget_command_parses_to_the_raise_event(body, amount):
    command = slash.first_command(body)
    assert command.name == slash.BUDGET
    assert responses.event_for(command, "alice") == BudgetRaised("alice", amount)


@pytest.mark.parametrize("body", ["/agent budget", "/agent budget lots", "/agent budget -3", "/agent budget 0",
                                  "/agent budget nan", "/agent budget inf"])
def test_a_budget_command_without_a_positive_amount_gets_the_help(body):
    command = slash.first_command(body)
    assert command.is_help and command.unknown.startswith("budget")


# --- the arithmetic ---------------------------------------------------------------------------


def test_codex_tokens_are_priced_by_model_then_by_the_adapter_fallback():
    prices = budget.parse_prices('{"gpt-x": {"input": 2, "output": 8, "cached_input": 0.5}}')
    cost = budget.price_tokens(prices, ("gpt-x", "codex"), input_tokens=1_000_000, cached_tokens=500_000,
                               output_tokens=100_000)
    assert cost == pytest.approx(0.5 * 2 + 0.5 * 0.5 + 0.1 * 8)
    fallback = budget.price_tokens(prices, ("unknown", "codex"), input_tokens=1_000_000, cached_tokens=0,
                                   output_tokens=0)
    assert fallback == pytest.approx(budget.DEFAULT_PRICES["codex"].input)
    assert budget.price_tokens({}, ("codex",), input_tokens=1, cached_tokens=0, output_tokens=1) is None


@pytest.mark.parametrize("text", ["[]", "{", '{"m": {"input": 1}}', '{"m": {"input": -1, "output": 1}}',
                                  '{"m": {"input": 1, "output": 1, "surcharge": 2}}', '{"m": {"input": true, "output": 1}}'])
def test_a_bad_price_table_is_refused_with_the_shape_it_needs(text):
    with pytest.raises(ValueError, match="USD per million tokens"):
        budget.parse_prices(text)


def test_spend_lines_read_like_money():
    assert budget.spend_line(0.42, 2.0) == "Spend: $0.42 of $2.00"
    assert budget.spend_line(0.000525, 0.0005) == "Spend: $0.000525 of $0.0005"
    assert budget.spend_line(3.0, None) == "Spend: $3.00"
