"""Dispatches stored deliveries through the composed `Router`, in order per issue, with retries.

Each callback the router selects is run on its own and its outcome is stored per delivery and
handler, so one handler's error neither stops its siblings nor makes them run twice: a retry re-runs
only the handlers that have not succeeded. Deliveries that share an ordering key (one issue or PR)
run one at a time in arrival order; a delivery that keeps failing holds up only its own key. During a
burst of webhooks the consumer starts only a trickle of deliveries (`bot.ingest.pressure`), so the webhook
keeps answering fast; the stored backlog is handled once the burst is over.
"""

from __future__ import annotations

import asyncio
import functools
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gidgethub import routing, sansio

from bot.ingest.writer import DeliveryWriter, Outcome
from bot.core.payload import load_payload
from bot.ingest.pressure import IngestPressure
from bot.metrics import Metrics
from bot.store.database import PENDING, Store

# Bodies of queued deliveries kept in memory, at most; beyond it they are read back from the store.
HELD_BODY_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing delivery is retried."""

    max_attempts: int = 6
    first_delay: float = 5.0
    max_delay: float = 600.0

    def delay(self, attempt: int) -> float:
        """Delay before the attempt after ``attempt`` failed ones (exponential, capped)."""
        return float(min(self.max_delay, self.first_delay * (2 ** max(0, attempt - 1))))


def handler_name(callback: Callable[..., Any]) -> str:
    """A stable name for a handler, used as the key of its stored outcome."""
    return f"{callback.__module__}.{getattr(callback, '__qualname__', repr(callback))}"


@dataclass
class _Pending:
    """What the scheduler keeps in memory about one pending delivery.

    A delivery enqueued by the webhook carries its event name and body along (unless too many bodies
    are held already); otherwise the body is read back from the store when its turn comes. A delivery
    recovered at start may have run before: its handler outcomes are looked up first."""

    id: str
    next_attempt_at: float
    attempts: int
    event: sansio.Event | None = None
    installation_id: int | None = None
    may_have_run: bool = True
    event_name: str | None = None
    body: bytes | None = None


# `shepherd_deliveries_handled_total{outcome}`: what became of each attempt to handle a stored delivery.
HANDLED_DONE = "done"
HANDLED_RETRIED = "retried"
HANDLED_FAILED = "failed"


class Consumer:
    """Runs stored deliveries. `enqueue()` after storing one; `start()`/`stop()` around the app's life.

    The store is the truth; the consumer keeps an in-memory index of pending delivery ids per
    ordering key, rebuilt from the store at start, so scheduling never rescans the table.
    """

    def __init__(
        self,
        *,
        store: Store,
        router: routing.Router,
        client_for: Callable[[int | None], Any],
        dependencies: Mapping[str, Any],
        clock: Callable[[], float],
        retry: RetryPolicy = RetryPolicy(),
        concurrency: int = 16,
        writer: DeliveryWriter | None = None,
        pressure: IngestPressure | None = None,
        metrics: Metrics | None = None,
        before_handlers: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        """`before_handlers(payload)` runs before a delivery's handlers (the Temporal front end refreshes
        its copy of the sessions the delivery is about there)."""
        self._before_handlers = before_handlers
        self._store = store
        # Finished deliveries are recorded in groups by the writer the webhook also stores through.
        self._writer = writer if writer is not None else DeliveryWriter(store, clock)
        self._pressure = pressure if pressure is not None else IngestPressure()
        self._held_bytes = 0
        self._router = router
        self._client_for = client_for
        self._dependencies = dict(dependencies)
        self._clock = clock
        self._metrics = metrics
        self._retry = retry
        self._concurrency = concurrency
        self._wakeup = asyncio.Event()
        self._held_back = False  # the loop sleeps until the trickle's next start: no need to wake it
        self._routed: dict[tuple[str, str | None], bool] = {}  # (event, action) -> any handler?
        self._queues: dict[str, deque[_Pending]] = {}  # ordering key -> pending, oldest first
        self._running: dict[str, asyncio.Task[None]] = {}  # ordering key -> task
        self._loop_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    def enqueue(
        self,
        delivery_id: str,
        ordering_key: str,
        *,
        event: str,
        action: str | None,
        installation_id: int | None,
        body: bytes,
    ) -> None:
        """A delivery was just stored: schedule it behind the others of its key.

        Most deliveries concern nothing Shepherd acts on (no handler matches them); those are finished
        at once instead of waiting their turn behind the issue's other deliveries. Every handler is
        routed by event and action, so those two decide it."""
        self._pressure.arrived()
        routed = self._routed.get((event, action))
        if routed is None:  # asked once per kind of delivery: the router does not change while running
            kind = sansio.Event({} if action is None else {"action": action}, event=event, delivery_id="")
            routed = self._routed[(event, action)] = bool(self._router.fetch(kind))
        if not routed:
            self._writer.mark_done(delivery_id)
            return
        held = self._held_bytes + len(body) <= HELD_BODY_BYTES
        if held:
            self._held_bytes += len(body)
        pending = _Pending(
            delivery_id,
            self._clock(),
            0,
            installation_id=installation_id,
            may_have_run=False,
            event_name=event,
            body=body if held else None,
        )
        self._queues.setdefault(ordering_key, deque()).append(pending)
        if not self._held_back:  # during a burst the loop wakes for the trickle anyway
            self._wakeup.set()

    def wake(self) -> None:
        self._wakeup.set()

    def waiting(self) -> int:
        """How many stored deliveries wait to be handled or are being handled."""
        return sum(len(queue) for queue in self._queues.values())

    def start(self) -> None:
        if self._loop_task is None:
            self._queues.clear()
            self._held_bytes = 0
            for delivery in self._store.pending_deliveries(limit=1_000_000):
                self._queues.setdefault(delivery.ordering_key, deque()).append(
                    _Pending(delivery.id, delivery.next_attempt_at, delivery.attempts)
                )
            self._loop_task = asyncio.create_task(self._run(), name="shepherd-consumer")

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._running.values())
        for job in running:
            job.cancel()
        for job in running:
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self._writer.flush()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until no delivery is due or running (for tests and orderly shutdown)."""
        async with asyncio.timeout(timeout):
            while True:
                self._idle.clear()
                self.wake()
                if not self._running and not self._due():
                    await self._writer.flush()
                    return
                await self._idle.wait()

    def _due(self) -> list[_Pending]:
        now = self._clock()
        return [queue[0] for queue in self._queues.values() if queue[0].next_attempt_at <= now]

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            timeout, self._held_back = self._start_ready()
            if not self._running and not self._held_back:
                self._idle.set()
            # Woken by news, or when the earliest retry or the trickle's next start is due.
            alarm = None if timeout is None else asyncio.get_running_loop().call_later(timeout, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                self._held_back = False
                if alarm is not None:
                    alarm.cancel()

    def _start_ready(self) -> tuple[float | None, bool]:
        """Start what may run now. Return how long until something else may start (None: nothing
        waits), and whether a due delivery is held back because the webhook is busy."""
        now = self._clock()
        timeout: float | None = None
        for key, queue in self._queues.items():
            if key in self._running:
                continue
            head = queue[0]
            if head.next_attempt_at > now:
                wait = head.next_attempt_at - now
                timeout = wait if timeout is None else min(timeout, wait)
                continue
            if len(self._running) >= self._concurrency:
                break
            wait = self._pressure.may_start()
            if wait > 0:
                return (wait if timeout is None else min(timeout, wait)), True
            job = asyncio.create_task(self._handle_head(key, head), name=f"delivery-{head.id}")
            self._running[key] = job
            job.add_done_callback(functools.partial(self._on_done, key))
        return timeout, False

    def _finished(self, key: str) -> None:
        self._running.pop(key, None)
        self.wake()

    def _on_done(self, key: str, _task: asyncio.Task[None]) -> None:
        self._finished(key)

    async def _handle_head(self, key: str, head: _Pending) -> None:
        if head.event is None and head.body is not None:
            body, head.body = head.body, None
            self._held_bytes -= len(body)
            payload = load_payload(body)
            if isinstance(payload, dict):
                assert head.event_name is not None
                head.event = sansio.Event(payload, event=head.event_name, delivery_id=head.id)
        if head.event is None:
            delivery = self._store.delivery(head.id)
            if delivery is None or delivery.status != PENDING:
                self._pop(key)
                return
            try:
                payload = delivery.payload()
            except ValueError:
                payload = None
            if payload is not None:
                head.event = sansio.Event(payload, event=delivery.event, delivery_id=delivery.id)
            head.installation_id = delivery.installation_id
        next_attempt_at = await self._handle(head)
        if next_attempt_at is None:
            self._pop(key)
        else:
            head.next_attempt_at, head.attempts = next_attempt_at, head.attempts + 1
            head.may_have_run = True

    def _pop(self, key: str) -> None:
        queue = self._queues.get(key)
        if queue:
            queue.popleft()
            if not queue:
                del self._queues[key]

    async def _handle(self, delivery: _Pending) -> float | None:
        """Run the delivery; None when it is finished (done or failed for good), else its next attempt."""
        outcomes: list[Outcome] = []
        try:
            if delivery.event is None:
                raise ValueError("the stored body is not JSON")
            await self._run_handlers(delivery, outcomes)
        except Exception as exc:  # the delivery itself is unusable
            log.exception("delivery %s could not be dispatched", delivery.id)
            outcomes.append(Outcome("(dispatch)", False, repr(exc)))
        now = self._clock()
        errors = [f"{o.handler}: {o.error}" for o in outcomes if not o.ok]
        if not errors:
            # The common case: recorded with the done mark, grouped with other done marks in one commit.
            self._writer.mark_done(delivery.id, outcomes)
            self._count(HANDLED_DONE)
            return None
        # A retry must know which handlers already succeeded: recorded before it is scheduled.
        for outcome in outcomes:
            if outcome.handler != "(dispatch)":
                self._store.record_handler(
                    delivery.id, outcome.handler, ok=outcome.ok, error=outcome.error, now=now
                )
        summary = "; ".join(errors)[:2000]
        attempt = delivery.attempts + 1
        if attempt >= self._retry.max_attempts:
            log.error("delivery %s failed for good after %d attempts: %s", delivery.id, attempt, summary)
            self._store.fail_delivery(delivery.id, error=summary, now=now)
            self._count(HANDLED_FAILED)
            return None
        delay = self._retry.delay(attempt)
        log.warning(
            "delivery %s attempt %d failed (%s); retrying in %.1fs", delivery.id, attempt, summary, delay
        )
        self._store.retry_delivery(delivery.id, error=summary, next_attempt_at=now + delay)
        self._count(HANDLED_RETRIED)
        return now + delay

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.deliveries_handled.labels(outcome).inc()

    async def _run_handlers(self, delivery: _Pending, outcomes: list[Outcome]) -> None:
        """Run every handler that has not yet succeeded for this delivery, adding to `outcomes`."""
        event = delivery.event
        assert event is not None
        if delivery.installation_id is None:
            # Every handler acts through an installation's token; GitHub puts an installation on every
            # App delivery, so one without it is not for Shepherd to act on.
            log.info("delivery %s (%s) names no installation; nothing to do", delivery.id, event.event)
            return
        done = self._store.succeeded_handlers(delivery.id) if delivery.may_have_run else set()
        callbacks = sorted(self._router.fetch(event), key=handler_name)
        pending = [cb for cb in callbacks if handler_name(cb) not in done]
        if not pending:
            return
        gh = self._client_for(delivery.installation_id)
        if self._before_handlers is not None:
            await self._before_handlers(event.data)
        for callback in pending:
            name = handler_name(callback)
            try:
                await _call(callback, event, gh, self._dependencies)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("handler %s failed on delivery %s", name, delivery.id)
                outcomes.append(Outcome(name, False, repr(exc)[:1000]))
            else:
                outcomes.append(Outcome(name, True, None))


async def _call(
    callback: Callable[..., Awaitable[Any]],
    event: sansio.Event,
    gh: Any,
    dependencies: Mapping[str, Any],
) -> None:
    await callback(event, gh, **dependencies)
