"""Plan-first end to end: `agent:plan` → plan comment → `/agent revise` (same comment, revision shown) →
`/agent approve` → the implementation turn gets the plan from the session folder → one PR."""

from __future__ import annotations

import pytest

from bot.core.session import Detail, State
from tests.e2e_support import MAINTAINER, REPO, bot_comments, shepherd_with  # noqa: F401 - fixture
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

PLAN_AGENT = """
# Turn 1 plans; a reply that is an approved plan (it starts with "Plan v") means implement; any other
# reply is a revision request. The draft goes in the agent's HOME: its session folder is read-only in its box.
if [ "$SHEPHERD_TURN" = 1 ]; then
  echo "Plan v1: add hello.txt" > "$HOME/p.md"; shepherd plan "$HOME/p.md"
  exit 0
fi
case "$SHEPHERD_REPLY" in
"Plan v"*) cp "$SHEPHERD_SESSION_DIR/plan.md" plan-used.txt; echo hello > hello.txt; git add -A
   git commit -q -m "Implement the plan"; shepherd done "Implemented the approved plan" ;;
*) printf 'Plan v2: add hello.txt, %s\\n' "$SHEPHERD_REPLY" > "$HOME/p.md"
   shepherd plan "$HOME/p.md" ;;
esac
"""


def plan_comments(fake, number):
    return [c for c in bot_comments(fake, number) if "shepherd:plan " in c["body"]]


async def comment(shepherd, fake, number, body):
    added = fake.add_comment(REPO, number, body, user=MAINTAINER)
    assert await shepherd.deliver("issue_comment", payloads.issue_comment_created(fake, REPO, number, added)) == 202


def awaiting(shepherd, number, revisions):
    s = shepherd.session(number)
    return s is not None and s.detail == Detail.PLAN_AWAITING_APPROVAL and s.plan_revisions == revisions and \
        not s.turn_running


async def test_plan_revise_approve(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(PLAN_AGENT)
    issue = fake_github.add_issue(REPO, title="Add a greeting", body="Please add hello.txt")
    number = issue["number"]
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:plan", sender=MAINTAINER))
    await shepherd.until(lambda: awaiting(shepherd, number, 0))
    await shepherd.until(lambda: plan_comments(fake_github, number))
    [plan] = plan_comments(fake_github, number)
    assert "Plan v1: add hello.txt" in plan["body"] and "/agent approve" in plan["body"]
    assert "agent:needs-input" in fake_github.labels(REPO, number)
    assert shepherd.session(number).state == State.STUCK
    assert fake_github.pulls(REPO) == []

    await comment(shepherd, fake_github, number, "/agent revise keep it short")
    await shepherd.until(lambda: awaiting(shepherd, number, 1))
    await shepherd.until(lambda: "Plan v2" in plan_comments(fake_github, number)[0]["body"])
    [revised] = plan_comments(fake_github, number)
    assert revised["id"] == plan["id"]  # replaced in the same comment
    assert "(revision 1)" in revised["body"] and "keep it short" in revised["body"]

    await comment(shepherd, fake_github, number, "/agent approve")
    session = await shepherd.ended(number)
    assert session.state == State.COMPLETE and session.plan_approved
    branch = session.branch
    # The implementation turn found the approved (revised) plan in its control folder.
    assert git_remote.show(REPO, f"refs/heads/{branch}", "plan-used.txt").startswith("Plan v2: add hello.txt, keep it short")
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == branch
    assert len(plan_comments(fake_github, number)) == 1
