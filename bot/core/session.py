"""The session core: one pure state machine for an issue's whole lifecycle (state + event + time in, state + commands out).

Nothing here does I/O, reads the clock or draws random numbers; `now` is always passed in. The SQLite +
asyncio runtime (and later a Temporal workflow, SPEC §7) stores `Session`, feeds it `Event`s and carries
out the `Command`s of each `Decision`. Every state, event and command is a frozen dataclass that
round-trips through JSON (`to_dict()` / `from_dict()`), serialised by pydantic's `TypeAdapter` rather than
a home-made codec.

Which states are "terminal", rule by rule:

- `TERMINAL_STATES` = complete, cancelled, failed. In them no agent turn runs and no slot is held.
- Cancel (label removed, issue closed, `/agent stop`, uninstall) acts only on a *live* session (any
  non-terminal state). A live session whose PR already exists (a review/CI round, or stuck needing a
  human) is not cancelled but returns to `complete`: Shepherd never closes a PR. On `complete` a cancel
  does nothing, except that closing the issue after the PR was merged or closed asks for a clean-up.
- A new trigger label on a live session does nothing; on cancelled/failed it starts a new session on
  the kept branch; on complete it points to the open PR, or, once the PR is merged or closed, starts a
  fresh session on a new branch (`-2`, `-3`, ...). See `decide_trigger`.
- Issue comments are forwarded (as an answer or as queued notes) only while the session is live.
  `complete` is not final though: PR feedback and failing CI re-open it for a round.

There is deliberately no merge command: nothing in this vocabulary can merge, and every branch a
command names starts with `agent/` (SPEC §2).
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import TypeAdapter

from bot.core import budget

BRANCH_PREFIX = "agent/"
SLUG_MAX_LENGTH = 40
SLUG_FALLBACK = "issue"
ASK_GRACE_SECONDS = 60
STOP_NOW_SECONDS = 0

STUCK_REASON_PLAN = "The plan is waiting for approval (`/agent approve` or `/agent revise <text>`)."
STUCK_REASON_REVIEW_CAP = "Needs a human: the limit of {limit} review rounds is reached."
STUCK_REASON_CI_CAP = "Needs a human: the limit of {limit} CI rounds is reached."
STUCK_REASON_TURN_CAP = "Needs a human: the limit of {limit} agent turns is reached."
FAILURE_NO_CHANGES = "The agent finished without changing anything."
FAILURE_NO_PLAN = "The planning turn ended without submitting a plan."
FAILURE_EXIT_CODE = "The agent exited with code {code}."
FAILURE_RUNTIME = "The turn ran longer than max_runtime_minutes."
FAILURE_IDLE = "The agent was silent for longer than idle_timeout_minutes."
FAILURE_CRASH = "The agent process was lost."
FAILURE_LIMIT = "The turn went past a limit of its sandbox (memory, processes or disk) and was stopped."
FAILURE_MAX_TURNS = "The limit of {limit} agent turns is reached."
FAILURE_PROTECTED = "The agent changed protected paths again after being asked to revert them: {paths}."
FAILURE_PUSH = "Shepherd could not finish the work: {reason}"
FAILURE_WORKSPACE = "Shepherd could not prepare the workspace: {reason}"


# --------------------------------------------------------------------------------------------------
# Vocabulary


class State(enum.StrEnum):
    """SPEC §4 `status` values (contract)."""

    REGISTERED = "registered"  # session created; the workspace is being prepared
    QUEUED = "queued"  # a turn waits for a slot (or, with detail, for dependencies)
    PLANNING = "planning"  # a planning turn runs (plan mode, before approval)
    WORKING = "working"  # an agent turn runs, or the finished work is being pushed
    STUCK = "stuck"  # waits for a person: a question, a plan approval, or a human's help
    COMPLETE = "complete"  # the PR is open (or merged/closed); PR feedback may start a round
    CANCELLED = "cancelled"
    FAILED = "failed"


class Detail(enum.StrEnum):
    """SPEC §4 `detail` values; the first six are the contract's, the rest are extensions."""

    WAITING_FOR_DEPENDENCIES = "waiting-for-dependencies"  # queued
    PLAN_AWAITING_APPROVAL = "plan-awaiting-approval"  # stuck
    NEEDS_HUMAN = "needs-human"  # stuck
    REVIEW_ROUND = "review-round"  # queued / working
    CI_ROUND = "ci-round"  # queued / working
    NO_CHANGES = "no-changes"  # failed
    MERGE_CONFLICT = "merge-conflict"  # queued / working (rebase turn)
    PROTECTED_PATHS = "protected-paths"  # queued / working (revert turn), failed
    NO_PLAN = "no-plan"  # failed
    EXIT_CODE = "exit-code"  # failed
    TIMED_OUT = "timed-out"  # failed: max_runtime_minutes
    IDLE = "idle"  # failed: idle_timeout_minutes
    CRASHED = "crashed"  # failed
    LIMIT_EXCEEDED = "limit-exceeded"  # failed: a sandbox resource limit
    MAX_TURNS = "max-turns"  # failed
    PUSH_FAILED = "push-failed"  # failed
    WORKSPACE_FAILED = "workspace-failed"  # failed
    LABEL_REMOVED = "label-removed"  # cancelled
    ISSUE_CLOSED = "issue-closed"  # cancelled
    STOP_COMMAND = "stop-command"  # cancelled
    UNINSTALLED = "uninstalled"  # cancelled
    WAITING_FOR_PULL_REQUEST_SLOT = "waiting-for-pr-slot"  # queued: finished, the open-PR cap is reached


class Mode(enum.StrEnum):
    GO = "go"
    PLAN = "plan"


class TurnKind(enum.StrEnum):
    FIRST = "first"  # the first turn of a go session: the rendered prompt
    PLAN = "plan"  # a planning turn (first, or after `/agent revise`)
    IMPLEMENT = "implement"  # the turn after a plan's approval
    REPLY = "reply"  # resumes the agent session with a human answer
    REVIEW = "review"  # a review round
    CI = "ci"  # a CI round
    REVERT = "revert"  # the one extra turn to revert protected paths
    REBASE = "rebase"  # the branch no longer merges into its base: the agent rebases before the PR


class CancelReason(enum.StrEnum):
    LABEL_REMOVED = "label-removed"
    ISSUE_CLOSED = "issue-closed"
    STOP_COMMAND = "stop-command"
    UNINSTALLED = "uninstalled"


class FailureKind(enum.StrEnum):
    RUNTIME = "runtime"
    IDLE = "idle"
    CRASH = "crash"
    LIMIT = "limit"


class LabelKind(enum.StrEnum):
    NEEDS_INPUT = "needs-input"
    NEEDS_HUMAN = "needs-human"


class PullRequestState(enum.StrEnum):
    OPEN = "open"
    MERGED = "merged"
    CLOSED = "closed"


TERMINAL_STATES = frozenset({State.COMPLETE, State.CANCELLED, State.FAILED})
CANCELLED_DETAIL = {
    CancelReason.LABEL_REMOVED: Detail.LABEL_REMOVED,
    CancelReason.ISSUE_CLOSED: Detail.ISSUE_CLOSED,
    CancelReason.STOP_COMMAND: Detail.STOP_COMMAND,
    CancelReason.UNINSTALLED: Detail.UNINSTALLED,
}


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    """One pydantic adapter per record type, built on first use."""
    found = _ADAPTERS.get(cls)
    if found is None:
        found = _ADAPTERS[cls] = TypeAdapter(cls)
    return found


_R = TypeVar("_R", bound="_Record")


class _Record:
    """JSON round-tripping for the frozen dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _adapter(type(self)).dump_python(self, mode="json")
        return data

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        record: _R = _adapter(cls).validate_python(data)
        return record


# --------------------------------------------------------------------------------------------------
# Session


@dataclass(frozen=True)
class Limits(_Record):
    """The policy limits the core enforces itself (SPEC §3)."""

    max_turns: int = 20
    review_rounds: int = 3
    ci_rounds: int = 2
    max_cost_usd: float | None = None  # SPEC §8; raised by `/agent budget <usd>`
    # A bake-off attempt's share: its cap is the session's `max_cost_usd` divided by this (SPEC §8: the cap is
    # the session's, whatever runs inside it), and a raise of the session's cap is divided the same way.
    budget_share: int = 1


@dataclass(frozen=True)
class Question(_Record):
    """The one open question of a session (SPEC §1.6)."""

    question_id: str
    text: str
    options: tuple[str, ...]
    context: str | None
    asked_in_turn: int
    asked_at: datetime
    comment_id: int | None = None
    posted_at: datetime | None = None


@dataclass(frozen=True)
class Note(_Record):
    """An authorised person's comment, delivered with the next turn."""

    comment_id: int
    author: str
    text: str


