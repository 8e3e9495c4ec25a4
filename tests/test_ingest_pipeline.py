"""The pieces behind a fast 202: group commits, the checkpointer thread and ingest-first scheduling."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

from gidgethub import routing

from bot.store.checkpointer import Checkpointer
from bot.ingest.consumer import Consumer
from bot.ingest.writer import DeliveryWriter
from bot.ingest.pressure import IngestPressure
from bot.store.database import DONE, PENDING, Store


def _row(delivery_id: str, number: int = 1) -> dict:
    body = json.dumps({
        "action": "created", "issue": {"number": number}, "comment": {"body": "hi"},
        "repository": {"full_name": "octo-org/widgets"}, "installation": {"id": 7},
    }).encode()
    return {
        "delivery_id": delivery_id, "event": "issue_comment", "action": "created", "installation_id": 7,
        "ordering_key": f"octo-org/widgets#{number}", "body": body,
    }


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_requests_of_one_turn_share_one_commit_and_each_learns_whether_it_was_new(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    commits: list[int] = []
    original = store.add_deliveries

    def counting(rows, *, now):
        commits.append(len(rows))
        return original(rows, now=now)

    store.add_deliveries = counting  # type: ignore[method-assign]
    handed_on: list[str] = []
    writer = DeliveryWriter(store, clock=lambda: 1_700_000_000.0)
    try:
        answers = await asyncio.gather(*(
            writer.add(_row(f"d-{n % 3}"), on_new=lambda n=n: handed_on.append(f"d-{n % 3}"))
            for n in range(5)
        ))
    finally:
        await writer.close()
    # Five requests in one turn of the loop: one commit; three new ids, two repeats.
    assert commits == [5]
    assert answers == [True, True, True, False, False]
    assert handed_on == ["d-0", "d-1", "d-2"]
    assert [d.id for d in store.deliveries()] == ["d-0", "d-1", "d-2"]
    store.close()


async def test_a_stored_delivery_is_handed_on_even_when_its_request_was_cancelled(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    handed_on: list[str] = []
    writer = DeliveryWriter(store, clock=lambda: 1_700_000_000.0)
    request = asyncio.ensure_future(writer.add(_row("d-1"), on_new=lambda: handed_on.append("d-1")))
    await asyncio.sleep(0)  # the request is waiting for its commit...
    request.cancel()  # ...when its client goes away
    await asyncio.sleep(0.01)
    await writer.close()
    assert request.cancelled()
    assert store.delivery("d-1").status == PENDING
    assert handed_on == ["d-1"]
    store.close()


async def test_a_failed_commit_fails_every_request_waiting_on_it_and_stores_nothing(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    writer = DeliveryWriter(store, clock=lambda: 1_700_000_000.0)
    store.db.execute("CREATE TRIGGER no_room BEFORE INSERT ON delivery_bodies BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    results = await asyncio.gather(writer.add(_row("d-1")), writer.add(_row("d-2")), return_exceptions=True)
    await writer.close()
    assert [type(result) for result in results] == [sqlite3.IntegrityError, sqlite3.IntegrityError]
    assert store.deliveries() == []
    store.close()


async def test_done_marks_are_written_in_a_group_and_flushed_on_close(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    writer = DeliveryWriter(store, clock=lambda: 1_700_000_000.0)
    for n in range(3):
        await writer.add(_row(f"d-{n}"))
    for n in range(3):
        writer.mark_done(f"d-{n}")
    assert {d.status for d in store.deliveries()} == {PENDING}  # not yet: they wait for company
    await writer.close()
    assert {d.status for d in store.deliveries()} == {DONE}
    store.close()


def test_the_checkpointer_copies_the_log_into_the_database_and_leaves_it_empty(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    database, wal = tmp_path / "shepherd.db", tmp_path / "shepherd.db-wal"
    checkpointer = Checkpointer(store, interval=0.05)
    checkpointer.start()
    try:
        # Commits on the server's connection no longer checkpoint by themselves...
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        before = database.stat().st_size
        for batch in range(20):
            store.add_deliveries([_row(f"d-{batch}-{n}") for n in range(50)], now=1_700_000_000.0)
        # ...yet the database file (written only by checkpoints in WAL mode) takes in the new rows.
        deadline = time.monotonic() + 10
        while database.stat().st_size < before + 200_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert database.stat().st_size >= before + 200_000
    finally:
        checkpointer.stop()
    assert wal.stat().st_size == 0  # the last checkpoint truncated the log
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert store.db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 1000
    store.close()


def test_pressure_is_busy_only_above_the_busy_rate_and_then_lets_a_trickle_through():
    ticks = Ticks()
    pressure = IngestPressure(busy_rate=100, trickle_rate=10, clock=ticks)
    for _ in range(5):  # 5 in 0.1 s = 50/s: a normal day
        pressure.arrived()
    assert not pressure.busy()
    assert [pressure.may_start() for _ in range(3)] == [0.0, 0.0, 0.0]

    for _ in range(20):  # 20 more in the same 0.1 s window: 250/s
        pressure.arrived()
    assert pressure.busy()
    assert pressure.may_start() == 0.0  # the trickle: one now...
    assert abs(pressure.may_start() - 0.1) < 1e-9  # ...the next in 1/10 s
    ticks.now += 0.1
    assert pressure.busy()  # the busy window just ended still counts
    assert pressure.may_start() == 0.0
    ticks.now += 0.25  # two quiet windows: the burst is over
    assert not pressure.busy()
    assert [pressure.may_start() for _ in range(3)] == [0.0, 0.0, 0.0]


async def test_during_a_burst_the_consumer_handles_a_trickle_and_the_rest_once_it_is_over(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    ticks = Ticks()
    router = routing.Router()
    handled: list[str] = []

    @router.register("issue_comment", action="created")
    async def record(event, gh, **_):
        handled.append(event.delivery_id)

    consumer = Consumer(
        store=store, router=router, client_for=lambda _: None, dependencies={},
        clock=lambda: 1_700_000_000.0,
        pressure=IngestPressure(busy_rate=100, trickle_rate=10, clock=ticks),
    )
    writer = DeliveryWriter(store, clock=lambda: 1_700_000_000.0)
    consumer.start()
    try:
        for n in range(30):  # 30 deliveries on 30 issues within one 0.1 s window: a burst
            row = _row(f"d-{n}", number=n)
            await writer.add(row, on_new=lambda row=row: consumer.enqueue(
                row["delivery_id"], row["ordering_key"], event=row["event"], action=row["action"],
                installation_id=row["installation_id"], body=row["body"],
            ))
        await asyncio.sleep(0.05)
        # Ten arrivals in a window is the busy rate itself: those ran at once. The eleventh made it a
        # burst and went through as the trickle's one; the rest wait for the burst to end.
        assert handled == [f"d-{n}" for n in range(11)]
        assert consumer.waiting() == 19  # what an operator sees as shepherd_deliveries_waiting
        ticks.now += 0.35  # quiet again
        await consumer.drain()
    finally:
        await consumer.stop()
        await writer.close()
    assert sorted(handled, key=lambda d: int(d[2:])) == [f"d-{n}" for n in range(30)]
    assert consumer.waiting() == 0
    assert {d.status for d in store.deliveries()} == {DONE}
    store.close()
