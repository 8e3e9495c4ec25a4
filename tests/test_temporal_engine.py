"""The Temporal engine (SPEC §7) on a real `temporal server start-dev`: front ends, worker hosts, one session.

Signed payloads go into the real app running as a front end (`SHEPHERD_ENGINE=temporal`); the issue's
workflow runs the session core and its activities run on worker hosts with their own data folders,
against the strict fake GitHub and a real git remote. Only what a maintainer sees is asserted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from bot.core.session import Detail, State
from tests.e2e_support import MAINTAINER, bot_comments, status_comments
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import agent_script
from bot.temporal.devserver import DevServer, free_port
from bot.views.doctor import Level, check_temporal, render_findings
from tests.e2e_support import prepare_repo
from tests.temporal_support import REPO, ROOT, Bed, TemporalBed, kill_group, temporal_bed, temporal_server, wait_for  # noqa: F401 - fixtures

pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]

DONE_AGENT = """
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd progress "wrote hello.txt"
shepherd done "Added hello.txt"
"""


async def test_label_to_pull_request_through_temporal(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    front = await bed.front_end()
    bed.host("host-a")
    issue = fake_github.add_issue(REPO, title="Add a greeting", body="Please add hello.txt", user="carol")

    assert await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, issue["number"], "agent:go",
                                                                 sender=MAINTAINER)) == 202
    session = await front.ended(1)

    assert session.state == State.COMPLETE, session
    branch = "agent/issue-1-add-a-greeting"
    assert git_remote.show(REPO, f"refs/heads/{branch}", "hello.txt") == "hello\n"
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == branch and pull["body"].startswith("Closes #1\n")
    assert "Added hello.txt" in pull["body"]
    [status] = status_comments(fake_github, 1)
    assert len(bot_comments(fake_github, 1)) == 1
    assert f"[#{pull['number']}]({pull['html_url']})" in status["body"]
    assert fake_github.reactions(REPO, 1) == ["eyes"]
    # The session ran on the host: its worktree is in that host's data folder, not the front end's.
    assert str(bed.tmp / "host-a") in front.engine.sessions.get(session.id).context.worktree


async def test_one_delivery_through_two_front_ends_starts_one_session(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    first, second = await bed.front_end("front-1"), await bed.front_end("front-2")
    bed.host("host-a")
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    payload = payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER)

    # GitHub's delivery and its redelivery reach the two front ends behind one URL at the same moment.
    statuses = await asyncio.gather(first.deliver("issues", payload, "delivery-1"),
                                    second.deliver("issues", payload, "delivery-1"))
    assert statuses == [202, 202]
    await first.drain()
    await second.drain()
    session = await first.ended(1)

    assert session.state == State.COMPLETE and session.id == f"{REPO}#1/1"
    runs = [run async for run in first.engine.client.list_workflows(f'WorkflowId = "{REPO}#1"')]
    assert len(runs) == 1
    assert len(fake_github.pulls(REPO)) == 1
    assert len(status_comments(fake_github, 1)) == 1 and len(bot_comments(fake_github, 1)) == 1
    assert fake_github.reactions(REPO, 1) == ["eyes"]
    assert git_remote.messages(REPO, f"refs/heads/{session.branch}").count("Add hello") == 1
    # The other front end sees the same session.
    assert (await second.session(1)).id == session.id


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


async def test_question_and_reply_are_signals_of_the_same_session(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, ASKING_AGENT)
    first, second = await bed.front_end("front-1"), await bed.front_end("front-2")
    bed.host("host-a")
    fake_github.add_issue(REPO, title="Pick a port", user="carol")
    fake_github.set_permission(REPO, "bob", "maintain")
    await first.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    asking = await first.until(1, lambda s: s.state == State.STUCK and s.question is not None
                               and s.question.comment_id is not None and s.id in first.engine.idle_sessions)

    [question] = [c for c in bot_comments(fake_github, 1) if "shepherd:question" in c["body"]]
    assert f"@{MAINTAINER}" in question["body"] and "1. 8080\n2. 9090" in question["body"]
    assert "agent:needs-input" in fake_github.labels(REPO, 1)

    # The reply reaches the other front end, and once more the first (a redelivery): forwarded once.
    bob = fake_github.add_comment(REPO, 1, "2", user="bob")
    reply = payloads.issue_comment_created(fake_github, REPO, 1, bob)
    assert await second.deliver("issue_comment", reply, "reply-1") == 202
    await second.drain()
    assert await first.deliver("issue_comment", reply, "reply-1") == 202
    await first.drain()
    session = await second.ended(1)

    assert session.id == asking.id and session.state == State.COMPLETE and session.turn_count == 2
    assert session.forwarded_comment_ids == (bob["id"],)
    assert fake_github.reactions(REPO, 1, comment_id=bob["id"]) == ["eyes"]
    assert "agent:needs-input" not in fake_github.labels(REPO, 1)
    edited = next(c for c in fake_github.comments(REPO, 1) if c["id"] == question["id"])
    assert "Question answered by @bob" in edited["body"]
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "port.txt") == "9090\n"
    # The resumed turn ran on the host that asked, with the answer (its private HOME is in that host's folder).
    host_dir = bed.tmp / "host-a" / "sessions"
    [seen] = list(host_dir.glob("*/home/seen-reply"))
    assert seen.read_text() == "9090"
    [pull] = fake_github.pulls(REPO)
    assert pull["body"].startswith("Closes #1\n")
    assert len(status_comments(fake_github, 1)) == 1


REMEMBERING_AGENT = """
if [ "$SHEPHERD_TURN" = 1 ]; then
  echo "from turn 1" > "$HOME/memory"
  shepherd ask "Which port?" --option 8080 --option 9090
  exit 0
