"""SPEC §1's lifecycle end to end, one test body per flow, run on both engines (SPEC §7).

`local`: the app as `python -m bot serve` runs it by default. `temporal`: the same app as a front end
(`SHEPHERD_ENGINE=temporal`) on a real `temporal server start-dev`, with one worker host that has its own
data folder. Either way, signed payloads go in through `POST /webhook` and only what a maintainer sees is
asserted: comments, labels, reactions, pushed refs and pull requests on the fakes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.core.session import Detail, Session, State
from bot.runtime.engine import session_folder
from tests.e2e_support import (
    MAINTAINER,
    OVERLAP_AGENT,
    REPO,
    agent_settings,
    bot_comments,
    prepare_repo,
    start_shepherd,
    status_comments,
)
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import agent_script
from tests.temporal_support import ROOT, Bed, kill_leftovers, temporal_server  # noqa: F401 - fixture

pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]


class Run:
    """One engine behind the webhook, with the same few verbs for both."""

    def __init__(self, kind: str, fake: Any, tmp: Path) -> None:
        self.kind, self.fake, self.tmp = kind, fake, tmp
        self.local: Any = None  # tests.e2e_support.Shepherd
        self.front: Any = None  # tests.temporal_support.FrontEnd
        self.bed: Bed | None = None

    async def deliver(self, event: str, payload: dict[str, Any]) -> int:
        target = self.local if self.local is not None else self.front
        return await target.deliver(event, payload)

    async def comment(self, number: int, body: str) -> None:
        added = self.fake.add_comment(REPO, number, body, user=MAINTAINER)
        assert await self.deliver("issue_comment", payloads.issue_comment_created(self.fake, REPO, number, added)) == 202

    async def session(self, number: int) -> Session | None:
        if self.local is not None:
            return self.local.session(number)
        return await self.front.session(number)

    async def until(self, number: int, predicate: Callable[[Session], Any], timeout: float = 60.0,
                    settled: bool = True) -> Session:
        """Wait until the issue's session satisfies `predicate` and (`settled`) nothing it decided is left
        to carry out; a running turn is never settled."""
        async with asyncio.timeout(timeout):
            while True:
                found = await self.session(number)
                if found is not None and predicate(found):
                    if not settled:
                        return found
                    if self.local is not None:
                        await self.local.settle()
                        return self.local.session(number)
                    if found.id in self.front.engine.idle_sessions:
                        return found
                await asyncio.sleep(0.1)

    async def ended(self, number: int) -> Session:
        return await self.until(number, lambda s: s.state in (State.COMPLETE, State.FAILED, State.CANCELLED)
                                and not s.running_turn, timeout=120)

    @property
    def client(self) -> Any:
        """The HTTP test client of the app a person talks to (the server, or the front end)."""
        return (self.local or self.front).client

    @property
    def host(self) -> str:
        """The host the views must name: this machine under the local engine, the worker host under Temporal."""
        return socket.gethostname() if self.local is not None else "host-a"

    def operator_env(self) -> dict[str, str]:
        """What an operator's shell needs for `shepherd status` against this engine."""
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(self.tmp)}
        if self.local is not None:
            return {**env, "SHEPHERD_DATA_DIR": str(self.tmp / "data")}
        assert self.bed is not None
        return {**env, "SHEPHERD_DATA_DIR": str(self.tmp / "operator"), "SHEPHERD_ENGINE": "temporal",
                "TEMPORAL_ADDRESS": self.bed.temporal.server.address, "TEMPORAL_NAMESPACE": self.bed.namespace}

    def home(self, session: Session) -> Path:
        """The agent's private HOME of `session`, on whichever machine ran it."""
        if self.local is not None:
            return self.local.engine.session_dir(session.id) / "home"
        return self.tmp / "host-a" / "sessions" / session_folder(session.id) / "home"


