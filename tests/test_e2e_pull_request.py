"""End to end through the real webhook server: review rounds on Shepherd's PR, and the clean-up after a merge."""

from __future__ import annotations

import pytest

from bot.core.session import State
from tests.e2e_support import (  # noqa: F401 - shepherd_with is a fixture
    MAINTAINER,
    REPO,
    shepherd_with,
    status_comments,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)

# First turn writes hello.txt; a later round (hello.txt already there) addresses the review.
ROUND_AGENT = """
if [ -f hello.txt ]; then
  cat "$SHEPHERD_REPLY_FILE" > "$HOME/round-message.md"
  echo "hello, politely" > hello.txt
  git commit -q -am "Address the review"
  shepherd done "Made it polite"
  exit 0
fi
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


async def opened_pull(shepherd, fake_github):
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE
    [pull] = fake_github.pulls(REPO)
    # GitHub tells the App about the PR it opened; Shepherd links it to the session and changes nothing.
    await shepherd.deliver("pull_request", payloads.pull_request_opened(fake_github, REPO, pull["number"]))
    await shepherd.settle()
    return session, pull


async def test_changes_requested_review_adds_a_commit_to_the_same_pull_request(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(ROUND_AGENT)
    session, pull = await opened_pull(shepherd, fake_github)
    before = git_remote.refs(REPO)[f"refs/heads/{session.branch}"]

    review = payloads.pull_request_review_submitted(fake_github, REPO, pull["number"], state="changes_requested",
                                                    body="Please be polite.", sender=MAINTAINER)
    assert await shepherd.deliver("pull_request_review", review) == 202
    await shepherd.until(lambda: shepherd.session(1).turn_count == 2)
    final = await shepherd.ended(1)

    assert final.state == State.COMPLETE and final.id == session.id
    after = git_remote.refs(REPO)[f"refs/heads/{session.branch}"]
    assert after != before
    assert git_remote.messages(REPO, f"refs/heads/{session.branch}")[0] == "Address the review"
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "hello.txt") == "hello, politely\n"
    [still_one] = fake_github.pulls(REPO)
    assert still_one["number"] == pull["number"] and still_one["head"]["ref"] == session.branch
    # The round's message as the agent saw it, left in its private HOME (its box shows it nothing else of ours).
    message = (shepherd.engine.session_dir(session.id) / "home" / "round-message.md").read_text()
    assert "Please be polite." in message
    assert len(status_comments(fake_github, 1)) == 1


async def test_merged_pull_request_removes_the_worktree(shepherd_with, fake_github, git_remote):
    shepherd = await shepherd_with(ROUND_AGENT)
    session, pull = await opened_pull(shepherd, fake_github)
    worktree = shepherd.engine.workspaces.worktree_path(REPO, session.branch)
    assert worktree.is_dir()

    merged = payloads.pull_request_closed(fake_github, REPO, pull["number"], merged=True, sender=MAINTAINER)
    assert await shepherd.deliver("pull_request", merged) == 202
    await shepherd.until(lambda: not worktree.exists(), timeout=30)
    await shepherd.settle()

    assert fake_github.pull(REPO, pull["number"])["merged"] is True
    assert shepherd.session(1).state == State.COMPLETE
    [status] = status_comments(fake_github, 1)
    assert "merged" in status["body"]
    # Shepherd itself never merged: the only merge was the maintainer's, in the fake.
    assert fake_github.calls_to("pulls/merge") == []



async def test_a_finish_left_in_the_outbox_by_a_kill_opens_no_second_pull_request(shepherd_with, fake_github,
                                                                                   git_remote):
    """Found by the chaos test: a FinishWork row still in the outbox after its PR was recorded (a `kill -9` before
    the row was marked done, or the one each restart adds while finishing) is carried out after the PR was
    merged; looking for an open PR of the branch, it found none and opened a second one."""
    shepherd = await shepherd_with(ROUND_AGENT)
    session, pull = await opened_pull(shepherd, fake_github)
    db = shepherd.engine.sessions.db
    with db:  # what the kill left: the FinishWork row not marked done
        again = db.execute("UPDATE outbox SET done_at = NULL WHERE session_id = ? AND command LIKE '%FinishWork%'",
                           (session.id,)).rowcount
    assert again == 1
    merged = payloads.pull_request_closed(fake_github, REPO, pull["number"], merged=True, sender=MAINTAINER)
    assert await shepherd.deliver("pull_request", merged) == 202  # the runner carries out the rows in order
    await shepherd.settle()
    assert [p["number"] for p in fake_github.pulls(REPO)] == [pull["number"]]
    assert "merged" in status_comments(fake_github, 1)[0]["body"]