fi
cp "$HOME/memory" "$HOME/memory-in-turn-2"
printf '%s' "$SHEPHERD_REPLY" > "$HOME/seen-reply"
echo "$SHEPHERD_REPLY" > port.txt
git add port.txt
git commit -q -m "Set the port"
shepherd done "Port set"
"""


async def _runs(front, number: int) -> list:
    """Every run of the issue's workflow: the first and each continue-as-new."""
    return [run async for run in front.engine.client.list_workflows(f'WorkflowId = "{REPO}#{number}"')]


async def test_a_long_session_continues_as_new_and_still_ends_with_one_status_one_pr_and_its_reply(
        temporal_bed, fake_github, git_remote):
    """Issue 17: a session's history does not grow without bound. With a low threshold the workflow
    continues as new while the question waits; the reply still reaches the same agent session, and
    the issue still shows one status comment, one question and one PR."""
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, REMEMBERING_AGENT)
    bed.env["SHEPHERD_TEMPORAL_HISTORY_EVENTS"] = "3"
    front = await bed.front_end()
    bed.host("host-a")
    fake_github.add_issue(REPO, title="Pick a port", user="carol")
    fake_github.set_permission(REPO, "bob", "maintain")
    await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    asking = await front.until(1, lambda s: s.state == State.STUCK and s.question is not None
                               and s.question.comment_id is not None and s.id in front.engine.idle_sessions)
    before_reply = await wait_for_async(lambda: _continued(front, 1, 2))
    assert len(before_reply) >= 2, "the workflow did not continue as new before the reply"

    bob = fake_github.add_comment(REPO, 1, "2", user="bob")
    assert await front.deliver("issue_comment", payloads.issue_comment_created(fake_github, REPO, 1, bob)) == 202
    session = await front.ended(1, timeout=60)

    assert session.id == asking.id and session.state == State.COMPLETE and session.turn_count == 2
    assert len(await _runs(front, 1)) > len(before_reply)
    home = next((bed.tmp / "host-a" / "sessions").glob("*/home"))
    assert (home / "seen-reply").read_text() == "9090"
    assert (home / "memory-in-turn-2").read_text() == "from turn 1\n"
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "port.txt") == "9090\n"
    assert fake_github.reactions(REPO, 1, comment_id=bob["id"]) == ["eyes"]
    assert len(status_comments(fake_github, 1)) == 1
    assert len([c for c in bot_comments(fake_github, 1) if "shepherd:question" in c["body"]]) == 1
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == session.branch


