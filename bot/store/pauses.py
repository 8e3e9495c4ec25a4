"""Pauses GitHub announced for an installation's writes, kept so that a restart honours them too."""

from __future__ import annotations

import sqlite3

_KEY = "github_write_pause:{installation_id}"
_PREFIX = "github_write_pause:"
_ALL = "SELECT key, value FROM settings_kv WHERE key LIKE 'github_write_pause:%'"
_SAVE = (
    "INSERT INTO settings_kv (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(settings_kv.value AS REAL), CAST(excluded.value AS REAL))"
)


class WritePauses:
    """Per installation, the wall-clock time (epoch seconds) until which GitHub asked it not to write."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def load(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for key, value in self._db.execute(_ALL):
            try:
                found[int(str(key)[len(_PREFIX):])] = float(value)
            except ValueError:
                continue
        return found

    def save(self, installation_id: int, until: float) -> None:
        self._db.execute(_SAVE, (_KEY.format(installation_id=int(installation_id)), repr(float(until))))