@dataclass(frozen=True)
class TurnSpec(_Record):
    """A turn to run: what the agent gets (`StartTurn` is built from it)."""

    kind: TurnKind
    reply: str | None = None
    notes: tuple[Note, ...] = ()
    paths: tuple[str, ...] = ()
    front: bool = False


@dataclass(frozen=True)
class Feedback(_Record):
    """PR feedback that arrived while a round was running; it starts the next round."""

    feedback_id: str
    kind: TurnKind
    text: str
    head_sha: str | None = None


@dataclass(frozen=True)
class Session(_Record):
    id: str
    repo: str
    issue_number: int
    issue_title: str
    mode: Mode
    trigger_actor: str
    slug: str
    branch: str
    base_branch: str
    state: State
    created_at: datetime
    updated_at: datetime
    attempt: int = 1
    branch_suffix: int = 1
    from_kept_branch: bool = False
    detail: Detail | None = None
    limits: Limits = field(default_factory=Limits)
    last_heartbeat: datetime | None = None
    turn_count: int = 0
    agent_session_id: str | None = None
    running_turn: TurnSpec | None = None
    pending_turn: TurnSpec | None = None
    finishing: bool = False
    turn_done: bool = False
    done_summary: str | None = None
    question: Question | None = None
    questions_asked: int = 0
    notes: tuple[Note, ...] = ()
    forwarded_comment_ids: tuple[int, ...] = ()
    plan_text: str | None = None
    plan_revisions: int = 0
    plan_approved: bool = False
    protected_strikes: int = 0
    review_rounds_used: int = 0
    review_ids_seen: tuple[str, ...] = ()
    ci_rounds_used: int = 0
    ci_shas_seen: tuple[str, ...] = ()
    deferred_feedback: tuple[Feedback, ...] = ()
    pr_number: int | None = None
    pr_url: str | None = None
    pr_head_sha: str | None = None
    pr_state: PullRequestState | None = None
    waiting_for: tuple[str, ...] = ()  # dependency refs, `#12` or `owner/repo#12`
    checkpoint: str | None = None
    stuck_reason: str | None = None
    failure_reason: str | None = None
    # GitHub's time of the label event that started this session's line (the issue's `updated_at` in
    # the `labeled` payload): a `labeled` delivery no newer than this is a replay (SPEC §6).
    trigger_labelled_at: datetime | None = None
    engine: str | None = None  # the adapter an engine label picked (SPEC §8); None: the policy's `agent`
    # A bake-off (SPEC §8): the second engine's adapter; its two attempts (`bot.core.attempts`), each a
    # session of its own inside this one, run at once; once judged (`BakeOffJudged`), the name of the
    # attempt whose branch the session now carries, and the comparison its PR body shows.
    rival: str | None = None
    bakeoff_winner: str | None = None
    attempts: tuple[Attempt, ...] = ()
    bakeoff_table: str | None = None
    pr_wait_since: datetime | None = None  # when the finished work began waiting under `max_open_prs`
    pr_closed_at: datetime | None = None  # when the PR was merged or closed
    # A close of the PR that arrived while its opening was still being recorded (GitHub's webhook can
    # overtake the answer to the create): applied as soon as `PullRequestOpened` names that PR.
    pr_closed_early: int | None = None
    pr_closed_early_merged: bool = False
    # Cost (SPEC §8): the session's spend over all its turns, as the agent CLIs reported it; the running
    # turn's own figure so far; the running turn was stopped at the cap; the session waits for a higher cap.
    spent_usd: float = 0.0
    turn_spent_usd: float = 0.0
    budget_stop: bool = False
    budget_hold: bool = False

    @property
    def turn_running(self) -> bool:
        return self.running_turn is not None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        return not self.is_terminal


@dataclass(frozen=True)
class Attempt(_Record):
    """One of a bake-off's two attempts (SPEC §8): its name (the engine, `x-2` for a second `x`), its own
    sub-session (its turns, its one open question, its spend), and the time its turns took so far."""

    name: str
    session: Session
    seconds: float = 0.0
    turn_started_at: datetime | None = None


# --------------------------------------------------------------------------------------------------
# Events (inputs). Each is one fact the shell observed.


@dataclass(frozen=True)
class Event(_Record):
    pass


@dataclass(frozen=True)
class Trigger(Event):
    """The go/plan label was added by an authorised person (the shell checked permission and bots)."""

    repo: str
    issue_number: int
    issue_title: str
    mode: Mode
    actor: str
    base_branch: str
    limits: Limits = field(default_factory=Limits)
    waiting_for: tuple[str, ...] = ()  # dependencies not done yet: the session waits before its workspace
    labelled_at: datetime | None = None  # GitHub's time of the label event; None for `/agent retry`
    engine: str | None = None  # an engine label's adapter (SPEC §8)
    rival: str | None = None  # the bake-off label's second adapter (SPEC §8); `engine` is then the first


@dataclass(frozen=True)
class BakeOffJudged(Event):
    """Both bake-off attempts were checked and judged (SPEC §8): the session goes on with the winner's
    branch and engine (its PR opens from there); `attempt` is the winning attempt's name."""

    attempt: str
    branch: str
    engine: str
    table: str | None = None  # the comparison the PR body carries, kept with the session


@dataclass(frozen=True)
class AttemptEvent(Event):
    """Something that happened to one bake-off attempt (`event`: a tagged event, see `event_to_dict`)."""

    attempt: str
    event: dict[str, Any]

    @property
    def inner(self) -> Event:
        return event_from_dict(self.event)


@dataclass(frozen=True)
class AttemptFinished(Event):
    """A bake-off attempt's finished work is committed and in the mirror, ready to be judged."""

    attempt: str


@dataclass(frozen=True)
class Retry(Event):
    """`/agent retry` from an authorised person."""

    actor: str


@dataclass(frozen=True)
class WorkspaceReady(Event):
    """The worktree exists and the repository's setup ran."""


@dataclass(frozen=True)
class WorkspaceFailed(Event):
    """The mirror, worktree or setup could not be prepared."""

    reason: str


@dataclass(frozen=True)
class DependenciesWaiting(Event):
    """The issue depends on other open issues; it must not take a slot before they are done."""

    issues: tuple[str, ...]


@dataclass(frozen=True)
class DependenciesSatisfied(Event):
    """Every dependency is done. `base_branch`, in stacked mode, is the dependency's branch to start from."""

    base_branch: str | None = None


@dataclass(frozen=True)
class MergeConflict(Event):
    """`FinishWork`'s test merge into the current base failed: the agent gets a turn to rebase first."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class SlotGranted(Event):
    """The slot queue admitted this session: its pending turn may start."""


@dataclass(frozen=True)
class TurnStarted(Event):
    """The agent process of the current turn started; carries the agent's own session id for resume."""

    agent_session_id: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    """`shepherd progress`: a heartbeat and checkpoint note."""

    note: str
    phase: str | None = None


@dataclass(frozen=True)
class Asked(Event):
    """`shepherd ask`: the agent is stuck on a question."""

    question: str
    options: tuple[str, ...] = ()
    context: str | None = None


@dataclass(frozen=True)
class QuestionPosted(Event):
    """The question comment exists on the issue (its id, for edits and for reply ordering)."""

    question_id: str
    comment_id: int
    posted_at: datetime


@dataclass(frozen=True)
class PlanSubmitted(Event):
    """`shepherd plan <file>`: the plan, for approval."""

    text: str


@dataclass(frozen=True)
class DoneReported(Event):
    """`shepherd done`: the agent says the work is finished."""

    summary: str


@dataclass(frozen=True)
class TurnExited(Event):
    """The turn's process group is gone. Change facts are measured by the shell after the exit:
    `has_new_commits`: commits made since the last push (since the session began, before the first);
    `has_changes`: uncommitted changes in the worktree; `protected_paths_touched`: protected paths in
    the diff against the base, committed or not."""

    exit_code: int
    has_new_commits: bool = False
    has_changes: bool = False
    protected_paths_touched: tuple[str, ...] = ()
    log_tail: str = ""


@dataclass(frozen=True)
class TurnFailed(Event):
    """The shell ended the turn itself (runtime or idle limit) or lost its process (crash)."""

    reason: FailureKind
    log_tail: str = ""


@dataclass(frozen=True)
class SpendReported(Event):
    """What turn `turn` has cost so far, as its agent CLI reported it (a running total, not a delta)."""

    turn: int
    cost_usd: float


