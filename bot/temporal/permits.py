"""The GitHub client's write gate on the Temporal engine: permits from the installation's writes workflow.

`TemporalWriteGate` is a `bot.github.pacing.WriteGate` (the same waiting queue and dispatcher), so
`GitHubClient` uses it unchanged; `TemporalPacer` hands one out per installation, as `Pacer` does. Inside a
process the writes of an installation wait in that one local queue, most urgent first; the process asks
the installation's workflow (`bot/temporal/writes.py`) for one permit at a time, at the priority of its
most urgent waiting write, and gives the permit to whichever write is most urgent when it arrives. A limit
GitHub announces in a write's answer travels with that write's landing (a `landed` signal, or the next
`acquire` of this process), so no host's next write leaves before the workflow knows of it.

Reads are not queued: they wait out the pauses this process knows of (its own writes' limits).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from bot.github.client import GitHubApp
from bot.github.pacing import DEFAULT_PER_HOUR, DEFAULT_PER_MINUTE, Pacer, WriteGate
from bot.metrics import Metrics
from bot.settings import Settings
from bot.temporal.writes import (
    LEASE_SECONDS,
    SIGNAL_LANDED,
    SIGNAL_PAUSE,
    SIGNAL_RAISE,
    SIGNAL_WITHDRAW,
    UPDATE_ACQUIRE,
    WRITES_QUEUE,
    WRITES_WORKFLOW,
    WritesWorkflow,
    writes_id,
)

log = logging.getLogger(__name__)

ASK_ATTEMPTS = 6  # Temporal calls that fail in a row before the waiting writes fail with the error
ASK_BACKOFF = 0.2
AGAIN_DELAY = 0.05  # the workflow is starting over: ask its next run


class TemporalWriteGate(WriteGate):
    """One installation's writes in this process, let out by the installation's writes workflow.

    The waiting queue and its dispatcher are the one-process gate's (`WriteGate`); what decides when the
    most urgent write may go is a permit from the workflow, and the pause, spacing and limits are the
    workflow's."""

    def __init__(
        self,
        client: Client,
        installation_id: int,
        limits: dict[str, Any],
        *,
        owner: str,
        lease: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        super().__init__(clock=clock, sleep=sleep)  # its budget stays unused: the workflow keeps the count
        self._client = client
        self.installation_id = installation_id
        self._limits = limits
        self._lease = lease  # how long the workflow waits for a permit's `landed` before taking it back
        self._owner = owner  # names this process's tickets in the workflow's history
        self._handle: WorkflowHandle[Any, Any] | None = None
        self._asking: tuple[str, int] | None = None  # the ticket and priority of the request in flight
        self._ticket: str | None = None  # the permit just granted, for the write about to be released
        self._held: deque[str] = deque()  # permits whose writes have not landed yet, oldest first
        self._landing: dict[str, Any] | None = None  # a landed write, told with the next request
        self._pending_pause = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the WriteGate interface ------------------------------------------------------------------

    def landed(self) -> None:
        """The oldest held write has its answer, with the pause GitHub asked for in it, if any.

        When another write of this process waits, the news goes with its request for a permit (one
        call instead of two); otherwise it goes to the workflow at once, as other hosts may be waiting."""
        pause, self._pending_pause = self._pending_pause, 0.0
        if self._held:
            landing = {"ticket": self._held.popleft(), "pause": pause}
            if self.waiting and self._dispatcher is not None and not self._dispatcher.done():
                self._landing = landing
            else:
                self._signal_soon(SIGNAL_LANDED, landing)
            self._landed.set()
        elif pause:
            self._signal_soon(SIGNAL_PAUSE, {"seconds": pause})

    def pause(self, seconds: float) -> bool:
        """Hold every write of the installation, on every host, for `seconds` from now.

        The client calls `landed()` right after for the write whose answer announced it, which carries
        it to the workflow; a pause announced on a read goes on its own."""
        seconds = max(0.0, seconds)
        self._pending_pause = max(self._pending_pause, seconds)
        try:
            asyncio.get_running_loop().call_soon(self._flush_pause)
        except RuntimeError:  # no loop yet (a pause restored at start-up): it goes with the next write
            pass
        return super().pause(seconds)

    async def close(self) -> None:
        await super().close()
        self._tell_landing()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - best effort
                log.debug("a last signal to %s did not go", writes_id(self.installation_id))

    # -- the dispatcher's steps (see WriteGate) ---------------------------------------------------

    def _arrived(self, priority: int) -> None:
        if self._asking is not None and priority < self._asking[1]:
            ticket = self._asking[0]
            self._asking = (ticket, priority)
            self._signal_soon(SIGNAL_RAISE, {"ticket": ticket, "priority": priority})

    async def _clear(self, priority: int) -> bool:
        if self._held:
            # One write of the installation in flight at a time: this process's own lands first, and
            # its landing rides with the request below.
            self._landed.clear()
            await self._landed.wait()
            return False
        self._ticket = await self._permit(priority)
        return True

    def _release(self, hold: bool) -> None:
        assert self._ticket is not None
        ticket, self._ticket = self._ticket, None
        if hold:
            self._held.append(ticket)
        else:
            self._signal_soon(SIGNAL_LANDED, {"ticket": ticket, "pause": 0.0})

    def _unused(self) -> None:
        if self._ticket is not None:  # every writer went away meanwhile: hand the permit back
            self._signal_soon(SIGNAL_LANDED, {"ticket": self._ticket, "pause": 0.0})
            self._ticket = None

    def _idle(self) -> None:
        self._tell_landing()

    # -- talking to the workflow ------------------------------------------------------------------

    def _tell_landing(self) -> None:
        if self._landing is not None:
            landing, self._landing = self._landing, None
            self._signal_soon(SIGNAL_LANDED, landing)

    def _flush_pause(self) -> None:
        if self._pending_pause:  # not taken by a `landed()`: it was a read's
            pause, self._pending_pause = self._pending_pause, 0.0
            self._signal_soon(SIGNAL_PAUSE, {"seconds": pause})

    async def _ensure(self, *, again: bool = False) -> WorkflowHandle[Any, Any]:
        if self._handle is None or again:
            await self._client.start_workflow(
                WRITES_WORKFLOW, {"limits": self._limits, "lease": self._lease}, id=writes_id(self.installation_id),
                task_queue=WRITES_QUEUE, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            self._handle = self._client.get_workflow_handle(writes_id(self.installation_id))
        return self._handle

    def _signal_soon(self, name: str, data: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._signal(name, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _signal(self, name: str, data: dict[str, Any]) -> None:
        for attempt in range(1, ASK_ATTEMPTS + 1):
            try:
                handle = await self._ensure(again=attempt > 1)
                await handle.signal(name, data)
                return
            except RPCError as error:
                if attempt == ASK_ATTEMPTS:
                    log.warning("could not tell %s %s: %s", writes_id(self.installation_id), name, error)
                    return
                await self._sleep(ASK_BACKOFF * attempt)

    async def _permit(self, priority: int) -> str:
        """Ask the workflow until it lets one write of this process go; returns the permit's ticket. The
        landing of this process's last write, if not told yet, goes with the first request."""
        failures = 0
        while True:
            ticket = f"{self._owner}:{uuid.uuid4().hex}"
            self._asking = (ticket, priority)
            request: dict[str, Any] = {"ticket": ticket, "priority": priority, "hold": True}
            landing, self._landing = self._landing, None
            if landing is not None:
                request["landed"] = landing
            try:
                handle = await self._ensure(again=failures > 0)
                answer = await handle.execute_update(UPDATE_ACQUIRE, request, id=ticket)
            except asyncio.CancelledError:
                self._signal_soon(SIGNAL_WITHDRAW, {"ticket": ticket})
                if landing is not None:
                    self._signal_soon(SIGNAL_LANDED, landing)  # told twice at worst: the workflow ignores a repeat
                raise
            except Exception as error:  # noqa: BLE001 - RPC and update failures alike: ask again, then give up
                self._signal_soon(SIGNAL_WITHDRAW, {"ticket": ticket})
                if landing is not None:
                    self._signal_soon(SIGNAL_LANDED, landing)
                failures += 1
                if failures >= ASK_ATTEMPTS or (isinstance(error, RPCError)
                                                and error.status == RPCStatusCode.PERMISSION_DENIED):
                    raise
                await self._sleep(ASK_BACKOFF * failures)
                continue
            finally:
                self._asking = None
            if answer.get("granted"):
                return ticket
            await self._sleep(AGAIN_DELAY)


class TemporalPacer(Pacer):
    """One `TemporalWriteGate` per installation (the `Pacer` of a front end or worker host on Temporal)."""

    def __init__(
        self,
        client: Client,
        *,
        owner: str,
        min_spacing: float,
        per_minute: int = DEFAULT_PER_MINUTE,
        per_hour: int = DEFAULT_PER_HOUR,
        lease: float = LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        super().__init__(min_spacing=min_spacing, per_minute=per_minute, per_hour=per_hour,
                         clock=clock, sleep=sleep)
        self._client = client
        self._owner = owner
        self._lease = lease

    def _make_gate(self, installation_id: int) -> TemporalWriteGate:
        min_spacing, per_minute, per_hour = self._limits
        limits = {"min_spacing": min_spacing, "per_minute": per_minute, "per_hour": per_hour}
        return TemporalWriteGate(self._client, installation_id, limits, owner=self._owner,
                                 lease=self._lease, clock=self._clock, sleep=self._sleep)


def paced_github(settings: Settings, session: aiohttp.ClientSession, client: Client, *, metrics: Metrics,
                 owner: str, lease: float = LEASE_SECONDS) -> GitHubApp:
    """The door to GitHub of a front end or worker host on Temporal: its writes pass the shared gates."""
    assert settings.app_id is not None and settings.private_key is not None
    pacer = TemporalPacer(client, owner=owner, min_spacing=settings.write_spacing_seconds, lease=lease)
    return GitHubApp(session, app_id=settings.app_id, private_key=settings.private_key.get_secret_value(),
                     api_url=settings.api_url, metrics=metrics, write_spacing=settings.write_spacing_seconds,
                     pacer=pacer)


def writes_worker(client: Client) -> Worker:
    """Runs the installations' writes workflows; every worker host runs one."""
    return Worker(client, task_queue=WRITES_QUEUE, workflows=[WritesWorkflow])
