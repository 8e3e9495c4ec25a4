"""Deliveries GitHub could not make while Shepherd was down (SPEC §6): GitHub never retries them by itself,
so after a restart each is recovered, exactly once, through the App's delivery log and reconciliation.

The real `python -m bot serve` is killed with `kill -9`; while it is down a label, a reply, a `/agent`
command, a review and a merge happen on the fake GitHub, whose deliveries fail (nothing answers). The
fake keeps them in its delivery log and, when asked to redeliver one, POSTs it again under the same id.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e_support import MAINTAINER, REPO, bot_comments, status_comments, wait_blocking
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.test_server_restart import server_for  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(240)

AGENT = """
case "$SHEPHERD_ISSUE" in
  2|3)
    if [ "$SHEPHERD_TURN" = 1 ]; then
      shepherd ask "Which colour?" --option blue --option green
      exit 0
    fi
    echo "$SHEPHERD_REPLY" > colour.txt ;;
  *) echo "turn $SHEPHERD_TURN" > "turn-$SHEPHERD_TURN.txt" ;;
esac
git add -A
git commit -q -m "Work of turn $SHEPHERD_TURN"
shepherd done "Turn $SHEPHERD_TURN done"
"""

TITLES = {1: "Label while down", 2: "Reply while down", 3: "Stop while down", 4: "Merge while down",
          5: "Review while down"}


def status_of(fake, number: int) -> str:
    found = status_comments(fake, number)
    return found[0]["body"] if found else ""


def pull_of(fake, number: int) -> dict | None:
    return next((p for p in fake.pulls(REPO) if p["head"]["ref"].startswith(f"agent/issue-{number}-")), None)


def questions(fake, number: int) -> list[dict]:
    return [c for c in bot_comments(fake, number) if "shepherd:question" in c["body"]]


def handled_everything(server) -> bool:
    return all(status != "pending" for _, _, status in server.deliveries())


def test_what_happens_while_shepherd_is_down_is_recovered_once(server_for, fake_github, git_remote):
    server = server_for(AGENT)
    for number, title in TITLES.items():
        fake_github.add_issue(REPO, title=title, user=MAINTAINER)
    server.start()
    fake_github.webhook_url = f"{server.url}/webhook"
    for number in (2, 3, 4, 5):
        assert payloads.send(fake_github, "issues",
                             payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER)) == 202
    wait_blocking(lambda: pull_of(fake_github, 4) and pull_of(fake_github, 5), timeout=90)
    wait_blocking(lambda: all("Complete" in status_of(fake_github, n) for n in (4, 5)), timeout=60)
    wait_blocking(lambda: all(questions(fake_github, n) and "Waiting for a person" in status_of(fake_github, n)
                              for n in (2, 3)), timeout=60)
    wait_blocking(lambda: handled_everything(server))

    server.kill()
    down = [
        ("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER)),
        ("issue_comment", payloads.issue_comment_created(
            fake_github, REPO, 2, reply := fake_github.add_comment(REPO, 2, "1", user=MAINTAINER))),
        ("issue_comment", payloads.issue_comment_created(
            fake_github, REPO, 3, stop := fake_github.add_comment(REPO, 3, "/agent stop", user=MAINTAINER))),
        ("pull_request", payloads.pull_request_closed(fake_github, REPO, pull_of(fake_github, 4)["number"],
                                                      merged=True, sender=MAINTAINER)),
        ("pull_request_review", payloads.pull_request_review_submitted(
            fake_github, REPO, pull_of(fake_github, 5)["number"], body="Add a second file, please.",
            sender=MAINTAINER)),
    ]
    for event, payload in down:
        assert payloads.send(fake_github, event, payload) == 0  # nobody answered
    missed = [record["guid"] for record in fake_github._deliveries[-len(down):]]  # noqa: SLF001

    server.start()
    pull_1 = wait_blocking(lambda: pull_of(fake_github, 1), timeout=90)
    pull_2 = wait_blocking(lambda: pull_of(fake_github, 2), timeout=90)
    wait_blocking(lambda: "Cancelled" in status_of(fake_github, 3), timeout=60)
    wait_blocking(lambda: "The pull request was merged." in status_of(fake_github, 4), timeout=60)
    branch_5 = pull_of(fake_github, 5)["head"]["ref"]
    wait_blocking(lambda: "Work of turn 2" in git_remote.messages(REPO, branch_5), timeout=90)
    wait_blocking(lambda: all("Complete" in status_of(fake_github, n) for n in (1, 2, 5)), timeout=60)
    wait_blocking(lambda: handled_everything(server))
    before_second_restart = snapshot(fake_github)

    # Exactly once: each missed delivery redelivered once, stored once, acted on once.
    redelivered = Counter(next(d["guid"] for d in fake_github._deliveries if d["id"] == i)  # noqa: SLF001
                          for i in fake_github.redeliveries)
    assert redelivered == Counter(missed), server.log()
    stored = [row[0] for row in server.deliveries()]
    assert len(stored) == len(set(stored)) and set(missed) <= set(stored)
    assert fake_github.reactions(REPO, 2, comment_id=reply["id"]) == ["eyes"]
    assert git_remote.show(REPO, f"refs/heads/{pull_2['head']['ref']}", "colour.txt") == "blue\n"
    assert len(questions(fake_github, 2)) == 1 and "answered by" in questions(fake_github, 2)[0]["body"]
    assert pull_of(fake_github, 3) is None
    assert git_remote.messages(REPO, branch_5)[:2] == ["Work of turn 2", "Work of turn 1"]
    assert pull_1["body"].startswith("Closes #1\n")
    assert len(fake_github.pulls(REPO)) == 4
    for number in TITLES:
        assert len(status_comments(fake_github, number)) == 1, (number, server.log())
        assert fake_github.reactions(REPO, number).count("eyes") == 1, number

    # A second crash and start-up sweep find nothing left to recover, and repeat nothing.
    server.kill()
    sweeps = len(fake_github.calls_to("apps/list-webhook-deliveries"))
    reconciled = len(fake_github.calls_to("pulls/list"))
    server.start()
    wait_blocking(lambda: len(fake_github.calls_to("apps/list-webhook-deliveries")) > sweeps)
    wait_blocking(lambda: len(fake_github.calls_to("pulls/list")) > reconciled)  # reconciliation ran again
    wait_blocking(lambda: handled_everything(server))
    assert Counter(fake_github.redeliveries) == Counter(set(fake_github.redeliveries))
    assert snapshot(fake_github) == before_second_restart
    assert fake_github.take_violations() == []


def snapshot(fake) -> tuple:
    """Everything a person sees that a repeated recovery would double."""
    return (
        sorted((p["number"], p["head"]["ref"], p["state"]) for p in fake.pulls(REPO)),
        {n: len(fake.comments(REPO, n)) for n in TITLES},
        {n: sorted(fake.reactions(REPO, n)) for n in TITLES},
        len(fake.redeliveries),
    )
