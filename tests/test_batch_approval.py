"""Batch approval from the per-repository dashboard issue: ticked boxes approve those plans, and
`/agent approve all` there approves the rest; nobody else's edit or comment approves anything."""

from __future__ import annotations

import pytest

from bot.runtime.dashboard_issue import TITLE
from bot.core.session import Detail, State
from tests.e2e_support import MAINTAINER, REPO, shepherd_with  # noqa: F401 - fixture
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.test_plans import PLAN_AGENT, awaiting

pytestmark = pytest.mark.timeout(180)


def dashboard(fake):
    issues = [fake.issue(REPO, n) for n in range(1, 30) if _exists(fake, n)]
    found = [issue for issue in issues if issue["title"] == TITLE]
    return found[0] if len(found) == 1 else None


def _exists(fake, number):
    try:
        fake.issue(REPO, number)
    except Exception:  # noqa: BLE001 - the fake raises for a missing issue
        return False
    return True


async def test_ticking_boxes_then_approve_all(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(PLAN_AGENT)
    fake_github.set_permission(REPO, "mallory", "read")
    numbers = [fake_github.add_issue(REPO, title=f"Plan {n}", body="Add hello.txt")["number"] for n in (1, 2)]
    for number in numbers:
        await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:plan",
                                                                sender=MAINTAINER))
    for number in numbers:
        await shepherd.until(lambda n=number: awaiting(shepherd, n, 0))
    first, second = (shepherd.session(n) for n in numbers)
    box = f"- [ ] <!-- shepherd:approve session={first.id} -->"
    await shepherd.until(lambda: (d := dashboard(fake_github)) and box in d["body"] and second.id in d["body"])
    board = dashboard(fake_github)
    ticked = board["body"].replace(box, box.replace("[ ]", "[x]"))

    # Someone without write permission ticks the box: nothing happens.
    await shepherd.deliver("issues", payloads.issue_edited(fake_github, REPO, board["number"], body=ticked,
                                                           sender="mallory"))
    await shepherd.settle()
    assert shepherd.session(numbers[0]).detail == Detail.PLAN_AWAITING_APPROVAL

    # The maintainer saves the same tick (the `from` text still has it unticked).
    payload = payloads.issue_edited(fake_github, REPO, board["number"], body=ticked, sender=MAINTAINER)
    payload["changes"] = {"body": {"from": board["body"]}}
    await shepherd.deliver("issues", payload)
    done = await shepherd.ended(numbers[0])
    assert done.state == State.COMPLETE and done.plan_approved
    assert shepherd.session(numbers[1]).detail == Detail.PLAN_AWAITING_APPROVAL

    added = fake_github.add_comment(REPO, board["number"], "/agent approve all", user=MAINTAINER)
    await shepherd.deliver("issue_comment", payloads.issue_comment_created(fake_github, REPO, board["number"], added))
    done = await shepherd.ended(numbers[1])
    assert done.state == State.COMPLETE and done.plan_approved
    assert fake_github.reactions(REPO, board["number"], comment_id=added["id"]) == ["+1"]
    assert {p["head"]["ref"] for p in fake_github.pulls(REPO)} == {first.branch, second.branch}
    # The dashboard issue catches up: no plan waits any more, and it was never duplicated.
    await shepherd.until(lambda: "shepherd:approve" not in dashboard(fake_github)["body"])


async def test_another_apps_issue_with_the_dashboard_marker_approves_nothing(shepherd_with, fake_github, git_remote):
    """Issue 13: the dashboard marker is trusted only in Shepherd's own issue, as every other marker is. Another
    App ("other-app[bot]") can write the marker and an approve line for a waiting plan; a maintainer ticking
    that box, or writing `/agent approve all` there, approves nothing and gets no answer from Shepherd."""
    shepherd = await shepherd_with(PLAN_AGENT)
    number = fake_github.add_issue(REPO, title="Plan 1", body="Add hello.txt")["number"]
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:plan", sender=MAINTAINER))
    await shepherd.until(lambda: awaiting(shepherd, number, 0))
    waiting = shepherd.session(number)
    body = (f"<!-- shepherd:dashboard repo={REPO} -->\n"
            f"- [ ] <!-- shepherd:approve session={waiting.id} --> #{number} Plan 1\n")
    copy = fake_github.add_issue(REPO, title="Plans to approve", body=body, user="other-app[bot]")["number"]

    ticked = payloads.issue_edited(fake_github, REPO, copy, body=body.replace("- [ ]", "- [x]"), sender=MAINTAINER)
    await shepherd.deliver("issues", ticked)
    added = fake_github.add_comment(REPO, copy, "/agent approve all", user=MAINTAINER)
    await shepherd.deliver("issue_comment", payloads.issue_comment_created(fake_github, REPO, copy, added))
    await shepherd.settle()

    after = shepherd.session(number)
    assert (after.id, after.detail, after.plan_approved) == (waiting.id, Detail.PLAN_AWAITING_APPROVAL, False)
    assert [c["id"] for c in fake_github.comments(REPO, copy)] == [added["id"]]
    assert "+1" not in fake_github.reactions(REPO, copy, comment_id=added["id"])
    assert fake_github.pulls(REPO) == []
