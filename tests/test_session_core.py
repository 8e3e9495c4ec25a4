"""The session core's rules, one test per SPEC §1 rule, asserting exact commands and resulting state."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.core import session as core
from bot.core.session import (
    AddLabel, Approve, ExplainNeedsHuman, Asked, Cancel, CancelReason, CIFailed, CleanupWorkspace, Decision, Detail,
    DependenciesSatisfied, DependenciesWaiting, DoneReported, EditQuestion, EnsureWorkspace,
    FailureKind, FinishWork, HoldSlot, LabelKind, Limits, MarkQuestionAnswered, MarkQuestionCancelled,
    Mode, Note, PlanSubmitted, PointToPullRequest, PostPlan, PostQuestion, PostStatus, Progress,
    PullRequestClosed, PullRequestOpened, PullRequestUpdated, PushFailed, QuestionPosted, React,
    Recovered, ReleaseSlot, RemoveLabel, ReplyReceived, ReportFailure, RequestSlot, Retry,
    ReviewFeedback, Revise, SlotGranted, StartTurn, State, StopAgent, Trigger, TurnExited,
    TurnFailed, TurnKind, TurnStarted, WithdrawQuestion, WorkspaceReady, decide, decide_trigger,
    make_slug,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """Each event happens one minute after the previous one."""

    def __init__(self) -> None:
        self.now = T0

    def tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def trigger(mode: Mode = Mode.GO, limits: Limits = Limits(), title: str = "Add CSV export") -> Trigger:
    return Trigger(
        repo="acme/web", issue_number=42, issue_title=title, mode=mode, actor="alice",
        base_branch="main", limits=limits,
    )


def drive(session, *events, clock: Clock | None = None) -> Decision:
    """Feed events in order; return the last decision (its session is the resulting state)."""
    clock = clock or Clock()
    decision = Decision(session)
    for event in events:
        decision = decide(decision.session, event, clock.tick())
    return decision


def running(mode: Mode = Mode.GO, limits: Limits = Limits(), clock: Clock | None = None):
    """A session whose first turn runs."""
    return drive(None, trigger(mode, limits), WorkspaceReady(), SlotGranted(), TurnStarted("agent-1"),
                 clock=clock).session


def complete(limits: Limits = Limits()):
    s = running(limits=limits)
    s = drive(s, DoneReported("did it"), TurnExited(0, has_new_commits=True),
              PullRequestOpened(7, "https://github.test/acme/web/pull/7", "sha1")).session
    assert s.state == State.COMPLETE
    return s


def stuck_on_question(clock: Clock | None = None):
    clock = clock or Clock()
    s = running(clock=clock)
    s = drive(s, Asked("Which format?", ("CSV", "TSV"), "the spec is vague"),
              QuestionPosted(f"{s.id}/q1", 555, clock.now + timedelta(seconds=5)), clock=clock).session
    return s


# --- §1.1 trigger -------------------------------------------------------------------------------


def test_trigger_creates_a_session_reacts_and_prepares_the_workspace():
    decision = decide(None, trigger(title="Add CSV export — naïve ÜTF!"), T0)

    s = decision.session
    assert s.state == State.REGISTERED
    assert s.slug == "add-csv-export-naive-utf"
    assert s.branch == "agent/issue-42-add-csv-export-naive-utf"
    assert decision.commands == (
        React("eyes"),
        EnsureWorkspace("agent/issue-42-add-csv-export-naive-utf", "main", from_kept_branch=False),
        PostStatus(urgent=True),
    )


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Fix: the  `parser`!!", "fix-the-parser"),
        ("x" * 60, "x" * 40),
        ("word " * 20, "word-word-word-word-word-word-word-word"),
        ("日本語", "issue"),
    ],
)
def test_slug_is_lowercase_ascii_at_most_40_characters(title, slug):
    assert make_slug(title) == slug


def test_a_new_label_on_a_live_session_does_nothing():
    s = running()
    decision = decide_trigger(s, trigger(), T0)
    assert decision == Decision(s)


@pytest.mark.parametrize("ending", [Cancel(CancelReason.STOP_COMMAND), TurnExited(0)])
def test_a_new_label_after_cancel_or_failure_continues_from_the_kept_branch(ending):
    old = drive(running(), ending).session
    assert old.state in (State.CANCELLED, State.FAILED)

    decision = decide_trigger(old, trigger(), T0)

    new = decision.session
    assert new.id != old.id and new.state == State.REGISTERED
    assert new.branch == old.branch
    # The issue has Shepherd's 👀 from its first session: a later session does not react again.
    assert decision.commands[0] == EnsureWorkspace(old.branch, "main", from_kept_branch=True)
    assert React("eyes") not in decision.commands


def test_a_new_label_while_the_pr_is_open_points_to_the_pr():
    s = complete()
    decision = decide_trigger(s, trigger(), T0)
    assert decision.session == s
    assert decision.commands == (React("confused"), PointToPullRequest(7, "https://github.test/acme/web/pull/7"))


def test_a_new_label_after_the_pr_merged_starts_fresh_on_a_new_branch():
    merged = drive(complete(), PullRequestClosed(merged=True)).session
    first = decide_trigger(merged, trigger(), T0).session
    assert first.branch == "agent/issue-42-add-csv-export-2"
    assert not first.from_kept_branch

    again = drive(first, WorkspaceReady(), SlotGranted(), DoneReported("x"), TurnExited(0),
                  PullRequestOpened(8, "u8"), PullRequestClosed(merged=True)).session
    assert decide_trigger(again, trigger(), T0).session.branch == "agent/issue-42-add-csv-export-3"


def test_retry_after_failure_starts_a_new_session_from_the_kept_branch():
    failed = drive(running(), TurnExited(3)).session
    decision = decide(failed, Retry("bob"), T0)
    assert decision.session.id == "acme/web#42/2"
    assert decision.session.trigger_actor == "bob"
    assert decision.session.branch == failed.branch
    assert decide(running(), Retry("bob"), T0).commands == ()


# --- §1.2 queue, dependencies -------------------------------------------------------------------


def test_workspace_ready_queues_for_a_slot_and_the_grant_starts_the_first_turn():
    s = drive(None, trigger(), WorkspaceReady()).session
    assert s.state == State.QUEUED

    decision = decide(s, SlotGranted(), T0)
    assert decision.session.state == State.WORKING
    assert decision.session.turn_count == 1
    assert decision.commands == (StartTurn(TurnKind.FIRST, turn=1), PostStatus())


def test_dependencies_hold_no_slot_until_satisfied():
    s = drive(None, trigger(), DependenciesWaiting(("#3", "#4")), WorkspaceReady()).session
    assert (s.state, s.detail) == (State.QUEUED, Detail.WAITING_FOR_DEPENDENCIES)

    ignored = decide(s, SlotGranted(), T0)
    assert ignored.commands == (ReleaseSlot(),) and ignored.session.turn_count == 0

    decision = decide(s, DependenciesSatisfied(), T0)
    assert (decision.session.state, decision.session.detail) == (State.QUEUED, None)
    assert decision.commands == (RequestSlot(front=False), PostStatus())


def test_dependencies_found_while_queued_give_the_place_back():
    s = drive(None, trigger(), WorkspaceReady()).session
    decision = decide(s, DependenciesWaiting(("#9",)), T0)
    assert decision.session.detail == Detail.WAITING_FOR_DEPENDENCIES
    assert decision.commands == (ReleaseSlot(), PostStatus())


# --- §1.6 stuck ---------------------------------------------------------------------------------


def test_ask_posts_a_question_labels_and_stops_the_agent_after_the_grace():
    s = running()
    decision = decide(s, Asked("Which format?", ("CSV", "TSV"), "ctx"), T0)

    assert decision.session.state == State.STUCK and decision.session.detail is None
    assert decision.session.stuck_reason == "Which format?"
    assert decision.commands == (
        PostQuestion(f"{s.id}/q1", "Which format?", ("CSV", "TSV"), "ctx", "alice"),
        AddLabel(LabelKind.NEEDS_INPUT),
        StopAgent(grace_seconds=60),
        PostStatus(urgent=True),
    )


def test_a_second_ask_in_the_same_turn_edits_the_question():
    s = drive(running(), Asked("First?")).session
    decision = decide(s, Asked("Second?", ("a",)), T0)

    assert decision.session.question.text == "Second?"
    assert decision.session.question.question_id == f"{s.id}/q1"
    assert decision.commands == (
        EditQuestion(f"{s.id}/q1", "Second?", ("a",), None, "alice"),
        PostStatus(urgent=True),
    )


def test_ask_then_done_in_the_same_turn_withdraws_the_question_and_finishes():
    s = drive(running(), Asked("First?")).session
    decision = decide(s, DoneReported("all done"), T0)

    assert decision.session.question is None
    assert decision.session.state == State.WORKING
    assert decision.commands[:2] == (WithdrawQuestion(f"{s.id}/q1"), RemoveLabel(LabelKind.NEEDS_INPUT))

    exited = decide(decision.session, TurnExited(0, has_new_commits=True), T0)
    assert exited.commands == (ReleaseSlot(), FinishWork(s.branch, "all done", None), PostStatus())


def test_the_asking_turn_ending_keeps_the_session_stuck_and_frees_the_slot():
    s = stuck_on_question()
    decision = decide(s, TurnExited(-9), T0)
    assert decision.session.state == State.STUCK
    assert decision.session.question is not None
    assert not decision.session.turn_running
    assert decision.commands == (ReleaseSlot(), PostStatus())


# --- §1.7 reply ---------------------------------------------------------------------------------


def test_the_reply_resumes_the_same_agent_session_at_the_front():
    clock = Clock()
    s = drive(stuck_on_question(clock), TurnExited(0), clock=clock).session
    reply = ReplyReceived(901, "bob", "2", clock.now + timedelta(minutes=5))

    decision = decide(s, reply, clock.tick())
    assert decision.session.state == State.QUEUED
    assert decision.session.question is None
    assert decision.commands == (
        React("eyes", 901),
        RemoveLabel(LabelKind.NEEDS_INPUT),
        MarkQuestionAnswered(f"{s.id}/q1", "bob"),
        RequestSlot(front=True),
        PostStatus(),
    )
    started = decide(decision.session, SlotGranted(), clock.tick())
    assert started.commands[0] == StartTurn(TurnKind.REPLY, turn=2, reply="TSV", resume_session_id="agent-1")


def test_the_same_reply_twice_is_forwarded_once():
    clock = Clock()
    s = drive(stuck_on_question(clock), TurnExited(0), clock=clock).session
    reply = ReplyReceived(901, "bob", "TSV please", clock.now + timedelta(minutes=5))
    once = decide(s, reply, clock.tick()).session
    twice = decide(once, reply, clock.tick())
    assert twice == Decision(once)


def test_a_comment_older_than_the_question_is_a_note_not_the_answer():
    clock = Clock()
    s = drive(stuck_on_question(clock), TurnExited(0), clock=clock).session
    decision = decide(s, ReplyReceived(77, "bob", "old", T0), clock.tick())
    assert decision.session.state == State.STUCK
    assert decision.session.notes == (Note(77, "bob", "old"),)


def test_a_reply_during_the_grace_period_waits_for_the_turn_to_exit():
    clock = Clock()
    s = stuck_on_question(clock)
    s = decide(s, ReplyReceived(901, "bob", "CSV", clock.now + timedelta(minutes=1)), clock.tick()).session
    assert s.state == State.QUEUED and s.turn_running

    decision = decide(s, TurnExited(-9), clock.tick())
    assert decision.commands == (ReleaseSlot(), RequestSlot(front=True), PostStatus())


def test_further_comments_are_queued_and_delivered_with_the_next_turn():
    clock = Clock()
    s = stuck_on_question(clock)
    s = drive(s, TurnExited(0), ReplyReceived(901, "bob", "CSV", clock.now + timedelta(minutes=5)),
              clock=clock).session
    s = drive(s, ReplyReceived(902, "carol", "also add a header row", clock.now + timedelta(minutes=6)),
              clock=clock).session
    decision = decide(s, SlotGranted(), clock.tick())
    assert decision.commands[0] == StartTurn(
        TurnKind.REPLY, turn=2, reply="CSV", notes=(Note(902, "carol", "also add a header row"),),
        resume_session_id="agent-1",
    )
    assert decision.session.notes == ()


def test_nothing_is_forwarded_after_complete():
    s = complete()
    assert decide(s, ReplyReceived(1000, "bob", "thanks!", T0), T0) == Decision(s)


# --- §1.8 done ----------------------------------------------------------------------------------


def test_a_clean_exit_with_new_commits_finishes_the_work_and_the_pr_completes_it():
    s = running()
    decision = decide(s, TurnExited(0, has_new_commits=True), T0)
    assert decision.session.state == State.WORKING and decision.session.finishing
    assert decision.commands == (ReleaseSlot(), FinishWork(s.branch, None, None), PostStatus())

    done = decide(decision.session, PullRequestOpened(7, "u7", "sha1"), T0)
    assert done.session.state == State.COMPLETE
    assert (done.session.pr_number, done.session.pr_url) == (7, "u7")
    assert done.commands == (PostStatus(urgent=True),)


def test_a_clean_exit_with_no_change_fails_with_no_changes():
    decision = decide(running(), TurnExited(0), T0)
    assert (decision.session.state, decision.session.detail) == (State.FAILED, Detail.NO_CHANGES)
    assert decision.commands == (
        ReleaseSlot(), ReportFailure(Detail.NO_CHANGES, core.FAILURE_NO_CHANGES), PostStatus(urgent=True)
    )


def test_a_non_zero_exit_fails_with_the_exit_code():
    decision = decide(running(), TurnExited(2, has_new_commits=True), T0)
    assert (decision.session.state, decision.session.detail) == (State.FAILED, Detail.EXIT_CODE)
    assert decision.session.failure_reason == "The agent exited with code 2."


@pytest.mark.parametrize(
    ("reason", "detail"),
    [(FailureKind.RUNTIME, Detail.TIMED_OUT), (FailureKind.IDLE, Detail.IDLE), (FailureKind.CRASH, Detail.CRASHED)],
)
def test_timeouts_and_crashes_fail_with_their_reason_and_log_tail(reason, detail):
    decision = decide(running(), TurnFailed(reason, "last lines"), T0)
    assert (decision.session.state, decision.session.detail) == (State.FAILED, detail)
    assert ReportFailure(detail, decision.session.failure_reason, "last lines") in decision.commands
    assert not decision.session.turn_running


def test_a_push_failure_fails_the_session():
    s = drive(running(), TurnExited(0, has_changes=True)).session
    decision = decide(s, PushFailed("remote rejected"), T0)
    assert (decision.session.state, decision.session.detail) == (State.FAILED, Detail.PUSH_FAILED)


def test_max_turns_stops_the_session():
    clock = Clock()
    s = running(limits=Limits(max_turns=1), clock=clock)
    s = drive(s, Asked("?"), TurnExited(0), clock=clock).session
    decision = decide(s, ReplyReceived(5, "bob", "yes", clock.now + timedelta(minutes=5)), clock.tick())
    assert (decision.session.state, decision.session.detail) == (State.FAILED, Detail.MAX_TURNS)
    assert RequestSlot(front=True) not in decision.commands


# --- §3 protected paths -------------------------------------------------------------------------


def test_protected_paths_get_one_revert_turn_then_fail():
    exited = decide(running(), TurnExited(0, has_new_commits=True, protected_paths_touched=(".github/workflows/ci.yml",)), T0)
    s = exited.session
    assert (s.state, s.detail) == (State.QUEUED, Detail.PROTECTED_PATHS)
    assert exited.commands == (ReleaseSlot(), RequestSlot(front=False), PostStatus())

    started = decide(s, SlotGranted(), T0)
    assert started.commands[0] == StartTurn(
        TurnKind.REVERT, turn=2, paths=(".github/workflows/ci.yml",), resume_session_id="agent-1"
    )
    again = decide(started.session, TurnExited(0, has_new_commits=True, protected_paths_touched=(".github/workflows/ci.yml",)), T0)
    assert (again.session.state, again.session.detail) == (State.FAILED, Detail.PROTECTED_PATHS)

    reverted = decide(started.session, TurnExited(0, has_new_commits=True), T0)
    assert FinishWork(s.branch, None, None) in reverted.commands


# --- §1.9 iterate -------------------------------------------------------------------------------


def test_review_feedback_starts_a_round_and_the_push_returns_to_complete():
    s = complete()
    decision = decide(s, ReviewFeedback("review:11", "bob", "rename the flag"), T0)
    assert (decision.session.state, decision.session.detail) == (State.QUEUED, Detail.REVIEW_ROUND)
    assert decision.commands == (RequestSlot(front=True), PostStatus())

    s = drive(decision.session, SlotGranted()).session
    assert (s.state, s.detail) == (State.WORKING, Detail.REVIEW_ROUND)
    s2 = drive(s, TurnExited(0, has_new_commits=True)).session
    assert s2.finishing
    done = decide(s2, PullRequestUpdated("sha2"), T0)
    assert done.session.state == State.COMPLETE and done.session.pr_head_sha == "sha2"


def test_the_same_review_twice_is_one_round():
    s = drive(complete(), ReviewFeedback("review:11", "bob", "x")).session
    assert decide(s, ReviewFeedback("review:11", "bob", "x"), T0) == Decision(s)
    assert s.review_rounds_used == 1


def test_review_round_cap_makes_the_session_need_a_human():
    s = complete(Limits(review_rounds=1))
    s = drive(s, ReviewFeedback("review:1", "bob", "x"), SlotGranted(), TurnExited(0, has_new_commits=True),
              PullRequestUpdated("sha2")).session
    decision = decide(s, ReviewFeedback("review:2", "bob", "y"), T0)
    assert (decision.session.state, decision.session.detail) == (State.STUCK, Detail.NEEDS_HUMAN)
    assert decision.commands == (AddLabel(LabelKind.NEEDS_HUMAN), ExplainNeedsHuman(7), PostStatus(urgent=True))


def test_ci_rounds_count_once_per_head_and_are_capped():
    s = complete(Limits(ci_rounds=1))
    first = decide(s, CIFailed("sha1", "tests failed"), T0)
    assert first.session.detail == Detail.CI_ROUND and first.session.ci_rounds_used == 1
    assert first.commands == (RequestSlot(front=False), PostStatus())
    assert decide(s, CIFailed("stale", "x"), T0) == Decision(s)

    s = drive(first.session, SlotGranted(), TurnExited(0, has_new_commits=True), PullRequestUpdated("sha2")).session
    assert decide(s, CIFailed("sha1", "again"), T0) == Decision(s)
    capped = decide(s, CIFailed("sha2", "still failing"), T0)
    assert (capped.session.state, capped.session.detail) == (State.STUCK, Detail.NEEDS_HUMAN)


def test_feedback_during_a_round_starts_the_next_round_after_the_push():
    s = drive(complete(), ReviewFeedback("review:1", "bob", "x"), SlotGranted()).session
    s = drive(s, ReviewFeedback("comment:2", "bob", "and y")).session
    s = drive(s, TurnExited(0, has_new_commits=True)).session
    decision = decide(s, PullRequestUpdated("sha2"), T0)
    assert (decision.session.state, decision.session.detail) == (State.QUEUED, Detail.REVIEW_ROUND)
    assert decision.session.review_rounds_used == 2
    assert decision.session.pending_turn.reply == "and y"


def test_a_round_without_changes_returns_to_complete():
    s = drive(complete(), ReviewFeedback("review:1", "bob", "why?"), SlotGranted()).session
    decision = decide(s, TurnExited(0), T0)
    assert decision.session.state == State.COMPLETE
    assert not any(isinstance(c, FinishWork) for c in decision.commands)


# --- §1.10 close, §1.11 cancel ------------------------------------------------------------------


def test_pr_closed_cleans_up_and_stays_complete():
    decision = decide(complete(), PullRequestClosed(merged=True), T0)
    assert decision.session.state == State.COMPLETE
    assert decision.session.pr_state == core.PullRequestState.MERGED
    assert decision.commands == (CleanupWorkspace(), PostStatus(urgent=True))


def test_cancel_kills_the_agent_removes_the_label_and_cancels_the_question():
    s = stuck_on_question()
    decision = decide(s, Cancel(CancelReason.LABEL_REMOVED), T0)
    assert (decision.session.state, decision.session.detail) == (State.CANCELLED, Detail.LABEL_REMOVED)
    assert decision.commands == (
        StopAgent(0),
        ReleaseSlot(),
        RemoveLabel(LabelKind.NEEDS_INPUT),
        MarkQuestionCancelled(f"{s.id}/q1"),
        PostStatus(urgent=True),
    )
    assert decision.session.question is None and not decision.session.turn_running


def test_a_cancelled_session_ignores_a_late_slot_and_exit():
    s = drive(None, trigger(), WorkspaceReady(), Cancel(CancelReason.STOP_COMMAND)).session
    assert decide(s, SlotGranted(), T0).commands == (ReleaseSlot(),)
    assert decide(s, TurnExited(0, has_new_commits=True), T0) == Decision(s)


def test_a_cancel_after_the_pr_exists_leaves_it_complete():
    s = complete()
    assert decide(s, Cancel(CancelReason.STOP_COMMAND), T0) == Decision(s)

    in_round = drive(s, ReviewFeedback("review:1", "bob", "x"), SlotGranted()).session
    decision = decide(in_round, Cancel(CancelReason.STOP_COMMAND), T0)
    assert decision.session.state == State.COMPLETE
    assert decision.commands == (StopAgent(0), ReleaseSlot(), PostStatus(urgent=True))


def test_a_cancel_racing_the_push_ends_complete_when_the_pr_appears():
    s = drive(running(), DoneReported("ok"), TurnExited(0)).session
    s = drive(s, Cancel(CancelReason.ISSUE_CLOSED)).session
    assert s.state == State.CANCELLED
    decision = decide(s, PullRequestOpened(7, "u7"), T0)
    assert decision.session.state == State.COMPLETE and decision.session.pr_number == 7


def test_closing_the_issue_after_complete_only_cleans_up():
    merged = drive(complete(), PullRequestClosed(merged=True)).session
    decision = decide(merged, Cancel(CancelReason.ISSUE_CLOSED), T0)
    assert decision == Decision(merged, (CleanupWorkspace(),))


# --- plan mode ----------------------------------------------------------------------------------


def test_plan_mode_plans_waits_for_approval_holding_no_slot_then_implements():
    s = running(mode=Mode.PLAN)
    assert s.state == State.PLANNING and s.running_turn.kind == TurnKind.PLAN

    planned = decide(s, PlanSubmitted("1. do x"), T0)
    assert (planned.session.state, planned.session.detail) == (State.STUCK, Detail.PLAN_AWAITING_APPROVAL)
    assert planned.commands == (
        AddLabel(LabelKind.NEEDS_INPUT), PostPlan("1. do x", 0, "alice"), StopAgent(60), PostStatus(urgent=True)
    )
    s = drive(planned.session, TurnExited(0)).session
    assert not s.turn_running

    approved = decide(s, Approve("bob"), T0)
    assert approved.commands == (RemoveLabel(LabelKind.NEEDS_INPUT), RequestSlot(front=True), PostStatus())
    started = decide(approved.session, SlotGranted(), T0)
    assert started.session.state == State.WORKING
    assert started.commands[0] == StartTurn(TurnKind.IMPLEMENT, turn=2, reply="1. do x", resume_session_id="agent-1")


@pytest.mark.parametrize("event", [Revise("bob", "smaller please"), ReplyReceived(31, "bob", "smaller please", T0 + timedelta(days=1))])
def test_revise_or_a_plain_reply_starts_another_planning_turn(event):
    s = drive(running(mode=Mode.PLAN), PlanSubmitted("1. do x"), TurnExited(0)).session
    decision = decide(s, event, T0 + timedelta(days=1))
    assert decision.session.plan_revisions == 1
    started = decide(decision.session, SlotGranted(), T0)
    assert started.session.state == State.PLANNING
    assert started.commands[0].kind == TurnKind.PLAN and started.commands[0].reply == "smaller please"


def test_a_planning_turn_without_a_plan_fails():
    decision = decide(running(mode=Mode.PLAN), TurnExited(0), T0)
    assert (decision.session.state, decision.session.detail) == (State.FAILED, Detail.NO_PLAN)


# --- §6 restart ---------------------------------------------------------------------------------


def test_after_a_restart_a_live_turn_is_reattached_and_a_lost_one_rerun():
    s = running()
    assert decide(s, Recovered(turn_alive=True), T0).commands == (HoldSlot(),)

    lost = decide(s, Recovered(turn_alive=False), T0)
    assert lost.session.state == State.QUEUED
    assert lost.commands == (ReleaseSlot(), RequestSlot(front=True), PostStatus())
    rerun = decide(lost.session, SlotGranted(), T0)
    assert rerun.commands[0] == StartTurn(TurnKind.FIRST, turn=1, resume_session_id="agent-1")


def test_after_a_restart_unfinished_work_is_finished_again():
    s = drive(running(), TurnExited(0, has_new_commits=True)).session
    assert decide(s, Recovered(turn_alive=False), T0).commands == (FinishWork(s.branch, None, None),)


def test_status_json_has_the_contract_keys():
    clock = Clock()
    s = stuck_on_question(clock)
    status = core.to_status_json(s, worktree_path="/data/wt/42")
    contract = {
        "id", "repo", "issueNumber", "issueTitle", "status", "detail", "branch", "worktreePath",
        "startedAt", "lastHeartbeat", "stuckReason", "forwardedMessage", "pullRequestUrl",
    }
    assert contract <= status.keys()
    assert status["status"] == "stuck" and status["stuckReason"] == "Which format?"
    assert status["issueNumber"] == 42 and status["worktreePath"] == "/data/wt/42"
    assert status["startedAt"] == "2026-03-01T12:01:00Z"


def test_a_pull_request_report_without_a_push_in_flight_does_not_revive_a_cancelled_session():
    s = drive(running(), Cancel(CancelReason.STOP_COMMAND)).session
    assert decide(s, PullRequestOpened(7, "u7"), T0) == Decision(s)


def test_events_and_sessions_round_trip_through_json():
    import json

    s = stuck_on_question()
    assert core.Session.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    event = ReplyReceived(1, "bob", "yes", T0)
    assert core.event_from_dict(json.loads(json.dumps(core.event_to_dict(event)))) == event
    command = StartTurn(TurnKind.REPLY, 2, "yes", (Note(1, "bob", "x"),))
    assert core.command_from_dict(json.loads(json.dumps(core.command_to_dict(command)))) == command


def test_a_merge_that_overtakes_the_recording_of_its_pr_is_applied_once_the_pr_is_recorded():
    """GitHub's pull_request.closed can arrive before the answer to the create is recorded: nothing is lost."""
    s = drive(running(), DoneReported("done"), TurnExited(0, has_new_commits=True)).session
    assert s.finishing and s.pr_number is None
    early = decide(s, PullRequestClosed(merged=True, number=7), T0)
    assert early.session.state == s.state and early.commands == ()
    opened = decide(early.session, PullRequestOpened(7, "https://github.com/acme/web/pull/7", "sha1"), T0)
    assert opened.session.pr_state == core.PullRequestState.MERGED and opened.session.state == State.COMPLETE
    assert CleanupWorkspace() in opened.commands
    # A close of another PR of the branch (an earlier session's) is not this session's.
    other = decide(opened.session, PullRequestClosed(merged=False, number=3), T0)
    assert other.session == opened.session


def test_a_review_that_overtakes_the_recording_of_its_pr_starts_its_round_once_the_pr_is_recorded():
    s = drive(running(), DoneReported("done"), TurnExited(0, has_new_commits=True)).session
    assert s.finishing and s.pr_number is None
    early = decide(s, ReviewFeedback("review:9", "bob", "One more file."), T0)
    assert early.commands == () and early.session.deferred_feedback
    opened = decide(early.session, PullRequestOpened(7, "https://github.com/acme/web/pull/7", "sha1"), T0)
    assert opened.session.review_rounds_used == 1 and opened.session.state == State.QUEUED
    again = decide(opened.session, ReviewFeedback("review:9", "bob", "One more file."), T0)
    assert again.session == opened.session  # the same review, delivered again, is one round


def test_a_session_id_names_its_issue():
    from bot.core.session import issue_of, make_session_id

    assert issue_of(make_session_id("octo-org/my.repo", 12, 3)) == ("octo-org/my.repo", 12)