@dataclass(frozen=True)
class BudgetRaised(Event):
    """`/agent budget <usd>`: the session's new cost cap."""

    actor: str
    max_cost_usd: float


@dataclass(frozen=True)
class LoopDetected(Event):
    """Shepherd saw the running turn loop or stall (SPEC §8): stop it and ask, with the evidence."""

    question: str
    evidence: str


@dataclass(frozen=True)
class WorkPushed(Event):
    """`FinishWork(open_pull_request=False)` pushed the branch (the work kept at the cost cap)."""

    head_sha: str | None = None


@dataclass(frozen=True)
class ReplyReceived(Event):
    """An authorised human's non-command comment on the issue; the core decides if it is the answer."""

    comment_id: int
    author: str
    text: str
    created_at: datetime


@dataclass(frozen=True)
class Approve(Event):
    """`/agent approve`."""

    actor: str


@dataclass(frozen=True)
class Revise(Event):
    """`/agent revise <text>`."""

    actor: str
    text: str


@dataclass(frozen=True)
class Cancel(Event):
    """Trigger label removed, issue closed, `/agent stop`, or the App uninstalled."""

    reason: CancelReason


@dataclass(frozen=True)
class StatusRequested(Event):
    """`/agent status`: refresh the status comment now."""


@dataclass(frozen=True)
class PullRequestOpened(Event):
    """`FinishWork` opened (or found) the branch's PR and pushed."""

    number: int
    url: str
    head_sha: str | None = None


@dataclass(frozen=True)
class PullRequestUpdated(Event):
    """`FinishWork` pushed to the existing PR (or found nothing to push)."""

    head_sha: str | None = None


@dataclass(frozen=True)
class PushFailed(Event):
    """`FinishWork` could not commit, push or open the PR."""

    reason: str


@dataclass(frozen=True)
class ReviewFeedback(Event):
    """One review round's worth of PR feedback (SPEC §1.9): `feedback_id` is `review:<id>`,
    `comment:<id>` or `inline:<first id>`, the key that makes the round happen once."""

    feedback_id: str
    author: str
    text: str


@dataclass(frozen=True)
class CIFailed(Event):
    """The PR's head commit has failing checks (one CI round per head SHA)."""

    head_sha: str
    summary: str


@dataclass(frozen=True)
class PullRequestClosed(Event):
    """The PR was merged or closed (`number`: which one, when the shell knows)."""

    merged: bool
    number: int | None = None


@dataclass(frozen=True)
class PullRequestDeferred(Event):
    """`FinishWork` found the repository at its `max_open_prs`: the PR waits for an agent PR to close."""

    open_pull_requests: int


@dataclass(frozen=True)
class PullRequestSlotFree(Event):
    """An agent PR of the repository was merged or closed: a waiting session may open its PR now."""


@dataclass(frozen=True)
class Recovered(Event):
    """Shepherd restarted; `turn_alive` says whether the recorded agent process still runs."""

    turn_alive: bool


# --------------------------------------------------------------------------------------------------
# Commands (outputs). The shell carries them out in order.


@dataclass(frozen=True)
class Command(_Record):
    pass


@dataclass(frozen=True)
class React(Command):
    """Add a reaction to the issue (`comment_id` None) or to a comment."""

    content: str
    comment_id: int | None = None


@dataclass(frozen=True)
class EnsureWorkspace(Command):
    """Create or reuse the mirror and the worktree on `branch`, then run the repo's setup."""

    branch: str
    base_branch: str
    from_kept_branch: bool


@dataclass(frozen=True)
class RequestSlot(Command):
    """Join the slot queue (at the front for a turn resuming after a human answer)."""

    front: bool = False


@dataclass(frozen=True)
class HoldSlot(Command):
    """After a restart: count the re-attached running turn against the limits again."""


@dataclass(frozen=True)
class ReleaseSlot(Command):
    """Leave the slot queue, whether waiting or running (idempotent)."""


@dataclass(frozen=True)
class StartTurn(Command):
    """Run one agent turn. `resume_session_id` is the agent session to resume, when known."""

    kind: TurnKind
    turn: int
    reply: str | None = None
    notes: tuple[Note, ...] = ()
    paths: tuple[str, ...] = ()
    resume_session_id: str | None = None
    max_cost_usd: float | None = None  # what the session may still spend: Claude Code's --max-budget-usd


@dataclass(frozen=True)
class StopAgent(Command):
    """Kill the turn's whole process group, after `grace_seconds` if it has not exited by then."""

    grace_seconds: int = STOP_NOW_SECONDS


@dataclass(frozen=True)
class PostStatus(Command):
    """Render and edit the status comment. `urgent`: goes first in the write queue (questions, final
    states); `throttled`: progress-only, at most once per status_interval_seconds."""

    urgent: bool = False
    throttled: bool = False


@dataclass(frozen=True)
class PostQuestion(Command):
    """Post a new question comment @mentioning `mention`, then report `QuestionPosted`."""

    question_id: str
    text: str
    options: tuple[str, ...]
    context: str | None
    mention: str


@dataclass(frozen=True)
class EditQuestion(Command):
    """A second ask in the same turn: replace the open question's comment text."""

    question_id: str
    text: str
    options: tuple[str, ...]
    context: str | None
    mention: str


@dataclass(frozen=True)
class WithdrawQuestion(Command):
    """The agent asked and then reported done in the same turn: mark the question withdrawn."""

    question_id: str


@dataclass(frozen=True)
class MarkQuestionAnswered(Command):
    question_id: str
    by: str


@dataclass(frozen=True)
class MarkQuestionCancelled(Command):
    question_id: str


@dataclass(frozen=True)
class AddLabel(Command):
    kind: LabelKind


@dataclass(frozen=True)
class RemoveLabel(Command):
    kind: LabelKind


@dataclass(frozen=True)
class PostPlan(Command):
    """Post the plan for approval, with `/agent approve` and `/agent revise` instructions."""

    text: str
    revision: int
    mention: str


@dataclass(frozen=True)
class FinishWork(Command):
    """Commit leftovers as the bot, check protected paths, run tests, push `branch`, open the PR
    (`pull_request_number` None) or update it; report `PullRequestOpened`/`PullRequestUpdated`/`PushFailed`, or `MergeConflict` when
    the branch no longer merges into its base."""

    branch: str
    summary: str | None
    pull_request_number: int | None
    open_pull_request: bool = True  # False: commit and push only, report `WorkPushed` (the cost cap)


@dataclass(frozen=True)
class AttemptCommand(Command):
    """A command for one bake-off attempt (`command`: tagged, see `command_to_dict`); the shell carries it
    out for the attempt's own workspace, slot and turn, and reports its events as `AttemptEvent`s."""

    attempt: str
    command: dict[str, Any]

    @property
    def inner(self) -> Command:
        return command_from_dict(self.command)


@dataclass(frozen=True)
class JudgeBakeOff(Command):
    """Both attempts have ended: check the finished ones, judge, push the other branch, report
    `BakeOffJudged` (SPEC §8)."""


@dataclass(frozen=True)
class PointToPullRequest(Command):
    """Tell the person that feedback belongs on the open PR."""

    number: int
    url: str


@dataclass(frozen=True)
class ExplainNeedsHuman(Command):
    """Say once on the open PR why Shepherd stopped iterating on it (a round or turn limit, SPEC §1.9)."""

    number: int


@dataclass(frozen=True)
class CleanupWorkspace(Command):
    """Remove the worktree and local branch, unless unpushed or uncommitted work is in it."""


@dataclass(frozen=True)
class ReportFailure(Command):
    """Report a failure on the issue with the reason and a redacted log tail."""

    detail: Detail
    reason: str
    log_tail: str = ""


@dataclass(frozen=True)
class Decision:
    """The new session (a different `id` means a new session was created) and the commands to run."""

    session: Session | None
    commands: tuple[Command, ...] = ()


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        Trigger, Retry, WorkspaceReady, WorkspaceFailed, DependenciesWaiting, DependenciesSatisfied,
        SlotGranted, TurnStarted, Progress, Asked, QuestionPosted, PlanSubmitted, DoneReported,
        TurnExited, TurnFailed, ReplyReceived, Approve, Revise, Cancel, StatusRequested,
        PullRequestOpened, PullRequestUpdated, PushFailed, ReviewFeedback, CIFailed,
        PullRequestClosed, Recovered, MergeConflict, PullRequestDeferred, PullRequestSlotFree,
        SpendReported, BudgetRaised, LoopDetected, WorkPushed, BakeOffJudged, AttemptEvent, AttemptFinished,
    )
}
COMMAND_TYPES: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        React, EnsureWorkspace, RequestSlot, HoldSlot, ReleaseSlot, StartTurn, StopAgent, PostStatus,
        PostQuestion, EditQuestion, WithdrawQuestion, MarkQuestionAnswered, MarkQuestionCancelled,
        AddLabel, RemoveLabel, PostPlan, FinishWork, PointToPullRequest, CleanupWorkspace,
        ReportFailure, ExplainNeedsHuman, AttemptCommand, JudgeBakeOff,
    )
}


