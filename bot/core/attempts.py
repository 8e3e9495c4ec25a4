"""A bake-off's two attempts inside its one session (SPEC §8): starting them, routing each event to the
attempt it is about, lifting each attempt's commands to the session, and the session's own state meanwhile.

Each attempt is a session of its own (`Attempt.session`, id `<session id>+<name>`), decided by the very
same core (`bot.core.session.decide`), so every rule of SPEC §1 holds for it unchanged: its own turns and
slot in the queue, its one open question, its spend, its revert turn for protected paths. The two run at
the same time; the session shows both and asks for no pull request until both have ended. Then the shell
checks and judges them (`JudgeBakeOff`, then `BakeOffJudged`), and the session goes on as an ordinary one
with the winner's branch, engine and agent session: the one PR, its review and CI rounds follow it.

What the attempts share is lifted to the session: its one status comment, the needs-input and needs-human
labels (on while either attempt needs them), the 👀 on a reply. A reply goes to the attempt whose question
it answers: one that quotes that question or names that engine; otherwise the oldest open question.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime

from bot.core.bakeoff import attempt_names
from bot.core import session as core
from bot.core.session import (
    AddLabel,
    Attempt,
    AttemptCommand,
    AttemptEvent,
    AttemptFinished,
    BakeOffJudged,
    BudgetRaised,
    Cancel,
    Command,
    Decision,
    DependenciesSatisfied,
    DependenciesWaiting,
    Detail,
    Event,
    FinishWork,
    JudgeBakeOff,
    LabelKind,
    Limits,
    PostStatus,
    Question,
    React,
    Recovered,
    RemoveLabel,
    ReplyReceived,
    ReportFailure,
    Session,
    State,
    StatusRequested,
    command_to_dict,
    event_to_dict,
    make_branch,
)

ATTEMPT_SEPARATOR = "+"
FAILURE_BOTH = "Both attempts failed: {reasons}."
FAILURE_ONE = "`{name}`: {reason}"
_ACTIVE = (State.WORKING, State.PLANNING)


def attempt_id(session_id: str, name: str) -> str:
    """The id of attempt `name` of session `session_id` (also its slot in the queue and its folder)."""
    return f"{session_id}{ATTEMPT_SEPARATOR}{name}"


def split_attempt_id(some_id: str) -> tuple[str, str | None]:
    """(session id, attempt name) of an attempt's id; (the id, None) for a session's own."""
    head, _, tail = some_id.rpartition("/")
    number, separator, name = tail.partition(ATTEMPT_SEPARATOR)
    return (f"{head}/{number}", name) if separator and head else (some_id, None)


def attempt_event(name: str, event: Event) -> AttemptEvent:
    """`event`, for the attempt `name`."""
    return AttemptEvent(name, event_to_dict(event))


def find(session: Session, name: str) -> Attempt | None:
    return next((attempt for attempt in session.attempts if attempt.name == name), None)


def start(parent: Session) -> Decision:
    """The bake-off's session starts: one sub-session per engine, each on its own branch, both at once."""
    assert parent.rival is not None and parent.engine is not None
    names = attempt_names(parent.engine, parent.rival)
    commands: list[Command] = [React("eyes")]
    attempts: list[Attempt] = []
    stem = make_branch(parent.issue_number, parent.slug, parent.branch_suffix)
    for name, adapter in zip(names, (parent.engine, parent.rival), strict=True):
        child = replace(parent, id=attempt_id(parent.id, name), branch=f"{stem}-{name}", engine=adapter, rival=None,
                        limits=_share_of(parent.limits, len(names)))
        decision = core._started(child)
        assert decision.session is not None
        attempts.append(Attempt(name, decision.session))
        commands += _lift(name, decision.commands)
    parent = replace(parent, attempts=tuple(attempts))
    return _settle(parent, commands)


def _share_of(limits: Limits, attempts: int) -> Limits:
    """An attempt's limits: the session's, with an equal share of its cost cap (SPEC §8 caps the session)."""
    cap = limits.max_cost_usd
    return replace(limits, max_cost_usd=None if cap is None else cap / attempts, budget_share=attempts)


def decide(parent: Session, event: Event, now: datetime) -> Decision:
    """One event for a bake-off's session before its judgement."""
    if isinstance(event, AttemptEvent):
        return _route(parent, event.attempt, event.inner, now, [])
    if isinstance(event, AttemptFinished):
        return _finished(parent, event.attempt)
    if isinstance(event, BakeOffJudged):
        return _judged(parent, event)
    if isinstance(event, ReplyReceived):
        return _reply(parent, event, now)
    if isinstance(event, Cancel):
        return _cancel(parent, event, now)
    if isinstance(event, (BudgetRaised, DependenciesWaiting, DependenciesSatisfied)):
        if isinstance(event, BudgetRaised) and parent.is_live:
            parent = replace(parent, limits=replace(parent.limits, max_cost_usd=event.max_cost_usd))
        return _route_all(parent, event, now, [])
    if isinstance(event, StatusRequested):
        return Decision(parent, (PostStatus(urgent=True),))
    if isinstance(event, Recovered) and parent.finishing and parent.state == State.WORKING:
        return Decision(parent, (JudgeBakeOff(),))  # the judgement a restart cut short runs again
    return Decision(parent)


