"""The redelivery sweep asks GitHub again for exactly the deliveries that never reached Shepherd."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import aiohttp

from bot.github.client import GitHubApp
from bot.metrics import Metrics
from bot.ingest.redelivery import redeliver_failed


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_only_failed_unstored_recent_deliveries_are_redelivered(fake_github):
    now = datetime.now(timezone.utc)
    recent = _iso(now - timedelta(hours=1))
    # Failed once, then delivered: nothing to do.
    fake_github.add_hook_delivery("recovered", "issues", "labeled", 502, delivered_at=recent)
    fake_github.add_hook_delivery("recovered", "issues", "labeled", 202, delivered_at=recent, redelivery=True)
    # Failed every time and never stored: redelivered once, by its newest attempt.
    fake_github.add_hook_delivery("lost", "issue_comment", "created", 502, delivered_at=recent)
    newest_lost = fake_github.add_hook_delivery("lost", "issue_comment", "created", 504, delivered_at=recent)
    # Failed as far as GitHub knows, but Shepherd stored it (its answer was lost): not asked again.
    fake_github.add_hook_delivery("stored", "issues", "closed", 502, delivered_at=recent)
    # Older than GitHub's three days of delivery history: out of reach.
    fake_github.add_hook_delivery(
        "ancient", "issues", "opened", 500, delivered_at=_iso(now - timedelta(days=4))
    )

    async with aiohttp.ClientSession() as session:
        github = GitHubApp(
            session, app_id=fake_github.app_id, private_key=fake_github.private_key_pem,
            api_url=fake_github.url, metrics=Metrics(), write_spacing=0,
        )
        redelivered = await redeliver_failed(
            github, already_stored=lambda guid: guid == "stored", now=now
        )
        await github.close()

    assert redelivered == ["lost"]
    assert fake_github.redeliveries == [newest_lost["id"]]
