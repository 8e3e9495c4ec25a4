"""The embedded SQLite database: accepted deliveries, per-handler outcomes and installation states.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a committed transaction is in the WAL file before
``commit()`` returns, so it survives a ``kill -9`` of the process (only a power loss could lose the
newest commits). One connection, used from the event loop's thread: the statements are indexed reads and
small writes (deliveries arrive and finish in groups of one transaction each), cheaper than handing them
to a thread. Only `bot.store.checkpointer` opens a second connection, for WAL checkpoints on a thread of its own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bot.core.payload import load_payload

# Delivery ids are remembered at least this long (SPEC §6: at least 7 days).
DELIVERY_RETENTION_SECONDS = 8 * 24 * 3600

PENDING = "pending"
DONE = "done"
FAILED = "failed"

_SCHEMA = [
    # version 1
    """
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        action TEXT,
        installation_id INTEGER,
        ordering_key TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        finished_at REAL
    );
    CREATE INDEX deliveries_by_status ON deliveries (status, seq);
    CREATE INDEX deliveries_by_age ON deliveries (received_at);
    CREATE TABLE handler_runs (
        delivery_id TEXT NOT NULL,
        handler TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (delivery_id, handler)
    );
    CREATE TABLE installations (
        id INTEGER PRIMARY KEY,
        account TEXT,
        state TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # version 2: sessions and what Shepherd posted for them
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        repo TEXT NOT NULL,
        issue_number INTEGER NOT NULL,
        installation_id INTEGER NOT NULL,
        branch TEXT NOT NULL,
        state TEXT NOT NULL,
        data TEXT NOT NULL,
        context TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX sessions_by_issue ON sessions (repo, issue_number, created_at);
    CREATE INDEX sessions_by_branch ON sessions (repo, branch);
    CREATE INDEX sessions_by_state ON sessions (state);
    CREATE TABLE session_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        event TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX session_events_by_session ON session_events (session_id, seq);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        command TEXT NOT NULL,
        created_at REAL NOT NULL,
        done_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT
    );
    CREATE INDEX outbox_pending ON outbox (done_at, seq);
    CREATE TABLE posted (
        session_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        github_id INTEGER NOT NULL,
        body_sha TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (session_id, kind, key)
    );
    CREATE TABLE refusals (
        repo TEXT NOT NULL,
        issue_number INTEGER NOT NULL,
        login TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (repo, issue_number, login)
    );
    CREATE TABLE settings_kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # version 3: PR inline comments waiting out their collection window (bot/runtime/rounds.py)
    """
    CREATE TABLE pending_inline_comments (
        comment_id INTEGER PRIMARY KEY,
        repo TEXT NOT NULL,
        pull_number INTEGER NOT NULL,
        issue_number INTEGER NOT NULL,
        author TEXT NOT NULL,
        path TEXT,
        line INTEGER,
        body TEXT NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX pending_inline_by_pull ON pending_inline_comments (repo, pull_number, received_at);
    """,
    # version 4: bodies in a table of their own, so marking a delivery done does not rewrite its body
    """
    CREATE TABLE delivery_bodies (
        delivery_seq INTEGER PRIMARY KEY,
        body BLOB NOT NULL
    );
    """,
    # version 5: storing a delivery touches two pages fewer: no AUTOINCREMENT bookkeeping row and no
    # index on age (age is read along the sequence). Without AUTOINCREMENT the number of a forgotten
    # newest delivery may be given again; its body is forgotten in the same transaction, so nothing
    # stale can attach to the new one.
    """
    CREATE TABLE deliveries_v5 (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        event TEXT NOT NULL,
        action TEXT,
        installation_id INTEGER,
        ordering_key TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        finished_at REAL
    );
    INSERT INTO deliveries_v5 SELECT seq, id, event, action, installation_id, ordering_key, body,
        received_at, status, attempts, next_attempt_at, last_error, finished_at FROM deliveries;
    DROP TABLE deliveries;
    ALTER TABLE deliveries_v5 RENAME TO deliveries;
    CREATE INDEX deliveries_by_status ON deliveries (status, seq);
    """,
    # version 6: what Shepherd itself last pushed to each agent/ branch (bot/store/pushes.py)
    """
    CREATE TABLE pushed_branches (
        repo TEXT NOT NULL,
        branch TEXT NOT NULL,
        sha TEXT NOT NULL,
        session_id TEXT NOT NULL,
        pushed_at REAL NOT NULL,
        PRIMARY KEY (repo, branch)
    );
    """,
]