async def _continued(front, number: int, at_least: int) -> list:
    runs = await _runs(front, number)
    return runs if len(runs) >= at_least else []


async def wait_for_async(probe, timeout: float = 20.0):
    """The first truthy answer of the coroutine function `probe`, or its last answer when the time is up."""
    found = None
    for _ in range(int(timeout / 0.2)):
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.2)
    return found


SLEEPING_AGENT = """
echo first > first.txt
git add first.txt
git commit -q -m "First try"
touch "$HOME/started"
sleep 300.7171
"""


def _orphans(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(process.info["cmdline"] or ())
        if process.info["status"] != psutil.STATUS_ZOMBIE and marker in line:
            found.append(process)
    return found


async def _labelled_on_a_sleeping_host_a(bed, fake_github, body: str = ""):
    """A front end, and host A whose agent sleeps (hosts started later finish the work), with issue 1
    labelled: (the front end, host A's process). Hosts are lost after 4 s without a heartbeat."""
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    bed.env = {"SHEPHERD_HOST_TIMEOUT_SECONDS": "4"}
    sleeping = agent_script(bed.tmp, SLEEPING_AGENT, name="sleeping.sh")
    front = await bed.front_end()
    host_a = bed.host_process("host-a", SHEPHERD_AGENT_COMMAND=sleeping)
    fake_github.add_issue(REPO, title="Add a greeting", body=body, user="carol")
    await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    return front, host_a


async def test_a_killed_host_loses_its_session_to_another_host(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    front, host_a = await _labelled_on_a_sleeping_host_a(bed, fake_github)
    try:
        await wait_for(lambda: list((bed.tmp / "host-a").glob("sessions/*/home/started")), timeout=90)
        assert (await front.session(1)).state == State.WORKING
        assert front.engine.host_of(f"{REPO}#1/1") == "host-a"
        bed.host_process("host-b")

        # kill -9 in the middle of the turn; the machine's agent goes with it.
        kill_group(host_a)
        for process in _orphans("300.7171"):
            process.kill()
        session = await front.ended(1, timeout=120)
    finally:
        for process in _orphans("300.7171"):
            process.kill()

    assert session.state == State.COMPLETE and session.id == f"{REPO}#1/1"
    assert front.engine.host_of(session.id) == "host-b"
    [pull] = fake_github.pulls(REPO)
    assert "Added hello.txt" in pull["body"]
    messages = git_remote.messages(REPO, f"refs/heads/{session.branch}")
    assert "Add hello" in messages and "First try" not in messages  # nothing of the lost turn was pushed
    [status] = status_comments(fake_github, 1)
    assert "moved from host host-a to host host-b" in status["body"]
    assert "the running turn was lost and runs again" in status["body"]
    assert len(bot_comments(fake_github, 1)) == 1


async def test_a_fact_the_front_end_tells_during_a_move_survives_the_new_hosts_answer(
        temporal_bed, fake_github, git_remote):
    """Rule 3 of issue 13: the host's facts and the front end's are kept apart, not overwritten wholesale.
    Host A dies mid-turn; while host B prepares the moved session's workspace (GitHub is slow, so the
    preparation is still running), a person's edit of the issue body reaches the workflow through the
    front end (`change_context`, the dependency tracker's path). B's answer brings its worktree; the
    workflow's record of the session, the one the hosts and the repository's re-checks read, keeps both."""
    bed = temporal_bed
    front, host_a = await _labelled_on_a_sleeping_host_a(bed, fake_github, body="Please add hello.txt")
    handle = front.engine.client.get_workflow_handle(f"{REPO}#1")
    edited = "Please add hello.txt\n\nDepends on nothing after all."
    try:
        await wait_for(lambda: list((bed.tmp / "host-a").glob("sessions/*/home/started")), timeout=90)
        session = await front.session(1)
        assert session.state == State.WORKING
        bed.host_process("host-b")
        kill_group(host_a)
        for process in _orphans("300.7171"):
            process.kill()
        fake_github.hold()  # host B's preparation of the moved workspace waits on GitHub
        try:
            # B has the session (the preparation is scheduled with the workflow's facts as they are now).
            await wait_for_async(lambda: _snapshot_where(handle, lambda s: s["host"] == "host-b"), timeout=60)
            await front.engine.change_context(session.id, lambda known: replace(known, dependency_body=edited))
            told = await wait_for_async(
                lambda: _snapshot_where(handle, lambda s: s["context"].get("dependency_body") == edited))
            assert told, "the workflow did not take the front end's fact"
        finally:
            fake_github.release()
        ended = await front.ended(1, timeout=120)
    finally:
        for process in _orphans("300.7171"):
            process.kill()

    assert ended.state == State.COMPLETE and front.engine.host_of(ended.id) == "host-b"
    [status] = status_comments(fake_github, 1)
    assert "moved from host host-a to host host-b" in status["body"]
    snapshot = await handle.query("snapshot")
    assert snapshot["context"].get("dependency_body") == edited  # the front end's fact
    assert str(bed.tmp / "host-b") in snapshot["context"]["worktree"]  # the new host's fact


async def _snapshot_where(handle, predicate) -> dict | None:
    snapshot = await handle.query("snapshot")
    return snapshot if predicate(snapshot) else None


CHECKPOINT_AGENT_A = """
if [ "$SHEPHERD_TURN" = 1 ]; then
  echo one > one.txt
  git add one.txt
  git commit -q -m "Turn one"
  shepherd ask "Which port?" --option 8080 --option 9090
  exit 0
fi
touch "$HOME/turn-two-started"
sleep 300.7272
"""
CHECKPOINT_AGENT_B = """
echo "$SHEPHERD_REPLY" > two.txt
git add two.txt
git commit -q -m "Turn two"
shepherd done "Both turns"
"""


async def test_a_moved_session_starts_from_the_checkpoint_of_its_finished_turns(temporal_bed, fake_github, git_remote):
    """Turn 1 commits and asks: its end pushes a checkpoint of the commit to the branch. Host A is killed
    with -9 during turn 2; the session moves to host B, whose worktree starts from the checkpoint, so
    turn 1's commit is in the pull request, and the status comment says only the turn in progress was lost."""
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, CHECKPOINT_AGENT_B)
    bed.env = {"SHEPHERD_HOST_TIMEOUT_SECONDS": "4"}
    host_a = bed.host_process("host-a", SHEPHERD_AGENT_COMMAND=agent_script(bed.tmp, CHECKPOINT_AGENT_A, name="a.sh"))
    front = await bed.front_end()
    fake_github.add_issue(REPO, title="Pick a port", user="carol")
    fake_github.set_permission(REPO, "bob", "maintain")
    await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    try:
        asking = await front.until(1, lambda s: s.state == State.STUCK and s.question is not None
                                   and s.question.comment_id is not None and s.id in front.engine.idle_sessions,
                                   timeout=90)
        # The asking turn has ended: its commit is on the branch on GitHub, before anyone answers.
        assert git_remote.messages(REPO, f"refs/heads/{asking.branch}").count("Turn one") == 1
        assert fake_github.pulls(REPO) == []

        bob = fake_github.add_comment(REPO, 1, "2", user="bob")
        await front.deliver("issue_comment", payloads.issue_comment_created(fake_github, REPO, 1, bob))
        await wait_for(lambda: list((bed.tmp / "host-a").glob("sessions/*/home/turn-two-started")), timeout=90)
        bed.host_process("host-b")
        kill_group(host_a)  # kill -9 in the middle of turn 2
        for process in _orphans("300.7272"):
            process.kill()
        session = await front.ended(1, timeout=120)
    finally:
        for process in _orphans("300.7272"):
            process.kill()

    assert session.state == State.COMPLETE and session.id == asking.id
    assert front.engine.host_of(session.id) == "host-b"
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == session.branch
    messages = git_remote.messages(REPO, f"refs/heads/{session.branch}")
    assert messages.count("Turn one") == 1 and "Turn two" in messages
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "one.txt") == "one\n"
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "two.txt") == "9090\n"
    [status] = status_comments(fake_github, 1)
    assert "moved from host host-a to host host-b" in status["body"]
    assert "the turn in progress was lost and runs again; the finished turns' work was kept" in status["body"]


