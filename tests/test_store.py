"""The durable store: delivery ids remembered for the retention period, bodies kept apart from status."""

from __future__ import annotations

from bot.store.database import DELIVERY_RETENTION_SECONDS, DONE, Store

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


def test_only_deliveries_older_than_the_retention_period_are_forgotten(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    start = 1_700_000_000.0
    for name, received in (("old-1", start), ("old-2", start + DAY), ("recent", start + 2 * DAY)):
        _add(store, name, received)
    store.finish_deliveries(["old-1", "old-2", "recent"], now=start + 2 * DAY)

    store.forget_old_deliveries(now=start + DAY + DELIVERY_RETENTION_SECONDS + 1)
    assert [d.id for d in store.deliveries()] == ["recent"]
    assert not _add(store, "recent", start + 3 * DAY)  # still remembered
    assert _add(store, "old-1", start + 3 * DAY)  # forgotten: a redelivery now counts as new
    store.close()


def test_a_version_4_database_is_migrated_with_its_deliveries_and_their_numbers(tmp_path):
    import sqlite3

    from bot.store.database import _SCHEMA

    path = tmp_path / "shepherd.db"
    old = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(_SCHEMA[:4], start=1):
        for statement in script.split(";"):
            if statement.strip():
                old.execute(statement)
        old.execute(f"PRAGMA user_version={number}")
    old.execute(
        "INSERT INTO deliveries (id, event, action, installation_id, ordering_key, body, received_at,"
        " status, next_attempt_at) VALUES ('v3-era', 'issues', 'opened', 7, 'o/r#1', ?, 1.0, 'done', 1.0)",
        (b'{"action": "opened"}',),
    )
    old.execute(
        "INSERT INTO deliveries (id, event, action, installation_id, ordering_key, body, received_at,"
        " status, next_attempt_at) VALUES ('v4-era', 'issues', 'opened', 7, 'o/r#2', x'', 2.0, 'pending', 2.0)"
    )
    old.execute("INSERT INTO delivery_bodies (delivery_seq, body) VALUES (2, ?)", (b'{"action": "edited"}',))
    old.close()

    store = Store.open(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(_SCHEMA)
    assert [(d.id, d.status, d.payload()) for d in store.deliveries()] == [
        ("v3-era", DONE, {"action": "opened"}),
        ("v4-era", "pending", {"action": "edited"}),
    ]
    assert _add(store, "new", 3.0)
    assert [row[0] for row in store.db.execute("SELECT seq FROM deliveries ORDER BY seq")] == [1, 2, 3]
    indexes = {row[0] for row in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "deliveries_by_status" in indexes and "deliveries_by_age" not in indexes
    store.close()


def test_a_number_given_again_after_everything_was_forgotten_carries_the_new_body(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    start = 1_700_000_000.0
    for name in ("first", "second"):
        store.add_delivery(
            delivery_id=name, event="issues", action="opened", installation_id=7, ordering_key="o/r#1",
            body=b'{"action": "%s"}' % name.encode(), now=start,
        )
    store.finish_deliveries(["first", "second"], now=start)
    store.forget_old_deliveries(now=start + DELIVERY_RETENTION_SECONDS + 1)
    assert store.deliveries() == []

    store.add_delivery(
        delivery_id="third", event="issues", action="opened", installation_id=7, ordering_key="o/r#1",
        body=b'{"action": "third"}', now=start + DELIVERY_RETENTION_SECONDS + 2,
    )
    assert [(d.id, d.payload()) for d in store.deliveries()] == [("third", {"action": "third"})]
    store.close()