def _tagged(record: _Record) -> dict[str, Any]:
    return {"type": type(record).__name__, **record.to_dict()}


def _untag(data: dict[str, Any], registry: Mapping[str, type[_R]]) -> _R:
    fields = dict(data)
    cls = registry[fields.pop("type")]
    return cls.from_dict(fields)


def event_to_dict(event: Event) -> dict[str, Any]:
    return _tagged(event)


def event_from_dict(data: dict[str, Any]) -> Event:
    return _untag(data, EVENT_TYPES)


def command_to_dict(command: Command) -> dict[str, Any]:
    return _tagged(command)


def command_from_dict(data: dict[str, Any]) -> Command:
    return _untag(data, COMMAND_TYPES)


# --------------------------------------------------------------------------------------------------
# Names


def make_slug(title: str) -> str:
    """Lowercase ASCII, words joined by '-', at most 40 characters, never empty."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    slug = slug[:SLUG_MAX_LENGTH].rstrip("-")
    return slug or SLUG_FALLBACK


def make_branch(issue_number: int, slug: str, suffix: int = 1) -> str:
    base = f"{BRANCH_PREFIX}issue-{issue_number}-{slug}"
    return base if suffix <= 1 else f"{base}-{suffix}"


def make_session_id(repo: str, issue_number: int, attempt: int) -> str:
    """Deterministic, so a redelivered trigger cannot mint a second id (SPEC §6, §7)."""
    return f"{repo}#{issue_number}/{attempt}"


def issue_of(session_id: str) -> tuple[str, int]:
    """(`owner/repo`, issue number) of a session id made by `make_session_id`."""
    issue = session_id.rpartition("/")[0]
    repo, _, number = issue.rpartition("#")
    return repo, int(number)


# --------------------------------------------------------------------------------------------------
# Triggers


def _new_session(
    trigger: Trigger, now: datetime, *, attempt: int, slug: str, suffix: int, from_kept_branch: bool
) -> Session:
    return Session(
        id=make_session_id(trigger.repo, trigger.issue_number, attempt),
        repo=trigger.repo,
        issue_number=trigger.issue_number,
        issue_title=trigger.issue_title,
        mode=trigger.mode,
        trigger_actor=trigger.actor,
        slug=slug,
        branch=make_branch(trigger.issue_number, slug, suffix) + (
            f"-{trigger.engine}" if trigger.rival is not None and trigger.engine else ""
        ),
        base_branch=trigger.base_branch,
        state=State.REGISTERED,
        created_at=now,
        updated_at=now,
        attempt=attempt,
        branch_suffix=suffix,
        from_kept_branch=from_kept_branch,
        limits=trigger.limits,
        waiting_for=tuple(trigger.waiting_for),
        trigger_labelled_at=trigger.labelled_at,
        engine=trigger.engine,
        rival=trigger.rival,
    )


def _started(session: Session) -> Decision:
    if session.rival is not None and not session.attempts and session.bakeoff_winner is None:
        from bot.core import attempts  # it builds on this module

        return attempts.start(session)
    if session.waiting_for:
        # No workspace yet: it is made from the base as it is once the dependencies are done.
        session = replace(session, state=State.QUEUED, detail=Detail.WAITING_FOR_DEPENDENCIES)
        return Decision(session, (React("eyes"), PostStatus(urgent=True)))
    return Decision(
        session,
        (
            React("eyes"),
            EnsureWorkspace(session.branch, session.base_branch, session.from_kept_branch),
            PostStatus(urgent=True),
        ),
    )


def is_replayed_label(last: Session | None, trigger: Trigger) -> bool:
    """A `labeled` delivery no newer than the one behind the issue's last session is a replay (SPEC §6):
    GitHub sends a new `labeled` only after the label was taken off, which makes the issue newer."""
    return (
        last is not None and trigger.labelled_at is not None and last.trigger_labelled_at is not None
        and trigger.labelled_at <= last.trigger_labelled_at
    )


def decide_trigger(last: Session | None, trigger: Trigger, now: datetime) -> Decision:
    """What a new go/plan label means, given the issue's last session (SPEC §1.1)."""
    if is_replayed_label(last, trigger):
        return Decision(last)
    decision = _decide_trigger(last, trigger, now)
    session = decision.session
    if session is not None and last is not None and session.id != last.id:
        # One forwarded reply per comment id for the whole issue: a comment the last session took is
        # never taken again, however often its delivery comes back (SPEC §6).
        session = replace(session, forwarded_comment_ids=last.forwarded_comment_ids)
        if trigger.labelled_at is None:
            # `/agent retry` starts a new session from the same label: its replays stay replays.
            session = replace(session, trigger_labelled_at=last.trigger_labelled_at)
        # The issue carries Shepherd's 👀 since its first session: one reaction per issue, not per session.
        commands = tuple(c for c in decision.commands if c != React("eyes"))
        decision = Decision(session, commands)
    return decision


def _decide_trigger(last: Session | None, trigger: Trigger, now: datetime) -> Decision:
    if last is None:
        slug = make_slug(trigger.issue_title)
        return _started(_new_session(trigger, now, attempt=1, slug=slug, suffix=1, from_kept_branch=False))
    if last.is_live:
        return Decision(last)
    if last.state in (State.CANCELLED, State.FAILED):
        session = _new_session(
            trigger, now, attempt=last.attempt + 1, slug=last.slug, suffix=last.branch_suffix,
            from_kept_branch=True,
        )
        # The kept branch is based where it was; the policy's base only applies to fresh branches.
        return _started(replace(session, base_branch=last.base_branch))
    if last.pr_state == PullRequestState.OPEN and last.pr_number is not None and last.pr_url:
        return Decision(last, (React("confused"), PointToPullRequest(last.pr_number, last.pr_url)))
    # Merged or closed: the old branch is finished work, so start over from the base on a new branch.
    session = _new_session(
        trigger, now, attempt=last.attempt + 1, slug=last.slug, suffix=last.branch_suffix + 1,
        from_kept_branch=False,
    )
    return _started(session)


def _retry(session: Session, event: Retry, now: datetime) -> Decision:
    trigger = Trigger(
        repo=session.repo,
        issue_number=session.issue_number,
        issue_title=session.issue_title,
        mode=session.mode,
        actor=event.actor,
        base_branch=session.base_branch,
        limits=session.limits,
        engine=session.engine,
        rival=session.rival,
    )
    return decide_trigger(session, trigger, now)


# --------------------------------------------------------------------------------------------------
# Decision helpers


def _active_state(session: Session) -> State:
    if session.mode == Mode.PLAN and not session.plan_approved:
        return State.PLANNING
    return State.WORKING


def _round_detail(kind: TurnKind) -> Detail | None:
    return {
        TurnKind.REVIEW: Detail.REVIEW_ROUND,
        TurnKind.CI: Detail.CI_ROUND,
        TurnKind.REVERT: Detail.PROTECTED_PATHS,
        TurnKind.REBASE: Detail.MERGE_CONFLICT,
    }.get(kind)


def _needs_input_labelled(session: Session) -> bool:
    return session.state == State.STUCK and session.detail in (None, Detail.PLAN_AWAITING_APPROVAL)


def _stop_everything(session: Session) -> tuple[Session, list[Command]]:
    """End any running turn, leave the queue and take down the labels and question of a stuck session."""
    commands: list[Command] = []
    if session.turn_running:
        commands.append(StopAgent(STOP_NOW_SECONDS))
    commands.append(ReleaseSlot())
    if _needs_input_labelled(session):
        commands.append(RemoveLabel(LabelKind.NEEDS_INPUT))
    if session.state == State.STUCK and session.detail == Detail.NEEDS_HUMAN:
        commands.append(RemoveLabel(LabelKind.NEEDS_HUMAN))
    if session.question is not None:
        commands.append(MarkQuestionCancelled(session.question.question_id))
    session = replace(
        session, running_turn=None, pending_turn=None, question=None, finishing=False, stuck_reason=None,
        budget_stop=False, budget_hold=False,
    )
    return session, commands


