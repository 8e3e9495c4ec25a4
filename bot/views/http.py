"""The operator's views behind the dashboard token: `GET /` (dashboard), `GET /api/sessions`, `GET /metrics`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.core.session import Session, State
from bot.core.budget import format_usd, spend_line
from bot.views.dashboard_token import token_matches
from bot.views.render import failure_text, ordinal
from bot.views.session_logs import known_secrets, log_files
from bot.views.outcomes_view import export_outcomes, load_outcomes, outcome_rows
from bot.views.status_view import (
    Placements,
    SessionRow,
    count_by_state,
    format_age,
    load_sessions,
    open_question,
    spend_by_repository,
    state_label,
    status_objects,
)

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
REFRESH_SECONDS = 15

UNAUTHORIZED_TEXT = "A dashboard token is required: send 'Authorization: Bearer <token>' or add ?token=<token>."
NOT_READY_TEXT = "Shepherd is starting."
PAGE_TITLE = "Shepherd"
EMPTY_TEXT = "No sessions yet. Label an issue agent:go to start one."
LOGIN_TEXT = (
    "The dashboard needs its token: the server printed it in its log at start (the Dashboard: line), and "
    "it is kept in the data folder's dashboard_token file unless SHEPHERD_DASHBOARD_TOKEN sets it."
)
LOG_TAIL_LINES = 15
ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)

# The token may sit in the page's URL: never send it on as a Referer, never cache, never frame.
_PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_PAGE_HEADERS = {
    **_PRIVATE_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
}
# The login page's one form goes back to this server, nowhere else.
_LOGIN_HEADERS = {
    **_PRIVATE_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'",
    "WWW-Authenticate": 'Bearer realm="shepherd"',
}


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def offered_token(request: web.Request) -> str | None:
    """The token a request carries: `Authorization: Bearer <token>`, else `?token=`."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return request.query.get("token")


def _unauthorized() -> web.Response:
    return web.json_response(
        {"message": UNAUTHORIZED_TEXT},
        status=401,
        headers={**_PRIVATE_HEADERS, "WWW-Authenticate": 'Bearer realm="shepherd"'},
    )


def _login_page() -> web.Response:
    html = _environment().get_template("dashboard.html.j2").render(
        page="login", title=PAGE_TITLE, login_text=LOGIN_TEXT, refresh_seconds=REFRESH_SECONDS,
    )
    return web.Response(text=html, status=401, content_type="text/html", charset="utf-8", headers=_LOGIN_HEADERS)


def _question_url(session: Session, github_url: str) -> str | None:
    question = session.question
    if session.state != State.STUCK or question is None or question.comment_id is None:
        return None
    return f"{github_url}/{session.repo}/issues/{session.issue_number}#issuecomment-{question.comment_id}"


def _branch_url(session: Session, github_url: str) -> str | None:
    # Only a branch that is on GitHub: pushed for a pull request, or kept from earlier work.
    if session.pr_number is None and not session.from_kept_branch:
        return None
    return f"{github_url}/{session.repo}/tree/{session.branch}"


def failed_log_tail(session: Session, sessions_dir: Path | None, secrets: list[str | None]) -> str:
    """The last lines of a failed session's newest log (setup, turn or test), secrets masked."""
    if session.state != State.FAILED or sessions_dir is None:
        return ""
    from bot.workspace.workspaces import folder_of  # the one rule that names a session's folder

    folder = sessions_dir / folder_of(session)
    files = log_files(folder) if folder.is_dir() else []
    if not files:
        return ""
    from bot.agent.processes import log_tail

    return log_tail(files[-1], LOG_TAIL_LINES, [secret for secret in secrets if secret])


def dashboard_rows(
    rows: list[SessionRow], now: datetime, *, github_url: str = "https://github.com", agent: str | None = None,
    sessions_dir: Path | None = None, secrets: list[str | None] | None = None,
) -> list[dict[str, Any]]:
    """What the dashboard template shows per session."""
    shown = []
    for row in rows:
        session = row.session
        heartbeat = session.last_heartbeat or session.updated_at
        shown.append(
            {
                "id": session.id,
                "repo": session.repo,
                "issue_number": session.issue_number,
                "attempt": session.attempt,  # the issue's second, third... session shows `#124/2`, as the CLI does
                "title": session.issue_title,
                "state": str(session.state),
                "state_label": state_label(session),
                "age": format_age(session.created_at, now),
                "started": session.created_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                # An ended session has no heartbeat to watch.
                "heartbeat": None if session.state in ENDED else format_age(heartbeat, now) + " ago",
                "question": open_question(session),
                "question_url": _question_url(session, github_url),
                "branch_url": _branch_url(session, github_url),
                "options": list(session.question.options) if session.question else [],
                "branch": session.branch,
                "pr_url": session.pr_url,
                "pr_number": session.pr_number,
                "checkpoint": session.checkpoint,
                "failure": failure_text(session, agent),
                "log_tail": failed_log_tail(session, sessions_dir, secrets or []),
                "host": row.host,
                "queue_place": ordinal(row.queue_position) if row.queue_position is not None else None,
                "spend": (spend_line(session.spent_usd, session.limits.max_cost_usd)
                          if session.spent_usd > 0 or session.limits.max_cost_usd is not None else ""),
            }
        )
    return shown