@pytest.fixture(params=["local", "temporal"])
async def run_with(request, aiohttp_client, fake_github, git_remote, tmp_path):
    """`await run_with(agent_body, policy=...)`: the prepared repository and the engine running that agent."""
    run = Run(request.param, fake_github, tmp_path)

    async def start(agent_body: str, env: dict[str, str] | None = None, **repo: Any) -> Run:
        prepare_repo(fake_github, git_remote, **repo)
        command = agent_script(tmp_path, agent_body)
        if run.kind == "local":
            settings = agent_settings(fake_github, tmp_path / "data", command, **(env or {}))
            run.local = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
        else:
            server = request.getfixturevalue("temporal_server")
            run.bed = Bed(fake_github, git_remote, tmp_path, server, server.namespace(), aiohttp_client, command=command,
                          env=dict(env or {}))
            run.front = await run.bed.front_end()
            run.bed.host("host-a")
        return run

    try:
        yield start
    finally:
        if run.bed is not None:
            await run.bed.close()


DONE_AGENT = """
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


async def test_label_to_pull_request(run_with, fake_github, git_remote):
    run = await run_with(DONE_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    assert await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER)) == 202
    session = await run.ended(1)

    assert session.state == State.COMPLETE
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "hello.txt") == "hello\n"
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == session.branch and pull["body"].startswith("Closes #1\n")
    [status] = status_comments(fake_github, 1)
    assert len(bot_comments(fake_github, 1)) == 1
    assert f"[#{pull['number']}]({pull['html_url']})" in status["body"]
    assert fake_github.reactions(REPO, 1) == ["eyes"]


ASKING_AGENT = """
if [ "$SHEPHERD_TURN" = 1 ]; then
  shepherd ask "Which port?" --option 8080 --option 9090
  exit 0
fi
printf '%s' "$SHEPHERD_REPLY" > "$HOME/seen-reply"
echo "$SHEPHERD_REPLY" > port.txt
git add port.txt
git commit -q -m "Set the port"
shepherd done "Port set"
"""


async def test_question_reply_resumes_the_same_session(run_with, fake_github, git_remote):
    run = await run_with(ASKING_AGENT)
    fake_github.add_issue(REPO, title="Pick a port", user="carol")
    fake_github.set_permission(REPO, "bob", "maintain")
    await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    asking = await run.until(1, lambda s: s.state == State.STUCK and s.question is not None
                             and s.question.comment_id is not None and not s.running_turn)
    [question] = [c for c in bot_comments(fake_github, 1) if "shepherd:question" in c["body"]]
    assert "1. 8080\n2. 9090" in question["body"] and "agent:needs-input" in fake_github.labels(REPO, 1)

    bob = fake_github.add_comment(REPO, 1, "2", user="bob")
    assert await run.deliver("issue_comment", payloads.issue_comment_created(fake_github, REPO, 1, bob)) == 202
    session = await run.ended(1)

    assert session.id == asking.id and session.state == State.COMPLETE and session.turn_count == 2
    assert (run.home(session) / "seen-reply").read_text() == "9090"
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "port.txt") == "9090\n"
    assert fake_github.reactions(REPO, 1, comment_id=bob["id"]) == ["eyes"]
    assert "agent:needs-input" not in fake_github.labels(REPO, 1)
    edited = next(c for c in fake_github.comments(REPO, 1) if c["id"] == question["id"])
    assert "Question answered by @bob" in edited["body"]
    assert len(status_comments(fake_github, 1)) == 1 and len(fake_github.pulls(REPO)) == 1


STOPPABLE_AGENT = """
if [ -f first.txt ]; then
  echo "second" > second.txt
  git add second.txt
  git commit -q -m "Second try"
  shepherd done "Finished on the kept branch"
  exit 0
