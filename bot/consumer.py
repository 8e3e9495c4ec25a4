"""Dispatches stored deliveries through the composed `Router`, in order per issue, with retries.

Each callback the router selects is run on its own and its outcome is stored per delivery and
handler, so one handler's error neither stops its siblings nor makes them run twice: a retry re-runs
only the handlers that have not succeeded. Deliveries that share an ordering key (one issue or PR)
run one at a time in arrival order; a delivery that keeps failing holds up only its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gidgethub import routing, sansio

from bot.store import Delivery, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing delivery is retried."""

    max_attempts: int = 6
    first_delay: float = 5.0
    max_delay: float = 600.0

    def delay(self, attempt: int) -> float:
        """Delay before the attempt after ``attempt`` failed ones (exponential, capped)."""
        return min(self.max_delay, self.first_delay * (2 ** max(0, attempt - 1)))


def handler_name(callback: Callable[..., Any]) -> str:
    """A stable name for a handler, used as the key of its stored outcome."""
    return f"{callback.__module__}.{getattr(callback, '__qualname__', repr(callback))}"


class Consumer:
    """Runs stored deliveries. `wake()` after storing one; `start()`/`stop()` around the app's life."""

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
    ) -> None:
        self._store = store
        self._router = router
        self._client_for = client_for
        self._dependencies = dict(dependencies)
        self._clock = clock
        self._retry = retry
        self._concurrency = concurrency
        self._wakeup = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}  # ordering key -> task
        self._loop_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        if self._loop_task is None:
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

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until no delivery is due or running (for tests and orderly shutdown)."""
        async with asyncio.timeout(timeout):
            while True:
                self._idle.clear()
                self.wake()
                if not self._running and not self._due():
                    return
                await self._idle.wait()

    def _heads(self) -> dict[str, Delivery]:
        """The oldest pending delivery of each ordering key: the only one of its key that may run."""
        heads: dict[str, Delivery] = {}
        for delivery in self._store.pending_deliveries():
            heads.setdefault(delivery.ordering_key, delivery)
        return heads

    def _due(self) -> list[Delivery]:
        now = self._clock()
        return [d for d in self._heads().values() if d.next_attempt_at <= now]

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            next_due = self._start_ready()
            if not self._running:
                self._idle.set()
            timeout = None if next_due is None else max(0.0, next_due - self._clock())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _start_ready(self) -> float | None:
        """Start what may run now; return when the next waiting delivery becomes due."""
        now = self._clock()
        next_due: float | None = None
        for key, delivery in self._heads().items():
            if key in self._running:
                continue
            if delivery.next_attempt_at > now:
                next_due = min(next_due or delivery.next_attempt_at, delivery.next_attempt_at)
                continue
            if len(self._running) >= self._concurrency:
                break
            job = asyncio.create_task(self._handle(delivery), name=f"delivery-{delivery.id}")
            self._running[key] = job
            job.add_done_callback(lambda _t, key=key: self._finished(key))
        return next_due

    def _finished(self, key: str) -> None:
        self._running.pop(key, None)
        self.wake()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            errors = await self.run_handlers(delivery)
        except Exception as exc:  # the delivery itself is unusable (e.g. not JSON any more)
            log.exception("delivery %s could not be dispatched", delivery.id)
            errors = [f"dispatch: {exc!r}"]
        now = self._clock()
        if not errors:
            self._store.finish_delivery(delivery.id, now=now)
            return
        summary = "; ".join(errors)[:2000]
        attempt = delivery.attempts + 1
        if attempt >= self._retry.max_attempts:
            log.error("delivery %s failed for good after %d attempts: %s", delivery.id, attempt, summary)
            self._store.fail_delivery(delivery.id, error=summary, now=now)
        else:
            delay = self._retry.delay(attempt)
            log.warning(
                "delivery %s attempt %d failed (%s); retrying in %.1fs",
                delivery.id, attempt, summary, delay,
            )
            self._store.retry_delivery(delivery.id, error=summary, next_attempt_at=now + delay)

    async def run_handlers(self, delivery: Delivery) -> list[str]:
        """Run every handler that has not yet succeeded for this delivery; return their errors."""
        event = sansio.Event(delivery.payload(), event=delivery.event, delivery_id=delivery.id)
        done = self._store.succeeded_handlers(delivery.id)
        callbacks = sorted(self._router.fetch(event), key=handler_name)
        pending = [cb for cb in callbacks if handler_name(cb) not in done]
        if not pending:
            return []
        gh = self._client_for(delivery.installation_id)
        errors: list[str] = []
        for callback in pending:
            name = handler_name(callback)
            try:
                await _call(callback, event, gh, self._dependencies)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("handler %s failed on delivery %s", name, delivery.id)
                self._store.record_handler(
                    delivery.id, name, ok=False, error=repr(exc)[:1000], now=self._clock()
                )
                errors.append(f"{name}: {exc!r}")
            else:
                self._store.record_handler(delivery.id, name, ok=True, error=None, now=self._clock())
        return errors


async def _call(
    callback: Callable[..., Awaitable[Any]],
    event: sansio.Event,
    gh: Any,
    dependencies: Mapping[str, Any],
) -> None:
    await callback(event, gh, **dependencies)