PROTECTED_ASKING_AGENT = """
mkdir -p .github/workflows
echo "on: push" > .github/workflows/ci.yml
echo one > one.txt
git add -A
git commit -q -m "Turn one, with a workflow"
shepherd ask "May I change the CI workflow?"
exit 0
"""


async def test_a_turn_that_touched_a_protected_path_pushes_no_checkpoint(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, PROTECTED_ASKING_AGENT)
    front = await bed.front_end()
    bed.host("host-a")
    fake_github.add_issue(REPO, title="Pick a port", user="carol")
    await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    asking = await front.until(1, lambda s: s.state == State.STUCK and s.question is not None
                               and s.question.comment_id is not None and s.id in front.engine.idle_sessions,
                               timeout=90)

    # The turn committed a change to .github/workflows/ (protected by default): nothing left this host.
    assert asking.turn_count == 1
    assert [ref for ref in git_remote.refs(REPO) if ref.startswith("refs/heads/agent/")] == []


async def test_a_reply_reaches_the_same_session_after_the_temporal_server_restarts(
        fake_github, git_remote, tmp_path, aiohttp_client):
    server = DevServer.start(tmp_path / "temporal", namespaces=["restart"])
    prepare_repo(fake_github, git_remote)
    bed = Bed(fake_github, git_remote, tmp_path, TemporalBed(server, ["restart"]), "restart", aiohttp_client)
    try:
        bed.command = agent_script(tmp_path, ASKING_AGENT)
        front = await bed.front_end()
        bed.host("host-a")
        fake_github.add_issue(REPO, title="Pick a port", user="carol")
        await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
        asking = await front.until(1, lambda s: s.state == State.STUCK and s.question is not None
                                   and s.question.comment_id is not None and s.id in front.engine.idle_sessions)

        # The server goes down while the session waits for its answer, and comes back on its database file.
        server.stop()
        server = DevServer.start(tmp_path / "temporal", port=server.port, namespaces=["restart"])
        bed.temporal.server = server

        bob = fake_github.add_comment(REPO, 1, "2", user=MAINTAINER)
        assert await front.deliver("issue_comment", payloads.issue_comment_created(fake_github, REPO, 1, bob)) == 202
        await front.drain()
        session = await front.ended(1, timeout=120)
    finally:
        await bed.close()
        server.stop()

    assert session.id == asking.id and session.state == State.COMPLETE and session.turn_count == 2
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "port.txt") == "9090\n"
    assert len(fake_github.pulls(REPO)) == 1 and len(status_comments(fake_github, 1)) == 1