fi
echo "first" > first.txt
git add first.txt
git commit -q -m "First try"
touch "$HOME/started"
sleep 300.5151
"""


def _sleepers() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and "300.5151" in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


async def test_stop_kills_the_agent_and_retry_continues_on_the_kept_branch(run_with, fake_github, git_remote):
    run = await run_with(STOPPABLE_AGENT)
    fake_github.add_issue(REPO, title="Long job", user="carol")
    await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    try:
        first = await run.until(1, lambda s: s.state == State.WORKING and (run.home(s) / "started").exists(),
                                settled=False)
        assert _sleepers()

        await run.comment(1, "/agent stop")
        stopped = await run.ended(1)
        assert stopped.state == State.CANCELLED and stopped.id == first.id
        for _ in range(200):
            if not _sleepers():
                break
            await asyncio.sleep(0.1)
        assert _sleepers() == []
        assert fake_github.pulls(REPO) == []

        await run.comment(1, "/agent retry")
        final = await run.until(1, lambda s: s.id != first.id and s.state == State.COMPLETE, timeout=120)
    finally:
        for process in _sleepers():
            process.kill()
    assert final.branch == first.branch
    assert git_remote.messages(REPO, f"refs/heads/{final.branch}")[:2] == ["Second try", "First try"]
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == first.branch


PLAN_AGENT = """
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


def _plans(fake: Any) -> list[dict[str, Any]]:
    return [c for c in bot_comments(fake, 1) if "shepherd:plan " in c["body"]]


async def test_plan_revise_approve(run_with, fake_github, git_remote):
    run = await run_with(PLAN_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting", body="Please add hello.txt")
    await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:plan", sender=MAINTAINER))
    await run.until(1, lambda s: s.detail == Detail.PLAN_AWAITING_APPROVAL and s.plan_revisions == 0
                    and not s.turn_running)
    [plan] = _plans(fake_github)
    assert "Plan v1: add hello.txt" in plan["body"] and "/agent approve" in plan["body"]
    assert fake_github.pulls(REPO) == []

    await run.comment(1, "/agent revise keep it short")
    await run.until(1, lambda s: s.detail == Detail.PLAN_AWAITING_APPROVAL and s.plan_revisions == 1
                    and not s.turn_running)
    [revised] = _plans(fake_github)
    assert revised["id"] == plan["id"] and "keep it short" in revised["body"]

    await run.comment(1, "/agent approve")
    session = await run.ended(1)
    assert session.state == State.COMPLETE and session.plan_approved
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "plan-used.txt").startswith(
        "Plan v2: add hello.txt, keep it short")
    assert len(fake_github.pulls(REPO)) == 1 and len(_plans(fake_github)) == 1


ROUND_AGENT = """
if [ -f hello.txt ]; then
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


async def test_a_review_round_adds_a_commit_to_the_same_pull_request(run_with, fake_github, git_remote):
    run = await run_with(ROUND_AGENT)
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await run.ended(1)
    [pull] = fake_github.pulls(REPO)
    await run.deliver("pull_request", payloads.pull_request_opened(fake_github, REPO, pull["number"]))

    review = payloads.pull_request_review_submitted(fake_github, REPO, pull["number"], state="changes_requested",
                                                    body="Please be polite.", sender=MAINTAINER)
    assert await run.deliver("pull_request_review", review) == 202
    final = await run.until(1, lambda s: s.turn_count == 2 and s.state == State.COMPLETE, timeout=120)

    assert final.id == session.id
    assert git_remote.messages(REPO, f"refs/heads/{session.branch}")[0] == "Address the review"
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "hello.txt") == "hello, politely\n"
    [still_one] = fake_github.pulls(REPO)
    assert still_one["number"] == pull["number"]
    assert len(status_comments(fake_github, 1)) == 1


HELD_AGENT = """
while [ ! -f "$HOME/go" ]; do sleep 0.1; done
echo "issue $SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add -A
git commit -q -m "Work on issue $SHEPHERD_ISSUE"
shepherd done "Did issue $SHEPHERD_ISSUE"
"""
TOKEN = "test-dashboard-token"


async def _shepherd_status(run: Run, *args: str) -> str:
    """`shepherd status` as an operator runs it, in a process of its own, beside the running engine."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.views.cli", "status", *args, env=run.operator_env(), cwd=str(run.tmp),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def _view(run: Run, path: str) -> str:
    response = await run.client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    return await response.text()


