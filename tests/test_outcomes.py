"""Agent PR outcomes per repository and engine on `/metrics` and the web dashboard (issue 18 part 6).

Sessions go through the real session core (label, turn, PR opened, PR merged or closed) at chosen times and
are stored as the engine stores them; the operator's views then read them back.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bot.app import SERVICES, create_app
from bot.core.policy import OperatorLimits, default_policy
from bot.core.session import (
    Limits,
    Mode,
    PullRequestClosed,
    PullRequestOpened,
    SlotGranted,
    SpendReported,
    Trigger,
    TurnExited,
    TurnStarted,
    WorkspaceReady,
    decide,
)
from bot.store.context import RuntimeContext
from bot.store.sessions import SessionStore
from tests.conftest import settings_for
from tests.test_conversation import _check_example

TOKEN = "test-dashboard-token"
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def store_pull(store, repo: str, number: int, *, agent: str, engine: str | None = None, hours: float,
               merged: bool | None, cost: float | None = None) -> None:
    """A session of `repo#number` run by `agent` (or an engine label's `engine`) whose PR was merged
    (`merged` True), closed unmerged (False) or is still open (None) `hours` after the session began."""
    owner, name = repo.split("/")
    session = None
    now = START
    events = [
        Trigger(repo=repo, issue_number=number, issue_title=f"Issue {number}", mode=Mode.GO, actor="alice",
                base_branch="main", limits=Limits(), engine=engine),
        WorkspaceReady(), SlotGranted(), TurnStarted(),
        *([SpendReported(1, cost)] if cost is not None else []),
        TurnExited(0, has_new_commits=True),
        PullRequestOpened(number + 100, f"https://github.com/{repo}/pull/{number + 100}", "abc"),
    ]
    for event in events:
        session = decide(session, event, now).session
        now += timedelta(minutes=1)
    if merged is not None:
        session = decide(session, PullRequestClosed(merged=merged), START + timedelta(hours=hours)).session
    policy = default_policy(OperatorLimits(agent=agent, adapters=("claude", "codex")), "main")
    context = RuntimeContext(installation_id=7, owner=owner, repo=name, clone_url=f"https://github.com/{repo}.git",
                             default_branch="main", policy=policy)
    SessionStore(store.db).record(session, context, None, (), now=now.timestamp())


async def test_metrics_and_dashboard_show_pull_requests_per_repository_and_engine(aiohttp_client, fake_github,
                                                                                    tmp_path):
    client = await aiohttp_client(create_app(settings_for(fake_github, tmp_path / "data")))
    store = client.server.app[SERVICES].store
    store_pull(store, "acme/web", 1, agent="claude", hours=2, merged=True)
    store_pull(store, "acme/web", 2, agent="claude", hours=6, merged=True)
    store_pull(store, "acme/web", 3, agent="claude", hours=10, merged=True)
    store_pull(store, "acme/web", 4, agent="claude", hours=1, merged=False)
    store_pull(store, "acme/web", 5, agent="claude", engine="codex", hours=3, merged=True)
    store_pull(store, "acme/web", 6, agent="claude", engine="codex", hours=0, merged=None)
    store_pull(store, "acme/api", 1, agent="codex", hours=1, merged=False)

    text = await (await client.get(f"/metrics?token={TOKEN}")).text()

    def value(name: str, **labels: str) -> str | None:
        inside = ",".join(f'{key}="{labels[key]}"' for key in sorted(labels))
        found = [line for line in text.splitlines() if line.startswith(f"{name}{{") and
                 ",".join(sorted(line[line.index("{") + 1:line.index("}")].split(","))) == inside]
        return found[0].rsplit(" ", 1)[1] if found else None

    web_claude = {"repo": "acme/web", "engine": "claude"}
    assert value("shepherd_agent_pull_requests", **web_claude, outcome="opened") == "4.0"
    assert value("shepherd_agent_pull_requests", **web_claude, outcome="merged") == "3.0"
    assert value("shepherd_agent_pull_requests", **web_claude, outcome="closed") == "1.0"
    assert value("shepherd_merged_pull_request_seconds_median", **web_claude) == str(6 * 3600.0)
    web_codex = {"repo": "acme/web", "engine": "codex"}
    assert value("shepherd_agent_pull_requests", **web_codex, outcome="opened") == "2.0"
    assert value("shepherd_agent_pull_requests", **web_codex, outcome="merged") == "1.0"
    assert value("shepherd_agent_pull_requests", **web_codex, outcome="closed") == "0.0"
    assert value("shepherd_merged_pull_request_seconds_median", **web_codex) == str(3 * 3600.0)
    api_codex = {"repo": "acme/api", "engine": "codex"}
    assert value("shepherd_agent_pull_requests", **api_codex, outcome="closed") == "1.0"
    assert value("shepherd_merged_pull_request_seconds_median", **api_codex) is None  # nothing merged there
    assert "shepherd_merged_pull_request_cost_usd_median{" not in text  # no agent reported a cost
    shown = [line for line in text.splitlines()
             if line.startswith(("shepherd_agent_pull_requests{", "shepherd_merged_pull_request_seconds_median{"))]
    _check_example("outcomes_metrics.txt", "\n".join(shown) + "\n")  # the README shows these lines

    page = await (await client.get(f"/?token={TOKEN}")).text()
    table = page[page.index('<table id="outcomes">'):]
    rows = [chunk.split("</tr>")[0] for chunk in table.split('<tr class="outcome"')[1:]]
    cells = [[part.split("</td>")[0].replace("<code>", "").replace("</code>", "")
              for part in row.split("<td>")[1:]] for row in rows]
    assert cells == [
        ["acme/api", "codex", "1", "0", "1", "–", "–"],
        ["acme/web", "claude", "4", "3", "1", "6h 0m", "–"],
        ["acme/web", "codex", "2", "1", "0", "3h 0m", "–"],
    ]


async def test_the_median_cost_of_a_merged_pr_comes_from_what_the_agents_reported(aiohttp_client, fake_github,
                                                                                 tmp_path):
    client = await aiohttp_client(create_app(settings_for(fake_github, tmp_path / "data")))
    store = client.server.app[SERVICES].store
    for number, cost in ((1, 0.5), (2, 1.5), (3, 4.0)):
        store_pull(store, "acme/web", number, agent="claude", hours=1, merged=True, cost=cost)
    store_pull(store, "acme/web", 4, agent="claude", hours=1, merged=False, cost=9.0)  # not merged: not counted
    text = await (await client.get(f"/metrics?token={TOKEN}")).text()
    [line] = [line for line in text.splitlines() if line.startswith("shepherd_merged_pull_request_cost_usd_median{")]
    assert line.endswith(" 1.5")