def render_dashboard(
    rows: list[SessionRow], *, github_url: str, now: datetime, mode: str, agent: str | None = None,
    sessions_dir: Path | None = None, secrets: list[str | None] | None = None, outcomes: list[Any] | None = None,
) -> str:
    template = _environment().get_template("dashboard.html.j2")
    shown = dashboard_rows(rows, now, github_url=github_url, agent=agent, sessions_dir=sessions_dir, secrets=secrets)
    return template.render(
        page="sessions",
        outcomes=outcome_rows(outcomes or []),
        title=PAGE_TITLE,
        sessions=shown,
        stuck=sum(1 for row in shown if row["state"] == "stuck"),
        live=sum(1 for row in shown if row["state"] in ("registered", "queued", "planning", "working")),
        github_url=github_url,
        generated=now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        refresh_seconds=REFRESH_SECONDS,
        empty_text=EMPTY_TEXT,
        mode=mode,
        spend_by_repository=[(repo, format_usd(spent)) for repo, spent in sorted(spend_by_repository(rows).items())
                             if spent > 0],
    )


async def placements_of(services: Any) -> Placements:
    """Where the running engine has its sessions (none before GitHub mode started an engine)."""
    engine = getattr(services, "engine", None)
    placements = getattr(engine, "placements", None)
    if placements is None:
        return Placements(default_host=services.settings.host_name)
    found: Placements = await placements()
    return found


def export_placements(metrics: Any, rows: list[SessionRow]) -> None:
    """The host of each live session and the queue place of each waiting one, as of this scrape (a
    session that ended or moved leaves its old series)."""
    metrics.session_host.clear()
    metrics.queue_position.clear()
    for row in rows:
        session = row.session
        if session.state in ENDED:
            continue
        if row.host:
            metrics.session_host.labels(repository=session.repo, session=session.id, host=row.host).set(1)
        if row.queue_position is not None:
            metrics.queue_position.labels(repository=session.repo, session=session.id).set(row.queue_position)


def add_routes(app: web.Application, services_of: Callable[[web.Request], Any]) -> None:
    """Register the three views; `services_of(request)` returns the app's `Services`."""

    def authorised(request: web.Request) -> bool:
        services = services_of(request)
        expected = getattr(services, "dashboard_token", None) if services is not None else None
        # No token yet means the app has not finished starting; refuse rather than open the views.
        return expected is not None and token_matches(expected, offered_token(request))

    async def dashboard(request: web.Request) -> web.Response:
        if not authorised(request):
            return _login_page()  # a person in a browser: say where the token is, and ask for it
        services = services_of(request)
        rows = load_sessions(services.store.db, await placements_of(services))
        settings = services.settings
        html = render_dashboard(
            rows,
            github_url=settings.github_url,
            now=datetime.now(timezone.utc),
            mode=settings.mode,
            agent=settings.agent,
            sessions_dir=settings.data_dir / "sessions",
            secrets=[*known_secrets(settings), services.dashboard_token],
            outcomes=load_outcomes(services.store.db),
        )
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)

    async def api_sessions(request: web.Request) -> web.Response:
        if not authorised(request):
            return _unauthorized()
        services = services_of(request)
        rows = load_sessions(services.store.db, await placements_of(services))
        return web.json_response(status_objects(rows), headers=_PRIVATE_HEADERS)

    async def metrics(request: web.Request) -> web.Response:
        if not authorised(request):
            return _unauthorized()
        services = services_of(request)
        rows = load_sessions(services.store.db, await placements_of(services))
        for state, count in count_by_state(rows).items():
            services.metrics.sessions.labels(state=state).set(count)
        export_outcomes(services.metrics, load_outcomes(services.store.db))
        for repository, spent in spend_by_repository(rows).items():
            services.metrics.repository_spend.labels(repository=repository).set(spent)
        for row in rows:
            if row.session.spent_usd > 0:
                services.metrics.session_spend.labels(repository=row.session.repo, session=row.session.id).set(
                    row.session.spent_usd)
        export_placements(services.metrics, rows)
        response = web.Response(body=services.metrics.render(), headers=_PRIVATE_HEADERS)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/", dashboard)
    app.router.add_get("/api/sessions", api_sessions)
    app.router.add_get("/metrics", metrics)