async def _listed_until(run: Run, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30.0) -> dict[str, Any]:
    """`/api/sessions` by session id, once `predicate` holds for it (or as it is when the time is up)."""
    listed: dict[str, Any] = {}
    for _ in range(int(timeout / 0.2)):
        listed = {item["id"]: item for item in json.loads(await _view(run, "/api/sessions"))}
        if predicate(listed):
            break
        await asyncio.sleep(0.2)
    return listed


def _row(html: str, session_id: str) -> str:
    start = html.index(f'data-session="{session_id}"')
    return html[start:html.index("</tr>", start)]


async def test_every_view_shows_the_host_and_the_queue_place(run_with, fake_github, tmp_path):
    """Issue 17: the dashboard, /api/sessions, `shepherd status` (and --json) and /metrics name each
    session's host and, while it waits, its place in the queue, the same way in both engines."""
    run = await run_with(HELD_AGENT, env={"SHEPHERD_MAX_PER_REPO": "1"})
    try:
        first_number = fake_github.add_issue(REPO, title="First job", user="carol")["number"]
        second_number = fake_github.add_issue(REPO, title="Second job", user="carol")["number"]
        await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, first_number, "agent:go",
                                                           sender=MAINTAINER))
        first = await run.until(first_number, lambda s: s.state == State.WORKING and run.home(s).is_dir(),
                                settled=False)
        await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, second_number, "agent:go",
                                                           sender=MAINTAINER))
        second = await run.until(second_number, lambda s: s.state == State.QUEUED, settled=False)

        listed = await _listed_until(run, lambda found: found.get(second.id, {}).get("queuePosition") == 1)
        assert listed[first.id]["host"] == run.host and listed[first.id]["queuePosition"] is None
        assert listed[second.id]["host"] == run.host and listed[second.id]["queuePosition"] == 1

        page = await _view(run, "/")
        assert f"<code>{run.host}</code>" in _row(page, first.id) and "in the queue" not in _row(page, first.id)
        assert f"<code>{run.host}</code>" in _row(page, second.id) and "1st in the queue" in _row(page, second.id)

        metrics = await _view(run, "/metrics")
        assert (f'shepherd_session_host{{host="{run.host}",repository="{REPO}",session="{first.id}"}} 1.0'
                in metrics)
        assert f'shepherd_queue_position{{repository="{REPO}",session="{second.id}"}} 1.0' in metrics
        assert f'shepherd_queue_position{{repository="{REPO}",session="{first.id}"}}' not in metrics

        terminal = await _shepherd_status(run)
        assert f"      on {run.host}, 1st in the queue" in terminal.split(f"{REPO}#{second_number} QUEUED")[1]
        assert f"      on {run.host}\n" in terminal.split(f"{REPO}#{first_number} WORKING")[1]
        scripted = {item["id"]: item for item in json.loads(await _shepherd_status(run, "--json"))}
        assert scripted[second.id]["host"] == run.host and scripted[second.id]["queuePosition"] == 1
        # And on the issue: the waiting session's status comment says its place.
        for _ in range(150):
            [waiting] = status_comments(fake_github, second_number)
            if "| Queue | 1st in line |" in waiting["body"]:
                break
            await asyncio.sleep(0.2)
        assert "| Queue | 1st in line |" in waiting["body"], waiting["body"]

        (run.home(first) / "go").touch()
        await run.until(second_number, lambda s: s.state == State.WORKING and run.home(s).is_dir(),
                        settled=False)
        (run.home(second) / "go").touch()
        await run.ended(second_number)
        listed = await _listed_until(run, lambda found: found[second.id]["status"] == "complete")
        assert listed[second.id]["status"] == "complete" and listed[second.id]["queuePosition"] is None
        assert listed[second.id]["host"] == run.host
        assert "shepherd_queue_position{" not in await _view(run, "/metrics")
    finally:
        kill_leftovers(tmp_path)


