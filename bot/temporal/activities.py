"""A worker host's activities (SPEC §7): the local engine's executors, driven by the session workflow.

The host keeps what only it can know in its own data folder: the worktree, the port, the running
turn's handle and the last agent report seen, in its own store (a copy of each session it works on,
refreshed from the workflow before every activity). Everything else, and every decision, is the
workflow's. The executors themselves are the local engine's (`bot/runtime/engine.py`), the Publisher's
and the Finisher's: `HostEngine` is that engine with one change, its events go to the session's
workflow as signals instead of to a local `decide`.

A turn is one long activity: it waits for one of the host's agent slots (SHEPHERD_MAX_WORKERS, first
come first served with resumed turns first; the per-repository limit is the shared queue's, in
`bot/temporal/slots.py`), starts or re-attaches the agent, heartbeats while it runs and signals each
report to the workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from temporalio import activity
from temporalio.client import Client

from bot.store.context import RuntimeContext
from bot.agent import processes
from bot.core.session import (
    Command,
    EnsureWorkspace,
    Event,
    Session,
    StartTurn,
    State,
    StopAgent,
    TurnExited,
    WorkspaceFailed,
    command_from_dict,
    event_to_dict,
)
from bot.core.slots import SlotLimits, SlotQueue
from bot.runtime.engine import Engine
from bot.store.sessions import StoredSession
from bot.temporal.overview import queue_places
from bot.temporal.workflow import CARRY_OUT, CLAIM_HOST, RUN_TURN, SIGNAL_EVENT, STOP_AGENT

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_SECONDS = 2.0
CLAIM_POLL_SECONDS = 0.1


class HostSlots:
    """This host's agent slots: the core's `SlotQueue` (FIFO, resumed turns first, per-repo limits)."""

    def __init__(self, limits: SlotLimits) -> None:
        self.limits = limits
        self.queue = SlotQueue()
        self._admitted: dict[str, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def slot(self, session_id: str, repo: str, *, front: bool) -> AsyncIterator[None]:
        admitted = self._admitted.setdefault(session_id, asyncio.Event())
        if not self.queue.is_running(session_id):
            self.queue.enqueue(session_id, repo, front=front)
            self._admit()
        try:
            await admitted.wait()
            yield
        finally:
            self.queue.release(session_id)
            self._admitted.pop(session_id, None)
            self._admit()

    def busy(self) -> bool:
        """Every agent slot of this host is taken or promised to a waiting turn."""
        return len(self.queue.running) + len(self.queue.waiting) >= self.limits.global_limit

    def _admit(self) -> None:
        for session_id in self.queue.admit(self.limits):
            self._admitted.setdefault(session_id, asyncio.Event()).set()


class HostEngine(Engine):
    """The local engine's executors on a worker host; events are signalled to the session's workflow."""

    def __init__(self, *args: Any, client: Client, host_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = client
        self.host_id = host_id
        # This host's agents only; the per-repository limit is the shared queue's (bot/temporal/slots.py).
        workers = self.settings.max_workers
        self.slots = HostSlots(SlotLimits(global_limit=workers, per_repo=workers))
        self._workflow_of: dict[str, str] = {}
        self._started: dict[str, processes.TurnHandle] = {}

    async def queue_place(self, session: Session) -> int | None:
        """The place in the one line of all hosts (`shepherd-slots`), not in this host's own."""
        if session.state != State.QUEUED:
            return None
        places = await queue_places(self.client)
        return places.get(session.id) or self.pull_caps.position(session)

    async def apply(self, session_id: str, event: Event) -> Session | None:
        """Not decided here: the event goes to the workflow, which runs the core."""
        workflow_id = self._workflow_of[session_id]
        await self.client.get_workflow_handle(workflow_id).signal(SIGNAL_EVENT, event_to_dict(event))
        return None

    def _watch(self, session_id: str, handle: processes.TurnHandle) -> None:
        self._started[session_id] = handle  # the turn activity watches it itself, while heartbeating

    async def _turn_over(self, session_id: str, end: Event) -> None:
        """Push the agent's commits so far as a work-in-progress checkpoint (issue 17, SPEC §7): if this
        host dies during the next turn, the session moves and the new host starts from them. The turn
        activity's result carries the commit to the workflow (`checkpoint`, kept across moves). A turn
        that touched a protected path, committed or not, pushes nothing."""
        stored = self.sessions.get(session_id)
        if stored is None or (isinstance(end, TurnExited) and end.protected_paths_touched):
            return
        context = await self._session_context(stored, with_changes=False)
        sha = await self.finisher.checkpoint(stored.session, context, last=stored.context.checkpoint)
        if sha is not None and sha != stored.context.checkpoint:
            await self.change_context(session_id, lambda known: replace(known, checkpoint=sha))

    def adopt(self, data: dict[str, Any]) -> StoredSession:
        """Take the workflow's copy of the session, keeping this host's own facts about it."""
        session = Session.from_dict(data["session"])
        self._workflow_of[session.id] = data["workflow_id"]
        known = self.sessions.get(session.id)
        record = RuntimeContext.from_dict(data["context"])  # the workflow carries it as JSON; the host stores it typed
        record = record.with_host_facts(known.context) if known is not None else record.without_host_facts()
        self.sessions.record(session, record, None, (), now=self.clock())
        self._note_policy_limits(session.repo, record)
        stored = self.sessions.get(session.id)
        assert stored is not None
        return stored

    def result(self, session_id: str, events: Sequence[Event]) -> dict[str, Any]:
        return {"session_id": session_id, "events": [event_to_dict(e) for e in events],
                "context": known.to_dict() if (known := self.context_of(session_id)) is not None else None}


