"""One write gate per installation across hosts on the Temporal engine (SPEC §1.5, §7), on a real dev server.

Each "host" here is what a worker host or front end builds as its door to GitHub (`paced_github`), with
a Temporal connection of its own; the installations' writes workflows run on a real worker. The real
clock runs (the window is GitHub's) and the fake records when each request arrived.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bot.github.pacing import Priority
from bot.metrics import Metrics
from bot.temporal.client import connect
from bot.temporal.permits import TemporalPacer, paced_github, writes_worker
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import INSTALLATION
from tests.temporal_support import REPO, temporal_bed, temporal_server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(120), pytest.mark.e2e]

OTHER_INSTALLATION = 23
OTHER_REPO = "acme/gadgets"
SECONDARY_LIMIT = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}
COMMENTS = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
REACTIONS = "/repos/{owner}/{repo}/issues/{issue_number}/reactions"
ISSUE = "/repos/{owner}/{repo}/issues/{issue_number}"


async def test_a_limit_on_one_hosts_write_holds_every_hosts_writes_of_that_installation_only(
        temporal_bed, fake_github):
    """GitHub's 403 + Retry-After: 3 on host A's comment: for 3 s no write of that installation reaches
    GitHub from host B either, while another installation's writes go on; when the pause ends, host B's
    question goes first."""
    bed = temporal_bed
    owner, name = REPO.split("/")
    fake_github.add_issue(REPO, title="Add export", body="Please", user="alice")
    fake_github.add_installation(OTHER_INSTALLATION, account="acme", repositories=[OTHER_REPO])
    fake_github.add_issue(OTHER_REPO, title="Fix export", body="Please", user="bob")
    mine = {"owner": owner, "repo": name, "issue_number": 1}
    theirs = {"owner": "acme", "repo": "gadgets", "issue_number": 1}
    bed.command = "true"  # no agent runs here: only the doors to GitHub
    settings = bed.settings("hosts")
    client_a, client_b = await connect(settings), await connect(settings)
    async with aiohttp.ClientSession() as session, writes_worker(client_a):
        host_a = paced_github(settings, session, client_a, metrics=Metrics(), owner="host-a")
        host_b = paced_github(settings, session, client_b, metrics=Metrics(), owner="host-b")
        a, b, b_other = host_a.installation(INSTALLATION), host_b.installation(INSTALLATION), \
            host_b.installation(OTHER_INSTALLATION)
        for gh, url_vars in ((a, mine), (b, mine), (b_other, theirs)):  # tokens minted beforehand
            await gh.getitem(ISSUE, url_vars)
        await b_other.post(REACTIONS, theirs, data={"content": "+1"})  # the gates' workflows are running
        await a.post(REACTIONS, mine, data={"content": "+1"})
        fake_github.inject("issues/create-comment", status=403, headers={"Retry-After": "3"}, json=SECONDARY_LIMIT)

        limited_write = asyncio.create_task(a.post(COMMENTS, mine, data={"body": "Shepherd is on it."}))
        while not fake_github.calls_to("issues/create-comment"):  # GitHub has answered host A
            await asyncio.sleep(0.01)
        others = asyncio.gather(
            b.post(REACTIONS, mine, data={"content": "eyes"}),
            b.post(COMMENTS, mine, data={"body": "A question"}, priority=Priority.URGENT),
            b_other.post(REACTIONS, theirs, data={"content": "eyes"}),
            b_other.post(COMMENTS, theirs, data={"body": "Shepherd is on it."}),
        )
        await asyncio.wait_for(asyncio.gather(limited_write, others), 60)
        await host_a.close()
        await host_b.close()

    limited = fake_github.calls_to("issues/create-comment")[0]
    assert limited.status == 403 and limited.installation_id == INSTALLATION
    window_end = limited.at + 3.0
    after = [c for c in fake_github.writes() if c.at > limited.at]
    held = [c for c in after if c.installation_id == INSTALLATION]
    went = [c for c in after if c.installation_id == OTHER_INSTALLATION]
    # Host A's retry and host B's two writes: none before GitHub's window ended.
    assert len(held) == 3 and all(c.at >= window_end for c in held), \
        [(c.operation_id, round(c.at - limited.at, 2)) for c in held]
    # The other installation was not held: both its writes went before the paused one resumed.
    assert len(went) == 2 and max(c.at for c in went) < min(c.at for c in held)
    # Once the pause ended, host B's question went first, ahead of writes that asked before it.
    assert held[0].body == {"body": "A question"}
    assert sorted(c["body"] for c in fake_github.comments(REPO, 1)) == ["A question", "Shepherd is on it."]


async def test_a_host_that_dies_holding_a_write_permit_does_not_stop_the_others_writes(temporal_bed, fake_github):
    """Host A is let out for a write and never reports its answer (it died mid-write): once the permit's
    lease has run out, host B's comment still reaches the issue."""
    bed = temporal_bed
    bed.command = "true"
    owner, name = REPO.split("/")
    fake_github.add_issue(REPO, title="Add export", body="Please", user="alice")
    mine = {"owner": owner, "repo": name, "issue_number": 1}
    settings = bed.settings("hosts")
    client_a, client_b = await connect(settings), await connect(settings)
    async with aiohttp.ClientSession() as session, writes_worker(client_a):
        host_a = TemporalPacer(client_a, owner="host-a", min_spacing=0.0, lease=1.0)  # host A's client's gates
        host_b = paced_github(settings, session, client_b, metrics=Metrics(), owner="host-b", lease=1.0)
        await host_b.installation(INSTALLATION).getitem(ISSUE, mine)
        await host_a.gate(INSTALLATION).wait(Priority.NORMAL, hold=True)  # let out; never lands
        await asyncio.wait_for(
            host_b.installation(INSTALLATION).post(COMMENTS, mine, data={"body": "Shepherd is on it."}), 30)
        await host_b.close()
    assert [c["body"] for c in fake_github.comments(REPO, 1)] == ["Shepherd is on it."]


