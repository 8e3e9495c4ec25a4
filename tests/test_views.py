"""The operator's views: token required, stuck sessions first, `status.json` objects, Prometheus gauges."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from bot.app import SERVICES, create_app
from bot.views.dashboard_token import ensure_dashboard_token, token_path
from bot.core.session import (
    Detail,
    Mode,
    PullRequestState,
    Question,
    Session,
    State,
    make_branch,
    make_session_id,
    make_slug,
    to_status_json,
)
from bot.views.status_view import load_sessions, render_status
from tests.conftest import settings_for

TOKEN = "test-dashboard-token"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def make_session(repo: str, number: int, title: str, state: State, *, minutes_ago: int, **changes) -> Session:
    slug = make_slug(title)
    started = NOW - timedelta(minutes=minutes_ago)
    session = Session(
        id=make_session_id(repo, number, 1),
        repo=repo,
        issue_number=number,
        issue_title=title,
        mode=Mode.GO,
        trigger_actor="alice",
        slug=slug,
        branch=make_branch(number, slug),
        base_branch="main",
        state=state,
        created_at=started,
        updated_at=started + timedelta(minutes=1),
    )
    return replace(session, **changes)


def store_session(store, session: Session, installation_id: int = 7) -> None:
    store.db.execute(
        "INSERT OR REPLACE INTO sessions (id, repo, issue_number, installation_id, branch, state, data, context,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)",
        (
            session.id, session.repo, session.issue_number, installation_id, session.branch,
            str(session.state), json.dumps(session.to_dict()),
            session.created_at.timestamp(), session.updated_at.timestamp(),
        ),
    )


def sample_sessions() -> list[Session]:
    question = Question(
        question_id="q1",
        text="Should the export include archived rows?",
        options=("Yes, all rows", "No, only active ones"),
        context=None,
        asked_in_turn=1,
        asked_at=NOW - timedelta(minutes=12),
        comment_id=99,
    )
    return [
        make_session("acme/web", 120, "Add CSV export", State.WORKING, minutes_ago=30,
                     last_heartbeat=NOW - timedelta(seconds=40), checkpoint="writing the exporter"),
        make_session("acme/web", 121, "Fix <b>login</b> redirect", State.COMPLETE, minutes_ago=300,
                     pr_number=130, pr_url="https://github.com/acme/web/pull/130", pr_state=PullRequestState.OPEN),
        make_session("acme/web", 124, "Implement auth flow", State.STUCK, minutes_ago=12,
                     question=question, stuck_reason=question.text),
        make_session("acme/api", 7, "Plan the migration", State.STUCK, minutes_ago=60,
                     detail=Detail.PLAN_AWAITING_APPROVAL,
                     stuck_reason="The plan is waiting for approval (`/agent approve` or `/agent revise <text>`)."),
    ]


@pytest.fixture
async def views(aiohttp_client, fake_github, tmp_path, monkeypatch):
    # Ages on the page are counted from the real clock: the sessions start relative to now, not to import time.
    monkeypatch.setattr(sys.modules[__name__], "NOW", datetime.now(timezone.utc).replace(microsecond=0))
    app = create_app(settings_for(fake_github, tmp_path / "data"))
    client = await aiohttp_client(app)
    store = client.server.app[SERVICES].store
    for session in sample_sessions():
        store_session(store, session)
    return client


@pytest.mark.parametrize("path", ["/", "/api/sessions", "/metrics"])
@pytest.mark.parametrize(
    "headers, query",
    [({}, ""), ({}, "?token=wrong"), ({"Authorization": "Bearer wrong"}, ""),
     ({"Authorization": f"Basic {TOKEN}"}, ""), ({}, "?token=")],
)
async def test_every_view_refuses_a_missing_or_wrong_token(views, path, headers, query):
    response = await views.get(path + query, headers=headers)
    assert response.status == 401
    text = await response.text()
    assert "Should the export" not in text and "shepherd_sessions" not in text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/", "/api/sessions", "/metrics"])
async def test_bearer_header_and_query_token_both_open_every_view(views, path):
    by_header = await views.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    by_query = await views.get(f"{path}?token={TOKEN}")
    assert by_header.status == by_query.status == 200
    assert by_header.headers["Cache-Control"] == "no-store"
    assert by_header.headers["Referrer-Policy"] == "no-referrer"


async def test_api_sessions_lists_status_json_objects_stuck_first(views):
    response = await views.get("/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
    listed = await response.json()
    assert [item["issueNumber"] for item in listed] == [124, 7, 120, 121]
    stuck = listed[0]
    # The status.json object, and where the session runs: under the local engine, this machine.
    assert stuck == {**to_status_json(sample_sessions()[2]), "host": socket.gethostname()}
    for key in ("id", "repo", "issueNumber", "issueTitle", "status", "detail", "branch", "worktreePath",
                "startedAt", "lastHeartbeat", "stuckReason", "forwardedMessage", "pullRequestUrl"):
        assert key in stuck
    assert stuck["status"] == "stuck" and stuck["stuckReason"] == "Should the export include archived rows?"
    assert listed[3]["pullRequestUrl"] == "https://github.com/acme/web/pull/130"


async def test_dashboard_shows_stuck_first_with_question_branch_and_pr(views):
    response = await views.get(f"/?token={TOKEN}")
    html = await response.text()
    assert response.content_type == "text/html"
    order = [html.index(f"#{n}</a>") for n in (124, 7, 120, 121)]
    assert order == sorted(order)
    assert "Should the export include archived rows?" in html
    assert "Yes, all rows" in html
    assert "agent/issue-124-implement-auth-flow" in html
    assert 'href="https://github.com/acme/web/pull/130"' in html
    assert 'href="https://github.com/acme/web/issues/124"' in html
    assert "writing the exporter" in html
    assert "12m" in html  # the stuck session's age
    assert 'http-equiv="refresh"' in html
    assert "Fix &lt;b&gt;login&lt;/b&gt; redirect" in html and "<b>login</b>" not in html
    assert "2 stuck" in html


async def test_metrics_sets_the_sessions_gauge_at_scrape_time(views):
    response = await views.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'shepherd_sessions{state="stuck"} 2.0' in text
    assert 'shepherd_sessions{state="working"} 1.0' in text
    assert 'shepherd_sessions{state="complete"} 1.0' in text
    assert 'shepherd_sessions{state="failed"} 0.0' in text
    assert "shepherd_deliveries_waiting 0.0" in text  # nothing stored is waiting to be handled
    for name in ("shepherd_deliveries_total", "shepherd_github_requests_total",
                 "shepherd_github_rate_limit_remaining", "shepherd_turn_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in text

    store = views.server.app[SERVICES].store
    session = sample_sessions()[2]
    store_session(store, replace(session, state=State.WORKING, question=None, stuck_reason=None))
    text = await (await views.get(f"/metrics?token={TOKEN}")).text()
    assert 'shepherd_sessions{state="stuck"} 1.0' in text
    assert 'shepherd_sessions{state="working"} 2.0' in text


async def test_generated_token_is_kept_private_and_reused(aiohttp_client, fake_github, tmp_path, caplog):
    caplog.set_level("INFO")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_DASHBOARD_TOKEN="")
    assert settings.dashboard_token is None
    client = await aiohttp_client(create_app(settings))
    path = token_path(settings)
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"{settings.public_url}/?token={token}" in logged
    assert (await client.get(f"/api/sessions?token={token}")).status == 200
    assert ensure_dashboard_token(settings) == token


def test_terminal_status_lines():
    from bot.views.status_view import SessionRow

    rows = sorted((SessionRow(s) for s in sample_sessions()), key=lambda row: row.sort_key)
    text = render_status(rows, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "[!] acme/web#124 STUCK (12m) Implement auth flow"
    assert lines[1] == "      ? Should the export include archived rows?"
    assert lines[2].startswith("[!] acme/api#7 STUCK (1h) Plan the migration")
    assert "[>] acme/web#120 WORKING (30m) Add CSV export" in lines
    assert "      PR https://github.com/acme/web/pull/130" in lines
    assert render_status([], now=NOW) == "No sessions yet."


def test_a_retried_issue_shows_which_session_each_line_is():
    from dataclasses import replace

    from bot.views.status_view import SessionRow

    first = sample_sessions()[0]
    second = replace(first, id=first.id.rpartition("/")[0] + "/2", attempt=2)
    lines = render_status([SessionRow(second), SessionRow(first)], now=NOW).splitlines()
    number = f"{first.repo}#{first.issue_number}"
    assert lines[0].startswith(f"[>] {number}/2 ") and lines[1].startswith(f"[>] {number} ")


async def test_load_sessions_skips_a_broken_row(views):
    store = views.server.app[SERVICES].store
    store.db.execute(
        "INSERT INTO sessions VALUES ('x', 'a/b', 1, 7, 'agent/x', 'working', '{not json', '{}', 0, 0)"
    )
    assert [row.session.issue_number for row in load_sessions(store.db)] == [124, 7, 120, 121]


def test_terminal_lines_carry_no_escape_sequence_from_a_title_or_a_question():
    from bot.core.session import Question
    from bot.views.status_view import SessionRow

    hostile = make_session("acme/web", 9, "Fix \x1b]0;pwned\x07 the \x1b[2J title\r\rand more", State.WORKING,
                           minutes_ago=5)
    asking = make_session("acme/web", 10, "Ask", State.STUCK, minutes_ago=5,
                          question=Question("q1", "Which \x1b[31mred\x1b[0m one?\x9b2J", (), None, 1, NOW))
    text = render_status([SessionRow(hostile), SessionRow(asking)], now=NOW)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\x9b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("[>] acme/web#9 WORKING (5m) Fix ") and "pwned" in lines[0]  # shown, not obeyed
    assert len(lines) == 3  # the title did not add or rewrite a line


async def test_metrics_show_the_event_loop_lag_and_a_blocked_loop_raises_it(views):
    await asyncio.sleep(0.25)  # let the probe wake a couple of times
    time.sleep(0.4)  # block the loop, as a slow synchronous call would
    await asyncio.sleep(0.25)
    text = await (await views.get(f"/metrics?token={TOKEN}")).text()
    worst = [line for line in text.splitlines() if line.startswith('shepherd_event_loop_lag_seconds{which="max"}')]
    assert worst and float(worst[0].split()[-1]) >= 0.2


async def test_spend_is_shown_per_session_and_per_repository(views):
    """SPEC §8: what each session spent, and each repository's sessions together, in the JSON API and metrics."""
    store = views.server.app[SERVICES].store
    sessions = sample_sessions()
    store_session(store, replace(sessions[0], spent_usd=0.42, limits=replace(sessions[0].limits, max_cost_usd=2.0)))
    store_session(store, replace(sessions[1], spent_usd=1.08))
    store_session(store, replace(sessions[3], spent_usd=0.5))
    listed = await (await views.get(f"/api/sessions?token={TOKEN}")).json()
    by_number = {item["issueNumber"]: item for item in listed}
    assert (by_number[120]["spentUsd"], by_number[120]["maxCostUsd"]) == (0.42, 2.0)
    assert (by_number[121]["spentUsd"], by_number[121]["maxCostUsd"]) == (1.08, None)
    text = await (await views.get(f"/metrics?token={TOKEN}")).text()
    assert 'shepherd_repository_spend_usd{repository="acme/web"} 1.5' in text
    assert 'shepherd_repository_spend_usd{repository="acme/api"} 0.5' in text
    assert 'shepherd_session_spend_usd{repository="acme/web",session="acme/web#120/1"} 0.42' in text
    html = await (await views.get(f"/?token={TOKEN}")).text()
    assert "Spend: $0.42 of $2.00" in html
    assert "Spend: acme/api $0.50, acme/web $1.50" in html
