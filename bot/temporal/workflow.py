"""One issue's sessions as a Temporal workflow (SPEC §7): the pure core decides, activities act.

The workflow id is `<owner>/<repo>#<n>`, so a redelivery or a second front end signals the running
workflow instead of starting another. Its state is the core's state: the issue's newest `Session`, the
per-session facts the executors need (`context`, the typed `RuntimeContext` the local engine stores; plain
JSON only where it crosses the history: start, continue-as-new, activities, queries) and the
commands still to carry out. Every event, from a front end (signals) or from an activity (returned or
signalled), goes through `bot.core.session.decide`, the function the local engine calls; nothing in this
module decides a rule of SPEC §1.

Commands run in the order they were decided, one at a time, as activities on the task queue of the
worker host that holds the session's worktree (`shepherd-host-<id>`); the host is claimed through the
shared queue the first time one is needed. An agent turn is a long activity that heartbeats and signals
the agent's reports back while it runs, so the workflow keeps carrying out other commands (a question,
a stop) during the turn. When the host stops answering (a heartbeat or schedule-to-start timeout), the
session moves: another host is claimed, prepares the workspace from the pushed branch and the lost turn
runs again, and the status comment says so.

A long session does not grow its history without bound: after `SHEPHERD_TEMPORAL_HISTORY_EVENTS` core
events (or when Temporal suggests it), once nothing is being carried out, the workflow continues as new
with its state (`_state`): the session, its facts, its host and the commands still to carry out.

Only deterministic code lives here: the time is `workflow.now()`, and the only imports are the core
(passed through the sandbox) and the standard library.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutError as ActivityTimeout, TimeoutType

from bot.temporal.slots import SIGNAL_HOLD, SIGNAL_RELEASE, SIGNAL_REQUEST, SLOTS_ID

with workflow.unsafe.imports_passed_through():
    from bot.store.context import RuntimeContext
    from bot.core.session import (
        Command,
        EnsureWorkspace,
        Event,
        HoldSlot,
        PostStatus,
        Progress,
        PullRequestState,
        React,
        Recovered,
        ReleaseSlot,
        RequestSlot,
        Session,
        StartTurn,
        State,
        StopAgent,
        Trigger,
        TurnExited,
        TurnFailed,
        FailureKind,
        command_from_dict,
        command_to_dict,
        decide,
        decide_trigger,
        event_from_dict,
    )

WORKFLOW_NAME = "ShepherdSession"
SHARED_QUEUE = "shepherd"
HOST_QUEUE = "shepherd-host-{host}"
SIGNAL_TRIGGER = "trigger"
SIGNAL_EVENT = "event"
SIGNAL_EVENT_FOR = "event_for"
QUERY_SNAPSHOT = "snapshot"
SIGNAL_FACTS = "facts"  # facts about the session found outside it: its overlaps, the issue body as edited
# The repository's observers (bot/temporal/repository.py) and what a change asks of them.
REPOSITORY_WORKFLOW = "ShepherdRepository"
SIGNAL_REPOSITORY_CHANGED = "changed"
DASHBOARD, COORDINATION, DEPENDENCIES = "dashboard", "coordination", "dependencies"
PATCH_REPOSITORY_OBSERVERS = "repository-observers"

# Activity names (bot/temporal/activities.py); referred to by name so that nothing of the hosts' I/O
# is imported into the workflow's sandbox.
CLAIM_HOST = "claim_host"
CARRY_OUT = "carry_out"
RUN_TURN = "run_turn"
STOP_AGENT = "stop_agent"

NOTE_MOVED = "The session moved from host {old} to host {new}: {lost}"
LOST_TURN = "the running turn was lost and runs again from the last pushed state of the branch."
LOST_TURN_AFTER_CHECKPOINT = (
    "the turn in progress was lost and runs again; the finished turns' work was kept (pushed at the end of "
    "the last one, commit {sha})."
)
LOST_NOTHING = "nothing was lost."
EVENTS_BEFORE_CONTINUE = 2000
COMMAND_RETRY = RetryPolicy(initial_interval=timedelta(seconds=0.5), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=60), maximum_attempts=6)
# A turn activity that ends without a result (its host restarted) runs again on the same host, which
# finds the agent still running and watches it on; a host that is gone does not take it up in time,
# and the session moves.
TURN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=10), maximum_attempts=4)
TURN_LIMIT = timedelta(hours=24)
COMMAND_LIMIT = timedelta(hours=2)


def workflow_id(full_name: str, issue_number: int) -> str:
    """The one workflow of an issue: `owner/repo#12` (SPEC §7)."""
    return f"{full_name}#{issue_number}"


def host_queue(host: str) -> str:
    return HOST_QUEUE.format(host=host)


def repository_workflow_id(full_name: str) -> str:
    """The one observers' workflow of a repository (bot/temporal/repository.py)."""
    return f"shepherd-repo:{full_name}"