# -- routing -------------------------------------------------------------------------------------


def _route(parent: Session, name: str, event: Event, now: datetime, commands: list[Command]) -> Decision:
    attempt = find(parent, name)
    if attempt is None:
        return Decision(parent, tuple(commands))
    decision = core.decide(attempt.session, event, now)
    child = decision.session
    if child is None or child.id != attempt.session.id:
        return Decision(parent, tuple(commands))
    parent = _replace_attempt(parent, _timed(attempt, child, now))
    return _settle(parent, [*commands, *_lift(name, decision.commands)])


def _route_all(parent: Session, event: Event, now: datetime, commands: list[Command]) -> Decision:
    for attempt in parent.attempts:
        decision = _route(parent, attempt.name, event, now, commands)
        assert decision.session is not None
        parent, commands = decision.session, list(decision.commands)
    return _settle(parent, commands)


def _timed(attempt: Attempt, child: Session, now: datetime) -> Attempt:
    """The attempt with its new sub-session, its time counted while a turn of it runs (SPEC §8's time)."""
    was, runs = attempt.session.turn_running, child.turn_running
    if runs and not was:
        return replace(attempt, session=child, turn_started_at=now)
    if was and not runs and attempt.turn_started_at is not None:
        spent = max(0.0, (now - attempt.turn_started_at).total_seconds())
        return replace(attempt, session=child, seconds=attempt.seconds + spent, turn_started_at=None)
    return replace(attempt, session=child)


def _replace_attempt(parent: Session, changed: Attempt) -> Session:
    return replace(parent, attempts=tuple(changed if a.name == changed.name else a for a in parent.attempts))


def _lift(name: str, commands: tuple[Command, ...] | list[Command]) -> list[Command]:
    """An attempt's commands as the session's: status, labels and reactions are the issue's; the rest
    are carried out for the attempt."""
    lifted: list[Command] = []
    for command in commands:
        if isinstance(command, React):
            continue  # the session reacts once for both
        if isinstance(command, (PostStatus, AddLabel, RemoveLabel)):
            lifted.append(command)
        else:
            lifted.append(AttemptCommand(name, command_to_dict(command)))
    return lifted


def _needs_input(child: Session) -> bool:
    return child.state == State.STUCK and child.question is not None


def _needs_human(child: Session) -> bool:
    return child.state == State.STUCK and child.detail == Detail.NEEDS_HUMAN


def _tidy(parent: Session, commands: list[Command]) -> list[Command]:
    """One status post (urgent if any asked for it); a label comes off only when no attempt needs it."""
    tidy: list[Command] = []
    children = [attempt.session for attempt in parent.attempts]
    for command in commands:
        if isinstance(command, PostStatus):
            continue
        if isinstance(command, RemoveLabel) and parent.is_live:
            wanted = _needs_input if command.kind == LabelKind.NEEDS_INPUT else _needs_human
            if any(wanted(child) for child in children):
                continue
        if command not in tidy:
            tidy.append(command)
    posts = [command for command in commands if isinstance(command, PostStatus)]
    if posts:
        tidy.append(PostStatus(urgent=any(p.urgent for p in posts), throttled=all(p.throttled for p in posts)))
    return tidy


def _oldest_question(children: list[Session]) -> Session | None:
    asking = [child for child in children if _needs_input(child)]
    return min(asking, key=lambda child: child.question.asked_at if child.question else child.created_at,
               default=None)


def _settle(parent: Session, commands: list[Command]) -> Decision:
    """The session's own state from its attempts', and the judgement once both have ended."""
    if parent.is_terminal or parent.finishing:
        return Decision(parent, tuple(_tidy(parent, commands)))
    children = [attempt.session for attempt in parent.attempts]
    live = [child for child in children if child.is_live]
    spent = sum(child.spent_usd for child in children)
    heartbeat = max((child.last_heartbeat for child in children if child.last_heartbeat), default=None)
    parent = replace(parent, spent_usd=spent, last_heartbeat=heartbeat or parent.last_heartbeat)
    if not live:
        if any(child.state == State.COMPLETE for child in children):
            parent = replace(parent, state=State.WORKING, detail=None, finishing=True, question=None,
                             stuck_reason=None)
            return Decision(parent, tuple(_tidy(parent, [*commands, JudgeBakeOff(), PostStatus(urgent=True)])))
        reasons = "; ".join(FAILURE_ONE.format(name=attempt.name, reason=attempt.session.failure_reason
                                               or attempt.session.state) for attempt in parent.attempts)
        failed = [child for child in children if child.state == State.FAILED]
        if not failed:  # cancelled one by one: the session is cancelled with them
            parent = replace(parent, state=State.CANCELLED, detail=children[0].detail, question=None)
            return Decision(parent, tuple(_tidy(parent, [*commands, PostStatus(urgent=True)])))
        reason = FAILURE_BOTH.format(reasons=reasons)
        failure = failed[0].detail or Detail.CRASHED
        parent = replace(parent, state=State.FAILED, detail=failure, failure_reason=reason, question=None,
                         stuck_reason=None)
        return Decision(parent, tuple(_tidy(parent, [*commands, ReportFailure(failure, reason),
                                                     PostStatus(urgent=True)])))
    states = {child.state for child in live}
    question: Question | None = None
    stuck_reason: str | None = None
    detail: Detail | None = None
    if states & set(_ACTIVE):
        state = State.WORKING
    elif State.STUCK in states:
        state = State.STUCK
        asking = _oldest_question(live)
        stuck = asking or next(child for child in live if child.state == State.STUCK)
        question, stuck_reason, detail = stuck.question, stuck.stuck_reason, stuck.detail
    elif State.QUEUED in states:
        state = State.QUEUED
        queued = [child for child in live if child.state == State.QUEUED]
        if all(child.detail == Detail.WAITING_FOR_DEPENDENCIES for child in queued):
            detail = Detail.WAITING_FOR_DEPENDENCIES
    else:
        state = State.REGISTERED
    parent = replace(parent, state=state, detail=detail, question=question, stuck_reason=stuck_reason)
    return Decision(parent, tuple(_tidy(parent, commands)))


