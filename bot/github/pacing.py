"""Write pacing per installation: spacing, GitHub's content-creation limits, pauses GitHub asks for, and priorities.

A rate limit GitHub signals on any one request (a secondary limit's `Retry-After`, a primary limit's
reset) is the installation's, not the request's: the gate pauses every write of the installation
until it passes, and the writes waiting then leave most urgent first.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import IntEnum

# GitHub's secondary limits for content-creating requests, and its advice of >= 1 s between writes.
DEFAULT_MIN_SPACING = 1.0
DEFAULT_PER_MINUTE = 80
DEFAULT_PER_HOUR = 500
MINUTE = 60.0
HOUR = 3600.0


class Priority(IntEnum):
    """Lower values go first among writes that are waiting."""

    URGENT = 0  # new questions, final states: a person is waiting for them
    NORMAL = 1
    LOW = 2  # periodic status edits: the next one supersedes them anyway


#: The priority of the write the current task is about to send; set by the client's write methods.
current_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "shepherd_write_priority", default=Priority.NORMAL
)


class WriteBudget:
    """Pure bookkeeping: when may the next write go, given the writes already sent."""

    def __init__(
        self,
        min_spacing: float = DEFAULT_MIN_SPACING,
        per_minute: int = DEFAULT_PER_MINUTE,
        per_hour: int = DEFAULT_PER_HOUR,
    ) -> None:
        self.min_spacing = min_spacing
        self.per_minute = per_minute
        self.per_hour = per_hour
        self._sent: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds from `now` until the next write may be sent (0 when it may go now)."""
        self._forget_before(now - HOUR)
        if not self._sent:
            return 0.0
        ready = self._sent[-1] + self.min_spacing
        if len(self._sent) >= self.per_hour:
            ready = max(ready, self._sent[-self.per_hour] + HOUR)
        in_last_minute = sum(1 for t in reversed(self._sent) if t > now - MINUTE)
        if in_last_minute >= self.per_minute:
            ready = max(ready, self._sent[-self.per_minute] + MINUTE)
        return max(0.0, ready - now)

    def record(self, now: float) -> None:
        """Count a write sent at `now`."""
        self._sent.append(now)

    def sent_times(self) -> list[float]:
        """The writes still counted, oldest first (to carry the budget over to a new owner)."""
        return list(self._sent)

    def _forget_before(self, cutoff: float) -> None:
        while self._sent and self._sent[0] <= cutoff:
            self._sent.popleft()


