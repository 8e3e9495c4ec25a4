"""Data access for what Shepherd wrote on GitHub: the `posted` table (ids and body hashes of its comments,
issues, pull requests and reactions) and the `refusals` table. Schema in `bot/store/database.py`."""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.database import Store


@dataclass(frozen=True)
class Posted:
    """One thing Shepherd wrote on GitHub: its id, the hash of what it last wrote, and when."""

    github_id: int
    body_sha: str | None
    updated_at: float


class PostedRecords:
    """One row per thing Shepherd wrote, named by (scope, kind, key): the scope is a session id, an
    issue (`owner/repo#n`) or a repository; the kind says what it is; the key tells apart several of a kind."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def get(self, scope: str, kind: str, key: str = "") -> Posted | None:
        row = self._db.execute(
            "SELECT github_id, body_sha, updated_at FROM posted WHERE session_id = ? AND kind = ? AND key = ?",
            (scope, kind, key),
        ).fetchone()
        return Posted(row["github_id"], row["body_sha"], row["updated_at"]) if row else None

    def put(self, scope: str, kind: str, key: str, github_id: int, body_sha: str | None, now: float) -> None:
        self._db.execute(
            "INSERT INTO posted (session_id, kind, key, github_id, body_sha, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (session_id, kind, key) DO UPDATE SET github_id = excluded.github_id,"
            " body_sha = excluded.body_sha, updated_at = excluded.updated_at",
            (scope, kind, key, github_id, body_sha, now),
        )

    def forget(self, scope: str, kind: str, key: str = "") -> None:
        self._db.execute("DELETE FROM posted WHERE session_id = ? AND kind = ? AND key = ?", (scope, kind, key))


class Refusals:
    """When each person last got a refusal on an issue (logins and repositories compared lower-cased)."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def last(self, full_name: str, number: int, login: str) -> float | None:
        row = self._db.execute(
            "SELECT at FROM refusals WHERE repo = ? AND issue_number = ? AND login = ?",
            (full_name.lower(), number, login.lower()),
        ).fetchone()
        return row["at"] if row else None

    def record(self, full_name: str, number: int, login: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO refusals (repo, issue_number, login, at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (repo, issue_number, login) DO UPDATE SET at = excluded.at",
            (full_name.lower(), number, login.lower(), now),
        )
