"""The consumer: per-issue order, isolation of failing deliveries and handlers, retries, final failure."""

from __future__ import annotations

import asyncio
import json

import pytest
from gidgethub import routing

from bot.ingest.consumer import Consumer, RetryPolicy
from bot.store.database import DONE, FAILED, PENDING, Store


class Clock:
    """A wall clock the test moves by hand, so backoff delays pass without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    yield store
    store.close()


def _store_delivery(store: Store, clock: Clock, delivery_id: str, number: int, text: str = "") -> None:
    body = json.dumps(
        {
            "action": "created",
            "issue": {"number": number},
            "comment": {"body": text},
            "repository": {"full_name": "octo-org/widgets"},
            "installation": {"id": 7},
        }
    ).encode()
    store.add_delivery(
        delivery_id=delivery_id,
        event="issue_comment",
        action="created",
        installation_id=7,
        ordering_key=f"octo-org/widgets#{number}",
        body=body,
        now=clock(),
    )


def _consumer(store, router, clock, **kwargs) -> Consumer:
    return Consumer(
        store=store,
        router=router,
        client_for=lambda installation_id: f"client-for-{installation_id}",
        dependencies={"marker": "deps"},
        clock=clock,
        retry=kwargs.pop("retry", RetryPolicy(max_attempts=3, first_delay=10, max_delay=60)),
        **kwargs,
    )


async def test_a_failing_handler_does_not_stop_its_sibling_and_only_it_is_retried(store):
    clock = Clock()
    router = routing.Router()
    seen: list[tuple[str, str]] = []
    failures = {"left": 1}

    @router.register("issue_comment", action="created")
    async def record_comment(event, gh, *, marker, **_):
        seen.append(("record", event.delivery_id))
        assert gh == "client-for-7" and marker == "deps"

    @router.register("issue_comment", action="created")
    async def flaky_forward(event, gh, **_):
        seen.append(("forward", event.delivery_id))
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("GitHub said 502")

    _store_delivery(store, clock, "d-1", 1)
    consumer = _consumer(store, router, clock)
    consumer.start()
    try:
        await consumer.drain()
        assert sorted(seen) == [("forward", "d-1"), ("record", "d-1")]
        delivery = store.delivery("d-1")
        assert delivery.status == PENDING and delivery.attempts == 1
        assert "GitHub said 502" in delivery.last_error

        clock.now += 10  # the first backoff has passed
        await consumer.drain()
    finally:
        await consumer.stop()

    # The sibling that succeeded ran once; only the failed handler ran again.
    assert seen.count(("record", "d-1")) == 1
    assert seen.count(("forward", "d-1")) == 2
    assert store.delivery("d-1").status == DONE
    runs = {name.rsplit(".", 1)[-1]: outcome for name, outcome in store.handler_runs("d-1").items()}
    assert runs == {"flaky_forward": ("ok", 2, None), "record_comment": ("ok", 1, None)}


async def test_deliveries_of_one_issue_run_in_order_and_other_issues_are_not_blocked(store):
    clock = Clock()
    router = routing.Router()
    handled: list[str] = []
    release_first = asyncio.Event()

    @router.register("issue_comment", action="created")
    async def handle(event, gh, **_):
        if event.delivery_id == "issue1-a":
            await release_first.wait()
        if event.delivery_id == "issue2-a":
            raise RuntimeError("this one always fails")
        handled.append(event.delivery_id)

    _store_delivery(store, clock, "issue1-a", 1)
    _store_delivery(store, clock, "issue2-a", 2)
    _store_delivery(store, clock, "issue1-b", 1)
    _store_delivery(store, clock, "issue3-a", 3)
    consumer = _consumer(store, router, clock)
    consumer.start()
    try:
        # issue 3 is handled while issue 1's first delivery is still running and issue 2 fails.
        for _ in range(100):
            if "issue3-a" in handled:
                break
            await asyncio.sleep(0.01)
        assert handled == ["issue3-a"]
        release_first.set()
        await consumer.drain()
        assert handled == ["issue3-a", "issue1-a", "issue1-b"]
        # Issue 2 keeps failing until its last attempt, then stays visible as failed.
        for _ in range(3):
            clock.now += 60
            await consumer.drain()
    finally:
        await consumer.stop()
    failed = store.delivery("issue2-a")
    assert failed.status == FAILED and failed.attempts == 3
    assert "this one always fails" in failed.last_error


async def test_a_later_delivery_of_an_issue_waits_for_the_earlier_one_to_finish_retrying(store):
    clock = Clock()
    router = routing.Router()
    handled: list[str] = []
    failures = {"left": 1}

    @router.register("issue_comment", action="created")
    async def handle(event, gh, **_):
        if event.delivery_id == "first" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("transient")
        handled.append(event.delivery_id)

    _store_delivery(store, clock, "first", 1)
    _store_delivery(store, clock, "second", 1)
    consumer = _consumer(store, router, clock)
    consumer.start()
    try:
        await consumer.drain()
        assert handled == []  # "second" must not overtake "first" while it waits to be retried
        clock.now += 10
        await consumer.drain()
    finally:
        await consumer.stop()
    assert handled == ["first", "second"]
    assert [d.status for d in store.deliveries()] == [DONE, DONE]


async def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(max_attempts=10, first_delay=5, max_delay=60)
    assert [policy.delay(n) for n in range(1, 6)] == [5, 10, 20, 40, 60]


async def test_a_delivery_without_an_installation_finishes_without_running_handlers(store):
    clock = Clock()
    router = routing.Router()
    seen: list[str] = []

    @router.register("issue_comment", action="created")
    async def handle(event, gh, **_):
        seen.append(event.delivery_id)

    body = json.dumps({"action": "created", "issue": {"number": 1}, "repository": {"full_name": "o/r"}}).encode()
    store.add_delivery(
        delivery_id="no-installation", event="issue_comment", action="created", installation_id=None,
        ordering_key="o/r#1", body=body, now=clock(),
    )
    consumer = _consumer(store, router, clock)
    consumer.start()
    try:
        await consumer.drain()
    finally:
        await consumer.stop()
    assert seen == []
    assert store.delivery("no-installation").status == DONE


async def test_what_became_of_each_delivery_is_counted(store):
    from bot.metrics import Metrics

    clock = Clock()
    router = routing.Router()
    metrics = Metrics()

    @router.register("issue_comment", action="created")
    async def fail_on_broken(event, gh, **_):
        if event.data["comment"]["body"] == "broken":
            raise RuntimeError("cannot handle this one")

    _store_delivery(store, clock, "good", 1)
    _store_delivery(store, clock, "bad", 2, "broken")
    consumer = _consumer(store, router, clock, metrics=metrics,
                         retry=RetryPolicy(max_attempts=2, first_delay=10, max_delay=60))
    consumer.start()
    try:
        await consumer.drain()
        clock.now += 10
        await consumer.drain()
    finally:
        await consumer.stop()
    counted = {o: metrics.deliveries_handled.labels(o)._value.get() for o in ("done", "retried", "failed")}  # noqa: SLF001
    assert counted == {"done": 1.0, "retried": 1.0, "failed": 1.0}
    assert {d.id: d.status for d in store.deliveries()} == {"good": DONE, "bad": FAILED}


def test_a_delivery_without_the_objects_github_always_sends_reaches_no_handler():
    """Found by the webhook fuzzer: an `issue_comment` without `issue` failed three handlers with KeyError."""
    from gidgethub import sansio

    from bot.core.payload import missing_fields
    from handlers import compose_router

    repository = {"name": "w", "full_name": "o/w", "owner": {"login": "o"}}
    broken = sansio.Event({"action": "created", "comment": {"id": 1}, "repository": repository},
                          event="issue_comment", delivery_id="fuzzed")
    whole = sansio.Event({"action": "created", "comment": {"id": 1}, "issue": {"number": 2},
                          "repository": repository}, event="issue_comment", delivery_id="real")
    router = compose_router()
    handlers = router.fetch(broken)
    assert len(handlers) >= 3 and handlers == router.fetch(whole)  # routing itself is unchanged
    for handler in handlers:  # each leaves the broken delivery alone, with no call and no error
        assert asyncio.run(handler(broken, None)) is None
    assert missing_fields("issue_comment", broken.data) == ["issue.number"]
    assert missing_fields("issues", {"issue": "not an object", "repository": None}) == [
        "issue.number", "repository.name", "repository.full_name", "repository.owner.login"]
