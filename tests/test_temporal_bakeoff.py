"""A bake-off label on a Shepherd that runs on Temporal (SPEC §7, §8): Temporal hosts do not run bake-offs
yet, so the label is answered on the issue, once, with what to do; nothing starts and nothing is lost in
a failed delivery."""

from __future__ import annotations

import pytest

from bot.app import SERVICES

from tests.e2e_support import MAINTAINER, bot_comments
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import FAST_POLICY, agent_script
from tests.temporal_support import REPO, temporal_bed, temporal_server  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]


async def test_a_bakeoff_label_under_temporal_is_answered_on_the_issue_and_starts_nothing(
        temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, "shepherd done 'nothing'\n")
    fake_github.set_file(REPO, ".github/shepherd.yml", FAST_POLICY + "engines:\n  agent:script: command\n")
    front = await bed.front_end()
    bed.host("host-a")  # the installation's GitHub writes are paced by a workflow the hosts run
    fake_github.add_issue(REPO, title="Race them", user="carol")
    labeled = payloads.issue_labeled(fake_github, REPO, 1, "agent:bakeoff", sender=MAINTAINER)

    assert await front.deliver("issues", labeled) == 202
    await front.drain()
    assert await front.deliver("issues", labeled, "a-replay") == 202  # the same label event again
    await front.drain()

    [answer] = bot_comments(fake_github, 1)
    assert "`agent:bakeoff`" in answer["body"] and "SHEPHERD_ENGINE=local" in answer["body"]
    assert await front.session(1) is None  # no session, no workflow
    assert fake_github.pulls(REPO) == []
    store = front.client.app[SERVICES].store
    assert [d.status for d in store.deliveries()] == ["done", "done"]  # handled, not failed