async def test_a_limit_told_with_the_next_request_still_holds_every_hosts_writes(temporal_bed, fake_github):
    """Host A sends two comments at once: GitHub answers the first with 403 + Retry-After: 3 while the
    second waits on host A, so the first's landing (and its pause) travels inside the second's request for
    a permit. For 3 s neither host A's two writes nor host B's reach GitHub."""
    bed = temporal_bed
    bed.command = "true"
    owner, name = REPO.split("/")
    fake_github.add_issue(REPO, title="Add export", body="Please", user="alice")
    mine = {"owner": owner, "repo": name, "issue_number": 1}
    settings = bed.settings("hosts")
    client_a, client_b = await connect(settings), await connect(settings)
    async with aiohttp.ClientSession() as session, writes_worker(client_a):
        host_a = paced_github(settings, session, client_a, metrics=Metrics(), owner="host-a")
        host_b = paced_github(settings, session, client_b, metrics=Metrics(), owner="host-b")
        a, b = host_a.installation(INSTALLATION), host_b.installation(INSTALLATION)
        for gh in (a, b):
            await gh.getitem(ISSUE, mine)
        await a.post(REACTIONS, mine, data={"content": "+1"})  # the gate's workflow is running
        fake_github.inject("issues/create-comment", status=403, headers={"Retry-After": "3"}, json=SECONDARY_LIMIT)

        burst = asyncio.gather(a.post(COMMENTS, mine, data={"body": "First"}),
                               a.post(COMMENTS, mine, data={"body": "Second"}))
        while not fake_github.calls_to("issues/create-comment"):
            await asyncio.sleep(0.01)
        other = b.post(REACTIONS, mine, data={"content": "eyes"})
        await asyncio.wait_for(asyncio.gather(burst, other), 60)
        await host_a.close()
        await host_b.close()

    limited = fake_github.calls_to("issues/create-comment")[0]
    assert limited.status == 403
    held = [c for c in fake_github.writes() if c.at > limited.at]
    # Host A's second comment, its retried first one and host B's reaction: none inside GitHub's window.
    assert len(held) == 3 and all(c.at >= limited.at + 3.0 for c in held), \
        [(c.operation_id, round(c.at - limited.at, 2)) for c in held]
    assert sorted(c["body"] for c in fake_github.comments(REPO, 1)) == ["First", "Second"]