WAITING_AGENT = """
touch "$HOME/started"
while [ ! -f "$HOME/go" ]; do sleep 0.1; done
echo "$SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add . && git commit -q -m "Issue $SHEPHERD_ISSUE"
shepherd done "Done with $SHEPHERD_ISSUE"
"""


async def test_the_repository_limit_holds_across_hosts(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, WAITING_AGENT)
    bed.env = {"SHEPHERD_MAX_PER_REPO": "1"}
    front = await bed.front_end()
    bed.host("host-a")
    bed.host("host-b")
    for number in (1, 2):
        fake_github.add_issue(REPO, title=f"Job {number}", user="carol")
        await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER))
    await front.drain()

    def started() -> list:
        return sorted(bed.tmp.glob("host-*/sessions/*/home/started"))

    [first_started] = await wait_for(started, timeout=90)
    # The session folder is `owner__repo__<issue>__<attempt>`.
    running_number = int(first_started.parent.parent.name.split("__")[2])
    waiting_number = 3 - running_number
    await front.until(running_number, lambda s: s.state == State.WORKING)
    await front.until(waiting_number, lambda s: s.state == State.QUEUED and s.id in front.engine.idle_sessions)
    assert started() == [first_started]  # one agent of the repository at a time, whichever host has it
    [queued_status] = status_comments(fake_github, waiting_number)
    assert "queued" in queued_status["body"].lower()

    (first_started.parent / "go").touch()
    [second_started] = await wait_for(lambda: [p for p in started() if p != first_started], timeout=90)
    (second_started.parent / "go").touch()
    for number in (1, 2):
        assert (await front.ended(number)).state == State.COMPLETE
    assert sorted(p["head"]["ref"] for p in fake_github.pulls(REPO)) == ["agent/issue-1-job-1", "agent/issue-2-job-2"]


