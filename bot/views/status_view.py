"""The operator's list of sessions, stuck first: read from the store for the dashboard, the JSON API and `shepherd status`.

Beside each session the views show where it runs: its host, and its place in the queue while it waits
(`Placements`). The running engine knows both (`Engine.placements()`); `shepherd status` asks the same
sources from outside: under the local engine the host is this machine and the place is in the session's
`status.json`, which the engine keeps current; under Temporal it reads the workflows themselves
(`bot/temporal/overview.py`), so any machine shows what every front end shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bot.core.sanitize import terminal_line
from bot.core.session import Detail, Session, State, to_status_json
from bot.views.render import ordinal
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
class Placements:
    """Where sessions run: the host of each (`default_host` when the engine runs them all on one machine)
    and the 1-based place in the queue of each session waiting for a slot."""

    hosts: Mapping[str, str | None] = field(default_factory=dict)
    places: Mapping[str, int] = field(default_factory=dict)
    default_host: str | None = None

    def host(self, session_id: str) -> str | None:
        return self.hosts.get(session_id) or self.default_host

    def place(self, session_id: str) -> int | None:
        return self.places.get(session_id)


@dataclass(frozen=True)
class SessionRow:
    """One session as the operator's views show it."""

    session: Session
    installation_id: int | None = None
    host: str | None = None
    queue_position: int | None = None

    @property
    def sort_key(self) -> tuple[int, float]:
        return (_STATE_ORDER.get(self.session.state, 9), -self.session.updated_at.timestamp())


def load_sessions(db: Any, placements: Placements | None = None) -> list[SessionRow]:
    """Every stored session (`db` is the store's connection), stuck first, then live ones, then finished
    ones; newest first within each."""
    return sort_rows(SessionStore(db).every_session(), placements)


def sort_rows(found: Sequence[tuple[Session, int | None]], placements: Placements | None = None) -> list[SessionRow]:
    """`(session, installation id)` pairs as rows, with their host and queue place, stuck first."""
    where = placements or Placements()
    rows = [SessionRow(session, installation_id, where.host(session.id),
                       where.place(session.id) if session.state == State.QUEUED else None)
            for session, installation_id in found]
    return sorted(rows, key=lambda row: row.sort_key)


def status_objects(rows: list[SessionRow]) -> list[dict[str, Any]]:
    """The SPEC §4 `status.json` objects of `rows`, for `GET /api/sessions`, with the optional `host`."""
    return [{**to_status_json(row.session, queue_position=row.queue_position), "host": row.host} for row in rows]


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


def placement_text(host: str | None, queue_position: int | None) -> str:
    """`on host-a`, `on host-a, 2nd in the queue`, or `3rd in the queue` before a host took the session."""
    parts = [f"on {terminal_line(host, limit=80)}"] if host else []
    if queue_position is not None:
        parts.append(f"{ordinal(queue_position)} in the queue")
    return ", ".join(parts)


def status_line(session: Session, now: datetime, *, host: str | None = None, queue_position: int | None = None) -> str:
    """One terminal line, e.g. `[!] acme/web#124 STUCK (12m) Implement auth flow` (`#124/2` for a retry),
    then the question, the PR and where the session runs, each on a line of its own."""
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
    where = placement_text(host, queue_position)
    if where:
        line += f"\n      {where}"
    return line


def render_status(rows: list[SessionRow], now: datetime | None = None) -> str:
    """`shepherd status`: one line per session (plus its question or PR), stuck first."""
    now = now or datetime.now(timezone.utc)
    if not rows:
        return NO_SESSIONS_TEXT
    return "\n".join(status_line(row.session, now, host=row.host, queue_position=row.queue_position) for row in rows)




def run_status(args: argparse.Namespace) -> int:
    """`shepherd status`: the sessions from the data folder's database, stuck first."""
    from bot.settings import load_settings
    from bot.store.database import Store

    settings = load_settings()
    if settings.engine == "temporal":
        # The sessions are the workflows'; this machine's data folder may hold no copy, or an old one.
        import asyncio

        from bot.temporal.overview import read_rows

        rows = asyncio.run(read_rows(settings))
    else:
        database = settings.data_dir / "shepherd.db"
        if not database.is_file():
            # `--json` is for scripts: always JSON, and no database means no sessions.
            sys.stdout.write("[]\n" if getattr(args, "json", False) else NO_DATABASE_TEXT.format(path=database) + "\n")
            return 0
        store = Store.open(database)
        try:
            found = SessionStore(store.db).every_session()
        finally:
            store.close()
        places = queue_places_on_disk(settings.data_dir / "sessions", [s for s, _ in found if s.state == State.QUEUED])
        rows = sort_rows(found, Placements(places=places, default_host=settings.host_name))
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(status_objects(rows), indent=2) + "\n")
    else:
        sys.stdout.write(render_status(rows) + "\n")
    if settings.engine == "temporal":
        # The Temporal SDK's native runtime can crash while the interpreter tears down after a short run (a
        # SIGSEGV seen once in a test under load): the answer is written, so leave without that teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def queue_places_on_disk(sessions_dir: Path, queued: list[Session]) -> dict[str, int]:
    """The queue places the local engine wrote into the waiting sessions' `status.json` files."""
    from bot.agent.channel import STATUS_NAME
    from bot.workspace.workspaces import session_folder

    places: dict[str, int] = {}
    for session in queued:
        try:
            data = json.loads((sessions_dir / session_folder(session.id) / STATUS_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        place = data.get("queuePosition") if isinstance(data, dict) else None
        if isinstance(place, int) and place > 0:
            places[session.id] = place
    return places


def add_status_command(commands: Any) -> None:
    status = commands.add_parser("status", help=STATUS_HELP, description=STATUS_HELP)
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    status.set_defaults(run=run_status)
