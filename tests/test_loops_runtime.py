"""Loop and stall detection on real agents (SPEC §8): the real Claude Code CLI repeating a failing command,
a `command` agent flip-flopping a change, one that keeps talking without changing anything, and one that
works slowly but honestly, which must not be stopped. A stopped turn becomes a question with the evidence,
and the person's reply resumes the same agent session."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.core.session import PostQuestion, ReplyReceived, State
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.model import bash, model_server, text  # noqa: F401 - fixture
from tests.runtime_support import (
    add_go_label, CLAUDE_BIN, FAST_POLICY, REPO, agent_script, build_claude_harness, build_harness, issue_ref, prepare_repo, wait_for,
)

MARKER = "SHEPHERD-LOOP-E2E"
LOOPS = FAST_POLICY + "loops: {repeats: 3, flip_flops: 2, stall_minutes: 0.05}\n"  # a 3 s stall window
SNAPSHOT_SECONDS = 0.1

pytestmark = [pytest.mark.timeout(180)]


def questions(harness) -> list[PostQuestion]:
    return [c for _, c, _ in harness.publisher.calls if isinstance(c, PostQuestion)]


async def stuck_or_ended(harness):
    return await wait_for(
        lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.STUCK, State.FAILED, State.COMPLETE)
        and not s.running_turn and not s.finishing and s, timeout=90,
    )


async def ended(harness):
    return await wait_for(
        lambda: (s := harness.engine.last_session(REPO, 1)).state in (State.FAILED, State.COMPLETE)
        and not s.finishing and s, timeout=90,
    )


async def answer(harness, text_: str) -> None:
    await harness.engine.signal(REPO, 1, ReplyReceived(501, "alice", text_, datetime.now(timezone.utc) + timedelta(seconds=1)))


@pytest.fixture
async def command_harness(fake_github, git_remote, tmp_path):
    made = []

    async def make(body: str):
        prepare_repo(fake_github, git_remote, policy=LOOPS)
        fake_github.add_issue(REPO, title="Tidy up", body="Tidy the module.")
        harness = await build_harness(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                                      SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, body))
        harness.engine.loop_snapshot_seconds = SNAPSHOT_SECONDS
        made.append(harness)
        await harness.engine.start()
        session = await add_go_label(harness, issue_ref(fake_github, 1))
        return harness, session

    yield make
    for harness in made:
        await harness.close()


# The same script runs every turn: with a reply (SHEPHERD_REPLY) it settles and finishes.
FLIP_FLOP = """
if [ -n "${SHEPHERD_REPLY:-}" ]; then
  printf 'def tidy():\\n    return 1\\n' > module.py
  git add -A && git commit -qm "Settle on one version"
  shepherd done "Settled"
  exit 0
fi
i=0
while [ $i -lt 40 ]; do
  printf 'def tidy():\\n    return 1\\n' > module.py
  sleep 0.4
  rm -f module.py
  sleep 0.4
  i=$((i + 1))
done
"""


async def test_a_flip_flopping_agent_is_stopped_and_asked_with_the_hunk(command_harness, git_remote):
    harness, session = await command_harness(FLIP_FLOP)
    stuck = await stuck_or_ended(harness)
    assert stuck.state == State.STUCK, stuck.failure_reason
    [question] = questions(harness)
    assert "changed `module.py` back and forth 2 times" in question.text
    assert "+def tidy():" in question.context and "```diff" in question.context
    # The turn was stopped long before the script's 40 rounds (32 s) were over.
    assert stuck.turn_count == 1
    await answer(harness, "Keep the function.")
    final = await ended(harness)
    assert final.state == State.COMPLETE, final.failure_reason
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "module.py") == "def tidy():\n    return 1\n"


TALKER = """
if [ -n "${SHEPHERD_REPLY:-}" ]; then
  echo done > result.txt
  git add -A && git commit -qm "Result"
  shepherd done "Result written"
  exit 0
fi
while true; do
  echo "thinking about the module, again"
  sleep 0.1
done
"""


async def test_an_agent_that_keeps_talking_without_changing_anything_is_stopped(command_harness):
    harness, _ = await command_harness(TALKER)
    stuck = await stuck_or_ended(harness)
    assert stuck.state == State.STUCK, stuck.failure_reason
    [question] = questions(harness)
    assert "without changing any file" in question.text
    assert "the agent's log grew by" in question.context
    await answer(harness, "Write the result.")
    assert (await ended(harness)).state == State.COMPLETE


# Slow but honest: a change every ~1 s (inside the 3 s stall window), a failing check run twice with
# different errors (the repeats limit is 3), talking all along; it must finish untouched.
HONEST = """
i=1
while [ $i -le 6 ]; do
  echo "step $i: writing part $i"
  echo "part $i" >> work.txt
  sleep 1
  i=$((i + 1))
done
grep -q "part 9" work.txt || echo "check 1 failed"
grep -q "part 8" work.txt || echo "check 2 failed"
git add -A && git commit -qm "Six parts"
shepherd done "Six parts, slowly"
"""


async def test_a_slow_but_honest_agent_is_not_stopped(command_harness, git_remote):
    harness, session = await command_harness(HONEST)
    final = await ended(harness)
    assert final.state == State.COMPLETE, final.failure_reason
    assert questions(harness) == []
    assert git_remote.show(REPO, f"refs/heads/{session.branch}", "work.txt").count("part") == 6


# The real Claude Code CLI, scripted to run the same failing command over and over.
REPEATING = [
    [[bash("cat missing-config.toml")] for _ in range(40)] + [[text("I give up.")]],
    [
        [bash("printf 'debug = true\\n' > config.toml && git add -A && git commit -qm 'Add the config'")],
        [bash('shepherd done "Added the config"')],
        [text("Done.")],
    ],
]


@pytest.mark.e2e
@pytest.mark.skipif(not CLAUDE_BIN.exists(), reason="Claude Code is not installed in tests/vendor")
async def test_claude_repeating_a_failing_command_is_stopped_asked_and_resumed(
    fake_github, git_remote, model_server, tmp_path
):
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY + "agent: claude\nloops: {repeats: 3}\n")
    fake_github.add_issue(REPO, title="Read the config", body=f"{MARKER}: read the config.")
    harness = await build_claude_harness(fake_github, tmp_path, model_server.url)
    harness.engine.loop_snapshot_seconds = SNAPSHOT_SECONDS
    try:
        await harness.engine.start()
        worktree = harness.workspaces.worktree_path(REPO, "agent/issue-1-read-the-config")
        model_server.add_scenario(MARKER, REPEATING, cwd=str(worktree))
        session = await add_go_label(harness, issue_ref(fake_github, 1))
        stuck = await stuck_or_ended(harness)
        assert stuck.state == State.STUCK, stuck.failure_reason
        [question] = questions(harness)
        assert "ran the same command 3 times" in question.text
        assert "cat missing-config.toml" in question.context and "No such file" in question.context
        # Stopped mid-turn: the model was asked far fewer times than the 40 failing calls scripted.
        assert len(model_server.main_requests(MARKER)) < 20
        first_id = stuck.agent_session_id
        assert first_id
        await answer(harness, "The config does not exist yet: create config.toml with debug = true.")
        final = await ended(harness)
        assert final.state == State.COMPLETE, final.failure_reason
        assert final.agent_session_id == first_id  # the same agent session, resumed
        assert git_remote.show(REPO, f"refs/heads/{session.branch}", "config.toml") == "debug = true\n"
    finally:
        await harness.close()
