"""Coordination of parallel sessions: two sessions changing the same file get exactly one coordination comment
each; a branch that no longer merges into its base gets a rebase turn before the PR is opened."""

from __future__ import annotations

import pytest

from bot.core.overlaps import find_overlaps
from bot.core.session import State, StartTurn, TurnKind
from tests.e2e_support import MAINTAINER, OVERLAP_AGENT, REPO, agent_script, agent_settings, bot_comments, \
    prepare_repo, start_shepherd
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(240)

# Turn 1 edits README.md and waits while a person changes README.md on main; the rebase turn resolves.
CONFLICT_AGENT = """
if [ "$SHEPHERD_TURN" = 1 ]; then
  echo "agent line" > README.md; git commit -q -am "Agent edits README"
  i=0
  while [ ! -f "{gate}/go" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
  shepherd done "Edited README"
  exit 0
fi
git rebase -q origin/main || { printf 'human line\\nagent line\\n' > README.md; git add README.md;
  GIT_EDITOR=true git rebase --continue; }
shepherd done "Rebased onto main"
"""


def test_overlaps_are_symmetric_and_only_shared_files():
    overlaps = find_overlaps({"a": {"x", "y"}, "b": {"y", "z"}, "c": {"q"}})
    assert overlaps == {"a": {"b": ("y",)}, "b": {"a": ("y",)}}


@pytest.fixture
async def shepherd_for(aiohttp_client, fake_github, git_remote, tmp_path):
    gate = _gate(tmp_path)
    gate.mkdir()

    async def start(agent: str):
        prepare_repo(fake_github, git_remote, files={"README.md": "# widgets\n"})
        command = agent_script(tmp_path, agent.replace("{gate}", str(gate)))
        settings = agent_settings(fake_github, tmp_path / "data", command, SHEPHERD_SANDBOX_PATHS=str(gate))
        return await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    return start


def _gate(tmp_path):
    return tmp_path / "gate"


def coordination_comments(fake, number):
    return [c for c in bot_comments(fake, number) if "shepherd:coordination" in c["body"]]


async def test_two_sessions_on_the_same_file_get_one_comment_each(shepherd_for, fake_github, git_remote, tmp_path):
    shepherd = await shepherd_for(OVERLAP_AGENT)
    numbers = [fake_github.add_issue(REPO, title=f"Task {n}", body="Edit shared.txt")["number"] for n in (1, 2)]
    for number in numbers:
        await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:go",
                                                                sender=MAINTAINER))
    await shepherd.until(lambda: all(coordination_comments(fake_github, n) for n in numbers))
    (_gate(tmp_path) / "go").write_text("go")
    for number in numbers:
        assert (await shepherd.ended(number)).state == State.COMPLETE
    first, second = numbers
    for number, other in ((first, second), (second, first)):
        [comment] = coordination_comments(fake_github, number)
        assert f"#{other}" in comment["body"] and "`shared.txt`" in comment["body"]
        assert "own-" not in comment["body"]  # only the shared files are named


async def test_conflict_with_the_base_leads_to_a_rebase_turn_before_the_pr(shepherd_for, fake_github, git_remote,
                                                                           tmp_path):
    shepherd = await shepherd_for(CONFLICT_AGENT)
    number = fake_github.add_issue(REPO, title="Edit the readme", body="Change README.md")["number"]
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, REPO, number, "agent:go", sender=MAINTAINER))
    await shepherd.until(lambda: (s := shepherd.session(number)) and s.turn_running)
    git_remote.commit_on(REPO, "main", {"README.md": "human line\n"}, "A person edits README")
    (_gate(tmp_path) / "go").write_text("go")
    session = await shepherd.ended(number)
    assert session.state == State.COMPLETE
    starts = [c for c in _commands(shepherd, session.id) if isinstance(c, StartTurn)]
    assert [c.kind for c in starts] == [TurnKind.FIRST, TurnKind.REBASE]
    assert starts[1].paths == ("README.md",)
    # The PR was opened once, after the rebase: its branch holds the person's commit and merges cleanly.
    [pull] = fake_github.pulls(REPO)
    assert pull["head"]["ref"] == session.branch
    messages = git_remote.messages(REPO, f"refs/heads/{session.branch}")
    assert "A person edits README" in messages and "Agent edits README" in messages


def _commands(shepherd, session_id):
    from bot.core.session import command_from_dict
    import json

    rows = shepherd.engine.sessions.db.execute(
        "SELECT command FROM outbox WHERE session_id = ? ORDER BY seq", (session_id,)
    ).fetchall()
    return [command_from_dict(json.loads(row[0])) for row in rows]
