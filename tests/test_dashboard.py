"""The web dashboard (issue 16): a login page without a token, links to the question comment, the branch and
the PR, the failure reason and the redacted log tail of failed sessions, no heartbeat for ended ones, and a
layout that fits a phone (checked in Chromium by tests/test_browser.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest

from bot.app import SERVICES, create_app
from bot.core.session import Detail, PullRequestState, State, make_session_id
from tests import test_views
from tests.conftest import settings_for
from tests.test_views import TOKEN, make_session, sample_sessions, store_session


class Page(HTMLParser):
    """Links, forms and the text of each session row of a dashboard page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.forms: list[dict] = []
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.links.append(attrs.get("href"))
        elif tag == "form":
            self.forms.append({"action": attrs.get("action"), "method": attrs.get("method"), "inputs": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append(attrs.get("name"))
        elif tag == "tr" and attrs.get("data-session"):
            self._row = attrs["data-session"]
            self.rows[self._row] = []

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self.rows[self._row].append(data.strip())


@pytest.fixture
async def dashboard(aiohttp_client, fake_github, tmp_path, monkeypatch):
    monkeypatch.setattr(test_views, "NOW", datetime.now(timezone.utc).replace(microsecond=0))
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_DASHBOARD_TOKEN=TOKEN)
    client = await aiohttp_client(create_app(settings))
    store = client.server.app[SERVICES].store
    now = test_views.NOW
    failed = make_session("acme/web", 125, "Break things", State.FAILED, minutes_ago=20,
                          detail=Detail.EXIT_CODE, failure_reason="The agent exited with code 127.",
                          last_heartbeat=now - timedelta(minutes=18))
    done = make_session("acme/web", 126, "Done thing", State.COMPLETE, minutes_ago=90, pr_number=131,
                        pr_url="https://github.com/acme/web/pull/131", pr_state=PullRequestState.OPEN,
                        last_heartbeat=now - timedelta(minutes=80))
    for session in [*sample_sessions(), failed, done]:
        store_session(store, session)
    folder = settings.data_dir / "sessions" / "acme__web__125__1"
    folder.mkdir(parents=True)
    (folder / "turn-1.log").write_text(
        "starting\n" + f"using token ghs_{'b' * 36}\n" + "sh: 1: claude: not found\n")
    return client


async def page_of(client) -> Page:
    response = await client.get(f"/?token={TOKEN}")
    assert response.status == 200
    return Page(await response.text())


async def test_without_a_token_the_dashboard_is_a_login_page(dashboard):
    response = await dashboard.get("/")
    assert response.status == 401
    assert response.content_type == "text/html"
    text = await response.text()
    assert "Should the export" not in text
    [form] = Page(text).forms
    assert (form["action"], form["method"], form["inputs"]) == ("/", "get", ["token"])
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    api = await dashboard.get("/api/sessions")  # scripts still get JSON
    assert api.status == 401 and api.content_type == "application/json"


async def test_links_to_the_question_comment_the_branch_and_the_pr(dashboard):
    page = await page_of(dashboard)
    assert "https://github.com/acme/web/issues/124#issuecomment-99" in page.links
    assert "https://github.com/acme/web/tree/agent/issue-121-fix-b-login-b-redirect" in page.links
    assert "https://github.com/acme/web/pull/130" in page.links


async def test_a_failed_session_shows_its_reason_and_redacted_log_tail(dashboard):
    row = " ".join((await page_of(dashboard)).rows["acme/web#125/1"])
    assert "The agent CLI `claude` was not found on the server" in row
    assert "claude: not found" in row
    assert "ghs_" not in row and "[redacted]" in row


async def test_ended_sessions_show_no_heartbeat(dashboard):
    page = await page_of(dashboard)
    assert not any(cell.endswith(" ago") for cell in page.rows["acme/web#126/1"])
    assert not any(cell.endswith(" ago") for cell in page.rows["acme/web#125/1"])
    assert any(cell.endswith(" ago") for cell in page.rows["acme/web#120/1"])  # a working one keeps it


async def test_an_issue_s_sessions_are_numbered_as_the_cli_numbers_them(dashboard):
    store = dashboard.server.app[SERVICES].store
    first = make_session("acme/web", 140, "Retry me", State.FAILED, minutes_ago=30, detail=Detail.EXIT_CODE,
                         failure_reason="The agent exited with code 1.")
    second = replace(make_session("acme/web", 140, "Retry me", State.WORKING, minutes_ago=5),
                     id=make_session_id("acme/web", 140, 2), attempt=2)
    store_session(store, first)
    store_session(store, second)
    page = await page_of(dashboard)
    assert page.rows["acme/web#140/1"][0] == "acme/web#140"
    assert page.rows["acme/web#140/2"][0] == "acme/web#140/2"
    assert page.rows["acme/web#124/1"][0] == "acme/web#124"  # a first session stays unnumbered


async def test_a_failed_bake_off_shows_the_log_tail_of_its_winning_attempt(dashboard, tmp_path):
    """A judged bake-off goes on in its winner's folder (`<session's>-<engine>`): a later failure's log tail
    is read there, where the engine wrote it."""
    from bot.core.session import Attempt

    store = dashboard.server.app[SERVICES].store
    base = make_session("acme/web", 150, "Race them", State.FAILED, minutes_ago=30, detail=Detail.EXIT_CODE,
                        failure_reason="The agent exited with code 2.")
    attempts = tuple(Attempt(name, replace(base, state=State.COMPLETE)) for name in ("claude", "codex"))
    store_session(store, replace(base, attempts=attempts, bakeoff_winner="codex"))
    folder = tmp_path / "data" / "sessions" / "acme__web__150__1-codex"
    folder.mkdir(parents=True)
    (folder / "turn-3.log").write_text("codex: review round failed at step 4\n")
    row = " ".join((await page_of(dashboard)).rows["acme/web#150/1"])
    assert "review round failed at step 4" in row
