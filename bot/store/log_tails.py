"""The redacted log tail of a failed session, kept (in `settings_kv`) so later status edits still show it."""

from __future__ import annotations

from bot.store.database import Store

LOG_TAIL_KEY = "log-tail/{session_id}"


class LogTails:
    """One log tail per session."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def get(self, session_id: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM settings_kv WHERE key = ?", (LOG_TAIL_KEY.format(session_id=session_id),)
        ).fetchone()
        return row["value"] if row else None

    def put(self, session_id: str, tail: str) -> None:
        self._db.execute(
            "INSERT INTO settings_kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (LOG_TAIL_KEY.format(session_id=session_id), tail),
        )
