"""The metrics say what happened (issue 16): every finished agent turn is in `shepherd_turn_seconds`, and
`shepherd_deliveries_handled_total` says what became of stored deliveries, beside the HTTP answers of
`shepherd_deliveries_total`. Scraped from `/metrics` of the running app, as Prometheus does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.core.session import State
from tests.e2e_support import MAINTAINER, REPO, agent_script, prepare_repo, start_shepherd
from tests.conftest import settings_for
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)
TOKEN = "metrics-test-token"
ROOT = Path(__file__).resolve().parent.parent


async def scrape(shepherd) -> dict[str, float]:
    text = await (await shepherd.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(shepherd_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


async def test_turns_and_handled_deliveries_are_counted(aiohttp_client, fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote)
    command = agent_script(tmp_path, 'echo hello > hello.txt\ngit add hello.txt\ngit commit -qm "Say hello"\n'
                                     'shepherd done "said hello"\n')
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command", SHEPHERD_AGENT_COMMAND=command,
                            SHEPHERD_DASHBOARD_TOKEN=TOKEN)
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    before = await scrape(shepherd)
    assert before.get("shepherd_turn_seconds_count", 0.0) == 0.0

    fake_github.add_issue(REPO, title="Say hello")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE, session.failure_reason
    await shepherd.settle()

    after = await scrape(shepherd)
    assert after["shepherd_turn_seconds_count"] == 1.0
    assert after["shepherd_turn_seconds_sum"] > 0.0
    assert after['shepherd_deliveries_total{status="202"}'] == 1.0
    assert after['shepherd_deliveries_handled_total{outcome="done"}'] == 1.0


def test_the_documented_scrape_config_uses_https():
    operator = (ROOT / "docs" / "operator.md").read_text()
    [config] = re.findall(r"```yaml\n(scrape_configs:.*?)```", operator, re.DOTALL)
    assert "scheme: https" in config  # the bearer token never crosses the network in clear text
    assert "shepherd_deliveries_handled_total" in operator
