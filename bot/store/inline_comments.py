"""Data access for the `pending_inline_comments` table (schema v3): PR inline comments waiting out their
collection window (`bot.runtime.rounds.InlineCollector`), kept on disk so a restart loses none."""

from __future__ import annotations

from dataclasses import dataclass

from bot.store.database import Store


@dataclass(frozen=True)
class PendingInline:
    """One waiting inline comment, as the round's text needs it."""

    comment_id: int
    author: str
    path: str | None
    line: int | None
    body: str


@dataclass(frozen=True)
class PendingPull:
    """A pull request with waiting inline comments, and when the first of them arrived."""

    repo: str
    pull_number: int
    issue_number: int
    first_received_at: float


class PendingInlineComments:
    """The waiting inline comments, grouped by pull request."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def add(self, *, repo: str, pull_number: int, issue_number: int, comment: PendingInline, now: float) -> bool:
        """Keep one comment; False when it was already kept (a redelivery)."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO pending_inline_comments "
            "(comment_id, repo, pull_number, issue_number, author, path, line, body, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (comment.comment_id, repo, pull_number, issue_number, comment.author, comment.path, comment.line,
             comment.body, now),
        )
        return cursor.rowcount == 1

    def rows(self) -> list[dict[str, object]]:
        """Every waiting comment with all its columns, oldest first (for inspection)."""
        rows = self._db.execute("SELECT * FROM pending_inline_comments ORDER BY received_at, comment_id").fetchall()
        return [dict(row) for row in rows]

    def pulls(self) -> list[PendingPull]:
        """The pull requests with waiting comments, the one waiting longest first."""
        rows = self._db.execute(
            "SELECT repo, pull_number, issue_number, MIN(received_at) AS first "
            "FROM pending_inline_comments GROUP BY repo, pull_number ORDER BY first"
        ).fetchall()
        return [PendingPull(row["repo"], row["pull_number"], row["issue_number"], row["first"]) for row in rows]

    def of_pull(self, repo: str, pull_number: int) -> list[PendingInline]:
        rows = self._db.execute(
            "SELECT comment_id, author, path, line, body FROM pending_inline_comments"
            " WHERE repo = ? AND pull_number = ? ORDER BY received_at, comment_id",
            (repo, pull_number),
        ).fetchall()
        return [PendingInline(row["comment_id"], row["author"], row["path"], row["line"], row["body"]) for row in rows]

    def forget(self, comment_ids: list[int]) -> None:
        self._db.executemany("DELETE FROM pending_inline_comments WHERE comment_id = ?", [(i,) for i in comment_ids])