def _fail(session: Session, detail: Detail, reason: str, commands: list[Command], log_tail: str = "") -> Decision:
    session, stop = _stop_everything(session)
    session = replace(session, state=State.FAILED, detail=detail, failure_reason=reason)
    stop = [command for command in stop if command not in commands]  # the slot may already be released
    return Decision(session, (*commands, *stop, ReportFailure(detail, reason, log_tail), PostStatus(urgent=True)))


def _needs_human(session: Session, reason: str, commands: list[Command]) -> Decision:
    session = replace(
        session, state=State.STUCK, detail=Detail.NEEDS_HUMAN, stuck_reason=reason, pending_turn=None,
        deferred_feedback=(),
    )
    explain: tuple[Command, ...] = ()
    if session.pr_number is not None and session.pr_state == PullRequestState.OPEN:
        explain = (ExplainNeedsHuman(session.pr_number),)
    return Decision(session, (*commands, AddLabel(LabelKind.NEEDS_HUMAN), *explain, PostStatus(urgent=True)))


def _schedule(session: Session, spec: TurnSpec, commands: list[Command]) -> Decision:
    """Queue the next turn, or stop at max_turns. A still-running turn (the ask grace) keeps its slot
    until it exits; the request is made then."""
    if budget.over_budget(session.limits.max_cost_usd, session.spent_usd):
        return _hold_for_budget(session, commands)
    if session.turn_count >= session.limits.max_turns:
        if session.pr_number is not None:
            reason = STUCK_REASON_TURN_CAP.format(limit=session.limits.max_turns)
            return _needs_human(session, reason, commands)
        reason = FAILURE_MAX_TURNS.format(limit=session.limits.max_turns)
        return _fail(session, Detail.MAX_TURNS, reason, commands)
    session = replace(
        session, pending_turn=spec, state=State.QUEUED, detail=_round_detail(spec.kind), stuck_reason=None
    )
    if not session.turn_running:
        commands.append(RequestSlot(front=spec.front))
    commands.append(PostStatus())
    return Decision(session, tuple(commands))


def _touch(session: Session, now: datetime) -> Session:
    return replace(session, updated_at=now)


# --------------------------------------------------------------------------------------------------
# Handlers: one per event type, each (session, event, now) -> Decision


def _on_workspace_ready(s: Session, e: WorkspaceReady, now: datetime) -> Decision:
    if s.state != State.REGISTERED:
        return Decision(s)
    first = TurnSpec(TurnKind.PLAN if s.mode == Mode.PLAN else TurnKind.FIRST)
    if s.waiting_for:
        s = replace(s, state=State.QUEUED, detail=Detail.WAITING_FOR_DEPENDENCIES, pending_turn=first)
        return Decision(s, (PostStatus(),))
    return _schedule(s, first, [])


def _on_workspace_failed(s: Session, e: WorkspaceFailed, now: datetime) -> Decision:
    if s.state != State.REGISTERED:
        return Decision(s)
    return _fail(s, Detail.WORKSPACE_FAILED, FAILURE_WORKSPACE.format(reason=e.reason), [])


def _on_dependencies_waiting(s: Session, e: DependenciesWaiting, now: datetime) -> Decision:
    if not e.issues:
        return _on_dependencies_satisfied(s, DependenciesSatisfied(), now)
    if s.state == State.REGISTERED:
        return Decision(replace(s, waiting_for=tuple(e.issues)))
    if s.state == State.QUEUED and s.detail == Detail.WAITING_FOR_DEPENDENCIES:
        if tuple(e.issues) == s.waiting_for:
            return Decision(s)
        return Decision(replace(s, waiting_for=tuple(e.issues)), (PostStatus(),))
    if s.state == State.QUEUED and not s.turn_running and s.turn_count == 0:
        s = replace(s, waiting_for=tuple(e.issues), detail=Detail.WAITING_FOR_DEPENDENCIES)
        return Decision(s, (ReleaseSlot(), PostStatus()))
    return Decision(s)


def _on_dependencies_satisfied(s: Session, e: DependenciesSatisfied, now: datetime) -> Decision:
    if s.state == State.REGISTERED:
        return Decision(replace(s, waiting_for=()))
    if s.state == State.QUEUED and s.detail == Detail.WAITING_FOR_DEPENDENCIES and s.pending_turn:
        s = replace(s, waiting_for=(), detail=None)
        return Decision(s, (RequestSlot(front=False), PostStatus()))
    if s.state == State.QUEUED and s.detail == Detail.WAITING_FOR_DEPENDENCIES and s.turn_count == 0:
        # Waited from the trigger on: the workspace is made now, from the updated (or stacked) base.
        base = s.base_branch if s.from_kept_branch else (e.base_branch or s.base_branch)
        s = replace(s, waiting_for=(), detail=None, state=State.REGISTERED, base_branch=base)
        return Decision(s, (EnsureWorkspace(s.branch, s.base_branch, s.from_kept_branch), PostStatus(urgent=True)))
    return Decision(s)


def _on_slot_granted(s: Session, e: SlotGranted, now: datetime) -> Decision:
    spec = s.pending_turn
    if s.state != State.QUEUED or spec is None or s.turn_running or s.detail == Detail.WAITING_FOR_DEPENDENCIES:
        # Nothing to run (cancelled meanwhile, or a duplicate grant): give the slot back.
        return Decision(s, () if s.turn_running else (ReleaseSlot(),))
    spec = replace(spec, notes=(*spec.notes, *s.notes))
    turn = s.turn_count + 1
    if spec.kind == TurnKind.PLAN:
        state = State.PLANNING
    elif spec.kind == TurnKind.REPLY:
        state = _active_state(s)  # an answer during planning resumes the planning
    else:
        state = State.WORKING
    s = replace(
        s, state=state, detail=_round_detail(spec.kind), turn_count=turn, running_turn=spec,
        pending_turn=None, notes=(), turn_done=False, done_summary=None, last_heartbeat=now,
        turn_spent_usd=0.0, budget_stop=False,
    )
    start = StartTurn(
        kind=spec.kind, turn=turn, reply=spec.reply, notes=spec.notes, paths=spec.paths,
        resume_session_id=s.agent_session_id, max_cost_usd=budget.remaining(s.limits.max_cost_usd, s.spent_usd),
    )
    return Decision(s, (start, PostStatus()))


def _on_turn_started(s: Session, e: TurnStarted, now: datetime) -> Decision:
    if not s.turn_running:
        return Decision(s)
    return Decision(replace(s, agent_session_id=e.agent_session_id or s.agent_session_id, last_heartbeat=now))


def _on_progress(s: Session, e: Progress, now: datetime) -> Decision:
    if not s.turn_running:
        return Decision(s)
    return Decision(replace(s, checkpoint=e.note, last_heartbeat=now), (PostStatus(throttled=True),))


def _asking_turn(s: Session) -> bool:
    """A question may be asked by a running turn that is working, planning, or already asked once."""
    if not s.turn_running:
        return False
    if s.state in (State.WORKING, State.PLANNING) and not s.finishing:
        return True
    return s.state == State.STUCK and s.question is not None and s.question.asked_in_turn == s.turn_count


def _on_asked(s: Session, e: Asked, now: datetime) -> Decision:
    if not _asking_turn(s):
        return Decision(s)
    if s.question is not None and s.question.asked_in_turn == s.turn_count:
        q = replace(s.question, text=e.question, options=tuple(e.options), context=e.context)
        s = replace(s, question=q, stuck_reason=q.text, last_heartbeat=now)
        edit = EditQuestion(q.question_id, q.text, q.options, q.context, s.trigger_actor)
        return Decision(s, (edit, PostStatus(urgent=True)))
    number = s.questions_asked + 1
    q = Question(
        question_id=f"{s.id}/q{number}", text=e.question, options=tuple(e.options), context=e.context,
        asked_in_turn=s.turn_count, asked_at=now,
    )
    s = replace(
        s, question=q, questions_asked=number, state=State.STUCK, detail=None, stuck_reason=q.text,
        last_heartbeat=now,
    )
    return Decision(
        s,
        (
            PostQuestion(q.question_id, q.text, q.options, q.context, s.trigger_actor),
            AddLabel(LabelKind.NEEDS_INPUT),
            StopAgent(ASK_GRACE_SECONDS),
            PostStatus(urgent=True),
        ),
    )


def _on_question_posted(s: Session, e: QuestionPosted, now: datetime) -> Decision:
    if s.question is None or s.question.question_id != e.question_id:
        return Decision(s)
    return Decision(replace(s, question=replace(s.question, comment_id=e.comment_id, posted_at=e.posted_at)))


