"""What Shepherd itself last pushed to each `agent/` branch: the lease of its next push (SPEC §2).

The mirror's `refs/remotes/origin/*` cannot serve: any fetch of the mirror moves them to whatever is on
GitHub now, a person's commits included. This record moves only when Shepherd's own push succeeds.
"""

from __future__ import annotations

import sqlite3

_LAST = "SELECT sha FROM pushed_branches WHERE repo = ? AND branch = ?"
_RECORD = (
    "INSERT INTO pushed_branches (repo, branch, sha, session_id, pushed_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (repo, branch) DO UPDATE SET sha = excluded.sha, session_id = excluded.session_id,"
    " pushed_at = excluded.pushed_at"
)


class PushRecords:
    """Per repository and branch, the commit Shepherd's last successful push left there."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def last(self, repo: str, branch: str) -> str | None:
        row = self._db.execute(_LAST, (repo, branch)).fetchone()
        return None if row is None else str(row[0])

    def record(self, repo: str, branch: str, sha: str, *, session_id: str, now: float) -> None:
        self._db.execute(_RECORD, (repo, branch, sha, session_id, now))