# Bodies written before schema version 4 stay in deliveries.body; newer ones live in delivery_bodies.
_SELECT_DELIVERIES = (
    "SELECT d.seq, d.id, d.event, d.action, d.installation_id, d.ordering_key,"
    " COALESCE(b.body, d.body) AS body, d.received_at, d.status, d.attempts, d.next_attempt_at,"
    " d.last_error FROM deliveries AS d LEFT JOIN delivery_bodies AS b ON b.delivery_seq = d.seq"
)

_RECORD_HANDLER = (
    "INSERT INTO handler_runs (delivery_id, handler, status, attempts, error, updated_at)"
    " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (delivery_id, handler) DO UPDATE SET"
    " status = excluded.status, attempts = handler_runs.attempts + 1,"
    " error = excluded.error, updated_at = excluded.updated_at"
)


class PendingDelivery(NamedTuple):
    """What scheduling needs of a stored delivery not yet handled."""

    id: str
    ordering_key: str
    next_attempt_at: float
    attempts: int


@dataclass(frozen=True)
class Delivery:
    """One stored webhook delivery."""

    seq: int
    id: str
    event: str
    action: str | None
    installation_id: int | None
    ordering_key: str
    body: bytes
    received_at: float
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None

    def payload(self) -> dict[str, Any]:
        """The body parsed; ValueError when it is not a JSON object (the webhook let only those in)."""
        payload = load_payload(self.body)
        if not isinstance(payload, dict):
            raise ValueError("the stored delivery is not a JSON object")
        return payload


