"""Data access for the `sessions`, `session_events` and `outbox` tables (schema in `bot/store/database.py`).

A session's row, the event that produced it and the commands to carry out are written in one
transaction (`record`), so after a crash either all three exist or none does. The outbox is the
runtime's to-do list: a row is marked done only after its command succeeded, so a restart carries
out every command that may not have happened yet (executors are idempotent).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from bot.store.context import RuntimeContext
from bot.core.session import (
    TERMINAL_STATES,
    Command,
    Event,
    Session,
    command_from_dict,
    command_to_dict,
    event_from_dict,
    event_to_dict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredSession:
    """A session as stored, with the runtime's facts about it (installation, policy, worktree, turn...)."""

    session: Session
    context: RuntimeContext
    installation_id: int


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    session_id: str
    command: Command
    attempts: int


class SessionStore:
    """Reads and writes sessions and their outbox through the store's one connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def record(
        self,
        session: Session,
        context: RuntimeContext,
        event: Event | None,
        commands: Iterable[Command],
        *,
        now: float,
    ) -> list[int]:
        """Store the session row, append the event and the commands, all in one transaction."""
        installation_id = context.installation_id
        seqs: list[int] = []
        with self.db:
            self.db.execute(
                """
                INSERT INTO sessions (id, repo, issue_number, installation_id, branch, state, data,
                                      context, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET state = excluded.state, data = excluded.data,
                    context = excluded.context, branch = excluded.branch,
                    updated_at = excluded.updated_at
                """,
                (
                    session.id, session.repo, session.issue_number, installation_id, session.branch,
                    str(session.state), json.dumps(session.to_dict()), json.dumps(context.to_dict()),
                    session.created_at.timestamp(), now,
                ),
            )
            if event is not None:
                self.db.execute(
                    "INSERT INTO session_events (session_id, event, at) VALUES (?, ?, ?)",
                    (session.id, json.dumps(event_to_dict(event)), now),
                )
            for command in commands:
                cursor = self.db.execute(
                    "INSERT INTO outbox (session_id, command, created_at) VALUES (?, ?, ?)",
                    (session.id, json.dumps(command_to_dict(command)), now),
                )
                seqs.append(int(cursor.lastrowid))
        return seqs

    def save_context(self, session_id: str, context: RuntimeContext) -> None:
        """Replace the session's runtime facts (the engine's to call, under the issue's lock)."""
        with self.db:
            self.db.execute(
                "UPDATE sessions SET context = ? WHERE id = ?", (json.dumps(context.to_dict()), session_id)
            )

    def get(self, session_id: str) -> StoredSession | None:
        row = self.db.execute(
            "SELECT data, context, installation_id FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return _stored(row) if row else None

    def last_for_issue(self, repo: str, issue_number: int) -> StoredSession | None:
        row = self.db.execute(
            """SELECT data, context, installation_id FROM sessions WHERE repo = ? AND issue_number = ?
               ORDER BY created_at DESC, rowid DESC LIMIT 1""",
            (repo, issue_number),
        ).fetchone()
        return _stored(row) if row else None

    def for_issue(self, repo: str, issue_number: int) -> list[Session]:
        """Every session of one issue, oldest first (the status comment's line about earlier sessions)."""
        rows = self.db.execute(
            """SELECT data, context, installation_id FROM sessions WHERE repo = ? AND issue_number = ?
               ORDER BY created_at, rowid""",
            (repo, issue_number),
        ).fetchall()
        return [_stored(row).session for row in rows]

    def last_for_branch(self, repo: str, branch: str) -> StoredSession | None:
        row = self.db.execute(
            """SELECT data, context, installation_id FROM sessions WHERE repo = ? AND branch = ?
               ORDER BY created_at DESC, rowid DESC LIMIT 1""",
            (repo, branch),
        ).fetchone()
        return _stored(row) if row else None

    def live(self) -> list[StoredSession]:
        """Every session not in a terminal state, oldest first."""
        marks = ",".join("?" for _ in TERMINAL_STATES)
        rows = self.db.execute(
            f"""SELECT data, context, installation_id FROM sessions WHERE state NOT IN ({marks})
                ORDER BY updated_at, rowid""",
            tuple(str(state) for state in TERMINAL_STATES),
        ).fetchall()
        return [_stored(row) for row in rows]

    def with_open_pull_requests(self) -> list[StoredSession]:
        """Sessions whose stored PR is still open (for reconciliation)."""
        rows = self.db.execute(
            """SELECT data, context, installation_id FROM sessions
               WHERE json_extract(data, '$.pr_state') = 'open' ORDER BY updated_at, rowid"""
        ).fetchall()
        return [_stored(row) for row in rows]

    def for_installation(self, installation_id: int) -> list[StoredSession]:
        return [s for s in self.live() if s.installation_id == installation_id]

    def for_repository(self, repo: str) -> list[StoredSession]:
        return [s for s in self.live() if s.session.repo == repo]

    def all_for_repository(self, repo: str) -> list[StoredSession]:
        """Every session of `repo`, finished ones too (the dashboard issue lists open PRs)."""
        rows = self.db.execute(
            "SELECT data, context, installation_id FROM sessions WHERE repo = ? ORDER BY created_at, rowid", (repo,)
        ).fetchall()
        return [_stored(row) for row in rows]

    def every_session(self) -> list[tuple[Session, int]]:
        """Every stored session and its installation, oldest first, for the operator's views (read only).

        A row that no longer reads as a session is logged and left out: one must not hide the others."""
        found = []
        for data, installation_id in self.db.execute(
            "SELECT data, installation_id FROM sessions ORDER BY created_at, rowid"
        ).fetchall():
            try:
                found.append((Session.from_dict(json.loads(data)), int(installation_id)))
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("skipping an unreadable session row")
        return found

    def agents(self) -> dict[str, str]:
        """The agent each stored session ran (its effective policy's `agent`), by session id, for the outcomes."""
        rows = self.db.execute("SELECT id, json_extract(context, '$.policy.agent') FROM sessions").fetchall()
        return {str(row[0]): str(row[1] or "") for row in rows}

    def events(self, session_id: str) -> list[Event]:
        rows = self.db.execute(
            "SELECT event FROM session_events WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()
        return [event_from_dict(json.loads(row[0])) for row in rows]

    # -- outbox -------------------------------------------------------------------------------

    def pending(self, session_id: str | None = None) -> list[OutboxRow]:
        """Commands not yet carried out, in the order they were decided."""
        if session_id is None:
            rows = self.db.execute(
                "SELECT seq, session_id, command, attempts FROM outbox WHERE done_at IS NULL ORDER BY seq"
            ).fetchall()
        else:
            rows = self.db.execute(
                """SELECT seq, session_id, command, attempts FROM outbox
                   WHERE done_at IS NULL AND session_id = ? ORDER BY seq""",
                (session_id,),
            ).fetchall()
        return [OutboxRow(row[0], row[1], command_from_dict(json.loads(row[2])), row[3]) for row in rows]

    def mark_done(self, seq: int, *, now: float, error: str | None = None) -> None:
        """Done after success, or given up on (then `error` says why)."""
        with self.db:
            self.db.execute("UPDATE outbox SET done_at = ?, error = ? WHERE seq = ?", (now, error, seq))

    def mark_attempt(self, seq: int, error: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE outbox SET attempts = attempts + 1, error = ? WHERE seq = ?", (error, seq)
            )

    def commands(self, session_id: str, *, done: bool | None = None) -> list[Command]:
        """The session's commands in order (all, only done, or only pending), for inspection."""
        clause = "" if done is None else (" AND done_at IS NOT NULL" if done else " AND done_at IS NULL")
        rows = self.db.execute(
            f"SELECT command FROM outbox WHERE session_id = ?{clause} ORDER BY seq", (session_id,)
        ).fetchall()
        return [command_from_dict(json.loads(row[0])) for row in rows]


def _stored(row: tuple[str, str, int]) -> StoredSession:
    return StoredSession(Session.from_dict(json.loads(row[0])), RuntimeContext.from_dict(json.loads(row[1])), int(row[2]))
