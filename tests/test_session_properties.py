"""Properties of the session core over random event orders (hypothesis): the invariants no order may break."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core import session as core
from bot.core.session import (
    Approve, Asked, Cancel, CancelReason, CIFailed, Command, DependenciesSatisfied, DependenciesWaiting,
    DoneReported, FailureKind, Limits, MergeConflict, Mode, PlanSubmitted, Progress, PullRequestClosed,
    PullRequestOpened, PullRequestUpdated, PushFailed, QuestionPosted, Recovered, ReplyReceived, Retry,
    ReviewFeedback, Revise, Session, SlotGranted, StartTurn, State, StatusRequested, StopAgent, Trigger,
    TurnExited, TurnFailed, TurnStarted, WorkspaceFailed, WorkspaceReady, decide,
)
from bot.core.slots import SlotLimits, SlotQueue

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

# Event recipes: (name, argument); built against the current session so ids and times line up.
RECIPES = [
    ("ready", 0), ("workspace_failed", 0), ("deps_wait", 0), ("deps_ok", 0), ("grant", 0), ("started", 0),
    ("progress", 0), ("plan", 0), ("done", 0), ("approve", 0), ("revise", 0), ("status", 0),
    ("pr_opened", 0), ("pr_updated", 0), ("push_failed", 0), ("posted", 0), ("retry", 0),
    ("trigger_go", 0), ("trigger_plan", 0), ("fail", None), ("cancel", None),
    ("trigger_waiting", 0), ("deps_stack", 0), ("conflict", 0),
    *[("ask", n) for n in range(3)],
    *[("exit", n) for n in range(8)],
    *[("reply", n) for n in range(1, 4)],
    *[("review", n) for n in range(1, 4)],
    *[("ci", n) for n in range(1, 3)],
    ("pr_closed", True), ("pr_closed", False), ("recovered", True), ("recovered", False),
]
recipes = st.sampled_from(RECIPES)


def plausible(session: Session | None) -> list:
    """The events the shell would most likely report next; random walks over all events alone end
    (cancelled, failed) long before they reach rounds, plans or races."""
    if session is None:
        return [("trigger_go", 0), ("trigger_plan", 0), ("trigger_waiting", 0)]
    if session.turn_running:
        menu = [("started", 0), ("progress", 0), ("ask", 1), ("ask", 2), ("done", 0), ("plan", 0),
                ("exit", 0), ("exit", 1), ("exit", 3), ("exit", 5), ("exit", 6), ("fail", None), ("posted", 0)]
        if session.state in (State.STUCK, State.QUEUED):
            menu += [("reply", 1), ("reply", 2), ("approve", 0), ("revise", 0)]
        return menu
    if session.finishing:
        return [("pr_opened", 0), ("pr_updated", 0), ("push_failed", 0), ("conflict", 0), ("recovered", False)]
    return {
        State.REGISTERED: [("ready", 0), ("deps_wait", 0), ("workspace_failed", 0), ("recovered", False)],
        State.QUEUED: [("grant", 0), ("deps_ok", 0), ("deps_stack", 0), ("deps_wait", 0), ("reply", 3)],
        State.STUCK: [("reply", 1), ("reply", 2), ("posted", 0), ("approve", 0), ("revise", 0)],
        State.COMPLETE: [("review", 1), ("review", 2), ("review", 3), ("ci", 1), ("ci", 2),
                         ("pr_closed", True), ("pr_closed", False), ("trigger_go", 0), ("reply", 3)],
        State.CANCELLED: [("retry", 0), ("trigger_go", 0), ("trigger_plan", 0)],
        State.FAILED: [("retry", 0), ("trigger_go", 0), ("trigger_plan", 0)],
    }.get(session.state, RECIPES)


def draw_recipe(data, session: Session | None):
    """Mostly a plausible next event, sometimes any event at all (late, duplicated, out of order)."""
    if session is None:
        return data.draw(st.sampled_from(plausible(None)))
    roll = data.draw(st.integers(0, 99))
    if roll < 4:
        return ("cancel", None)
    if roll < 75:
        return data.draw(st.sampled_from(plausible(session)))
    return data.draw(recipes)


def build(recipe, session: Session | None, now: datetime, repo: str = "acme/web", issue: int = 42):
    name, arg = recipe
    if name in ("trigger_go", "trigger_plan", "trigger_waiting"):
        return Trigger(repo, issue, "Add CSV export", Mode.PLAN if name == "trigger_plan" else Mode.GO,
                       "alice", "main", Limits(max_turns=6, review_rounds=2, ci_rounds=1),
                       waiting_for=("#7", "other/repo#3") if name == "trigger_waiting" else ())
    head = session.pr_head_sha if session is not None and session.pr_head_sha else "sha0"
    question_id = session.question.question_id if session is not None and session.question else "q-none"
    table = {
        "ready": lambda: WorkspaceReady(),
        "workspace_failed": lambda: WorkspaceFailed("disk full"),
        "deps_wait": lambda: DependenciesWaiting(("#7",)),
        "deps_ok": lambda: DependenciesSatisfied(),
        "deps_stack": lambda: DependenciesSatisfied("agent/issue-7-parent"),
        "conflict": lambda: MergeConflict(("src/app.py",)),
        "grant": lambda: SlotGranted(),
        "started": lambda: TurnStarted("agent-session"),
        "progress": lambda: Progress("halfway"),
        "plan": lambda: PlanSubmitted("the plan"),
        "done": lambda: DoneReported("summary"),
        "approve": lambda: Approve("bob"),
        "revise": lambda: Revise("bob", "smaller"),
        "status": lambda: StatusRequested(),
        "pr_opened": lambda: PullRequestOpened(7, "https://github.test/acme/web/pull/7", "sha1"),
        "pr_updated": lambda: PullRequestUpdated(f"sha{now.minute}"),
        "push_failed": lambda: PushFailed("rejected"),
        "posted": lambda: QuestionPosted(question_id, 555, now),
        "retry": lambda: Retry("bob"),
        "ask": lambda: Asked(f"question {arg}?", ("yes", "no")[: arg]),
        "exit": lambda: TurnExited(
            exit_code=0 if arg < 6 else 1, has_new_commits=bool(arg & 1), has_changes=bool(arg & 2),
            protected_paths_touched=(".github/workflows/ci.yml",) if arg & 4 else (),
        ),
        "fail": lambda: TurnFailed(list(FailureKind)[now.minute % 3], "tail"),
        "reply": lambda: ReplyReceived(arg, "bob", str(arg), now),
        "cancel": lambda: Cancel(list(CancelReason)[now.minute % 4]),
        "review": lambda: ReviewFeedback(f"review:{arg}", "bob", "change it"),
        "ci": lambda: CIFailed(head if arg == 1 else f"sha{arg}", "tests failed"),
        "pr_closed": lambda: PullRequestClosed(arg),
        "recovered": lambda: Recovered(arg),
    }
    return table[name]()


def command_mentions_merge_or_foreign_branch(command: Command) -> bool:
    if "merge" in type(command).__name__.lower():
        return True
    for f in dataclasses.fields(command):
        value = getattr(command, f.name)
        if "merge" in f.name.lower():
            return True
        if f.name == "branch" and not str(value).startswith("agent/"):
            return True
    return False


def check_session_invariants(session: Session) -> None:
    # A stuck session waiting on a question has exactly one open question, and only then is one open.
    if session.state == State.STUCK and session.detail is None:
        assert session.question is not None
    if session.question is not None:
        assert session.state == State.STUCK and session.detail is None
    # A session waiting for its dependencies runs nothing and waits for nothing else.
    if session.detail == core.Detail.WAITING_FOR_DEPENDENCIES:
        assert session.state == State.QUEUED and not session.turn_running and session.waiting_for
    # Terminal states run no agent turn.
    if session.is_terminal:
        assert not session.turn_running
    # A turn waiting for its slot is a queued session.
    if session.pending_turn is not None:
        assert session.state == State.QUEUED
    assert session.branch.startswith("agent/")
    # JSON round-trip of every state is the identity.
    assert Session.from_dict(json.loads(json.dumps(session.to_dict()))) == session


@settings(max_examples=200, deadline=None)
@given(data=st.data(), length=st.integers(1, 60))
def test_random_event_orders_keep_every_invariant(data, length):
    session = None
    now = T0
    cancelled_without_push: set[str] = set()
    for _ in range(length):
        recipe = draw_recipe(data, session)
        now += timedelta(minutes=1)
        event = build(recipe, session, now)
        assert core.event_from_dict(json.loads(json.dumps(core.event_to_dict(event)))) == event
        before = session
        decision = decide(session, event, now)
        session = decision.session
        for command in decision.commands:
            assert not command_mentions_merge_or_foreign_branch(command), command
            assert core.command_from_dict(json.loads(json.dumps(core.command_to_dict(command)))) == command
        same = before is not None and session.id == before.id
        # A cancelled session never starts another turn (a PR racing the cancel may complete it, nothing more).
        if session.id in cancelled_without_push:
            assert session.state == State.CANCELLED
            assert not any(isinstance(c, StartTurn) for c in decision.commands)
        if same and session.state == State.CANCELLED and before.state != State.CANCELLED and not session.finishing:
            cancelled_without_push.add(session.id)
        # Reaching a terminal state from a running turn stops the agent, unless the turn had exited.
        if same and before.turn_running and session.is_terminal and not before.is_terminal:
            exited = isinstance(event, (TurnExited, TurnFailed))
            assert exited or any(isinstance(c, StopAgent) for c in decision.commands)
        check_session_invariants(session)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), length=st.integers(1, 100))
def test_slot_limits_hold_across_sessions_whatever_the_order(data, length):
    """Five issues in two repositories share one queue run the way the shell runs it."""
    limits = SlotLimits(global_limit=3, per_repo=2)
    repos = ["acme/web", "acme/web", "acme/api", "acme/api", "acme/api"]
    queue = SlotQueue()
    sessions: dict[int, Session | None] = {n: None for n in range(5)}
    now = T0

    def apply(n: int, event) -> None:
        nonlocal now
        session = sessions[n]
        decision = decide(session, event, now)
        new = decision.session
        if session is not None and new is not None and new.id != session.id:
            queue.release(session.id)  # an old session that is replaced holds nothing
        sessions[n] = new
        for command in decision.commands:
            if isinstance(command, core.RequestSlot):
                queue.enqueue(new.id, new.repo, front=command.front)
            elif isinstance(command, core.ReleaseSlot):
                queue.release(new.id)
            elif isinstance(command, core.HoldSlot):
                queue.hold(new.id, new.repo)

    for n in range(5):
        apply(n, build(("trigger_go", 0), None, now, repo=repos[n], issue=n + 1))
    for _ in range(length):
        n = data.draw(st.integers(0, 4))
        recipe = draw_recipe(data, sessions[n])
        now += timedelta(minutes=1)
        if recipe[0] in ("grant", "trigger_go", "trigger_plan"):
            continue  # grants come only from the queue below
        apply(n, build(recipe, sessions[n], now, repo=repos[n], issue=n + 1))
        for session_id in queue.admit(limits):
            owner = next(k for k, s in sessions.items() if s is not None and s.id == session_id)
            apply(owner, SlotGranted())
        running = [s for s in sessions.values() if s is not None and s.turn_running]
        # Every running agent turn holds a slot, so the limits bound the running turns.
        assert all(queue.is_running(s.id) for s in running)
        assert len(queue.running) <= limits.global_limit
        for repo in set(repos):
            assert sum(1 for entry in queue.running if entry.repo == repo) <= limits.per_repo
        for s in sessions.values():
            if s is not None and s.state == State.STUCK:
                assert not queue.is_running(s.id) or s.turn_running