def _on_plan_submitted(s: Session, e: PlanSubmitted, now: datetime) -> Decision:
    if not s.turn_running or s.state not in (State.PLANNING, State.STUCK) or s.plan_approved:
        return Decision(s)
    if s.state == State.STUCK and s.detail is not None:
        return Decision(s)
    commands: list[Command] = []
    if s.question is not None:
        commands.append(WithdrawQuestion(s.question.question_id))
    else:
        commands.append(AddLabel(LabelKind.NEEDS_INPUT))
    s = replace(
        s, plan_text=e.text, question=None, state=State.STUCK, detail=Detail.PLAN_AWAITING_APPROVAL,
        stuck_reason=STUCK_REASON_PLAN, last_heartbeat=now,
    )
    commands += [PostPlan(e.text, s.plan_revisions, s.trigger_actor), StopAgent(ASK_GRACE_SECONDS),
                 PostStatus(urgent=True)]
    return Decision(s, tuple(commands))


def _on_done_reported(s: Session, e: DoneReported, now: datetime) -> Decision:
    if not s.turn_running or s.finishing:
        return Decision(s)
    commands: list[Command] = []
    if s.state == State.STUCK:
        if s.question is None or s.question.asked_in_turn != s.turn_count:
            return Decision(s)
        # ask followed by done in the same turn: the question is withdrawn (SPEC §1.6).
        commands += [WithdrawQuestion(s.question.question_id), RemoveLabel(LabelKind.NEEDS_INPUT)]
        assert s.running_turn is not None  # the turn that asked is the one that is done
        s = replace(s, question=None, state=_active_state(s), detail=_round_detail(s.running_turn.kind),
                    stuck_reason=None)
        commands.append(PostStatus())
    elif s.state not in (State.WORKING, State.PLANNING):
        return Decision(s)
    return Decision(replace(s, turn_done=True, done_summary=e.summary, last_heartbeat=now), tuple(commands))


def _end_round_without_push(s: Session, commands: list[Command], now: datetime) -> Decision:
    s = replace(s, state=State.COMPLETE, detail=None, finishing=False)
    return _after_complete(s, commands, now)


def _after_complete(s: Session, commands: list[Command], now: datetime) -> Decision:
    """Back to complete; PR feedback that arrived during the round now starts the next round."""
    if s.deferred_feedback:
        waiting = s.deferred_feedback
        s = replace(s, deferred_feedback=())
        kind = waiting[0].kind
        text = "\n\n".join(f.text for f in waiting)
        return _start_round(s, kind, text, commands, now)
    return Decision(s, (*commands, PostStatus(urgent=True)))


def _on_turn_exited(s: Session, e: TurnExited, now: datetime) -> Decision:
    if not s.turn_running:
        return Decision(s)
    s = replace(s, running_turn=None, last_heartbeat=now)
    commands: list[Command] = [ReleaseSlot()]
    if s.state == State.STUCK:
        # Ended after an ask or a plan (the grace kill makes the exit code meaningless).
        return Decision(s, (*commands, PostStatus()))
    if s.state == State.QUEUED and s.pending_turn is not None:
        # The answer came while the asking turn was in its grace period.
        return Decision(s, (*commands, RequestSlot(front=s.pending_turn.front), PostStatus()))
    if s.state == State.PLANNING:
        if e.exit_code != 0:
            return _fail(s, Detail.EXIT_CODE, FAILURE_EXIT_CODE.format(code=e.exit_code), commands, e.log_tail)
        return _fail(s, Detail.NO_PLAN, FAILURE_NO_PLAN, commands)
    if s.state != State.WORKING:
        return Decision(s, tuple(commands))
    if s.budget_stop and not s.turn_done:
        return _keep_work_at_cap(s, e.has_new_commits or e.has_changes, commands)
    changed = e.has_new_commits or e.has_changes
    done = s.turn_done or (e.exit_code == 0 and changed)
    if done and e.protected_paths_touched:
        paths = tuple(e.protected_paths_touched)
        if s.protected_strikes == 0:
            s = replace(s, protected_strikes=1)
            return _schedule(s, TurnSpec(TurnKind.REVERT, paths=paths), commands)
        return _fail(s, Detail.PROTECTED_PATHS, FAILURE_PROTECTED.format(paths=", ".join(paths)), commands)
    if done:
        s = replace(s, finishing=True)
        commands += [FinishWork(s.branch, s.done_summary, s.pr_number), PostStatus()]
        return Decision(s, tuple(commands))
    if e.exit_code != 0:
        return _fail(s, Detail.EXIT_CODE, FAILURE_EXIT_CODE.format(code=e.exit_code), commands, e.log_tail)
    if s.pr_number is not None:
        # A round that needed no change: nothing to push, the PR stands as it is.
        return _end_round_without_push(s, commands, now)
    return _fail(s, Detail.NO_CHANGES, FAILURE_NO_CHANGES, commands)


def _on_turn_failed(s: Session, e: TurnFailed, now: datetime) -> Decision:
    if not s.turn_running:
        return Decision(s)
    if s.state == State.STUCK or (s.state == State.QUEUED and s.pending_turn is not None):
        # The turn had already asked or planned; its end is expected.
        return _on_turn_exited(s, TurnExited(exit_code=-1), now)
    if s.budget_stop and not s.turn_done and s.state == State.WORKING:
        # Stopped at the cost cap: whatever it left in the worktree is kept all the same.
        return _keep_work_at_cap(replace(s, running_turn=None), True, [ReleaseSlot()])
    detail, reason = {
        FailureKind.RUNTIME: (Detail.TIMED_OUT, FAILURE_RUNTIME),
        FailureKind.IDLE: (Detail.IDLE, FAILURE_IDLE),
        FailureKind.CRASH: (Detail.CRASHED, FAILURE_CRASH),
        FailureKind.LIMIT: (Detail.LIMIT_EXCEEDED, FAILURE_LIMIT),
    }[e.reason]
    return _fail(s, detail, reason, [], e.log_tail)


def _expand_reply(text: str, options: tuple[str, ...]) -> str:
    stripped = text.strip()
    if stripped.isdigit() and 1 <= int(stripped) <= len(options):
        return options[int(stripped) - 1]
    return text


def _on_reply(s: Session, e: ReplyReceived, now: datetime) -> Decision:
    if e.comment_id in s.forwarded_comment_ids or not s.is_live:
        return Decision(s)
    s = replace(s, forwarded_comment_ids=(*s.forwarded_comment_ids, e.comment_id))
    commands: list[Command] = [React("eyes", e.comment_id)]
    q = s.question
    if s.state == State.STUCK and q is not None and e.created_at > (q.posted_at or q.asked_at):
        commands += [RemoveLabel(LabelKind.NEEDS_INPUT), MarkQuestionAnswered(q.question_id, e.author)]
        s = replace(s, question=None)
        return _schedule(s, TurnSpec(TurnKind.REPLY, reply=_expand_reply(e.text, q.options), front=True), commands)
    if s.state == State.STUCK and s.detail == Detail.PLAN_AWAITING_APPROVAL:
        # A plain reply to a plan is a revision request.
        return _revise(s, e.text, commands)
    # Any other comment while the session is live is a note for the next turn (SPEC §1.7).
    note = Note(e.comment_id, e.author, e.text)
    return Decision(replace(s, notes=(*s.notes, note)), tuple(commands))


def _revise(s: Session, text: str, commands: list[Command]) -> Decision:
    commands.append(RemoveLabel(LabelKind.NEEDS_INPUT))
    s = replace(s, plan_revisions=s.plan_revisions + 1, stuck_reason=None)
    return _schedule(s, TurnSpec(TurnKind.PLAN, reply=text, front=True), commands)


def _on_approve(s: Session, e: Approve, now: datetime) -> Decision:
    if s.state != State.STUCK or s.detail != Detail.PLAN_AWAITING_APPROVAL:
        return Decision(s)
    s = replace(s, plan_approved=True)
    spec = TurnSpec(TurnKind.IMPLEMENT, reply=s.plan_text, front=True)
    return _schedule(s, spec, [RemoveLabel(LabelKind.NEEDS_INPUT)])


def _on_revise(s: Session, e: Revise, now: datetime) -> Decision:
    if s.state != State.STUCK or s.detail != Detail.PLAN_AWAITING_APPROVAL:
        return Decision(s)
    return _revise(s, e.text, [])


