"""The operator's list of sessions, stuck first: read from the store for the dashboard, the JSON API and `shepherd status`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bot.core.sanitize import terminal_line
from bot.core.session import Detail, Session, State, to_status_json
from bot.store.sessions import SessionStore

# Stuck sessions wait for a person, so they come first; finished work comes last.
_STATE_ORDER = {
    State.STUCK: 0,
    State.WORKING: 1,
    State.PLANNING: 1,
    State.QUEUED: 2,
    State.REGISTERED: 2,
    State.FAILED: 3,
    State.COMPLETE: 4,
    State.CANCELLED: 5,
}
STATUS_MARKS = {State.STUCK: "[!]", State.FAILED: "[x]", State.COMPLETE: "[v]", State.CANCELLED: "[-]"}
LIVE_MARK = "[>]"

NO_SESSIONS_TEXT = "No sessions yet."
NO_DATABASE_TEXT = "No Shepherd database at {path} yet: no sessions."
STATUS_HELP = "list every session, stuck ones first (the dashboard in a terminal)"
JSON_HELP = "print the status.json objects of GET /api/sessions instead"


@dataclass(frozen=True)
class SessionRow:
    """One session as the operator's views show it."""

    session: Session
    installation_id: int | None = None

    @property
    def sort_key(self) -> tuple[int, float]:
        return (_STATE_ORDER.get(self.session.state, 9), -self.session.updated_at.timestamp())


def load_sessions(db: Any) -> list[SessionRow]:
    """Every stored session (`db` is the store's connection), stuck first, then live ones, then finished
    ones; newest first within each."""
    found = [SessionRow(session, installation_id) for session, installation_id in SessionStore(db).every_session()]
    return sorted(found, key=lambda row: row.sort_key)


def status_objects(rows: list[SessionRow]) -> list[dict[str, Any]]:
    """The SPEC §4 `status.json` objects of `rows`, for `GET /api/sessions`."""
    return [to_status_json(row.session) for row in rows]


def count_by_state(rows: list[SessionRow]) -> dict[str, int]:
    """Sessions per state, every state present (a gauge that disappears reads as "unknown", not 0)."""
    counts = {str(state): 0 for state in State}
    for row in rows:
        counts[str(row.session.state)] += 1
    return counts


def spend_by_repository(rows: list[SessionRow]) -> dict[str, float]:
    """What each repository's sessions spent on the model, all together (SPEC §8)."""
    totals: dict[str, float] = {}
    for row in rows:
        totals[row.session.repo] = totals.get(row.session.repo, 0.0) + row.session.spent_usd
    return totals


def format_age(since: datetime, now: datetime) -> str:
    """A short age such as `45s`, `12m`, `3h 5m` or `2d 4h`."""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def open_question(session: Session) -> str | None:
    """What the session waits for a person to answer or do, when it is stuck."""
    if session.state != State.STUCK:
        return None
    if session.question is not None:
        return session.question.text
    return session.stuck_reason


def state_label(session: Session) -> str:
    """The state in capitals, with its detail when it says more, e.g. `STUCK (plan-awaiting-approval)`."""
    label = str(session.state).upper()
    if session.detail is not None and session.detail not in (Detail.NO_CHANGES,):
        label += f" ({session.detail})"
    return label


def status_line(session: Session, now: datetime) -> str:
    """One terminal line, e.g. `[!] acme/web#124 STUCK (12m) Implement auth flow` (`#124/2` for a retry)."""
    mark = STATUS_MARKS.get(session.state, LIVE_MARK)
    age = format_age(session.created_at, now)
    title = terminal_line(session.issue_title, limit=200)
    attempt = f"/{session.attempt}" if session.attempt > 1 else ""  # the issue's second, third... session
    line = f"{mark} {session.repo}#{session.issue_number}{attempt} {str(session.state).upper()} ({age}) {title}"
    question = open_question(session)
    if question:
        line += f"\n      ? {terminal_line(question)}"
    if session.pr_url:
        line += f"\n      PR {terminal_line(session.pr_url)}"
    return line


def render_status(rows: list[SessionRow], now: datetime | None = None) -> str:
    """`shepherd status`: one line per session (plus its question or PR), stuck first."""
    now = now or datetime.now(timezone.utc)
    if not rows:
        return NO_SESSIONS_TEXT
    return "\n".join(status_line(row.session, now) for row in rows)




def run_status(args: argparse.Namespace) -> int:
    """`shepherd status`: the sessions from the data folder's database, stuck first."""
    from bot.settings import load_settings
    from bot.store.database import Store

    settings = load_settings()
    database = settings.data_dir / "shepherd.db"
    if not database.is_file():
        # `--json` is for scripts: always JSON, and no database means no sessions.
        sys.stdout.write("[]\n" if getattr(args, "json", False) else NO_DATABASE_TEXT.format(path=database) + "\n")
        return 0
    store = Store.open(database)
    try:
        rows = load_sessions(store.db)
    finally:
        store.close()
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(status_objects(rows), indent=2) + "\n")
    else:
        sys.stdout.write(render_status(rows) + "\n")
    return 0


def add_status_command(commands: Any) -> None:
    status = commands.add_parser("status", help=STATUS_HELP, description=STATUS_HELP)
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    status.set_defaults(run=run_status)