async def test_doctor_checks_the_temporal_connection_and_the_hosts(temporal_bed):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    settings = bed.settings("doctor")
    [alone] = await asyncio.to_thread(check_temporal, settings)
    assert alone.level == Level.WARN and "no worker host polls it" in alone.message
    assert "python -m bot worker" in alone.fix

    bed.host("host-a")
    for _ in range(300):
        [found] = await asyncio.to_thread(check_temporal, settings)
        if found.level == Level.OK:
            break
        await asyncio.sleep(0.2)
    assert found.level == Level.OK and "1 worker host(s) poll the shared queue" in found.message
    assert bed.temporal.server.address in found.message

    nobody = bed.settings("doctor", TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    [refused] = await asyncio.to_thread(check_temporal, nobody, timeout=5)
    assert refused.level == Level.FAIL and "cannot reach Temporal" in refused.message
    assert "TEMPORAL_ADDRESS" in refused.fix
    assert render_findings([refused]).startswith("[FAIL] temporal: cannot reach Temporal at 127.0.0.1:")


async def test_serve_temporal_runs_a_dev_server_a_host_and_a_front_end_on_one_machine(fake_github, git_remote, tmp_path):
    """`scripts/serve --temporal` (`python -m bot.temporal.local`): a labelled issue becomes a PR, and
    stopping it stops the dev server, the host and the front end."""
    import aiohttp

    prepare_repo(fake_github, git_remote)
    command = agent_script(tmp_path, DONE_AGENT)
    web_port, temporal_port = free_port(), free_port()
    data = tmp_path / "data"
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
        "GITHUB_APP_ID": str(fake_github.app_id), "GITHUB_PRIVATE_KEY": fake_github.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": fake_github.webhook_secret, "GITHUB_API_URL": fake_github.url,
        "SHEPHERD_DATA_DIR": str(data), "SHEPHERD_WRITE_SPACING_SECONDS": "0", "PORT": str(web_port),
        "SHEPHERD_AGENT": "command", "SHEPHERD_AGENT_COMMAND": command,
        "SHEPHERD_DASHBOARD_TOKEN": "test-dashboard-token", "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
    }
    log = (tmp_path / "local.log").open("ab")
    local = subprocess.Popen([sys.executable, "-m", "bot.temporal.local", "--host", "127.0.0.1"], env=environ,
                             cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{web_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def healthy() -> bool:
                try:
                    async with http.get(f"{url}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            for _ in range(600):
                if await healthy():
                    break
                assert local.poll() is None, (tmp_path / "local.log").read_text()[-3000:]
                await asyncio.sleep(0.1)
            fake_github.add_issue(REPO, title="Add a greeting", user="carol")
            body, headers = payloads.fake_delivery(
                fake_github, "issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
            async with http.post(f"{url}/webhook", data=body, headers=headers) as response:
                assert response.status == 202
            await wait_for(lambda: fake_github.pulls(REPO), timeout=120)
            await wait_for(lambda: "complete" in status_comments(fake_github, 1)[0]["body"].lower(), timeout=60)
    finally:
        local.send_signal(signal.SIGTERM)
        local.wait(60)

    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == "agent/issue-1-add-a-greeting"
    assert (data / "temporal" / "temporal.db").is_file()
    assert (data / "host-local" / "shepherd.db").is_file()  # the host's own data folder
    left = [p for p in psutil.process_iter(["cmdline"]) if str(data) in " ".join(p.info["cmdline"] or ())
            or str(tmp_path) in " ".join(p.info["cmdline"] or ())]
    assert left == []


BUSY_AGENT = """
touch "$HOME/started"
sleep 3.2323
echo "$SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add . && git commit -q -m "Issue $SHEPHERD_ISSUE"
shepherd done "Done with $SHEPHERD_ISSUE"
"""


async def test_ten_issues_two_hosts_two_front_ends_and_a_host_killed_mid_turn(fake_github, git_remote, tmp_path,
                                                                              temporal_server, aiohttp_client):
    prepare_repo(fake_github, git_remote, policy="max_runtime_minutes: 2\nidle_timeout_minutes: 2\nmax_parallel: 6\n")
    bed = Bed(fake_github, git_remote, tmp_path, temporal_server, temporal_server.namespace(), aiohttp_client)
    bed.command = agent_script(tmp_path, BUSY_AGENT)
    bed.env = {"SHEPHERD_MAX_PER_REPO": "6", "SHEPHERD_MAX_WORKERS": "3", "SHEPHERD_HOST_TIMEOUT_SECONDS": "4"}
    try:
        fronts = [await bed.front_end("front-1"), await bed.front_end("front-2")]
        host_a = bed.host_process("host-a")
        bed.host_process("host-b")
        for number in range(1, 11):
            fake_github.add_issue(REPO, title=f"Job {number}", user="carol")
            payload = payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER)
            # Every delivery reaches both front ends (a redelivery through the other one).
            await asyncio.gather(*(front.deliver("issues", payload, f"label-{number}") for front in fronts))

        # host-a is killed with -9 while one of its agents is in the middle of a turn.
        await wait_for(lambda: list((tmp_path / "host-a").glob("sessions/*/home/started")), timeout=120)
        kill_group(host_a)
        for process in _orphans("3.2323"):
            if str(tmp_path / "host-a") in " ".join(process.cmdline() or ()) or process.cwd().startswith(
                    str(tmp_path / "host-a")):
                process.kill()
        sessions = [await fronts[number % 2].ended(number, timeout=180) for number in range(1, 11)]
        for number in range(1, 11):
            await fronts[0].session(number)
    finally:
        for process in _orphans("3.2323"):
            process.kill()
        await bed.close()

    assert [s.state for s in sessions] == [State.COMPLETE] * 10
    assert all(s.attempt == 1 for s in sessions)  # one session per issue, however many deliveries
    pulls = fake_github.pulls(REPO)
    assert sorted(p["head"]["ref"] for p in pulls) == sorted(f"agent/issue-{n}-job-{n}" for n in range(1, 11))
    for number in range(1, 11):
        assert len(status_comments(fake_github, number)) == 1
        assert len(bot_comments(fake_github, number)) == 1
        assert fake_github.reactions(REPO, number) == ["eyes"]
    started_on_a = {p.parent.parent.name for p in (tmp_path / "host-a").glob("sessions/*/home/started")}
    started_on_b = {p.parent.parent.name for p in (tmp_path / "host-b").glob("sessions/*/home/started")}
    assert started_on_a and started_on_b  # the work spread over both hosts
    hosts = {number: fronts[0].engine.host_of(s.id) for number, s in enumerate(sessions, start=1)}
    moved = [n for n in range(1, 11) if "moved from host host-a to host host-b" in status_comments(fake_github, n)[0]["body"]]
    assert moved, "no session said it moved"
    # The sessions host-a held when it died finished on host-b and say so; host-a keeps only work it had
    # finished before.
    assert all(hosts[number] == "host-b" for number in moved)
    assert set(hosts.values()) <= {"host-a", "host-b"}


WORK_AGENT = """
echo "issue $SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add -A
git commit -q -m "Work on issue $SHEPHERD_ISSUE"
shepherd done "Did issue $SHEPHERD_ISSUE"
"""


async def test_a_dependent_issue_waits_for_the_merge_across_the_engine(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, WORK_AGENT)
    front = await bed.front_end()
    bed.host("host-a")
    a = fake_github.add_issue(REPO, title="Step A", body="First step")["number"]
    b = fake_github.add_issue(REPO, title="Step B", body=f"Depends on #{a}")["number"]
    for number in (b, a):
        await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER))
    first = await front.ended(a)
    waiting = await front.until(b, lambda s: s.state == State.QUEUED and s.detail == Detail.WAITING_FOR_DEPENDENCIES
                                and s.id in front.engine.idle_sessions)
    assert first.state == State.COMPLETE and waiting.waiting_for == (f"#{a}",)
    [status_b] = status_comments(fake_github, b)
    assert f"**Waiting for:** [#{a}](" in status_b["body"]
    assert [p["head"]["ref"] for p in fake_github.pulls(REPO)] == [first.branch]

    # A maintainer merges A's PR: B starts, from the default branch with A's work under it.
    [pull] = fake_github.pulls(REPO)
    git_remote.git(REPO, "update-ref", "refs/heads/main", git_remote.refs(REPO)[f"refs/heads/{first.branch}"])
    await front.deliver("pull_request", payloads.pull_request_closed(fake_github, REPO, pull["number"], merged=True))
    second = await front.ended(b)
    assert second.state == State.COMPLETE
    assert git_remote.show(REPO, f"refs/heads/{second.branch}", f"issue-{a}.txt") == f"issue {a}\n"
    assert git_remote.show(REPO, f"refs/heads/{second.branch}", f"issue-{b}.txt") == f"issue {b}\n"


ONCE_AGENT = """
echo started >> "$HOME/starts"
while [ ! -f "$HOME/go" ]; do sleep 0.1; done
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


async def test_a_restarted_host_reattaches_to_its_running_agent(temporal_bed, fake_github, git_remote):
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, ONCE_AGENT)
    bed.env = {"SHEPHERD_HOST_TIMEOUT_SECONDS": "20"}
    front = await bed.front_end()
    host = bed.host_process("host-a")
    fake_github.add_issue(REPO, title="Add a greeting", user="carol")
    await front.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    [starts] = await wait_for(lambda: list((bed.tmp / "host-a").glob("sessions/*/home/starts")), timeout=90)

    # The host is restarted (SIGTERM, then the same host on the same data folder) while its agent works.
    host.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(host.wait, 30) == 0
    bed.host_process("host-a")
    (starts.parent / "go").touch()
    session = await front.ended(1, timeout=120)

    assert session.state == State.COMPLETE and session.turn_count == 1
    assert starts.read_text() == "started\n"  # the agent ran once: the host found it again
    assert front.engine.host_of(session.id) == "host-a"
    assert len(fake_github.pulls(REPO)) == 1 and len(status_comments(fake_github, 1)) == 1
    assert "moved" not in status_comments(fake_github, 1)[0]["body"]


def _self_signed_ca(folder: Path) -> Path:
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_tls_settings_reach_the_connection(temporal_bed):
    """With TEMPORAL_TLS_CA_PATH set, Shepherd speaks TLS: the plain dev server does not answer it."""
    bed = temporal_bed
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    [plain] = await asyncio.to_thread(check_temporal, bed.settings("doctor"))
    assert plain.level != Level.FAIL
    tls = bed.settings("doctor", TEMPORAL_TLS_CA_PATH=str(_self_signed_ca(bed.tmp)))
    [refused] = await asyncio.to_thread(check_temporal, tls, timeout=10)
    assert refused.level == Level.FAIL and "cannot reach Temporal" in refused.message
    assert "TEMPORAL_TLS_*" in refused.fix


async def test_a_new_front_end_does_not_restart_sessions_it_has_not_seen(temporal_bed, fake_github, git_remote):
    """Reconciliation (SPEC §6) on a front end with an empty copy of the sessions: the labelled issue
    already has its session and PR, so nothing is started or said again."""
    from bot.app import SERVICES
    from bot.ingest.reconcile import reconcile

    bed = temporal_bed
    bed.command = agent_script(bed.tmp, DONE_AGENT)
    first = await bed.front_end("front-1")
    bed.host("host-a")
    fake_github.add_issue(REPO, title="Add a greeting", user=MAINTAINER)
    await first.deliver("issues", payloads.issue_labeled(fake_github, REPO, 1, "agent:go", sender=MAINTAINER))
    session = await first.ended(1)
    assert session.state == State.COMPLETE and len(fake_github.pulls(REPO)) == 1

    second = await bed.front_end("front-2")
    assembly = second.client.app[SERVICES].assembly
    await reconcile(assembly.github, assembly.engine, policies=assembly.policies, permissions=assembly.permissions,
                    store=second.client.app[SERVICES].store)
    await second.drain()
    again = await second.ended(1)

    assert again.id == session.id
    assert fake_github.reactions(REPO, 1) == ["eyes"]
    assert len(bot_comments(fake_github, 1)) == 1
