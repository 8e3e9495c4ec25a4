"""The local session runtime: hosts the pure core (`bot/core/session.py`) on SQLite and asyncio (SPEC §1, §4, §6).

`apply` runs `decide` under the issue's lock and stores the new session, the event and the commands
in one transaction; a per-session runner then carries out the outbox in order, marking each row done
only after it succeeded. Events that executors return are applied in turn. On `start()` every live
session gets `Recovered` (re-attaching a still-running agent by pid and start time), and pending
outbox rows are carried out again, which is why every executor is idempotent. One `SlotQueue` for the
whole engine decides which queued turns may start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.agent import processes
from bot.agent import turns
from bot.agent.watchdog import SNAPSHOT_SECONDS, TurnWatchdog
from bot.github.permissions import PermissionCache
from bot.agent.channel import STATUS_NAME, write_status
from bot.agent.adapters import Adapter, make_adapter
from bot.agent.environment import SessionEnvironment
from bot.agent.confinement import Confinement, for_session as confinement_for
from bot.core.effects import ChangedFile, EgressRefusals, Finisher, IssueRef, Publisher, SessionContext
from bot.core.policy import EffectivePolicy, LoadedPolicy
from bot.core.loops import LoopLimits
from bot.core.responses import Response
from bot.core.engines import trigger_event
from bot.agent.prompt import render_prompt, render_turn_message
from bot.core.session import (
    FailureKind,
    TurnExited,
    TurnFailed,
    Cancel,
    CancelReason,
    CleanupWorkspace,
    AttemptCommand,
    AttemptFinished,
    Detail,
    Command,
    DoneReported,
    EnsureWorkspace,
    Event,
    FinishWork,
    HoldSlot,
    JudgeBakeOff,
    Mode,
    PostPlan,
    PostStatus,
    PushFailed,
    Recovered,
    ReleaseSlot,
    RequestSlot,
    Session,
    SlotGranted,
    StartTurn,
    State,
    StopAgent,
    TurnKind,
    TurnStarted,
    WorkPushed,
    WorkspaceFailed,
    WorkspaceReady,
    decide,
    decide_trigger,
    to_status_json,
)
from bot.core.attempts import attempt_event, attempt_id, find as find_attempt, split_attempt_id
from bot.runtime.bakeoff import judge_attempts
from bot.runtime.pull_cap import PullRequestCap
from bot.runtime.prompt_comments import gather_comments
from bot.store.context import RuntimeContext, TurnRecord
from bot.store.sessions import SessionStore, StoredSession
from bot.views.render import failure_text
from bot.views.status_view import Placements
from bot.metrics import Metrics
from bot.settings import Settings
from bot.core.slots import SlotLimits, SlotQueue
from bot.workspace.workspaces import WorkspaceError, WorkspaceKept, Workspaces, folder_of, session_folder

log = logging.getLogger(__name__)

SETUP_LOG = "setup.log"
PLAN_NAME = "plan.md"
PLAN_FILE = "plan-{revision}.md"
NOTE_RECOVERED_RERUN = "Shepherd restarted and lost the agent process; the turn runs again."
NOTE_RECOVERED_ATTACHED = "Shepherd restarted and found the agent still running."
NOTE_WORKTREE_KEPT = "The worktree was kept: {reason}."
ATTEMPT_COMMIT_MESSAGE = "Shepherd: the {name} attempt's leftover changes"
NOTE_EDITED_AFTER_LABEL = (
    "The issue was edited after @{actor} labelled it; the agent works from the text as it was then."
)
SETUP_TIMEOUT_SECONDS = 30 * 60
RECENTLY_ENDED_SECONDS = 24 * 60 * 60  # ended sessions whose final status a restart posts again
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 60.0
MAX_ATTEMPTS = 6

def loop_limits(policy: EffectivePolicy) -> LoopLimits:
    """The policy's `loops` thresholds, in the core's terms."""
    loops = policy.loops
    return LoopLimits(repeats=loops.repeats, flip_flops=loops.flip_flops, stall_seconds=loops.stall_minutes * 60)


AdapterFactory = Callable[[EffectivePolicy], Adapter]
# Called after every stored change: (session before, session after, the event). Observers (the dashboard
# issue, dependency re-checks, coordination of parallel sessions) run as their own tasks, never under
# the issue's lock, so they may apply events themselves.
Observer = Callable[[Session | None, Session, Event], Awaitable[None]]


def utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, tz=timezone.utc)


def _turn_context(session: Session) -> dict[str, Any]:
    """What an operator's line about one of `session`'s turns carries (SPEC §5's operator log)."""
    return {"repository": session.repo, "issue": session.issue_number, "session": session.id}


def _turn_end(end: Event) -> str:
    """How a turn ended, in a few words: `exit 0`, or the shell's reason for ending it (`idle`, ...)."""
    if isinstance(end, TurnExited):
        return f"exit {end.exit_code}"
    if isinstance(end, TurnFailed):
        return str(end.reason)
    return type(end).__name__


def issue_key(session_id: str) -> str:
    return session_id.rpartition("/")[0]


@dataclass(frozen=True)
class StatusRequest:
    """A status post carried out outside the outbox (shaped like an outbox row for `_carry_out`)."""

    session_id: str
    command: PostStatus
    attempts: int
    seq: int = -1


class SessionReads:
    """The handlers' quick reads of sessions, from the store (`self.sessions`), for either engine."""

    sessions: SessionStore

    def last_session(self, full_name: str, issue_number: int) -> Session | None:
        last = self.sessions.last_for_issue(full_name, issue_number)
        return last.session if last else None

    def waiting_plans(self, full_name: str) -> list[Session]:
        """The repository's sessions whose plan waits for approval (for `/agent approve all`)."""
        return [
            stored.session for stored in self.sessions.for_repository(full_name)
            if stored.session.state == State.STUCK and stored.session.detail == Detail.PLAN_AWAITING_APPROVAL
        ]

    def session_for_branch(self, full_name: str, branch: str) -> Session | None:
        found = self.sessions.last_for_branch(full_name, branch)
        return found.session if found else None

    def session_for_pull(self, full_name: str, number: int) -> Session | None:
        """The session whose pull request is `number`, from Shepherd's own records (no GitHub call)."""
        found = [s.session for s in self.sessions.all_for_repository(full_name) if s.session.pr_number == number]
        return max(found, key=lambda s: s.attempt) if found else None


class Engine(SessionReads):
    """Stores sessions and carries out the core's commands (implements `bot.core.effects.Engine`)."""

    runs_bakeoffs = True

    def __init__(
        self,
        store: Any,
        workspaces: Workspaces,
        github: Any,
        publisher: Publisher,
        finisher: Finisher,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        adapter_factory: AdapterFactory | None = None,
        parent_env: Mapping[str, str] | None = None,
        permissions: PermissionCache | None = None,
        poll: float = turns.WATCH_POLL_SECONDS,
        retry_delay: float = RETRY_FIRST_DELAY,
        max_attempts: int = MAX_ATTEMPTS,
        dependencies: Any = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`dependencies` is a `bot.runtime.dependencies.DependencyTracker`; without it issues never wait.
        `metrics` records each turn's wall time (`shepherd_turn_seconds`)."""
        self.sessions = SessionStore(store.db)
        self.workspaces = workspaces
        self.github = github
        self.publisher = publisher
        self.finisher = finisher
        self.settings = settings
        self.clock = clock
        self.adapter_factory = adapter_factory or self._default_adapter
        # The agent's allow-listed environment is drawn from this (agent CLIs' keys live there); the
        # entry point passes Shepherd's own environment, so nothing here reads it.
        self.parent_env = dict(parent_env or {})
        self.permissions = permissions or PermissionCache()
        self.poll = poll
        self.retry_delay = retry_delay
        self.max_attempts = max_attempts
        self.queue = SlotQueue()
        self.limits = SlotLimits(global_limit=settings.max_workers, per_repo=settings.max_per_repo)
        self._locks: dict[str, asyncio.Lock] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._status_wanted: dict[str, PostStatus] = {}
        self._status_posters: dict[str, asyncio.Task[None]] = {}
        self._holding_admission = False
        self._stopped = False
        self.observers: list[Observer] = []
        # How often a running turn's worktree is looked at for loops and stalls (tests look more often).
        self.loop_snapshot_seconds = SNAPSHOT_SECONDS
        self.dependencies = dependencies
        self.metrics = metrics
        if dependencies is not None:
            dependencies.engine = self
        self.pull_caps = PullRequestCap(self)
        self.observers.append(self.pull_caps.observe)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover every unfinished session (SPEC §6), then carry out what is pending."""
        self._holding_admission = True
        try:
            for stored in self.sessions.live():
                await self._recover(stored)
        finally:
            self._holding_admission = False
        for row in self.sessions.pending():
            self._kick(row.session_id)
        for stored in self.sessions.live():
            # A status post lost to a crash is made good; unchanged text costs no GitHub write.
            self._refresh_status(stored.session.id, PostStatus())
        # A session that ended just before the crash may not have shown its end yet: the issue's status
        # comment is made good for the last session of each issue that ended recently.
        recent = self.clock() - RECENTLY_ENDED_SECONDS
        for session, _installation in self.sessions.every_session():
            if session.is_terminal and session.updated_at.timestamp() >= recent:
                last = self.sessions.last_for_issue(session.repo, session.issue_number)
                if last is not None and last.session.id == session.id:
                    self._refresh_status(session.id, PostStatus())
        await self._admit()

    async def stop(self) -> None:
        """Stop watching and carrying out; agent processes keep running for the next start (and the log says so)."""
        self._stopped = True
        try:
            left = [
                (stored.session, handle) for stored in self.sessions.live()
                if (handle := self._turn_handle(stored.session, stored.context)) is not None
                and processes.attach(handle)
            ]
        except Exception:  # noqa: BLE001 - a stop goes on whatever the database holds
            log.warning("could not list the agent turns left running", exc_info=True)
            left = []
        if left:
            log.warning(
                "stopping with %d agent turn(s) left running; the next start picks them up: %s", len(left),
                ", ".join(f"{session.id} (pid {handle.pid})" for session, handle in left),
                extra={"sessions": [session.id for session, _ in left]},
            )
        tasks = [*self._runners.values(), *self._watchers.values(), *self._status_posters.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _recover(self, stored: StoredSession) -> None:
        session, context = stored.session, stored.context
        if session.attempts and session.bakeoff_winner is None:
            # A bake-off before its judgement: each attempt is recovered as a session of its own.
            for attempt in session.attempts:
                view = self._get(attempt_id(session.id, attempt.name))
                if view is not None and view.session.is_live:
                    await self._recover(view)
        if context.port:
            self.workspaces.reserve_port(context.port)
        self._note_policy_limits(session.repo, context)
        handle = self._turn_handle(session, context)
        if handle is None and session.running_turn is not None and context.worktree:
            # Killed after starting the agent but before recording the turn: the agent may still run.
            handle = turns.find_running(self.workspaces.session_dir(folder_of(session)), session.turn_count,
                                        self.confinement(session, Path(context.worktree), context.policy))
            if handle is not None:
                record = TurnRecord(session.turn_count, session.id, handle.to_json())
                await self.change_context(session.id, lambda known: replace(known, turn=record))
        alive = False
        if handle is not None:
            # A turn that ended while Shepherd was down left its exit code: watch it to read the end.
            alive = processes.attach(handle) or processes.read_exit_code(handle) is not None
        if alive:
            self.queue.hold(session.id, session.repo)
        note = NOTE_RECOVERED_ATTACHED if alive else (NOTE_RECOVERED_RERUN if session.running_turn else None)
        if note:
            await self.change_context(session.id, lambda known: replace(known, notes=(*known.notes, note)))
        after = await self.apply(session.id, Recovered(turn_alive=alive))
        if alive and after is not None and after.running_turn is not None and handle is not None:
            self._watch(session.id, handle)

    # -- the Engine protocol --------------------------------------------------------------------

    async def trigger(self, issue: IssueRef, *, mode: Mode, actor: str, label: str, policy: LoadedPolicy,
                      labelled_at: datetime | None = None, edited_after_label: bool = False,
                      engine: str | None = None, rival: str | None = None) -> Session | None:
        """Start, continue, or point to the PR (SPEC §1.1); the core decides which, and whether the
        delivery is a replay. `policy` is the reading the caller took the label's meaning from, and the
        only one this trigger uses; `edited_after_label` says the issue changed after the label (the agent
        gets the labelled text); `engine` is the adapter an engine label picked (SPEC §8)."""
        key = f"{issue.full_name}#{issue.number}"
        async with self._lock(key):
            last = self.sessions.last_for_issue(issue.full_name, issue.number)
            event = trigger_event(issue, policy.policy, mode=mode, actor=actor, labelled_at=labelled_at,
                                  engine=engine, rival=rival)
            now = self.clock()
            decision = decide_trigger(last.session if last else None, event, utc(now))
            session = decision.session
            starts = session is not None and (last is None or session.id != last.session.id)
            if starts and self.dependencies is not None:
                # Only a new session waits for its dependencies; the verdict shapes its first decision.
                verdict = await self.dependencies.evaluate(
                    issue.installation_id, issue.full_name, issue.number, issue.body, stack=policy.policy.stack
                )
                event = replace(event, waiting_for=tuple(k.ref(issue.full_name) for k in verdict.waiting),
                                base_branch=verdict.stack_base or event.base_branch)
                decision = decide_trigger(last.session if last else None, event, utc(now))
                session = decision.session
            if session is None:
                return None
            if not starts and not decision.commands:
                return session  # a live session, or a replayed label: nothing to do
            if not starts:
                assert last is not None
                context = last.context
            else:
                context = RuntimeContext(
                    installation_id=issue.installation_id,
                    owner=issue.owner,
                    repo=issue.repo,
                    clone_url=issue.clone_url,
                    default_branch=issue.default_branch,
                    issue_body=issue.body,
                    issue_author=issue.author or "",
                    trigger_label=label,
                    trigger_at=now,
                    policy=with_engine(policy.policy, session.engine),
                    policy_problems=tuple(str(problem) for problem in policy.problems),
                    notes=(NOTE_EDITED_AFTER_LABEL.format(actor=actor),) if edited_after_label else (),
                )
            self._note_policy_limits(session.repo, context)
            self.sessions.record(session, context, event, decision.commands, now=now)
        before = last.session if last is not None else None
        if before is None or session.id != before.id or session.state != before.state:
            self._log_state_change(before, session, event, context)
        self._write_status(session, context)
        self._kick(session.id)
        self._notify(last.session if last else None, session, event)
        return session

    async def signal(self, full_name: str, issue_number: int, event: Event) -> Session | None:
        last = self.sessions.last_for_issue(full_name, issue_number)
        if last is None:
            return None
        return await self.apply(last.session.id, event)

    async def respond(self, installation_id: int, full_name: str, issue_number: int,
                      responses: Sequence[Response]) -> None:
        """Carry out the core's answers to a person outside a session (a refusal, a command's outcome, help)."""
        for response in responses:
            await self.publisher.respond(installation_id, full_name, issue_number, response)

    def answered(self, full_name: str, issue_number: int, comment_id: int) -> bool:
        """Was this command comment already carried out (the same comment, delivered again)?"""
        return self.publisher.answered(full_name, issue_number, comment_id)

    async def cancel_installation(self, installation_id: int, *, reason: str) -> None:
        for stored in self.sessions.for_installation(installation_id):
            log.info("cancelling %s: %s", stored.session.id, reason)
            await self.apply(stored.session.id, Cancel(CancelReason.UNINSTALLED))

    async def cancel_repository(self, full_name: str, *, reason: str) -> None:
        for stored in self.sessions.for_repository(full_name):
            log.info("cancelling %s: %s", stored.session.id, reason)
            await self.apply(stored.session.id, Cancel(CancelReason.UNINSTALLED))

    # -- applying events ------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _get(self, some_id: str) -> StoredSession | None:
        """The stored session, or for a bake-off attempt's id (`bot.core.attempts`) the attempt as a session
        of its own: its sub-session, with its own worktree, port and turn and its engine's policy."""
        session_id, name = split_attempt_id(some_id)
        stored = self.sessions.get(session_id)
        if stored is None or name is None:
            return stored
        attempt = find_attempt(stored.session, name)
        if attempt is None:
            return None
        view = stored.context.attempt_view(name)
        view = replace(view, policy=with_engine(view.policy, attempt.session.engine))
        return StoredSession(attempt.session, view, stored.installation_id)

    async def apply(self, session_id: str, event: Event) -> Session | None:
        """Decide, store session + event + commands in one transaction, then let the runner carry out.
        For a bake-off attempt's id, the event is its session's, for that attempt; the attempt is returned."""
        parent_id, name = split_attempt_id(session_id)
        if name is not None:
            after = await self.apply(parent_id, attempt_event(name, event))
            found = find_attempt(after, name) if after is not None else None
            return found.session if found is not None else None
        async with self._lock(issue_key(session_id)):
            stored = self.sessions.get(session_id)
            if stored is None:
                return None
            now = self.clock()
            decision = decide(stored.session, event, utc(now))
            session = decision.session
            if session is None:
                return None
            if session.id != stored.session.id:
                # A retry on a finished session starts a new one with the same facts.
                context = stored.context.for_retry()
            else:
                context = stored.context
            self.sessions.record(session, context, event, decision.commands, now=now)
        if session.id != stored.session.id or session.state != stored.session.state:
            self._log_state_change(stored.session, session, event, context)
        self._write_status(session, context)
        if decision.commands:
            self._kick(session.id)
        if session != stored.session:
            self._notify(stored.session, session, event)
        return session

    async def change_context(
        self, session_id: str, change: Callable[[RuntimeContext], RuntimeContext]
    ) -> RuntimeContext | None:
        """Store `change` of the session's runtime facts, read and written under the issue's lock.

        The one way to change them: `change` is applied to the stored record as it is now, so a writer
        that awaited something in between (GitHub, git) cannot put back a copy older than another's write.
        Never call it while holding the issue's lock (inside `apply` or `trigger`). A bake-off attempt's
        id changes that attempt's facts (`change` sees and returns its `attempt_view`)."""
        session_id, name = split_attempt_id(session_id)
        async with self._lock(issue_key(session_id)):
            stored = self.sessions.get(session_id)
            if stored is None:
                return None
            if name is None:
                changed = change(stored.context)
            else:
                view = change(stored.context.attempt_view(name))
                changed = stored.context.with_attempt_view(name, view)
            if changed != stored.context:
                self.sessions.save_context(session_id, changed)
            return changed if name is None else changed.attempt_view(name)

    def _log_state_change(
        self, before: Session | None, after: Session, event: Event, context: RuntimeContext
    ) -> None:
        """One line per state change, with the repository, issue, session and why (SPEC §5's operator log)."""
        reason = type(event).__name__
        extra: dict[str, Any] = {}
        if after.state == State.FAILED:
            reason = failure_text(after, context.policy.agent) or reason
            known = context.turn
            if known is not None and known.session == after.id and known.handle:
                extra["log_path"] = str(processes.TurnHandle.from_json(dict(known.handle)).log_path)
        elif after.state == State.STUCK and after.stuck_reason:
            reason = after.stuck_reason
        old_state = before.state if before is not None and before.id == after.id else None
        log.log(
            logging.WARNING if after.state == State.FAILED else logging.INFO,
            "session %s: %s -> %s (%s)", after.id, old_state or "new", after.state, reason,
            extra={"repository": after.repo, "issue": after.issue_number, "session": after.id,
                   "state": str(after.state), "reason": reason, **extra},
        )

    def _notify(self, before: Session | None, after: Session, event: Event) -> None:
        if self._stopped:
            return
        for observer in self.observers:
            self._spawn(self._observe(observer, before, after, event))

    async def _observe(self, observer: Observer, before: Session | None, after: Session, event: Event) -> None:
        try:
            await observer(before, after, event)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - an observer's trouble must not touch the session itself
            log.warning("observer %s failed for %s", getattr(observer, "__name__", observer), after.id, exc_info=True)

    def _kick(self, session_id: str) -> None:
        if self._stopped:
            return
        runner = self._runners.get(session_id)
        if runner is None or runner.done():
            self._runners[session_id] = asyncio.create_task(self._run_outbox(session_id), name=f"outbox {session_id}")

    async def _run_outbox(self, session_id: str) -> None:
        while True:
            rows = self.sessions.pending(session_id)
            if not rows:
                return
            for row in rows:
                if isinstance(row.command, PostStatus):
                    # The status comment is "latest wins" and paced at one write a second: posting it
                    # in the background keeps it off the path to the agent's start (SPEC §1.5).
                    self.sessions.mark_done(row.seq, now=self.clock())
                    self._refresh_status(session_id, row.command)
                    continue
                events = await self._carry_out(row)
                for event in events:
                    await self.apply(session_id, event)

    def _refresh_status(self, session_id: str, command: PostStatus) -> None:
        """Post the session's status soon, coalescing requests that arrive while one is being posted."""
        waiting = self._status_wanted.get(session_id)
        if waiting is not None:
            command = PostStatus(
                urgent=waiting.urgent or command.urgent, throttled=waiting.throttled and command.throttled
            )
        self._status_wanted[session_id] = command
        task = self._status_posters.get(session_id)
        if (task is None or task.done()) and not self._stopped:
            self._status_posters[session_id] = asyncio.create_task(
                self._post_statuses(session_id), name=f"status {session_id}"
            )

    async def _post_statuses(self, session_id: str) -> None:
        while (command := self._status_wanted.pop(session_id, None)) is not None:
            row = StatusRequest(session_id, command, attempts=0)
            for event in await self._carry_out(row, stored=False):
                await self.apply(session_id, event)

    async def _carry_out(self, row: Any, *, stored: bool = True) -> Sequence[Event]:
        """Run one command until it succeeds or its attempts are used up (`stored`: an outbox row)."""
        attempts = row.attempts
        while True:
            try:
                events = await self._execute(row.session_id, row.command)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any executor failure is retried, then given up
                attempts += 1
                message = f"{type(error).__name__}: {error}"
                log.warning("command %s of %s failed (attempt %s): %s", type(row.command).__name__,
                            row.session_id, attempts, message, exc_info=True)
                if attempts >= self.max_attempts:
                    log.error("giving up on %s of %s", type(row.command).__name__, row.session_id)
                    if stored:
                        self.sessions.mark_done(row.seq, now=self.clock(), error=message)
                    return ()
                if stored:
                    self.sessions.mark_attempt(row.seq, message)
                await asyncio.sleep(min(RETRY_MAX_DELAY, self.retry_delay * 2 ** (attempts - 1)))
                continue
            if stored:
                self.sessions.mark_done(row.seq, now=self.clock())
            return tuple(events or ())

    # -- executors ------------------------------------------------------------------------------

    async def _execute(self, session_id: str, command: Command) -> Sequence[Event]:
        if isinstance(command, AttemptCommand):
            # Carried out for the attempt as for a session of its own; what it reports is the attempt's.
            own_id = attempt_id(session_id, command.attempt)
            inner = command.inner
            if isinstance(inner, FinishWork):
                return await self._keep_attempt(own_id, command.attempt, inner)
            events = await self._execute(own_id, inner)
            return tuple(attempt_event(command.attempt, event) for event in events)
        stored = self._get(session_id)
        if stored is None:
            return ()
        session = stored.session
        if isinstance(command, JudgeBakeOff):
            if not session.finishing or session.state != State.WORKING:
                return ()
            return await judge_attempts(self, stored)
        if isinstance(command, EnsureWorkspace):
            return await self._ensure_workspace(stored, command)
        if isinstance(command, RequestSlot):
            self.queue.enqueue(session.id, session.repo, front=command.front)
            await self._admit()
            return ()
        if isinstance(command, HoldSlot):
            self.queue.hold(session.id, session.repo)
            return ()
        if isinstance(command, ReleaseSlot):
            self.queue.release(session.id)
            await self._admit()
            return ()
        if isinstance(command, StartTurn):
            return await self._start_turn(stored, command)
        if isinstance(command, StopAgent):
            self._stop_agent(stored, command.grace_seconds)
            return ()
        if isinstance(command, CleanupWorkspace):
            return await self._cleanup(stored)
        if isinstance(command, PostPlan):
            self._keep_plan(session, command)
        if isinstance(command, FinishWork) and not session.finishing:
            # Left in the outbox by a crash (or added again by a restart) after its PR was recorded: carried out
            # now, it would look for an open PR of the branch, find none once it was merged, and open another.
            return ()
        context = await self._session_context(stored, with_changes=isinstance(command, (PostStatus, FinishWork)))
        if isinstance(command, FinishWork):
            return await self._finish(stored, command, context)
        return await self.publisher.publish(session, command, context)

    async def _finish(self, stored: StoredSession, command: FinishWork, context: SessionContext) -> Sequence[Event]:
        """Hand finished work to the finisher; a new PR first passes the repository's `max_open_prs` (SPEC §8).

        Counting and opening happen under one lock per repository, and the PR is recorded before the lock
        is let go, so two sessions finishing at once cannot both take the last free place."""
        session = stored.session
        # A bake-off's PR body compares both attempts (SPEC §8); the comparison is kept with the session.
        extra = {"appendix": session.bakeoff_table} if session.bakeoff_table else {}
        cap = context.policy.max_open_prs
        if cap is None or command.pull_request_number is not None or not command.open_pull_request:
            # A push that keeps work at the cost cap opens no PR, so the cap on open PRs does not hold it.
            return await self.finisher.finish(session, command, context, **extra)
        async with self._lock(f"open-prs {stored.session.repo}"):
            verdict = self.pull_caps.verdict(session, cap)
            if verdict is not None:
                return (verdict,)
            events = await self.finisher.finish(session, command, context, **extra)
            for event in events:
                await self.apply(stored.session.id, event)
        return ()

    def _note_policy_limits(self, repo: str, context: RuntimeContext) -> None:
        overrides = {**self.limits.repo_overrides, repo: int(context.policy.max_parallel)}
        self.limits = SlotLimits(self.limits.global_limit, self.limits.per_repo, overrides)

    async def _session_context(self, stored: StoredSession, *, with_changes: bool) -> SessionContext:
        session, context = stored.session, stored.context
        worktree = Path(context.worktree) if context.worktree else None
        changed: tuple[ChangedFile, ...] = ()
        if with_changes and worktree is not None and worktree.is_dir():
            try:
                changed = tuple(
                    ChangedFile(path, added, removed)
                    for path, added, removed in await self.workspaces.changed_files(worktree, session.base_branch)
                )
            except Exception:  # noqa: BLE001 - the status still renders without the file list
                log.warning("could not list changed files of %s", session.id, exc_info=True)
        egress = None
        if worktree is not None:
            stats = self.confinement(session, worktree, context.policy).refused_hosts()
            hosts = stats.get("refused_hosts") or {}
            egress = EgressRefusals(int(stats.get("refused") or 0), {str(h): int(n) for h, n in hosts.items()})
        attempt = split_attempt_id(session.id)[1]
        positions: dict[str, int | None] = {}
        if attempt is None and session.attempts:
            positions = {a.name: self.queue.position(attempt_id(session.id, a.name)) for a in session.attempts}
        handle = self._turn_handle(session, context)
        log_tail = None
        if handle is not None:
            log_tail = processes.log_tail(handle.log_path, turns.LOG_TAIL_LINES)
        return SessionContext(
            installation_id=stored.installation_id,
            owner=context.owner,
            repo=context.repo,
            clone_url=context.clone_url,
            default_branch=context.default_branch,
            policy=context.policy,
            worktree=worktree,
            session_dir=self.workspaces.session_dir(folder_of(session)),
            port=context.port,
            queue_position=await self.queue_place(session),
            changed_files=changed,
            log_tail=log_tail,
            notes=context.notes,
            policy_problems=context.policy_problems,
            sandbox=self.workspaces.sandbox.mode,
            earlier=tuple(s for s in self.sessions.for_issue(session.repo, session.issue_number)
                          if s.attempt < session.attempt),
            egress=egress,
            attempt=attempt,  # a bake-off attempt's command: its question names its engine
            attempt_positions=positions,
        )

    async def queue_place(self, session: Session) -> int | None:
        """The session's place in the line for an agent slot, or for its pull request (`max_open_prs`)."""
        return self.queue.position(session.id) or self.pull_caps.position(session)

    async def _ensure_workspace(self, stored: StoredSession, command: EnsureWorkspace) -> Sequence[Event]:
        session, context = stored.session, stored.context
        policy = context.policy
        full_name = session.repo
        session_dir = self.workspaces.session_dir(folder_of(session))
        try:
            token = await self.github.mint_push_token(stored.installation_id, context.owner, context.repo)
            await self.workspaces.ensure_mirror(full_name, context.clone_url, token)
            existing = Path(context.worktree) if context.worktree else None
            if existing is not None and (existing / ".git").exists():
                worktree = existing
            else:
                planned = self.workspaces.worktree_path(full_name, command.branch)
                if existing == planned and planned.exists():
                    # This session's own repository, cut short by a crash: made again from the start.
                    await asyncio.to_thread(shutil.rmtree, planned, True)  # no .git: nothing to keep
                # Recorded before it is made, so a crash in between is recognised on the re-run above.
                context = await self.change_context(
                    session.id, lambda known: replace(known, worktree=str(planned))
                ) or context
                worktree = await self.workspaces.create_worktree(
                    full_name, command.branch, command.base_branch,
                    continue_from_existing=command.from_kept_branch,
                )
            port = context.port or self.workspaces.allocate_port()
            context = await self.change_context(
                session.id, lambda known: replace(known, worktree=str(worktree), port=port)
            ) or context
            await self.workspaces.install_env_files(worktree, policy.env_files)
        except (WorkspaceError, Exception) as error:  # noqa: BLE001 - every failure is the session's
            if not isinstance(error, (WorkspaceError, OSError)) and not _is_git_or_http(error):
                raise
            log.warning("workspace of %s failed: %s", session.id, error)
            return (WorkspaceFailed(str(error)),)
        if self.workspaces.pool_size:
            self._spawn(self.workspaces.fill_pool(full_name, command.base_branch))
        if policy.setup:
            env = (await self._environment(session, context, worktree, session_dir)).build(0)
            confinement = self.confinement(session, worktree, policy)

            async def run_one(command: str, index: int, timeout: float | None) -> int | None:
                outcome = await confinement.run(
                    command, name=f"setup-{index}", env=env, log_path=session_dir / SETUP_LOG,
                    exit_path=session_dir / f"setup-{index}.exit", timeout_s=timeout or SETUP_TIMEOUT_SECONDS,
                    poll=self.poll,
                )
                return outcome.exit_code if outcome.reason == processes.REASON_EXITED else None

            result = await self.workspaces.run_setup(
                list(policy.setup), env, worktree, session_dir / SETUP_LOG,
                timeout=min(SETUP_TIMEOUT_SECONDS, policy.max_runtime_seconds), run=run_one,
            )
            if not result.ok:
                return (WorkspaceFailed(result.message or "setup failed"),)
        return (WorkspaceReady(),)

    async def _environment(
        self, session: Session, context: RuntimeContext, worktree: Path, session_dir: Path
    ) -> SessionEnvironment:
        """What every process of the session is told (its turns, setup and test commands alike)."""
        bot_name, bot_email = await self.github.bot_identity()
        if context.port is None:
            raise WorkspaceError(f"session {session.id} has no port: its workspace was never made")
        return SessionEnvironment(
            parent_env=self.parent_env, extra_names=self.settings.agent_env, session_dir=session_dir,
            worktree=worktree, repo=session.repo, issue=session.issue_number, branch=session.branch,
            port=context.port, bot_name=bot_name, bot_email=bot_email,
        )

    async def _start_turn(self, stored: StoredSession, command: StartTurn) -> Sequence[Event]:
        session, context = stored.session, stored.context
        # A StartTurn left in the outbox by a crash is stale once recovery re-queued the turn.
        if session.running_turn is None or session.turn_count != command.turn:
            return ()
        known = context.turn
        if known is not None and known.turn == command.turn and known.session == session.id:
            handle = processes.TurnHandle.from_json(dict(known.handle))
            if processes.attach(handle) or processes.read_exit_code(handle) is not None:
                self._watch(session.id, handle)
                return ()
        policy = context.policy
        adapter = self.adapter_factory(policy)
        worktree = Path(context.worktree or "")
        session_dir = self.workspaces.session_dir(folder_of(session))
        try:
            await self.workspaces.share_base(worktree, session.base_branch)
        except WorkspaceError as error:  # the turn can still run; a rebase would say what is missing
            log.warning("could not show %s its base branch: %s", session.id, error)
        setup = turns.TurnSetup(
            await self._environment(session, context, worktree, session_dir), turn=command.turn,
            confinement=self.confinement(session, worktree, policy),
        )
        first = command.kind == TurnKind.FIRST or (
            command.kind == TurnKind.PLAN and command.reply is None and command.resume_session_id is None
        )
        orphan = turns.find_running(session_dir, command.turn, setup.confinement)
        if orphan is not None:
            # Started by a Shepherd killed before it recorded the turn: watched, never started twice.
            log.warning("turn %d of %s was already running (its start was never recorded); watching it",
                        command.turn, session.id, extra=_turn_context(session))
            handle = orphan
        elif first:
            prompt = await self._render_prompt(stored, worktree)
            handle = turns.start_turn(setup, adapter, prompt=prompt, message=None, reply=None,
                                      resume_session_id=None, budget_usd=command.max_cost_usd)
        else:
            # Read now, not from `stored`: coordination may have found new overlaps while we awaited.
            current = self._get(session.id)
            overlaps = (current or stored).context.overlaps
            message = render_turn_message(
                command.kind, command.reply, command.notes, command.paths, base_branch=session.base_branch,
                overlaps=overlaps,
            )
            handle = turns.start_turn(setup, adapter, prompt=None, message=message, reply=command.reply,
                                      resume_session_id=command.resume_session_id, budget_usd=command.max_cost_usd)
        record = TurnRecord(command.turn, session.id, handle.to_json())
        await self.change_context(session.id, lambda known: replace(known, turn=record))
        self._watch(session.id, handle)
        log.info("turn %d started", command.turn,
                 extra={**_turn_context(session), "pid": handle.pid, "log_path": handle.log_path})
        return (TurnStarted(None),)

    async def _render_prompt(self, stored: StoredSession, worktree: Path) -> str:
        session, context = stored.session, stored.context
        policy = context.policy
        gh = self.github.installation(stored.installation_id)
        comments = await gather_comments(
            gh, context.owner, context.repo, session.issue_number,
            trigger_at=utc(context.trigger_at if context.trigger_at is not None else self.clock()),
            permissions=self.permissions, minimum=policy.min_permission,
        )
        return render_prompt(
            repo=session.repo, issue_number=session.issue_number, title=session.issue_title,
            body=context.issue_body, comments=comments, branch=session.branch,
            base_branch=session.base_branch, worktree=worktree, mode=str(session.mode),
        )

    def _keep_plan(self, session: Session, command: PostPlan) -> None:
        """The plan lives in the session's control folder: the newest as `plan.md`, each revision too."""
        folder = self.workspaces.session_dir(folder_of(session))
        text = command.text if command.text.endswith("\n") else command.text + "\n"
        (folder / PLAN_FILE.format(revision=command.revision)).write_text(text, encoding="utf-8")
        (folder / PLAN_NAME).write_text(text, encoding="utf-8")

    def _turn_handle(self, session: Session, context: RuntimeContext) -> processes.TurnHandle | None:
        known = context.turn
        if known is None or known.session != session.id or session.running_turn is None:
            return None
        if known.turn != session.turn_count:
            return None
        return processes.TurnHandle.from_json(dict(known.handle))

    def _watch(self, session_id: str, handle: processes.TurnHandle) -> None:
        current = self._watchers.get(session_id)
        if current is not None and not current.done():
            return
        self._watchers[session_id] = asyncio.create_task(self._watch_turn(session_id, handle), name=f"turn {session_id}")

    async def _watch_turn(self, session_id: str, handle: processes.TurnHandle) -> None:
        stored = self._get(session_id)
        if stored is None:
            return
        policy = stored.context.policy
        worktree = Path(stored.context.worktree or "")
        session_dir = self.workspaces.session_dir(folder_of(stored.session))
        adapter = self.adapter_factory(policy)

        said_done = False

        async def emit(event: Event, seq: int) -> None:
            nonlocal said_done
            said_done = said_done or isinstance(event, DoneReported)
            await self.apply(session_id, event)
            await self.change_context(session_id, lambda known: replace(known, reports_seq=seq))

        async def measure() -> tuple[bool, bool, tuple[str, ...]]:
            current = self._get(session_id)
            base = current.session.base_branch if current else stored.session.base_branch
            return await turns.measure_worktree(self.workspaces, worktree, base, policy.protected_paths)

        async def file_states() -> list[tuple[str, str, str | None]]:
            current = self._get(session_id)
            base = current.session.base_branch if current else stored.session.base_branch
            return await self.workspaces.file_states(worktree, base)

        known = stored.context.turn
        turn = known.turn if known is not None else stored.session.turn_count
        watchdog = TurnWatchdog(
            adapter=adapter.name, turn=turn,
            log_path=Path(handle.log_path), limits=loop_limits(policy), file_states=file_states,
            prices=self.settings.prices, snapshot_seconds=self.loop_snapshot_seconds,
        )
        try:
            end = await turns.watch_turn(
                handle, session_dir=session_dir, after_seq=stored.context.reports_seq,
                emit=emit, measure=measure, max_runtime_s=policy.max_runtime_seconds,
                idle_timeout_s=policy.idle_timeout_seconds, poll=self.poll,
                confinement=self.confinement(stored.session, worktree, policy), monitor=watchdog.check,
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken watcher must not leave the session waiting forever
            log.exception("watching the turn of %s failed", session_id, extra=_turn_context(stored.session))
            end = TurnFailed(FailureKind.CRASH, "")
        log.info("turn %d ended (%s)", turn, _turn_end(end),
                 extra={**_turn_context(stored.session), "log_path": handle.log_path})
        if self.metrics is not None:  # the turn is over, however it ended
            self.metrics.turn_seconds.observe(max(0.0, time.time() - handle.started_at))
        agent_id = turns.agent_session_id(adapter, handle)
        if agent_id:
            await self.apply(session_id, TurnStarted(agent_id))
        if not said_done:  # finished work is pushed by the finisher, right after
            await self._turn_over(session_id, end)
        await self.apply(session_id, end)

    async def _turn_over(self, session_id: str, end: Event) -> None:
        """A turn has ended, before the core hears of it. The local engine keeps the agent's commits in
        the worktree until the session finishes: a restart of this process finds them on this disk, and a
        push per turn would only slow the turns down. A Temporal worker host pushes a checkpoint here
        (`bot.temporal.activities.HostEngine`), because a session may move to another machine."""

    def confinement(self, session: Session, worktree: Path, policy: EffectivePolicy) -> Confinement:
        """The box, egress proxy and limits of `session`'s turns, setup and test commands."""
        return confinement_for(self.workspaces, folder_of(session), worktree, session.repo,
                               policy.network.allow)

    # -- the bake-off's seam (`bot.runtime.bakeoff`) ---------------------------------------------

    def attempt(self, session_id: str, name: str) -> StoredSession | None:
        """Attempt `name` of a bake-off as a session of its own (its worktree, port, turn, policy)."""
        return self._get(attempt_id(session_id, name))

    async def run_check(self, stored: StoredSession, folder: Path, command: str) -> int | None:
        """Run a check command (the bake-off's test) in `folder` as `stored`'s agent would run it: in its
        own box, with its environment; its exit code, or None when it did not finish."""
        session, context = stored.session, stored.context
        name = f"{folder_of(session)}-check"
        confinement = confinement_for(self.workspaces, name, folder, session.repo, context.policy.network.allow)
        box_dir = self.workspaces.session_dir(name)
        env = (await self._environment(session, context, folder, box_dir)).build(0)
        outcome = await confinement.run(command, name="check", env=env, log_path=box_dir / "check.log",
                                        exit_path=box_dir / "check.exit", timeout_s=context.policy.max_runtime_seconds,
                                        poll=self.poll)
        return outcome.exit_code if outcome.reason == processes.REASON_EXITED else None

    async def push_branch(self, stored: StoredSession, branch: str) -> None:
        """Push one more branch of the session (a bake-off's other attempt), as its own would be pushed."""
        context = await self._session_context(stored, with_changes=False)
        await self.finisher.push(stored.session, context, branch)

    async def _keep_attempt(self, own_id: str, name: str, command: FinishWork) -> Sequence[Event]:
        """A bake-off attempt's work is done: its leftovers committed and its branch in the mirror, to be
        judged (SPEC §8); nothing is pushed or opened yet."""
        stored = self._get(own_id)
        if stored is None or not stored.session.finishing:
            return ()
        worktree = Path(stored.context.worktree or "")
        bot_name, bot_email = await self.github.bot_identity()
        try:
            await self.workspaces.commit_all(worktree, ATTEMPT_COMMIT_MESSAGE.format(name=name), bot_name, bot_email)
            await self.workspaces.export_branch(worktree, command.branch)
        except WorkspaceError as error:
            return (attempt_event(name, PushFailed(str(error))),)
        if command.open_pull_request:
            return (AttemptFinished(name),)
        return (attempt_event(name, WorkPushed()),)

    def _stop_agent(self, stored: StoredSession, grace_seconds: float) -> None:
        known = stored.context.turn
        if known is None or known.session != stored.session.id:
            return
        handle = processes.TurnHandle.from_json(dict(known.handle))

        async def stop_later() -> None:
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline:
                if processes.read_exit_code(handle) is not None or not processes.attach(handle):
                    break
                await asyncio.sleep(self.poll)
            await asyncio.to_thread(processes.kill_group, handle, 2.0)

        self._spawn(stop_later())

    async def _cleanup(self, stored: StoredSession) -> Sequence[Event]:
        context = stored.context
        worktree = Path(context.worktree) if context.worktree else None
        if worktree is None or not worktree.is_dir():
            return ()
        try:
            await self.workspaces.remove_worktree(worktree)
        except WorkspaceKept as kept:
            note = NOTE_WORKTREE_KEPT.format(reason=kept.reason)
            context = await self.change_context(
                stored.session.id, lambda known: replace(known, notes=(*known.notes, note))
            ) or context
            refreshed = StoredSession(stored.session, context, stored.installation_id)
            ctx = await self._session_context(refreshed, with_changes=False)
            return await self.publisher.publish(stored.session, PostStatus(), ctx)
        if context.port:
            self.workspaces.release_port(context.port)
        return ()

    # -- slots ----------------------------------------------------------------------------------

    async def _admit(self) -> None:
        if not self._holding_admission:
            for session_id in self.queue.admit(self.limits):
                await self.apply(session_id, SlotGranted())
        self._write_waiting_statuses()

    def _write_waiting_statuses(self) -> None:
        """The line moved: each waiting session's `status.json` gets its place now (`shepherd status` reads it)."""
        for entry in self.queue.waiting:
            stored = self.sessions.get(entry.session_id)
            if stored is not None:
                self._write_status(stored.session, stored.context)

    # -- helpers --------------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _default_adapter(self, policy: EffectivePolicy) -> Adapter:
        return make_adapter(policy.agent, command=self.settings.agent_command, allowed_tools=policy.allowed_tools)

    def _write_status(self, session: Session, context: RuntimeContext) -> None:
        try:
            folder = self.workspaces.session_dir(folder_of(session))
            data = to_status_json(session, worktree_path=context.worktree,
                                  queue_position=self.queue.position(session.id))
            write_status(folder / STATUS_NAME, data)
            for attempt in session.attempts if session.bakeoff_winner is None else ():
                self._write_status(attempt.session, context.attempt_view(attempt.name))
        except Exception:  # noqa: BLE001 - status.json is a convenience for the agent
            log.warning("could not write status.json of %s", session.id, exc_info=True)

    # -- inspection (tests, dashboard) ----------------------------------------------------------

    def session_dir(self, session_id: str) -> Path:
        return self.workspaces.session_dir(session_folder(session_id))

    async def placements(self) -> Placements:
        """Where the sessions run, for the operator's views: all on this machine; the waiting ones in line."""
        places = {entry.session_id: place for place, entry in enumerate(self.queue.waiting, start=1)}
        return Placements(places=places, default_host=self.settings.host_name)

    def context_of(self, session_id: str) -> RuntimeContext | None:
        stored = self._get(session_id)
        return stored.context if stored else None

    async def idle(self) -> None:
        """Wait until no command is pending and no turn is being watched."""
        while True:
            busy = [
                t for t in (*self._runners.values(), *self._watchers.values(), *self._status_posters.values())
                if not t.done()
            ]
            if not busy and not self.sessions.pending():
                return
            await asyncio.sleep(self.poll)


def with_engine(policy: EffectivePolicy, engine: str | None) -> EffectivePolicy:
    """The session's policy with the agent its engine label picked (the status comment shows it too)."""
    return policy if engine is None else policy.model_copy(update={"agent": engine})


def _is_git_or_http(error: BaseException) -> bool:
    from bot.workspace.git import GitError
    import gidgethub

    return isinstance(error, (GitError, gidgethub.GitHubException))