def _on_cancel(s: Session, e: Cancel, now: datetime) -> Decision:
    if s.state == State.COMPLETE:
        closed = s.pr_state in (PullRequestState.MERGED, PullRequestState.CLOSED)
        if e.reason == CancelReason.ISSUE_CLOSED and closed:
            return Decision(s, (CleanupWorkspace(),))
        return Decision(s)
    if s.is_terminal:
        return Decision(s)
    push_in_flight = s.finishing
    s, commands = _stop_everything(s)
    if s.pr_number is not None:
        # The PR exists: the session stays complete, and Shepherd never closes a PR.
        s = replace(s, state=State.COMPLETE, detail=None, deferred_feedback=())
        return Decision(s, (*commands, PostStatus(urgent=True)))
    # `finishing` stays set when a push was already under way: its PR may still appear (see below).
    s = replace(s, state=State.CANCELLED, detail=CANCELLED_DETAIL[e.reason], finishing=push_in_flight)
    return Decision(s, (*commands, PostStatus(urgent=True)))


def _on_status_requested(s: Session, e: StatusRequested, now: datetime) -> Decision:
    return Decision(s, (PostStatus(urgent=True),))


def _on_pull_request_opened(s: Session, e: PullRequestOpened, now: datetime) -> Decision:
    if s.pr_number is not None or not s.finishing:
        return Decision(s)
    s = replace(
        s, pr_number=e.number, pr_url=e.url, pr_head_sha=e.head_sha, pr_state=PullRequestState.OPEN,
        finishing=False,
    )
    # After a cancel that raced the push, the PR now exists, so the session is complete after all.
    s = replace(s, state=State.COMPLETE, detail=None)
    opened = _after_complete(s, [], now)
    if s.pr_closed_early != e.number or opened.session is None:
        return opened
    early = PullRequestClosed(merged=s.pr_closed_early_merged, number=e.number)
    closed = _on_pull_request_closed(replace(opened.session, pr_closed_early=None), early, now)
    return Decision(closed.session, (*opened.commands, *closed.commands))


def _on_merge_conflict(s: Session, e: MergeConflict, now: datetime) -> Decision:
    if s.finishing and s.state == State.CANCELLED:
        return Decision(replace(s, finishing=False))
    if not s.finishing or s.state != State.WORKING:
        return Decision(s)
    s = replace(s, finishing=False)
    return _schedule(s, TurnSpec(TurnKind.REBASE, paths=tuple(e.paths), front=True), [])


def _on_pull_request_updated(s: Session, e: PullRequestUpdated, now: datetime) -> Decision:
    if not s.finishing or s.state != State.WORKING:
        return Decision(s)
    s = replace(s, finishing=False, state=State.COMPLETE, detail=None, pr_head_sha=e.head_sha or s.pr_head_sha)
    return _after_complete(s, [], now)


def _on_push_failed(s: Session, e: PushFailed, now: datetime) -> Decision:
    if s.finishing and s.state == State.CANCELLED:
        return Decision(replace(s, finishing=False))
    if not s.finishing or s.state != State.WORKING:
        return Decision(s)
    if s.budget_stop:
        # Nothing could be kept (e.g. no commits yet): the cap still stops the session.
        return _hold_for_budget(replace(s, finishing=False, budget_stop=False), [])
    return _fail(replace(s, finishing=False), Detail.PUSH_FAILED, FAILURE_PUSH.format(reason=e.reason), [])


def _round_busy(s: Session) -> bool:
    return s.state in (State.QUEUED, State.WORKING) and s.pr_number is not None


def _start_round(s: Session, kind: TurnKind, text: str, commands: list[Command], now: datetime) -> Decision:
    if kind == TurnKind.REVIEW:
        if s.review_rounds_used >= s.limits.review_rounds:
            return _needs_human(s, STUCK_REASON_REVIEW_CAP.format(limit=s.limits.review_rounds), commands)
        s = replace(s, review_rounds_used=s.review_rounds_used + 1)
        return _schedule(s, TurnSpec(TurnKind.REVIEW, reply=text, front=True), commands)
    if s.ci_rounds_used >= s.limits.ci_rounds:
        return _needs_human(s, STUCK_REASON_CI_CAP.format(limit=s.limits.ci_rounds), commands)
    s = replace(s, ci_rounds_used=s.ci_rounds_used + 1)
    return _schedule(s, TurnSpec(TurnKind.CI, reply=text), commands)


def _on_review_feedback(s: Session, e: ReviewFeedback, now: datetime) -> Decision:
    # A review can overtake the recording of the PR it is about (a PR is reviewed as soon as it shows):
    # it then waits, like feedback during a round, for the PR to be recorded.
    recording = s.pr_number is None and s.finishing
    if e.feedback_id in s.review_ids_seen or (s.pr_state != PullRequestState.OPEN and not recording):
        return Decision(s)
    if s.state == State.COMPLETE:
        s = replace(s, review_ids_seen=(*s.review_ids_seen, e.feedback_id))
        return _start_round(s, TurnKind.REVIEW, e.text, [], now)
    if _round_busy(s) or recording:
        s = replace(
            s, review_ids_seen=(*s.review_ids_seen, e.feedback_id),
            deferred_feedback=(*s.deferred_feedback, Feedback(e.feedback_id, TurnKind.REVIEW, e.text)),
        )
        return Decision(s)
    return Decision(s)


def wants_ci_round(s: Session, head_sha: str | None) -> bool:
    """Would a failing check on `head_sha` start a CI round? One round per head commit, only on the PR's
    current head (a stale head does not matter any more), only once the work is complete."""
    if head_sha is None or head_sha in s.ci_shas_seen or s.pr_number is None:
        return False
    if s.pr_state != PullRequestState.OPEN or s.state != State.COMPLETE:
        return False
    return s.pr_head_sha is None or head_sha == s.pr_head_sha


def _on_ci_failed(s: Session, e: CIFailed, now: datetime) -> Decision:
    if not wants_ci_round(s, e.head_sha):
        return Decision(s)
    s = replace(s, ci_shas_seen=(*s.ci_shas_seen, e.head_sha))
    return _start_round(s, TurnKind.CI, e.summary, [], now)


def _on_pull_request_closed(s: Session, e: PullRequestClosed, now: datetime) -> Decision:
    if s.pr_number is None and s.finishing and e.number is not None:
        # The PR is being recorded right now; nothing is lost: the close waits for it.
        return Decision(replace(s, pr_closed_early=e.number, pr_closed_early_merged=e.merged))
    if s.pr_number is None or s.pr_state != PullRequestState.OPEN:
        return Decision(s)
    if e.number is not None and e.number != s.pr_number:
        return Decision(s)  # another PR of the branch (an earlier session's), not this session's
    pr_state = PullRequestState.MERGED if e.merged else PullRequestState.CLOSED
    commands: list[Command] = []
    if s.is_live:
        s, commands = _stop_everything(s)
    s = replace(s, pr_state=pr_state, state=State.COMPLETE, detail=None, deferred_feedback=(), pr_closed_at=now)
    return Decision(s, (*commands, CleanupWorkspace(), PostStatus(urgent=True)))


def _waits_for_pull_request_slot(s: Session) -> bool:
    return s.state == State.QUEUED and s.detail == Detail.WAITING_FOR_PULL_REQUEST_SLOT


def _on_pull_request_deferred(s: Session, e: PullRequestDeferred, now: datetime) -> Decision:
    if not s.finishing or s.state != State.WORKING or s.pr_number is not None:
        return Decision(s)
    s = replace(s, finishing=False, state=State.QUEUED, detail=Detail.WAITING_FOR_PULL_REQUEST_SLOT,
                pr_wait_since=s.pr_wait_since or now)
    return Decision(s, (PostStatus(),))


def _on_pull_request_slot_free(s: Session, e: PullRequestSlotFree, now: datetime) -> Decision:
    """Try again to open the PR (FinishWork checks the cap again, and may defer once more)."""
    if not _waits_for_pull_request_slot(s):
        return Decision(s)
    s = replace(s, state=State.WORKING, detail=None, finishing=True)
    return Decision(s, (FinishWork(s.branch, s.done_summary, None), PostStatus()))


def _finish_again(s: Session) -> FinishWork:
    """The `FinishWork` a restart lost, as it was: a push only when it was keeping the work at the cap."""
    if s.budget_stop:
        return FinishWork(s.branch, None, s.pr_number, open_pull_request=False)
    return FinishWork(s.branch, s.done_summary, s.pr_number)


