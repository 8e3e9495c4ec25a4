"""Writes webhook deliveries to SQLite from a thread of its own, in batches, so storing never stalls the server.

SQLite releases the GIL while it works, so on a thread it runs beside the event loop instead of inside
it. Requests that arrive while one batch is being written form the next batch: under load each commit
carries many deliveries (group commit); when idle, each delivery is committed on its own at once. A
request is answered only after the commit holding its row, so a 202 always means "stored".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from bot.store import Store

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """How one handler did on one delivery."""

    handler: str
    ok: bool
    error: str | None


class DeliveryWriter:
    """`await add(...)` stores one delivery; `mark_done(id)` records a finished one. `close()` at shutdown."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self._path = path
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shepherd-writer")
        self._store: Store | None = None  # opened on the writer thread, used only there
        self._pending: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._done: list[tuple[str, Sequence[Outcome]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def add(self, **row: Any) -> bool:
        """Store one delivery (the keyword arguments of `Store.add_delivery` but `now`); False if already stored."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((row, answer))
        self._kick()
        return await answer

    def mark_done(self, delivery_id: str, outcomes: Sequence[Outcome] = ()) -> None:
        """Record that a delivery finished, with its handlers' outcomes; written with the next batch.

        Should Shepherd die first, the delivery runs again after the restart, and only its handlers
        without a recorded success run, so nothing is done twice."""
        self._done.append((delivery_id, tuple(outcomes)))
        self._kick()

    async def flush(self) -> None:
        """Wait until everything handed over so far is written."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)

    async def close(self) -> None:
        await self.flush()
        if self._store is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._store.close)
        self._executor.shutdown(wait=True)

    def _kick(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._drain(), name="shepherd-delivery-writer")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._done:
                if self._pending:  # acknowledgements first: a request waits on this commit
                    batch, self._pending = self._pending, []
                    try:
                        added = await loop.run_in_executor(
                            self._executor, self._add, [row for row, _ in batch], self._clock()
                        )
                    except Exception as error:  # e.g. disk full: the waiting requests answer 500
                        log.exception("could not store %d deliveries", len(batch))
                        for _, answer in batch:
                            if not answer.done():
                                answer.set_exception(error)
                        continue
                    for (_, answer), new in zip(batch, added):
                        if not answer.done():
                            answer.set_result(new)
                else:
                    done, self._done = self._done, []
                    await loop.run_in_executor(self._executor, self._finish, done, self._clock())
        finally:
            self._flushing = None

    def _opened(self) -> Store:
        if self._store is None:
            self._store = Store.open(self._path)
        return self._store

    def _add(self, rows: list[dict[str, Any]], now: float) -> list[bool]:
        """On the writer thread: one transaction for the new deliveries."""
        return self._opened().add_deliveries(rows, now=now)

    def _finish(self, done: list[tuple[str, Sequence[Outcome]]], now: float) -> None:
        """On the writer thread: one transaction for the finished deliveries and their outcomes."""
        try:
            self._opened().finish_deliveries(
                [delivery_id for delivery_id, _ in done],
                now=now,
                outcomes=[(delivery_id, *outcome) for delivery_id, outcomes in done for outcome in outcomes],
            )
        except Exception:
            log.exception("could not record %d finished deliveries; they will run again", len(done))
