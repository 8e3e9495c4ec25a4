"""Copies SQLite's write-ahead log back into the database from a thread of its own.

A WAL commit only appends to the log; now and then the log must be copied into the database file and
synced to disk (a checkpoint). Left to SQLite, that happens inside whichever commit crosses the
threshold, and on the event loop that commit is usually a webhook request waiting for its 202. Here a
thread with its own connection checkpoints four times a second instead (in `bench/ingest.py`, small
frequent checkpoints gave faster slowest answers than one a second); SQLite releases the GIL while it
copies and syncs, so the event loop keeps serving. A passive checkpoint never blocks a writer or a reader.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from bot.store.database import Store

log = logging.getLogger(__name__)


class Checkpointer:
    """`start()` when the server starts, `stop()` when it stops (a last, truncating checkpoint)."""

    def __init__(self, store: Store, *, interval: float = 0.25) -> None:
        self._store = store
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._store.checkpoint_automatically(False)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="shepherd-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join()
        self._store.checkpoint_automatically(True)

    def _run(self) -> None:
        connection = sqlite3.connect(self._store.path, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA busy_timeout=5000")
            while not self._stopping.wait(self._interval):
                self._checkpoint(connection, "PASSIVE")
            self._checkpoint(connection, "TRUNCATE")  # leave a short log behind
        finally:
            connection.close()

    @staticmethod
    def _checkpoint(connection: sqlite3.Connection, mode: str) -> None:
        try:
            busy, _log_frames, _copied = connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            # Nothing is lost: the log only grows until the next try succeeds.
            log.exception("WAL checkpoint (%s) failed; trying again later", mode)
            return
        if busy and mode == "TRUNCATE":
            log.debug("WAL checkpoint (%s) could not finish: the database is busy", mode)