class HostActivities:
    """The activities one worker host registers (names in `bot/temporal/workflow.py`)."""

    def __init__(self, engine: HostEngine) -> None:
        self.engine = engine

    @activity.defn(name=CLAIM_HOST)
    async def claim_host(self, first: dict[str, Any] | None = None) -> Any:
        """Runs on the shared queue: whichever host picks it up takes the session. A host whose agent
        slots are all taken holds on to the claim until one frees up; the host takes one claim at a
        time, so meanwhile the next sessions go to hosts with room.

        With `first`, the session's first command on a host (its workspace, as a rule), the host carries
        it out before answering, which spares the session a second activity on the way to its agent. A
        command that raises is not retried here (a claim is retried forever): the answer has no result,
        and the workflow carries the command out again on this host, with the usual retries."""
        async with _heartbeating():
            while self.engine.slots.busy():
                await asyncio.sleep(CLAIM_POLL_SECONDS)
            if first is None:
                return self.engine.host_id
            try:
                result: dict[str, Any] | None = await self._carry_out(first)
            except Exception:  # noqa: BLE001 - retried as a command of its own, on this host
                log.warning("the first command of %s failed on claiming it", first.get("workflow_id"), exc_info=True)
                result = None
        return {"host": self.engine.host_id, "result": result}

    @activity.defn(name=CARRY_OUT)
    async def carry_out(self, data: dict[str, Any]) -> dict[str, Any]:
        async with _heartbeating():
            return await self._carry_out(data)

    async def _carry_out(self, data: dict[str, Any]) -> dict[str, Any]:
        stored = self.engine.adopt(data)
        command: Command = command_from_dict(data["command"])
        if isinstance(command, EnsureWorkspace) and data.get("prepare_only"):
            return await self._prepare_moved(stored, command)
        events = await self.engine._execute(stored.session.id, command)  # noqa: SLF001
        return self.engine.result(stored.session.id, events)

    async def _prepare_moved(self, stored: StoredSession, command: EnsureWorkspace) -> dict[str, Any]:
        """A session moved here from a lost host: its worktree from the branch as last pushed, or from
        the base when nothing was pushed yet. The workflow decides nothing from this; it only learns the
        worktree."""
        if stored.context.checkpoint:  # the last host's work-in-progress push is Shepherd's own
            self.engine.finisher.remember_push(stored.session, stored.session.repo, stored.context.checkpoint)
        events = await self.engine._ensure_workspace(stored, command)  # noqa: SLF001 - the local engine's executor
        if any(isinstance(event, WorkspaceFailed) for event in events):
            fresh = EnsureWorkspace(command.branch, command.base_branch, from_kept_branch=False)
            await self.engine._ensure_workspace(self.engine.sessions.get(stored.session.id) or stored, fresh)  # noqa: SLF001
        return self.engine.result(stored.session.id, ())

    @activity.defn(name=STOP_AGENT)
    async def stop_agent(self, data: dict[str, Any]) -> dict[str, Any]:
        stored = self.engine.adopt(data)
        command = command_from_dict(data["command"])
        assert isinstance(command, StopAgent)
        self.engine._stop_agent(stored, command.grace_seconds)  # noqa: SLF001
        return self.engine.result(stored.session.id, ())

    @activity.defn(name=RUN_TURN)
    async def run_turn(self, data: dict[str, Any]) -> dict[str, Any]:
        stored = self.engine.adopt(data)
        command = command_from_dict(data["command"])
        assert isinstance(command, StartTurn)
        session = stored.session
        front = bool(session.running_turn and session.running_turn.front)
        async with _heartbeating(), self.engine.slots.slot(session.id, session.repo, front=front):
            self.engine._started.pop(session.id, None)  # noqa: SLF001
            events = await self.engine._execute(session.id, command)  # noqa: SLF001
            for event in events:
                await self.engine.apply(session.id, event)
            handle = self.engine._started.pop(session.id, None)  # noqa: SLF001
            if handle is not None:
                await self.engine._watch_turn(session.id, handle)  # noqa: SLF001
        return self.engine.result(session.id, ())

    def all(self) -> list[Any]:
        return [self.claim_host, self.carry_out, self.stop_agent, self.run_turn]


@contextlib.asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the block runs: a host that dies stops heartbeating, and its sessions move."""
    beating = asyncio.create_task(_heartbeat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def _heartbeat() -> None:
    timeout = activity.info().heartbeat_timeout
    every = min(HEARTBEAT_EVERY_SECONDS, timeout.total_seconds() / 4) if timeout else HEARTBEAT_EVERY_SECONDS
    while True:
        activity.heartbeat()
        await asyncio.sleep(every)
