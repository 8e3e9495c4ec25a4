"""The durable store: delivery ids remembered for the retention period, bodies kept apart from status."""

from __future__ import annotations

from bot.store import DELIVERY_RETENTION_SECONDS, DONE, Store

DAY = 24 * 3600


def _add(store: Store, delivery_id: str, now: float) -> bool:
    return store.add_delivery(
        delivery_id=delivery_id, event="issues", action="opened", installation_id=7,
        ordering_key="o/r#1", body=b'{"action": "opened"}', now=now,
    )


def test_delivery_ids_are_remembered_seven_days_and_pending_ones_forever(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    start = 1_700_000_000.0
    assert _add(store, "done-long-ago", start)
    assert _add(store, "still-pending", start)
    store.finish_deliveries(["done-long-ago"], now=start + 1)

    store.forget_old_deliveries(now=start + 7 * DAY)
    assert not _add(store, "done-long-ago", start + 7 * DAY)  # a redelivery within 7 days is a repeat

    store.forget_old_deliveries(now=start + DELIVERY_RETENTION_SECONDS + 1)
    assert [d.id for d in store.deliveries()] == ["still-pending"]
    assert store.db.execute("SELECT COUNT(*) FROM delivery_bodies").fetchone()[0] == 1
    store.close()


def test_a_finished_delivery_keeps_its_body_and_status_survives_reopening(tmp_path):
    path = tmp_path / "shepherd.db"
    store = Store.open(path)
    _add(store, "d1", 1.0)
    store.finish_deliveries(["d1"], now=2.0, outcomes=[("d1", "handlers.x.on_y", True, None)])
    store.close()

    reopened = Store.open(path)
    delivery = reopened.delivery("d1")
    assert (delivery.status, delivery.payload()) == (DONE, {"action": "opened"})
    assert reopened.handler_runs("d1") == {"handlers.x.on_y": ("ok", 1, None)}
    assert reopened.pending_deliveries() == []
    reopened.close()
