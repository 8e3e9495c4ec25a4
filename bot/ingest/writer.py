"""Writes webhook deliveries to SQLite in groups: one commit per turn of the event loop.

A request is answered only after the commit holding its row, so a 202 always means "stored". Requests
whose handlers ran in the same turn of the loop share the next commit (group commit): under load one
commit carries many deliveries, when idle each delivery is committed at once, in the very next turn.

The writes run on the event loop's own thread, through the server's one connection. A writer thread was
tried and measured slower: every SQLite call hands the GIL back and forth with the loop, which costs
more than the write. What made a commit slow was the checkpoint (a disk sync) SQLite runs inside some
commits; `bot.store.checkpointer` moves that onto a thread of its own.

Done marks (the consumer's) wait a little and go in groups of their own, so under a burst of webhooks
they take few commits away from the requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from bot.store.database import Store

log = logging.getLogger(__name__)

# How long a done mark may wait to share its commit with others.
DONE_MARK_DELAY_SECONDS = 0.05


class Outcome(NamedTuple):
    """How one handler did on one delivery."""

    handler: str
    ok: bool
    error: str | None


class DeliveryWriter:
    """`await add(...)` stores one delivery; `mark_done(id)` records a finished one; `flush()` writes all now."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        self._pending: list[tuple[dict[str, Any], Callable[[], None] | None, asyncio.Future[bool]]] = []
        self._done: list[tuple[str, Sequence[Outcome]]] = []
        self._add_turn: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done_turn: asyncio.TimerHandle | None = None

    async def add(self, row: dict[str, Any], *, on_new: Callable[[], None] | None = None) -> bool:
        """Store one delivery; False if it was already stored.

        `row` holds the keyword arguments of `Store.add_delivery` but `now`. `on_new` runs right after
        the commit if the delivery is new, even if the waiting request was cancelled meanwhile, so a
        stored delivery is always handed on."""
        if self._add_turn is None:  # the first of its group: looks the loop up for all of them
            self._loop = asyncio.get_running_loop()
            self._add_turn = self._loop.call_soon(self._write_added)
        assert self._loop is not None  # set by the first of the group, above
        answer: asyncio.Future[bool] = self._loop.create_future()
        self._pending.append((row, on_new, answer))
        return await answer

    def mark_done(self, delivery_id: str, outcomes: Sequence[Outcome] = ()) -> None:
        """Record that a delivery finished, with its handlers' outcomes; written with the next group.

        Should Shepherd die first, the delivery runs again after the restart."""
        self._done.append((delivery_id, tuple(outcomes)))
        if self._done_turn is None:
            self._done_turn = asyncio.get_running_loop().call_later(
                DONE_MARK_DELAY_SECONDS, self._write_done
            )

    async def flush(self) -> None:
        """Write everything handed over so far, now."""
        if self._add_turn is not None:
            self._add_turn.cancel()
            self._write_added()
        if self._done_turn is not None:
            self._done_turn.cancel()
            self._write_done()

    async def close(self) -> None:
        await self.flush()

    def _write_added(self) -> None:
        self._add_turn = None
        batch, self._pending = self._pending, []
        try:
            added = self._store.add_deliveries([row for row, _, _ in batch], now=self._clock())
        except Exception as error:  # e.g. disk full: the waiting requests answer 500
            log.exception("could not store %d deliveries", len(batch))
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(error)
            return
        for (row, on_new, answer), new in zip(batch, added):
            if new and on_new is not None:
                try:
                    on_new()
                except Exception:  # it stays stored and pending: the next start picks it up
                    log.exception("could not hand on stored delivery %s", row["delivery_id"])
            if not answer.done():  # a request whose client went away was cancelled meanwhile
                answer.set_result(new)

    def _write_done(self) -> None:
        self._done_turn = None
        done, self._done = self._done, []
        try:
            self._store.finish_deliveries(
                [delivery_id for delivery_id, _ in done],
                now=self._clock(),
                outcomes=[(delivery_id, *outcome) for delivery_id, outcomes in done for outcome in outcomes],
            )
        except Exception:
            log.exception("could not record %d finished deliveries; they will run again", len(done))
