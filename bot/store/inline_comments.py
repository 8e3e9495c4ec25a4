"""Data access for the `pending_inline_comments` table (schema v3): PR inline comments waiting out their
collection window (`bot.runtime.rounds.InlineCollector`), kept on disk so a restart loses none."""

from __future__ import annotations

from typing import Any, NamedTuple

from bot.store.database import Store


class PendingPull(NamedTuple):
    """A pull request with waiting inline comments, and when the first of them arrived."""

    repo: str
    pull_number: int
    issue_number: int
    first_received_at: float


class PendingInlineComments:
    """The waiting inline comments, grouped by pull request."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def add(self, *, repo: str, pull_number: int, issue_number: int, comment_id: int, author: str,
            path: str | None, line: int | None, body: str, now: float) -> bool:
        """Keep one comment; False when it was already kept (a redelivery)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO pending_inline_comments (comment_id, repo, pull_number, issue_number, author,"
            " path, line, body, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (comment_id, repo, pull_number, issue_number, author, path, line, body, now),
        )
        return cursor.rowcount == 1

    def rows(self) -> list[dict[str, Any]]:
        """Every waiting comment with all its columns, oldest first (for inspection)."""
        rows = self._db.execute("SELECT * FROM pending_inline_comments ORDER BY received_at, comment_id").fetchall()
        return [dict(row) for row in rows]

    def pulls(self) -> list[PendingPull]:
        """The pull requests with waiting comments, the one waiting longest first."""
        rows = self._db.execute(
            "SELECT repo, pull_number, issue_number, MIN(received_at) FROM pending_inline_comments"
            " GROUP BY repo, pull_number ORDER BY MIN(received_at)"
        ).fetchall()
        return [PendingPull(*row) for row in rows]

    def of_pull(self, repo: str, pull_number: int) -> list[dict[str, Any]]:
        """The waiting comments of one pull request, oldest first: `id`, `author`, `path`, `line`, `body`."""
        rows = self._db.execute(
            "SELECT comment_id AS id, author, path, line, body FROM pending_inline_comments"
            " WHERE repo = ? AND pull_number = ? ORDER BY received_at, comment_id",
            (repo, pull_number),
        ).fetchall()
        return [dict(row) for row in rows]

    def forget(self, comment_ids: list[int]) -> None:
        self._db.executemany("DELETE FROM pending_inline_comments WHERE comment_id = ?", [(i,) for i in comment_ids])