# -- the session's own events -----------------------------------------------------------------------


def _finished(parent: Session, name: str) -> Decision:
    attempt = find(parent, name)
    if attempt is None or not attempt.session.finishing or attempt.session.state != State.WORKING:
        return Decision(parent)
    child = replace(attempt.session, finishing=False, state=State.COMPLETE, detail=None)
    return _settle(_replace_attempt(parent, replace(attempt, session=child)), [PostStatus()])


def _judged(parent: Session, event: BakeOffJudged) -> Decision:
    winner = find(parent, event.attempt)
    if not parent.finishing or parent.state != State.WORKING or winner is None:
        return Decision(parent)
    w = winner.session
    forwarded = tuple(dict.fromkeys(
        comment for attempt in parent.attempts for comment in attempt.session.forwarded_comment_ids
    ))
    parent = replace(
        parent, branch=w.branch, engine=w.engine, bakeoff_winner=winner.name, bakeoff_table=event.table,
        agent_session_id=w.agent_session_id, turn_count=w.turn_count, done_summary=w.done_summary,
        checkpoint=w.checkpoint, protected_strikes=w.protected_strikes, questions_asked=0,
        forwarded_comment_ids=(*parent.forwarded_comment_ids,
                               *(c for c in forwarded if c not in parent.forwarded_comment_ids)),
        question=None, stuck_reason=None, state=State.WORKING, detail=None, finishing=True,
    )
    return Decision(parent, (FinishWork(parent.branch, parent.done_summary, None), PostStatus()))


_QUOTE = re.compile(r"^\s*>\s?(.*)$", re.MULTILINE)


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _addressed(reply: str, name: str, question: Question) -> bool:
    """Does `reply` quote `question`, or name the attempt `name`?"""
    quoted = _words(" ".join(_QUOTE.findall(reply)))
    asked = _words(question.text)
    if quoted and asked and (asked in quoted or quoted in asked):
        return True
    return re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", reply.lower()) is not None


def _reply(parent: Session, event: ReplyReceived, now: datetime) -> Decision:
    if event.comment_id in parent.forwarded_comment_ids or not parent.is_live:
        return Decision(parent)
    parent = replace(parent, forwarded_comment_ids=(*parent.forwarded_comment_ids, event.comment_id))
    commands: list[Command] = [React("eyes", event.comment_id)]
    answerable = [
        attempt for attempt in parent.attempts
        if _needs_input(attempt.session) and attempt.session.question is not None
        and event.created_at > (attempt.session.question.posted_at or attempt.session.question.asked_at)
    ]
    chosen = next((a for a in answerable if a.session.question and _addressed(event.text, a.name,
                                                                              a.session.question)), None)
    if chosen is None and answerable:
        oldest = _oldest_question([attempt.session for attempt in answerable])
        chosen = next(attempt for attempt in answerable if attempt.session is oldest)
    if chosen is not None:
        return _route(parent, chosen.name, event, now, commands)
    # Not an answer: a note for the next turn of every attempt still going (SPEC §1.7).
    for attempt in parent.attempts:
        if attempt.session.is_live:
            decision = _route(parent, attempt.name, event, now, commands)
            assert decision.session is not None
            parent, commands = decision.session, list(decision.commands)
    return _settle(parent, commands)


def _cancel(parent: Session, event: Cancel, now: datetime) -> Decision:
    if parent.is_terminal:
        return Decision(parent)
    # Cancelled first, so that the attempts' ends below are not taken for the end of the work; judging
    # that was under way opens nothing (`finishing` off; the branches stay in the mirror).
    parent = replace(parent, state=State.CANCELLED, detail=core.CANCELLED_DETAIL[event.reason], question=None,
                     stuck_reason=None, finishing=False)
    decision = _route_all(parent, event, now, [])
    assert decision.session is not None
    return Decision(decision.session, tuple(_tidy(decision.session, [*decision.commands, PostStatus(urgent=True)])))