def _on_recovered(s: Session, e: Recovered, now: datetime) -> Decision:
    if s.turn_running:
        if e.turn_alive:
            return Decision(s, (HoldSlot(),))
        if s.state == State.STUCK or s.pending_turn is not None:
            # The asking turn is gone; the next turn, if any, now needs a slot.
            s = replace(s, running_turn=None)
            extra = (RequestSlot(front=s.pending_turn.front),) if s.pending_turn else ()
            return Decision(s, (ReleaseSlot(), *extra))
        if s.finishing:
            return Decision(replace(s, running_turn=None), (ReleaseSlot(), _finish_again(s)))
        # Re-run the lost turn under the same turn number (SPEC §6).
        assert s.running_turn is not None
        spec = replace(s.running_turn, front=True)
        s = replace(
            s, running_turn=None, pending_turn=spec, turn_count=s.turn_count - 1, state=State.QUEUED,
            detail=_round_detail(spec.kind),
        )
        return Decision(s, (ReleaseSlot(), RequestSlot(front=True), PostStatus()))
    if s.finishing and s.state == State.WORKING:
        return Decision(s, (_finish_again(s),))
    if s.state == State.REGISTERED:
        return Decision(s, (EnsureWorkspace(s.branch, s.base_branch, s.from_kept_branch),))
    if s.state == State.QUEUED and s.pending_turn is not None and s.detail != Detail.WAITING_FOR_DEPENDENCIES:
        return Decision(s, (RequestSlot(front=s.pending_turn.front),))
    if _waits_for_pull_request_slot(s):
        # A PR may have closed while Shepherd was down: look at the cap again.
        return _on_pull_request_slot_free(s, PullRequestSlotFree(), now)
    return Decision(s)


# --------------------------------------------------------------------------------------------------
# Cost cap and loop stops (SPEC §8); the arithmetic is `bot.core.budget`'s.


def _hold_for_budget(s: Session, commands: list[Command]) -> Decision:
    cap = s.limits.max_cost_usd or 0.0
    reason = budget.budget_stuck_reason(s.spent_usd, cap, share=s.limits.budget_share)
    return _needs_human(replace(s, budget_hold=True), reason, commands)


def _keep_work_at_cap(s: Session, changed: bool, commands: list[Command]) -> Decision:
    """The turn stopped at the cap: push what it did (no pull request for unfinished work), then hold."""
    if not changed:
        return _hold_for_budget(replace(s, budget_stop=False), commands)
    s = replace(s, finishing=True)
    commands += [FinishWork(s.branch, None, s.pr_number, open_pull_request=False), PostStatus()]
    return Decision(s, tuple(commands))


def _on_spend_reported(s: Session, e: SpendReported, now: datetime) -> Decision:
    if e.turn != s.turn_count or e.cost_usd <= s.turn_spent_usd:
        return Decision(s)
    s = replace(s, spent_usd=s.spent_usd + (e.cost_usd - s.turn_spent_usd), turn_spent_usd=e.cost_usd)
    stoppable = s.turn_running and not s.finishing and not s.turn_done and s.state in (State.WORKING, State.PLANNING)
    if stoppable and not s.budget_stop and budget.over_budget(s.limits.max_cost_usd, s.spent_usd):
        return Decision(replace(s, budget_stop=True), (StopAgent(STOP_NOW_SECONDS), PostStatus(urgent=True)))
    return Decision(s, (PostStatus(throttled=True),))


def _on_work_pushed(s: Session, e: WorkPushed, now: datetime) -> Decision:
    if not s.finishing or not s.budget_stop or s.state != State.WORKING:
        return Decision(s)
    s = replace(s, finishing=False, budget_stop=False, pr_head_sha=e.head_sha if s.pr_number else s.pr_head_sha)
    return _hold_for_budget(s, [])


def _on_budget_raised(s: Session, e: BudgetRaised, now: datetime) -> Decision:
    cap = e.max_cost_usd / s.limits.budget_share  # the session's new cap, or this attempt's share of it
    if not s.is_live or cap <= s.spent_usd or cap == s.limits.max_cost_usd:
        return Decision(s)
    s = replace(s, limits=replace(s.limits, max_cost_usd=cap))
    if not (s.budget_hold and s.state == State.STUCK and s.detail == Detail.NEEDS_HUMAN):
        return Decision(s, (PostStatus(urgent=True),))
    s = replace(s, budget_hold=False, stuck_reason=None)
    reply = budget.budget_raised_reply(s.spent_usd, cap)
    return _schedule(s, TurnSpec(TurnKind.REPLY, reply=reply, front=True), [RemoveLabel(LabelKind.NEEDS_HUMAN)])


def _on_loop_detected(s: Session, e: LoopDetected, now: datetime) -> Decision:
    """Like an `ask` from the agent, but Shepherd's own, with the evidence, and the turn stops now."""
    if not s.turn_running or s.state not in (State.WORKING, State.PLANNING) or s.finishing:
        return Decision(s)
    decision = _on_asked(s, Asked(question=e.question, context=e.evidence), now)
    commands = tuple(StopAgent(STOP_NOW_SECONDS) if isinstance(c, StopAgent) else c for c in decision.commands)
    return Decision(decision.session, commands)


_HANDLERS: dict[type[Event], Callable[[Session, Any, datetime], Decision]] = {
    WorkspaceReady: _on_workspace_ready,
    WorkspaceFailed: _on_workspace_failed,
    DependenciesWaiting: _on_dependencies_waiting,
    DependenciesSatisfied: _on_dependencies_satisfied,
    SlotGranted: _on_slot_granted,
    TurnStarted: _on_turn_started,
    Progress: _on_progress,
    Asked: _on_asked,
    QuestionPosted: _on_question_posted,
    PlanSubmitted: _on_plan_submitted,
    DoneReported: _on_done_reported,
    TurnExited: _on_turn_exited,
    TurnFailed: _on_turn_failed,
    ReplyReceived: _on_reply,
    Approve: _on_approve,
    Revise: _on_revise,
    Cancel: _on_cancel,
    StatusRequested: _on_status_requested,
    PullRequestOpened: _on_pull_request_opened,
    PullRequestUpdated: _on_pull_request_updated,
    PushFailed: _on_push_failed,
    ReviewFeedback: _on_review_feedback,
    CIFailed: _on_ci_failed,
    PullRequestClosed: _on_pull_request_closed,
    Recovered: _on_recovered,
    MergeConflict: _on_merge_conflict,
    PullRequestDeferred: _on_pull_request_deferred,
    PullRequestSlotFree: _on_pull_request_slot_free,
    SpendReported: _on_spend_reported,
    BudgetRaised: _on_budget_raised,
    LoopDetected: _on_loop_detected,
    WorkPushed: _on_work_pushed,
}


def decide(session: Session | None, event: Event, now: datetime) -> Decision:
    """Apply one event to a session at time `now`; `session` is None only before the first trigger."""
    if isinstance(event, Trigger):
        return decide_trigger(session, event, now)
    if session is None:
        return Decision(None)
    if isinstance(event, Retry):
        return _retry(session, event, now)
    if session.attempts and session.bakeoff_winner is None:
        from bot.core import attempts  # a bake-off before its judgement: its attempts take the events

        decision = attempts.decide(session, event, now)
    elif type(event) in _HANDLERS:
        decision = _HANDLERS[type(event)](session, event, now)
    else:
        decision = Decision(session)  # a bake-off's event for a session that is not (or no longer) one
    new = decision.session
    if new is not None and new != session and new.id == session.id:
        decision = Decision(_touch(new, now), decision.commands)
    return decision


# --------------------------------------------------------------------------------------------------
# status.json (SPEC §4, contract)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_status_json(
    session: Session, *, worktree_path: str | None = None, queue_position: int | None = None
) -> dict[str, Any]:
    """The `status.json` object: the contract's keys, then optional extras."""
    running = session.running_turn
    forwarded = running.reply if running is not None else None
    return {
        "id": session.id,
        "repo": session.repo,
        "issueNumber": session.issue_number,
        "issueTitle": session.issue_title,
        "status": str(session.state),
        "detail": str(session.detail) if session.detail is not None else None,
        "branch": session.branch,
        "worktreePath": worktree_path,
        "startedAt": _iso(session.created_at),
        "lastHeartbeat": _iso(session.last_heartbeat or session.updated_at),
        "stuckReason": session.stuck_reason if session.state == State.STUCK else None,
        "forwardedMessage": forwarded,
        "pullRequestUrl": session.pr_url,
        # Extensions (optional names, SPEC: "extend them only with new optional names").
        "mode": str(session.mode),
        "turn": session.turn_count,
        "updatedAt": _iso(session.updated_at),
        "checkpoint": session.checkpoint,
        "failureReason": session.failure_reason,
        "queuePosition": queue_position,
        "question": (
            {"text": session.question.text, "options": list(session.question.options)}
            if session.question is not None else None
        ),
        "spentUsd": round(session.spent_usd, 6),
        "maxCostUsd": session.limits.max_cost_usd,
    }