def repository_wants(before: Session | None, after: Session, event: Event | None) -> list[str]:
    """Which repository-wide observers a change concerns, as the local engine's observers decide it: the
    dashboard issue on a change it shows, coordination after a turn or a progress report, the waiting
    issues' re-check when a PR merged or opened."""
    wants = []
    if before is None or before.id != after.id or _dashboard_view(before) != _dashboard_view(after):
        wants.append(DASHBOARD)
    if isinstance(event, (TurnExited, Progress)):
        wants.append(COORDINATION)
    if (before is not None and before.pr_state != after.pr_state
            and after.pr_state in (PullRequestState.MERGED, PullRequestState.OPEN)):
        wants.append(DEPENDENCIES)
    return wants


def _dashboard_view(session: Session) -> tuple[Any, ...]:
    return (session.state, session.detail, session.question, session.pr_state, session.pr_number,
            session.checkpoint, session.issue_title, session.failure_reason)


class HostLost(Exception):
    """The session's host did not pick up or finish an activity in time."""


def _host_lost(error: ActivityError) -> bool:
    cause = error.cause
    return isinstance(cause, ActivityTimeout) and cause.type in (TimeoutType.SCHEDULE_TO_START, TimeoutType.HEARTBEAT)


@workflow.defn(name=WORKFLOW_NAME)
class SessionWorkflow:
    """The issue's sessions, oldest to newest; `session` is the newest (the one the core acts on)."""

    @workflow.init
    def __init__(self, state: dict[str, Any]) -> None:
        # Restored here, not in `run`: signals that came with the start are handled before `run` begins.
        self.session: Session | None = None
        self.context: RuntimeContext | None = None  # the newest session's facts
        self.host: str | None = None
        self.outbox: list[Command] = []
        self.host_timeout = 60.0
        self.max_per_repo = 2
        self.events_before_continue = EVENTS_BEFORE_CONTINUE
        self.events_seen = 0
        self.turn_task: asyncio.Task[None] | None = None
        self.carrying_out = False
        self.status_wanted: PostStatus | None = None
        self.status_task: asyncio.Task[None] | None = None
        self.side_tasks: list[asyncio.Task[None]] = []  # reactions, carried out beside the path to the agent
        self.claiming = asyncio.Lock()
        self.notice: dict[str, Any] | None = None  # for the repository's observers, not yet sent
        self.notice_task: asyncio.Task[None] | None = None
        self._restore(state)

    # -- state as plain data (the start argument and continue-as-new) ---------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "session": self.session.to_dict() if self.session else None,
            "context": self.context.to_dict() if self.context is not None else {},
            "host": self.host,
            "outbox": [command_to_dict(c) for c in self.outbox],
            "host_timeout": self.host_timeout,
            "max_per_repo": self.max_per_repo,
            "events_before_continue": self.events_before_continue,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.session = Session.from_dict(state["session"]) if state.get("session") else None
        known = state.get("context")
        self.context = RuntimeContext.from_dict(known) if known else None  # also the older runs' plain dict
        self.host = state.get("host")
        self.outbox = [command_from_dict(c) for c in state.get("outbox") or ()]
        self.host_timeout = float(state.get("host_timeout") or self.host_timeout)
        self.max_per_repo = int(state.get("max_per_repo") or self.max_per_repo)
        self.events_before_continue = int(state.get("events_before_continue") or self.events_before_continue)

    # -- the run loop: carry out the commands in order -----------------------------------------

    @workflow.run
    async def run(self, state: dict[str, Any]) -> None:
        if self.session is not None and self.session.running_turn is not None and self.outbox == []:
            # Continued as new with no turn task: a running turn is re-attached by its host.
            self.outbox.append(StartTurn(self.session.running_turn.kind, self.session.turn_count))
        while True:
            await workflow.wait_condition(lambda: bool(self.outbox) or self._should_continue())
            if not self.outbox:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._state())
            command = self.outbox.pop(0)
            self.carrying_out = True
            try:
                await self._carry_out(command)
            finally:
                self.carrying_out = False

    def _busy(self) -> bool:
        self.side_tasks = [task for task in self.side_tasks if not task.done()]
        return bool(self.side_tasks) or any(task is not None and not task.done()
                                            for task in (self.turn_task, self.status_task, self.notice_task))

    def _should_continue(self) -> bool:
        busy = self._busy()
        return not busy and (self.events_seen >= self.events_before_continue
                             or workflow.info().is_continue_as_new_suggested())

    async def _carry_out(self, command: Command) -> None:
        if isinstance(command, (RequestSlot, HoldSlot, ReleaseSlot)):
            # The one queue of all hosts (bot/temporal/slots.py) answers a request with `SlotGranted`.
            await self._tell_slots(command)
            return
        if isinstance(command, PostStatus):
            self._want_status(command)
            return
        if self.session is None:
            return
        if isinstance(command, React):
            # A reaction decides nothing and nothing waits for it: it goes beside the next commands (the
            # workspace, the turn), so its GitHub write and its permit are off the path to the agent's start.
            self.side_tasks.append(asyncio.create_task(self._react(command)))
            return
        try:
            if self.host is None and not isinstance(command, (StartTurn, StopAgent)):
                # The session's first command on a host rides with the claim: one activity, not two.
                result = await self._claim_host(first=self._payload(command))
                if result is not None:
                    self._take_result(result)
                    return
            await self._claim_host()
            if isinstance(command, StartTurn):
                self.turn_task = asyncio.create_task(self._run_turn(command))
                return
            if isinstance(command, StopAgent):
                await self._on_host(STOP_AGENT, self._payload(command), limit=COMMAND_LIMIT)
                return
            result = await self._on_host(CARRY_OUT, self._payload(command), limit=COMMAND_LIMIT)
        except HostLost:
            await self._move(turn_lost=False)
            self.outbox.insert(0, command)
            return
        except ActivityError as error:
            workflow.logger.warning("%s of %s failed for good: %s", type(command).__name__,
                                    self.session.id, error.cause or error)
            return
        self._take_result(result)

    def _want_status(self, command: PostStatus) -> None:
        """The status comment is "latest wins": posted beside the other commands, off the path to the
        agent's start (as the local engine does), with requests that come meanwhile merged into one."""
        waiting = self.status_wanted
        if waiting is not None:
            command = PostStatus(urgent=waiting.urgent or command.urgent, throttled=waiting.throttled and command.throttled)
        self.status_wanted = command
        if self.status_task is None or self.status_task.done():
            self.status_task = asyncio.create_task(self._post_statuses())

    async def _post_statuses(self) -> None:
        while self.status_wanted is not None and self.session is not None:
            command, self.status_wanted = self.status_wanted, None
            try:
                await self._claim_host()
                result = await self._on_host(CARRY_OUT, self._payload(command), limit=COMMAND_LIMIT)
            except HostLost:
                self.outbox.insert(0, command)  # the run loop moves the session, then posts it
                return
            except ActivityError as error:
                workflow.logger.warning("the status of %s could not be posted: %s", self.session.id,
                                        error.cause or error)
                continue
            self._take_result(result)

    async def _react(self, command: React) -> None:
        # The command after it claims the host (and carries its own work out in the claim); the reaction
        # follows on that host, or claims one itself when nothing else needs one.
        await workflow.wait_condition(lambda: self.host is not None or not (self.outbox or self.carrying_out))
        while self.session is not None:
            try:
                await self._claim_host()
                result = await self._on_host(CARRY_OUT, self._payload(command), limit=COMMAND_LIMIT)
            except HostLost as lost:
                # The session's next command on the host finds it gone too and moves the session.
                gone = lost.args[0]
                await workflow.wait_condition(lambda: self.host is not None and self.host != gone)
                continue
            except ActivityError as error:
                workflow.logger.warning("a reaction of %s failed for good: %s", self.session.id, error.cause or error)
                return
            self._take_result(result)
            return

    def _take_result(self, result: dict[str, Any]) -> None:
        if (self.session is not None and self.context is not None and result.get("session_id") == self.session.id
                and result.get("context")):
            # The host adds only its own facts and, at times, a note; everything else is the workflow's.
            self.context = self.context.with_host_answer(RuntimeContext.from_dict(result["context"]))
        for data in result.get("events") or ():
            self._apply(event_from_dict(data))

    async def _run_turn(self, command: StartTurn) -> None:
        assert self.session is not None
        try:
            result = await self._on_host(RUN_TURN, self._payload(command), limit=TURN_LIMIT, turn=True)
        except HostLost:
            await self._move(turn_lost=True)
            return
        except ActivityError as error:
            workflow.logger.warning("the turn of %s failed: %s", self.session.id, error.cause or error)
            self._apply(TurnFailed(FailureKind.CRASH, str(error.cause or error)[-2000:]))
            return
        self._take_result(result)

    async def _tell_slots(self, command: Command) -> None:
        assert self.session is not None
        data = {"session_id": self.session.id, "repo": self.session.repo, "workflow_id": workflow.info().workflow_id,
                "per_repo": self.max_per_repo,
                "max_parallel": self.context.policy.max_parallel if self.context is not None else None}
        if isinstance(command, RequestSlot):
            name, data["front"] = SIGNAL_REQUEST, command.front
        else:
            name = SIGNAL_HOLD if isinstance(command, HoldSlot) else SIGNAL_RELEASE
        await workflow.get_external_workflow_handle(SLOTS_ID).signal(name, data)

    # -- hosts ----------------------------------------------------------------------------------

    async def _claim_host(self, first: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Make sure the session has a host. With `first` (a command's payload), the host that takes the
        session carries that command out in the same activity and its result comes back (None when the
        session had a host already, or the command must be carried out again on it)."""
        async with self.claiming:  # the run loop and the status poster may both need a host
            if self.host is None:
                return await self._claim(first)
        return None

    async def _claim(self, first: dict[str, Any] | None = None) -> dict[str, Any] | None:
        answer = await workflow.execute_activity(
            CLAIM_HOST, *([first] if first is not None else []), task_queue=SHARED_QUEUE,
            start_to_close_timeout=TURN_LIMIT, heartbeat_timeout=timedelta(seconds=self.host_timeout),
            retry_policy=RetryPolicy(maximum_attempts=0),  # waits for any host, however long
        )
        if isinstance(answer, str):  # a claim without a command
            self.host = answer
            return None
        self.host = answer["host"]
        result: dict[str, Any] | None = answer.get("result")
        return result

    async def _on_host(self, name: str, payload: dict[str, Any], *, limit: timedelta,
                       turn: bool = False) -> dict[str, Any]:
        """Run one activity on the session's host; `HostLost` when the host does not take it up or stops
        heartbeating within the host timeout (every host activity heartbeats)."""
        host = self.host  # the session may have moved by the time the activity fails: name this one
        assert host is not None
        timeout = timedelta(seconds=self.host_timeout)
        try:
            result: dict[str, Any] = await workflow.execute_activity(
                name, payload, task_queue=host_queue(host), schedule_to_start_timeout=timeout,
                start_to_close_timeout=limit, heartbeat_timeout=timeout,
                retry_policy=TURN_RETRY if turn else COMMAND_RETRY,
            )
        except ActivityError as error:
            if _host_lost(error):
                raise HostLost(host) from error
            raise
        return result

    async def _move(self, *, turn_lost: bool) -> None:
        """The host is gone: claim another, prepare the workspace there and re-run what was lost."""
        assert self.session is not None and self.context is not None
        old = self.host
        self.host = None
        self.context = self.context.without_host_facts()
        await self._claim_host()
        checkpoint = self.context.checkpoint
        if not turn_lost:
            lost = LOST_NOTHING
        elif checkpoint:
            lost = LOST_TURN_AFTER_CHECKPOINT.format(sha=str(checkpoint)[:7])
        else:
            lost = LOST_TURN
        moved = NOTE_MOVED.format(old=old, new=self.host, lost=lost)
        self.context = replace(self.context, notes=(*self.context.notes, moved))
        workflow.logger.warning("%s moved from host %s to %s", self.session.id, old, self.host)
        if self.session.state not in (State.REGISTERED,) and self.session.is_live:
            # The new host needs the worktree before any turn: from the branch as last pushed.
            prepare = EnsureWorkspace(self.session.branch, self.session.base_branch, from_kept_branch=True)
            try:
                result = await self._on_host(CARRY_OUT, {**self._payload(prepare), "prepare_only": True},
                                             limit=COMMAND_LIMIT)
            except (HostLost, ActivityError):
                result = {}
            if self.session is not None and result.get("context"):
                # Only the new host's facts: what a front end told meanwhile (an edited body) is kept.
                self.context = self.context.with_host_answer(RuntimeContext.from_dict(result["context"]))
        if turn_lost:
            self._apply(Recovered(turn_alive=False))
        else:
            self.outbox.insert(0, PostStatus())

    def _payload(self, command: Command) -> dict[str, Any]:
        assert self.session is not None and self.context is not None
        return {"session": self.session.to_dict(), "context": self.context.to_dict(),
                "command": command_to_dict(command),
                "workflow_id": workflow.info().workflow_id}

    # -- deciding: the core ---------------------------------------------------------------------

    def _apply(self, event: Event) -> None:
        before = self.session
        decision = decide(before, event, workflow.now())
        self.events_seen += 1
        if decision.session is None:
            return
        if before is not None and decision.session.id != before.id and self.context is not None:
            # A retry on a finished session starts a new one with the same facts (as the local engine).
            self.context = self.context.for_retry()
        self.session = decision.session
        self.outbox.extend(decision.commands)
        self._tell_repository(before, decision.session, event)

    @workflow.signal(name=SIGNAL_TRIGGER)
    def on_trigger(self, data: dict[str, Any]) -> None:
        """A trigger label: `event` is the core's `Trigger`, `context` the new session's facts."""
        event = event_from_dict(data["event"])
        assert isinstance(event, Trigger)
        before = self.session
        decision = decide_trigger(before, event, workflow.now())
        self.events_seen += 1
        if decision.session is None:
            return
        if before is None or decision.session.id != before.id:
            self.context = RuntimeContext.from_dict(data["context"])
            if self.host is not None and before is not None:
                self.context = replace(self.context, worktree=None)
        self.session = decision.session
        self.outbox.extend(decision.commands)
        self._tell_repository(before, decision.session, event)

    @workflow.signal(name=SIGNAL_EVENT)
    def on_event(self, data: dict[str, Any]) -> None:
        self._apply(event_from_dict(data))

    @workflow.signal(name=SIGNAL_EVENT_FOR)
    def on_event_for(self, data: dict[str, Any]) -> None:
        """An event for one session of the issue (`session_id`): dropped if a newer session replaced it."""
        if self.session is not None and self.session.id == data["session_id"]:
            self._apply(event_from_dict(data["event"]))

    @workflow.signal(name=SIGNAL_FACTS)
    def on_facts(self, data: dict[str, Any]) -> None:
        """Facts about the session that others found (the repository's overlaps, an edited issue body)."""
        if self.session is not None and self.context is not None and self.session.id == data["session_id"]:
            self.context = self.context.with_found_facts(data["facts"])

    # -- the repository's observers -------------------------------------------------------------

    def _tell_repository(self, before: Session | None, after: Session, event: Event | None) -> None:
        """Tell the repository's workflow of a change its observers look at; notices not yet sent merge
        into one (the newest session, every observer asked for)."""
        wants = repository_wants(before, after, event)
        if not wants or not workflow.patched(PATCH_REPOSITORY_OBSERVERS):
            return  # (a workflow started before the observers existed replays its history unchanged)
        pending = self.notice["wants"] if self.notice is not None else []
        facts = self.context
        self.notice = {
            "session": after.to_dict(), "installation_id": facts.installation_id if facts is not None else None,
            "host": self.host, "worktree": facts.worktree if facts is not None else None,
            "clone_url": facts.clone_url if facts is not None else None,
            "dashboard": facts.policy.dashboard_issue if facts is not None else True,
            "wants": pending + [want for want in wants if want not in pending],
        }
        if self.notice_task is None or self.notice_task.done():
            self.notice_task = asyncio.create_task(self._send_notices())

    async def _send_notices(self) -> None:
        while self.notice is not None:
            notice, self.notice = self.notice, None
            repository = repository_workflow_id(notice["session"]["repo"])
            try:
                await workflow.get_external_workflow_handle(repository).signal(SIGNAL_REPOSITORY_CHANGED, notice)
            except Exception as error:  # noqa: BLE001 - the observers are views; the session goes on without them
                workflow.logger.warning("could not tell %s of %s: %s", repository, notice["session"]["id"], error)

    @workflow.query(name=QUERY_SNAPSHOT)
    def snapshot(self) -> dict[str, Any]:
        return {"session": self.session.to_dict() if self.session else None,
                "context": self.context.to_dict() if self.context is not None else {},
                "host": self.host, "idle": not (self.outbox or self.carrying_out or self._busy())}
