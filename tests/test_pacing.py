"""Write pacing: spacing, the per-minute and per-hour limits, and priorities, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from bot.github.pacing import Pacer, Priority, WriteBudget, WriteGate


class FakeTime:
    """A clock that only moves when someone sleeps; records every requested delay."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


async def send_writes(gate: WriteGate, fake_time: FakeTime, count: int) -> list[float]:
    sent = []
    for _ in range(count):
        await gate.wait()
        sent.append(fake_time.now)
    return sent


async def test_the_81st_write_in_a_minute_waits_for_the_window(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=0.5), clock=fake_time.clock, sleep=fake_time.sleep)
    sent = await send_writes(gate, fake_time, 81)
    assert sent[:80] == [i * 0.5 for i in range(80)]
    # The first write left at 0 s, so the 81st may only leave when it drops out of the minute.
    assert sent[80] == 60.0
    assert sum(1 for t in sent if t > sent[80] - 60) <= 80


async def test_the_501st_write_in_an_hour_waits_for_the_window(fake_time: FakeTime) -> None:
    budget = WriteBudget(min_spacing=0.0, per_minute=10_000, per_hour=500)
    gate = WriteGate(budget, clock=fake_time.clock, sleep=fake_time.sleep)
    sent = await send_writes(gate, fake_time, 501)
    assert sent[:500] == [0.0] * 500
    assert sent[500] == 3600.0


async def test_writes_are_spaced_by_min_spacing(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=fake_time.clock, sleep=fake_time.sleep)
    sent = await send_writes(gate, fake_time, 5)
    assert [b - a for a, b in zip(sent, sent[1:])] == [1.0, 1.0, 1.0, 1.0]


async def test_with_default_spacing_the_minute_limit_never_binds_but_the_hour_does() -> None:
    budget = WriteBudget()
    now = 0.0
    for _ in range(500):
        now += budget.delay(now)
        budget.record(now)
    assert now == 499.0
    assert budget.delay(now) == pytest.approx(3600.0 - now)


async def test_waiting_writes_go_urgent_first_then_in_arrival_order(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=fake_time.clock, sleep=fake_time.sleep)
    await gate.wait()  # a write just went: the next ones must wait a second
    released: list[tuple[str, float]] = []

    async def write(name: str, priority: Priority) -> None:
        await gate.wait(priority)
        released.append((name, fake_time.now))

    tasks = [
        asyncio.create_task(write("status edit", Priority.LOW)),
        asyncio.create_task(write("reaction", Priority.NORMAL)),
        asyncio.create_task(write("second status edit", Priority.LOW)),
        asyncio.create_task(write("question", Priority.URGENT)),
    ]
    await asyncio.gather(*tasks)
    assert released == [
        ("question", 1.0),
        ("reaction", 2.0),
        ("status edit", 3.0),
        ("second status edit", 4.0),
    ]


async def test_an_urgent_write_arriving_during_a_wait_overtakes(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=10.0), clock=fake_time.clock, sleep=fake_time.sleep)
    await gate.wait()
    order: list[str] = []
    low = asyncio.create_task(gate.wait(Priority.LOW))
    low.add_done_callback(lambda _: order.append("low"))
    await asyncio.sleep(0)  # the low write is now waiting out the spacing
    assert gate.waiting == 1
    await gate.wait(Priority.URGENT)
    order.append("urgent")
    await low
    assert order == ["urgent", "low"]


async def test_a_cancelled_waiter_does_not_block_the_others(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=fake_time.clock, sleep=fake_time.sleep)
    await gate.wait()
    doomed = asyncio.create_task(gate.wait(Priority.URGENT))
    survivor = asyncio.create_task(gate.wait(Priority.LOW))
    await asyncio.sleep(0)
    doomed.cancel()
    await survivor
    assert doomed.cancelled()
    assert gate.budget.delay(fake_time.now) == 1.0  # two writes counted, not three


async def test_each_installation_has_its_own_gate(fake_time: FakeTime) -> None:
    pacer = Pacer(min_spacing=1.0, clock=fake_time.clock, sleep=fake_time.sleep)
    await pacer.gate(1).wait()
    await pacer.gate(2).wait()  # another installation: no waiting
    assert fake_time.sleeps == []
    await pacer.gate(1).wait()
    assert fake_time.sleeps == [1.0]
    assert pacer.gate(1) is pacer.gate(1)
    await pacer.close()


async def test_a_pause_holds_every_waiting_write_then_releases_urgent_first(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=fake_time.clock, sleep=fake_time.sleep)
    await gate.wait()
    assert gate.pause(3.0)
    assert not gate.pause(2.0)  # a shorter pause does not shorten the one on
    released: list[tuple[str, float]] = []

    async def write(name: str, priority: Priority) -> None:
        await gate.wait(priority)
        released.append((name, fake_time.now))

    await asyncio.gather(
        write("status edit", Priority.LOW),
        write("reaction", Priority.NORMAL),
        write("final state", Priority.URGENT),
    )
    assert released == [("final state", 3.0), ("reaction", 4.0), ("status edit", 5.0)]
    assert gate.paused_for() == 0.0


async def test_a_pause_that_arrives_during_a_wait_holds_the_waiting_write(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=fake_time.clock, sleep=fake_time.sleep)
    await gate.wait()
    waiting = asyncio.create_task(gate.wait())
    await asyncio.sleep(0)  # the dispatcher now sleeps out the 1 s spacing
    gate.pause(10.0)
    await waiting
    assert fake_time.now >= 10.0


async def test_reads_wait_out_a_pause_but_are_not_spaced(fake_time: FakeTime) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=fake_time.clock, sleep=fake_time.sleep)
    await gate.wait()
    await gate.wait_out_pause()
    assert fake_time.now == 0.0
    gate.pause(5.0)
    await gate.wait_out_pause()
    assert fake_time.now == 5.0
