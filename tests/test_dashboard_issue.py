"""The per-repository "Shepherd dashboard" issue against the fake GitHub: created once, then edited, never duplicated."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import pytest

from bot.runtime.dashboard_issue import TITLE, refresh_dashboard, render_dashboard_issue
from bot.github.client import GitHubApp
from bot.metrics import Metrics
from bot.core.sanitize import find_marker
from bot.core.session import State
from bot.store.database import Store
from tests.test_views import make_session, sample_sessions

REPO = "acme/web"


@pytest.fixture
async def github(fake_github):
    fake_github.add_installation(7, account="acme", repositories=[REPO, "acme/api"])
    async with aiohttp.ClientSession() as session:
        app = GitHubApp(
            session, app_id=fake_github.app_id, private_key=fake_github.private_key_pem,
            api_url=fake_github.url, metrics=Metrics(), write_spacing=0.0,
        )
        yield app
        await app.close()


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    yield store
    store.close()


def _dashboards(fake_github) -> list[dict]:
    return fake_github.issues_titled(REPO, TITLE)


def _sessions():
    # The plan session belongs to acme/api in the sample; move one to this repository.
    sessions = sample_sessions()
    plan = replace(sessions[3], repo=REPO, id=f"{REPO}#7/1", issue_number=7)
    return [*sessions[:3], plan]


async def test_created_once_then_edited_then_left_alone(github, store, fake_github):
    fake_github.add_issue(REPO, title="Someone else's issue", body="<!-- shepherd:dashboard repo=acme/web -->", user="mallory")
    number = await refresh_dashboard(github, store, 7, REPO, _sessions())
    assert len(fake_github.calls_to("issues/create")) == 1
    issue = fake_github.issue(REPO, number)
    assert issue["title"] == TITLE
    assert issue["user"]["login"] == fake_github.bot_login
    body = issue["body"]
    assert find_marker(body, "dashboard") == {"repo": REPO}

    # What a maintainer reads: each list, each item linked to its issue or PR.
    assert "#124 Implement auth flow: **Should the export include archived rows?**" in body
    assert "1. Yes, all rows; 2. No, only active ones" in body
    assert f"- [ ] <!-- shepherd:approve session={REPO}#7/1 --> #7 Plan the migration" in body
    assert "- #120 Add CSV export: working (writing the exporter), branch `agent/issue-120-add-csv-export`" in body
    assert "- #130 for #121 Fix <b>login</b> redirect" in body
    assert "acme/api" not in body

    # Same sessions: nothing sent at all.
    calls = len(fake_github.calls)
    assert await refresh_dashboard(github, store, 7, REPO, _sessions()) == number
    assert len(fake_github.calls) == calls

    # A change: the same issue is edited, not a new one created.
    answered = [replace(s, state=State.WORKING, question=None, stuck_reason=None) if s.issue_number == 124 else s
                for s in _sessions()]
    assert await refresh_dashboard(github, store, 7, REPO, answered) == number
    assert len(fake_github.calls_to("issues/create")) == 1
    assert len(fake_github.calls_to("issues/update")) == 1
    body = fake_github.issue(REPO, number)["body"]
    assert "Should the export" not in body and "- #124 Implement auth flow: working" in body
    assert len(_dashboards(fake_github)) == 1
    fake_github.assert_clean()


async def test_found_again_by_its_marker_when_the_store_forgot_it(github, store, fake_github, tmp_path):
    number = await refresh_dashboard(github, store, 7, REPO, _sessions())
    fresh = Store.open(tmp_path / "other.db")  # e.g. the database was lost
    try:
        later = [*_sessions(), make_session(REPO, 140, "New thing", State.QUEUED, minutes_ago=1)]
        assert await refresh_dashboard(github, fresh, 7, REPO, later) == number
        assert len(fake_github.calls_to("issues/create")) == 1
        assert "#140 New thing: queued" in fake_github.issue(REPO, number)["body"]
        # Known again: an unchanged refresh sends nothing.
        calls = len(fake_github.calls)
        await refresh_dashboard(github, fresh, 7, REPO, later)
        assert len(fake_github.calls) == calls
    finally:
        fresh.close()


async def test_agent_text_cannot_ping_or_close_through_the_dashboard():
    [session] = [s for s in _sessions() if s.issue_number == 124]
    question = replace(session.question, text="Ask @octocat? This fixes #1 <!-- shepherd:dashboard repo=x/y -->")
    body = render_dashboard_issue(REPO, [replace(session, question=question)])
    assert "@octocat" not in body
    assert "fixes #1" not in body
    assert find_marker(body, "dashboard") == {"repo": REPO}
    assert body.count("shepherd:dashboard") == 1
    assert "None." in body  # the empty lists say so


async def test_another_bots_issue_with_the_marker_is_not_adopted(github, store, fake_github):
    foreign = fake_github.add_issue(REPO, title=TITLE, body="<!-- shepherd:dashboard repo=acme/web -->\nmine",
                                    user="other-app[bot]")
    number = await refresh_dashboard(github, store, 7, REPO, _sessions())
    assert number != foreign["number"]
    assert fake_github.issue(REPO, number)["user"]["login"] == fake_github.bot_login
    assert fake_github.issue(REPO, foreign["number"])["body"].endswith("mine")  # untouched
    assert fake_github.calls_to("issues/update") == []


async def test_failed_sessions_are_listed_with_the_retry_command(github, store, fake_github):
    failed = replace(_sessions()[2], state=State.FAILED, failure_reason="The agent exited with code 2.",
                     pr_number=None, pr_url=None, pr_state=None)
    number = await refresh_dashboard(github, store, 7, REPO, [*_sessions()[:2], failed])
    body = fake_github.issue(REPO, number)["body"]
    section = body.split("## Failed sessions", 1)[1].split("##", 1)[0]
    assert (f"- #{failed.issue_number} {failed.issue_title}: The agent exited with code 2. "
            f"Comment `/agent retry` on #{failed.issue_number} to start again from its branch.") in section


async def test_a_repository_can_turn_the_dashboard_issue_off(github, store, fake_github):
    from bot.core.policy import OperatorLimits, default_policy
    from bot.runtime.dashboard_issue import DashboardRefresher
    from bot.store.context import RuntimeContext
    from bot.store.sessions import SessionStore

    sessions = SessionStore(store.db)
    [on, off] = [replace(_sessions()[0], repo=repo, id=f"{repo}#124/1") for repo in (REPO, "acme/api")]
    for session, enabled in ((on, True), (off, False)):
        owner, name = session.repo.split("/")
        policy = default_policy(OperatorLimits(), "main").model_copy(update={"dashboard_issue": enabled})
        context = RuntimeContext(installation_id=7, owner=owner, repo=name, clone_url=f"https://github.com/{session.repo}.git",
                                 default_branch="main", policy=policy)
        sessions.record(session, context, None, (), now=0.0)
    refresher = DashboardRefresher(github, store, sessions, interval=0.0)
    await refresher.observe(None, on, None)
    await refresher.observe(None, off, None)
    await refresher.drain()
    assert len(_dashboards(fake_github)) == 1
    assert len(fake_github.calls_to("issues/create")) == 1  # acme/web's only