def _coordination_comments(fake: Any, number: int) -> list[dict[str, Any]]:
    return [c for c in bot_comments(fake, number) if "shepherd:coordination" in c["body"]]


def _dashboards(fake: Any) -> list[dict[str, Any]]:
    return fake.issues_titled(REPO, "Shepherd dashboard")


async def _eventually(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    for _ in range(int(timeout / 0.2)):
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.2)
    return predicate()


async def test_the_dashboard_issue_and_the_coordination_comments(run_with, fake_github, tmp_path):
    """Issue 17: the repository-wide observers run in both engines: two sessions that change the same
    file each get one coordination comment naming the other, and the repository gets one dashboard
    issue that lists the sessions and, at the end, both pull requests."""
    gate = tmp_path / "gate"
    gate.mkdir()
    run = await run_with(OVERLAP_AGENT.replace("{gate}", str(gate)), env={"SHEPHERD_SANDBOX_PATHS": str(gate)},
                         files={"README.md": "# widgets\n"})
    try:
        numbers = [fake_github.add_issue(REPO, title=f"Task {n}", body="Edit shared.txt")["number"] for n in (1, 2)]
        for number in numbers:
            await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER))
        told = await _eventually(lambda: all(_coordination_comments(fake_github, n) for n in numbers))
        assert told, "no coordination comment on both issues"
        listed = await _eventually(lambda: [d for d in _dashboards(fake_github)
                                            if all(f"#{n} Task" in d["body"] for n in numbers)])
        assert listed, f"no dashboard issue listing both sessions: {_dashboards(fake_github)}"
    finally:
        (gate / "go").write_text("go")
    for number in numbers:
        assert (await run.ended(number)).state == State.COMPLETE

    first, second = numbers
    for number, other in ((first, second), (second, first)):
        [comment] = _coordination_comments(fake_github, number)
        assert f"#{other}" in comment["body"] and "`shared.txt`" in comment["body"]
        assert "own-" not in comment["body"]  # only the shared files are named
    pulls = fake_github.pulls(REPO)
    assert len(pulls) == 2
    [dashboard] = await _eventually(lambda: [d for d in _dashboards(fake_github)
                                             if all(f"#{p['number']} for #" in d["body"] for p in pulls)])
    assert len(_dashboards(fake_github)) == 1
    assert "shepherd:dashboard" in dashboard["body"]


async def test_editing_away_a_dependency_starts_the_waiting_issue(run_with, fake_github, git_remote):
    """A person edits a waiting issue so that it depends on nothing: it starts, in both engines (under
    Temporal the edited body reaches the issue's workflow, which the later re-checks read)."""
    run = await run_with(DONE_AGENT)
    blocker = fake_github.add_issue(REPO, title="Blocker", body="Not labelled")["number"]
    number = fake_github.add_issue(REPO, title="Add a greeting", body=f"Depends on #{blocker}")["number"]
    await run.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER))
    waiting = await run.until(number, lambda s: s.state == State.QUEUED
                              and s.detail == Detail.WAITING_FOR_DEPENDENCIES)
    assert waiting.waiting_for == (f"#{blocker}",) and fake_github.pulls(REPO) == []

    edited = payloads.issue_edited(fake_github, REPO, number, body="No dependencies now", sender=MAINTAINER)
    assert await run.deliver("issues", edited) == 202
    session = await run.ended(number)

    assert session.id == waiting.id and session.state == State.COMPLETE
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == session.branch
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "hello.txt") == "hello\n"