class Store:
    """Shepherd's durable state. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path) -> "Store":
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=5000")
        store = cls(connection, path)
        store._migrate()
        path.chmod(0o600)
        return store

    def close(self) -> None:
        self._db.close()

    def checkpoint_automatically(self, enabled: bool) -> None:
        """Whether a commit on this connection may copy the WAL back into the database itself.

        Such a checkpoint syncs the disk inside whichever commit crosses the threshold, so a webhook
        request would wait for it; the server turns it off while a `Checkpointer` thread does the work."""
        self._db.execute(f"PRAGMA wal_autocheckpoint={1000 if enabled else 0}")

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the data-access classes of other modules (sessions, posted comments).

        The schema of every table lives above in `_SCHEMA`, so one migration path serves them all."""
        return self._db

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(_SCHEMA[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- deliveries -------------------------------------------------------------------------------

    def add_delivery(
        self,
        *,
        delivery_id: str,
        event: str,
        action: str | None,
        installation_id: int | None,
        ordering_key: str,
        body: bytes,
        now: float,
    ) -> bool:
        """Store a delivery durably. False when that delivery id was already stored."""
        return self.add_deliveries(
            [
                {
                    "delivery_id": delivery_id, "event": event, "action": action,
                    "installation_id": installation_id, "ordering_key": ordering_key, "body": body,
                }
            ],
            now=now,
        )[0]

    def add_deliveries(self, rows: list[dict[str, Any]], *, now: float) -> list[bool]:
        """Store several deliveries in one transaction (one WAL commit); True for each one that is new.

        Each row has the keyword arguments of `add_delivery` except `now`."""
        added: list[bool] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO deliveries (id, event, action, installation_id, ordering_key,"
                    " body, received_at, status, next_attempt_at) VALUES (?, ?, ?, ?, ?, x'', ?, ?, ?)",
                    (
                        row["delivery_id"], row["event"], row["action"], row["installation_id"],
                        row["ordering_key"], now, PENDING, now,
                    ),
                )
                new = cursor.rowcount == 1
                if new:
                    self._db.execute(
                        "INSERT INTO delivery_bodies (delivery_seq, body) VALUES (?, ?)",
                        (cursor.lastrowid, row["body"]),
                    )
                added.append(new)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return added

    def has_delivery(self, delivery_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return row is not None

    def delivery(self, delivery_id: str) -> Delivery | None:
        row = self._db.execute(_SELECT_DELIVERIES + " WHERE d.id = ?", (delivery_id,)).fetchone()
        return _delivery(row) if row else None

    def pending_deliveries(self, limit: int = 500) -> list[PendingDelivery]:
        """Pending deliveries in arrival order (due or not: ordering needs the whole picture), without
        their bodies: after a burst there may be many, and each body is read when its turn comes."""
        rows = self._db.execute(
            "SELECT id, ordering_key, next_attempt_at, attempts FROM deliveries WHERE status = ?"
            " ORDER BY seq LIMIT ?",
            (PENDING, limit),
        ).fetchall()
        return [PendingDelivery(*row) for row in rows]

    def deliveries(self, status: str | None = None) -> list[Delivery]:
        if status is None:
            rows = self._db.execute(_SELECT_DELIVERIES + " ORDER BY d.seq").fetchall()
        else:
            rows = self._db.execute(
                _SELECT_DELIVERIES + " WHERE d.status = ? ORDER BY d.seq", (status,)
            ).fetchall()
        return [_delivery(row) for row in rows]

    def finish_deliveries(
        self,
        delivery_ids: list[str],
        *,
        now: float,
        outcomes: Iterable[tuple[str, str, bool, str | None]] = (),
    ) -> None:
        """Mark several deliveries done, with their handlers' outcomes, in one transaction.

        `outcomes` holds (delivery id, handler, ok, error) rows."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "UPDATE deliveries SET status = ?, finished_at = ?, last_error = NULL WHERE id = ?",
                [(DONE, now, delivery_id) for delivery_id in delivery_ids],
            )
            self._db.executemany(_RECORD_HANDLER, [
                (delivery_id, handler, "ok" if ok else "error", error, now)
                for delivery_id, handler, ok, error in outcomes
            ])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def retry_delivery(self, delivery_id: str, *, error: str, next_attempt_at: float) -> None:
        self._db.execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?"
            " WHERE id = ?",
            (error, next_attempt_at, delivery_id),
        )

    def fail_delivery(self, delivery_id: str, *, error: str, now: float) -> None:
        self._db.execute(
            "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?,"
            " finished_at = ? WHERE id = ?",
            (FAILED, error, now, delivery_id),
        )

    def forget_old_deliveries(self, *, now: float) -> int:
        """Drop deliveries past the retention period; pending ones are never dropped."""
        cutoff = now - DELIVERY_RETENTION_SECONDS
        # Deliveries are numbered as they arrive: everything before the first one received after the
        # cutoff is older than it. Reading from the oldest stops there, so no index on age is needed.
        # One transaction: a forgotten delivery's number may be given again (schema 5), so its body
        # must never outlive it.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                "DELETE FROM deliveries WHERE status != ? AND seq < COALESCE("
                " (SELECT seq FROM deliveries WHERE received_at >= ? ORDER BY seq LIMIT 1),"
                " (SELECT IFNULL(MAX(seq), 0) + 1 FROM deliveries))",
                (PENDING, cutoff),
            )
            self._db.execute(
                "DELETE FROM handler_runs WHERE delivery_id NOT IN (SELECT id FROM deliveries)"
            )
            self._db.execute(
                "DELETE FROM delivery_bodies WHERE delivery_seq NOT IN (SELECT seq FROM deliveries)"
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return cursor.rowcount

    # -- handler outcomes -------------------------------------------------------------------------

    def succeeded_handlers(self, delivery_id: str) -> set[str]:
        rows = self._db.execute(
            "SELECT handler FROM handler_runs WHERE delivery_id = ? AND status = 'ok'",
            (delivery_id,),
        ).fetchall()
        return {row["handler"] for row in rows}

    def handler_runs(self, delivery_id: str) -> dict[str, tuple[str, int, str | None]]:
        rows = self._db.execute(
            "SELECT handler, status, attempts, error FROM handler_runs WHERE delivery_id = ?",
            (delivery_id,),
        ).fetchall()
        return {row["handler"]: (row["status"], row["attempts"], row["error"]) for row in rows}

    def record_handler(
        self, delivery_id: str, handler: str, *, ok: bool, error: str | None, now: float
    ) -> None:
        self._db.execute(_RECORD_HANDLER, (delivery_id, handler, "ok" if ok else "error", error, now))

    # -- installations ----------------------------------------------------------------------------

    def set_installation_state(
        self, installation_id: int, state: str, *, account: str | None, now: float
    ) -> None:
        self._db.execute(
            "INSERT INTO installations (id, account, state, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
            " account = COALESCE(excluded.account, installations.account),"
            " updated_at = excluded.updated_at",
            (installation_id, account, state, now),
        )

    def installation_state(self, installation_id: int) -> str | None:
        row = self._db.execute(
            "SELECT state FROM installations WHERE id = ?", (installation_id,)
        ).fetchone()
        return row["state"] if row else None

    def installations(self) -> Iterable[tuple[int, str | None, str]]:
        rows = self._db.execute("SELECT id, account, state FROM installations ORDER BY id")
        return [(row["id"], row["account"], row["state"]) for row in rows]


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        seq=row["seq"],
        id=row["id"],
        event=row["event"],
        action=row["action"],
        installation_id=row["installation_id"],
        ordering_key=row["ordering_key"],
        body=bytes(row["body"]),
        received_at=row["received_at"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
    )


def now_seconds() -> float:
    """Wall-clock seconds, the store's time base (passed in everywhere so tests can pin it)."""
    return time.time()