class WriteGate:
    """The async gate one installation's writes pass, most urgent first, then first come.

    One dispatcher task runs while writes wait and ends when none do; it re-reads the queue (and
    the pause) after every sleep so a write that arrives urgent during a wait overtakes those
    already waiting, and a pause that arrives during a wait holds them all.

    The waiting queue and its dispatcher are shared with the Temporal engine's gate
    (`bot.temporal.permits.TemporalWriteGate`), which replaces only what decides when the most urgent
    write may go (`_clear`) and what a release or a landing means (`_release`, `landed`).
    """

    def __init__(
        self,
        budget: WriteBudget | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.budget = budget or WriteBudget()
        self._clock = clock
        self._sleep = sleep
        self._waiting: list[tuple[int, int, asyncio.Future[None], bool]] = []
        self._in_flight = 0
        self._landed = asyncio.Event()
        self._order = itertools.count()
        self._dispatcher: asyncio.Task[None] | None = None
        self._paused_until = float("-inf")

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future, _ in self._waiting if not future.done())

    def landed(self) -> None:
        """A write released with `hold=True` has its answer: the next may be weighed."""
        self._in_flight = max(0, self._in_flight - 1)
        self._landed.set()

    def pause(self, seconds: float) -> bool:
        """Hold every write for `seconds` from now; True when this lengthens the pause already on."""
        until = self._clock() + max(0.0, seconds)
        if until <= self._paused_until:
            return False
        self._paused_until = until
        return True

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when writes may go)."""
        return max(0.0, self._paused_until - self._clock())

    async def wait_out_pause(self) -> None:
        """Return once no pause is on (for reads: they are not spaced, but GitHub's wait is for all)."""
        while (left := self.paused_for()) > 0:
            await self._sleep(left)

    async def wait(self, priority: Priority = Priority.NORMAL, *, hold: bool = False) -> None:
        """Return when a write of `priority` may be sent; the write counts as sent then.

        With `hold`, no other write is released until the caller reports the answer with `landed()`.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (int(priority), next(self._order), future, hold))
        self._arrived(int(priority))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="shepherd-write-gate")
        try:
            await future
        except asyncio.CancelledError:
            if hold and future.done() and not future.cancelled():
                self.landed()  # released, but its writer is gone
            raise

    # -- what the Temporal gate replaces ------------------------------------------------------------

    def _arrived(self, priority: int) -> None:
        """A write of `priority` joined the queue."""

    async def _clear(self, priority: int) -> bool:
        """Wait for the most urgent waiting write (of `priority`): True when it may go now (and it counts
        as sent), False when the queue must be weighed again first (a wait ended)."""
        if self._in_flight:
            self._landed.clear()
            await self._landed.wait()
            return False
        now = self._clock()
        delay = max(self.budget.delay(now), self._paused_until - now)
        if delay > 0:
            await self._sleep(delay)
            return False
        self.budget.record(now)
        return True

    def _release(self, hold: bool) -> None:
        """The cleared write goes now."""
        if hold:
            self._in_flight += 1

    def _unused(self) -> None:
        """A write was cleared but every writer had gone away meanwhile (the Temporal gate hands its
        permit back)."""

    def _idle(self) -> None:
        """The dispatcher stops: no write waits any more."""

    # -- the queue ----------------------------------------------------------------------------------

    def _drop_gone(self) -> None:
        while self._waiting and self._waiting[0][2].done():  # cancelled while waiting
            heapq.heappop(self._waiting)

    async def _dispatch(self) -> None:
        try:
            while True:
                self._drop_gone()
                if not self._waiting:
                    self._idle()
                    return
                if not await self._clear(self._waiting[0][0]):
                    continue
                self._drop_gone()
                if not self._waiting:
                    self._unused()
                    self._idle()
                    return
                _, _, future, hold = heapq.heappop(self._waiting)
                self._release(hold)
                future.set_result(None)
                # Let the released writer run before the next one is weighed.
                await asyncio.sleep(0)
        except BaseException as exc:
            for _, _, future, _ in self._waiting:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            self._waiting.clear()
            self._idle()
            raise

    async def close(self) -> None:
        """Stop the dispatcher (waiting writes are cancelled)."""
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()
            try:
                await self._dispatcher
            except asyncio.CancelledError:
                pass


class Pacer:
    """One `WriteGate` per installation, created on first use."""

    def __init__(
        self,
        *,
        min_spacing: float = DEFAULT_MIN_SPACING,
        per_minute: int = DEFAULT_PER_MINUTE,
        per_hour: int = DEFAULT_PER_HOUR,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._limits = (min_spacing, per_minute, per_hour)
        self._clock = clock
        self._sleep = sleep
        self._gates: dict[int, WriteGate] = {}

    def gate(self, installation_id: int) -> WriteGate:
        gate = self._gates.get(installation_id)
        if gate is None:
            gate = self._make_gate(installation_id)
            self._gates[installation_id] = gate
        return gate

    def _make_gate(self, installation_id: int) -> WriteGate:
        return WriteGate(WriteBudget(*self._limits), clock=self._clock, sleep=self._sleep)

    async def forget(self, installation_id: int) -> None:
        gate = self._gates.pop(installation_id, None)
        if gate is not None:
            await gate.close()

    async def close(self) -> None:
        for installation_id in list(self._gates):
            await self.forget(installation_id)
