"""Dependencies, pure parts: parsing `depends on`/`blocked by`, the verdict, cycles, and the core's rules for
waiting sessions, stacked bases and merge conflicts."""

from __future__ import annotations

from datetime import datetime, timezone

from bot.core.dependencies import (
    DependencyFacts,
    IssueKey,
    find_cycle,
    issue_key,
    parse_dependencies,
    render_cycle,
    resolve,
)
from bot.core.session import (
    Cancel,
    CancelReason,
    DependenciesSatisfied,
    DependenciesWaiting,
    Detail,
    DoneReported,
    EnsureWorkspace,
    FinishWork,
    MergeConflict,
    Mode,
    PostStatus,
    PullRequestState,
    React,
    RequestSlot,
    SlotGranted,
    StartTurn,
    State,
    Trigger,
    TurnExited,
    TurnKind,
    TurnStarted,
    WorkspaceReady,
    decide,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
HOME = "acme/web"


def key(number: int, repo: str = HOME) -> IssueKey:
    return issue_key(repo, number)


def test_parses_several_forms_and_ignores_code_blocks_and_repeats():
    body = (
        "Depends on #3 and #4.\n"
        "blocked by: Octo/Other#12, #3\n"
        "This depends on something else entirely.\n"
        "```\ndepends on #99\n```\n"
        "BLOCKED BY acme/web#5"
    )
    assert parse_dependencies(body, HOME) == [key(3), key(4), key(12, "octo/other"), key(5)]
    assert parse_dependencies(None, HOME) == []
    assert parse_dependencies("Fixes #3, relates to #4", HOME) == []


def test_verdict_waits_for_unfinished_work_and_ignores_unseen_issues():
    deps = [key(1), key(2), key(3)]
    facts = {
        key(1): DependencyFacts(pr_state=PullRequestState.MERGED),
        key(2): DependencyFacts(closed_completed=True),
        key(3): DependencyFacts(visible=False),
    }
    verdict = resolve(deps, facts, stack=False)
    assert verdict.ready and verdict.unseen == (key(3),)
    facts[key(2)] = DependencyFacts(pr_state=PullRequestState.OPEN, branch="agent/issue-2-x")
    verdict = resolve(deps, facts, stack=False)
    assert verdict.waiting == (key(2),)


def test_stacking_starts_on_the_one_open_pull_requests_branch():
    open_pr = DependencyFacts(pr_state=PullRequestState.OPEN, branch="agent/issue-2-x")
    assert resolve([key(2)], {key(2): open_pr}, stack=True).stack_base == "agent/issue-2-x"
    # Two unfinished dependencies cannot both be the base: wait.
    two = resolve([key(2), key(4)], {key(2): open_pr, key(4): open_pr}, stack=True)
    assert not two.ready and two.stack_base is None
    # Without a PR yet there is no branch to stack on.
    assert not resolve([key(2)], {key(2): DependencyFacts()}, stack=True).ready


def test_cycles_are_found_from_any_member_with_the_same_text():
    edges = {key(1): [key(2)], key(2): [key(3)], key(3): [key(1)], key(4): [key(1)]}
    assert find_cycle(key(1), edges) == [key(1), key(2), key(3)]
    assert find_cycle(key(4), edges) is None
    assert find_cycle(key(2), {key(2): [key(2)]}) == [key(2)]
    first = render_cycle(HOME, [key(1), key(2), key(3)])
    assert "#1 → #2 → #3 → #1" in first
    assert "cycle=acme/web#1,acme/web#2,acme/web#3" in first


def trigger(waiting=(), mode=Mode.GO) -> Trigger:
    return Trigger(HOME, 7, "Add export", mode, "alice", "main", waiting_for=tuple(waiting))


def test_a_waiting_trigger_makes_no_workspace_and_holds_no_slot():
    decision = decide(None, trigger(["#3", "octo/other#12"]), T0)
    s = decision.session
    assert (s.state, s.detail, s.waiting_for) == (State.QUEUED, Detail.WAITING_FOR_DEPENDENCIES, ("#3", "octo/other#12"))
    assert decision.commands == (React("eyes"), PostStatus(urgent=True))
    assert decide(s, SlotGranted(), T0).session.turn_count == 0
    # One dependency done: still waiting, the status shows the shorter list.
    fewer = decide(s, DependenciesWaiting(("octo/other#12",)), T0)
    assert fewer.session.waiting_for == ("octo/other#12",) and fewer.commands == (PostStatus(),)
    assert decide(fewer.session, DependenciesWaiting(("octo/other#12",)), T0).commands == ()


def test_satisfied_dependencies_make_the_workspace_from_the_updated_or_stacked_base():
    s = decide(None, trigger(["#3"]), T0).session
    plain = decide(s, DependenciesSatisfied(), T0)
    assert plain.session.state == State.REGISTERED and plain.session.base_branch == "main"
    assert plain.commands[0] == EnsureWorkspace(s.branch, "main", False)
    stacked = decide(s, DependenciesSatisfied("agent/issue-3-parent"), T0)
    assert stacked.session.base_branch == "agent/issue-3-parent"
    assert stacked.commands[0] == EnsureWorkspace(s.branch, "agent/issue-3-parent", False)
    ready = decide(stacked.session, WorkspaceReady(), T0).session
    assert ready.state == State.QUEUED and ready.detail is None


def test_a_waiting_session_is_cancelled_like_any_other():
    s = decide(None, trigger(["#3"]), T0).session
    cancelled = decide(s, Cancel(CancelReason.LABEL_REMOVED), T0).session
    assert cancelled.state == State.CANCELLED


def finishing_session():
    s = decide(None, trigger(), T0).session
    for event in (WorkspaceReady(), SlotGranted(), TurnStarted("a1"), DoneReported("done")):
        s = decide(s, event, T0).session
    decision = decide(s, TurnExited(0, has_new_commits=True), T0)
    assert any(isinstance(c, FinishWork) for c in decision.commands)
    return decision.session


def test_a_merge_conflict_gives_the_agent_a_rebase_turn_before_the_pull_request():
    s = finishing_session()
    decision = decide(s, MergeConflict(("src/app.py",)), T0)
    s = decision.session
    assert (s.state, s.detail, s.finishing) == (State.QUEUED, Detail.MERGE_CONFLICT, False)
    assert RequestSlot(front=True) in decision.commands
    granted = decide(s, SlotGranted(), T0)
    start = granted.commands[0]
    assert isinstance(start, StartTurn) and start.kind == TurnKind.REBASE and start.paths == ("src/app.py",)
    assert granted.session.state == State.WORKING
    s = decide(granted.session, DoneReported("rebased"), T0).session
    again = decide(s, TurnExited(0, has_new_commits=True), T0)
    assert any(isinstance(c, FinishWork) and c.pull_request_number is None for c in again.commands)
    # A conflict reported when nothing is being finished changes nothing.
    assert decide(again.session, MergeConflict(("x",)), T0).session.detail == Detail.MERGE_CONFLICT
    assert decide(granted.session, MergeConflict(("x",)), T0).session == granted.session
