"""The bake-off's judgement (SPEC §8): two attempts at one issue, each a real command agent run in its own
worktree on `agent/issue-<n>-<slug>-<engine>`, checked by Shepherd with the repository's own test command
and the base branch's test files, then judged, with the comparison table a PR body carries.

End to end, the `agent:bakeoff` label runs one session with both attempts at the same time (the `command`
adapter twice): one attempt that passes the repository's tests and one that fails them open exactly one
PR, from the passing attempt, with the comparison table and a link to the other branch; nothing is merged.
Both attempts may ask at once, each answer resumes the attempt it answers, and the table survives the
`max_open_prs` wait and a restart after the judgement. The core's side (`bot.core.attempts`) is tested
event by event below.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.core.bakeoff import (
    AttemptFacts,
    attempt_names,
    bakeoff_branch,
    comparison_table,
    judge,
    paths_holding_tests,
    rival_branch,
)
from bot.core.engines import Choice, choose, is_trigger_of
from bot.core.policy import LoadedPolicy, OperatorLimits, parse_policy
from bot.core.attempts import attempt_event, find
from bot.core.session import (
    AddLabel,
    Asked,
    AttemptCommand,
    BudgetRaised,
    Limits,
    AttemptFinished,
    BakeOffJudged,
    Cancel,
    CancelReason,
    Detail,
    DoneReported,
    FinishWork,
    JudgeBakeOff,
    LabelKind,
    MarkQuestionAnswered,
    Mode,
    PostQuestion,
    QuestionPosted,
    React,
    Recovered,
    ReleaseSlot,
    RemoveLabel,
    ReplyReceived,
    RequestSlot,
    SlotGranted,
    SpendReported,
    StartTurn,
    State,
    StopAgent,
    Trigger,
    TurnExited,
    WorkspaceReady,
    decide,
)
from bot.runtime.bakeoff import check_attempt
from bot.workspace.workspaces import Workspaces
from tests.conftest import settings_for
from tests.e2e_support import FAST_POLICY, MAINTAINER, agent_script, start_shepherd, status_comments
from tests.e2e_support import REPO as E2E_REPO
from tests.e2e_support import prepare_repo
from tests.fakes import payloads
from tests.fakes.git_remote import GitRemote
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)

REPO = "acme/calc"
INSTALLATION = 77
TEST_COMMAND = "sh tests/check.sh"
FILES = {
    "calc.sh": 'echo $(($1 - $2))\n',  # the bug: it subtracts
    "tests/check.sh": '[ "$(sh calc.sh 2 3)" = 5 ]\n',
    ".github/workflows/ci.yml": "on: push\n",
}
# Two command agents: one fixes the code; the other makes the test pass by editing it, and touches CI too.
FIXES_THE_CODE = "printf 'echo $(($1 + $2))\\n' > calc.sh\n"
EDITS_THE_TEST = "printf 'exit 0\\n' > tests/check.sh\nprintf 'exit 0\\n' > tests/more_test.sh\n" \
                 "echo '# nothing' >> .github/workflows/ci.yml\n"


@pytest.fixture
async def workspaces(fake_github, tmp_path):
    fake_github.add_installation(INSTALLATION, account="acme", repositories=[REPO])
    remote = GitRemote(tmp_path / "remote", authorize=lambda token, repo, write: fake_github.is_token_valid(token, repo))
    url = remote.create_repo(REPO, FILES)
    found = Workspaces(tmp_path / "data")
    await found.ensure_mirror(REPO, url, fake_github.mint_token(INSTALLATION, repositories=[REPO]))
    try:
        yield found
    finally:
        remote.stop()


async def run_shell(folder: Path, command: str) -> int:
    process = await asyncio.create_subprocess_exec("sh", "-c", command, cwd=folder,
                                                   stdin=asyncio.subprocess.DEVNULL)
    return await process.wait()


async def attempt(workspaces: Workspaces, engine: str, script: str) -> AttemptFacts:
    """Run a command agent in its own worktree, commit and export its branch as Shepherd does, check it."""
    branch = bakeoff_branch(1, "fix-the-sum", engine)
    worktree = await workspaces.create_worktree(REPO, branch, "main")
    assert await run_shell(worktree, script) == 0
    assert await workspaces.commit_all(worktree, f"{engine}'s work", "agent", "agent@example.invalid")
    await workspaces.export_branch(worktree, branch)
    return await check_attempt(workspaces.git, workspaces, REPO, engine=engine, branch=branch, base="main",
                               test_command=TEST_COMMAND, protected_patterns=[".github/workflows/**"],
                               run_test=run_shell, seconds=95 if engine == "fixer" else 40)


async def test_the_attempt_that_passes_the_base_tests_wins_and_the_table_says_why(workspaces):
    fixer = await attempt(workspaces, "fixer", FIXES_THE_CODE)
    cheater = await attempt(workspaces, "cheater", EDITS_THE_TEST)

    # The cheater's own edit of the test does not count: its work ran against the base's tests/check.sh.
    assert fixer.test_exit_code == 0 and cheater.test_exit_code not in (0, None)
    assert cheater.protected_paths == (".github/workflows/ci.yml",) and fixer.protected_paths == ()
    assert (fixer.files_changed, fixer.lines_added, fixer.lines_removed) == (1, 1, 1)
    assert cheater.branch == "agent/issue-1-fix-the-sum-cheater"
    # The attempt branches themselves are untouched by the check.
    assert "exit 0" in await workspaces.git.run("show", f"refs/heads/{cheater.branch}:tests/check.sh",
                                                    mirror=workspaces.mirror(REPO))

    for first, second in ((fixer, cheater), (cheater, fixer)):
        verdict = judge(first, second)
        assert verdict.winner == fixer and verdict.other == cheater
    table = comparison_table(judge(cheater, fixer), "https://github.com/acme/calc/tree/" + cheater.branch)
    assert table.splitlines()[:8] == [
        "| | `fixer` (this pull request) | `cheater` |",
        "|---|---|---|",
        "| Branch | `agent/issue-1-fix-the-sum-fixer` | "
        "[`agent/issue-1-fix-the-sum-cheater`](https://github.com/acme/calc/tree/agent/issue-1-fix-the-sum-cheater) |",
        "| Tests (`sh tests/check.sh`, with the base branch's test files) | passed (exit 0) | failed (exit 1) |",
        "| Diff | 1 files, +1 −1 | 3 files, +3 −1 |",
        "| Protected paths touched | none | `.github/workflows/ci.yml` |",
        "| Cost | unknown | unknown |",
        "| Time | 1m 35s | 40s |",
    ]
    assert table.endswith("Shepherd chose `fixer`: its tests passed and the other's did not.\n")


def facts(engine: str, **changes) -> AttemptFacts:
    base = dict(engine=engine, branch=bakeoff_branch(3, "x", engine), test_command="make test", test_exit_code=0,
                files_changed=2, lines_added=10, lines_removed=2)
    return AttemptFacts(**{**base, **changes})


def test_the_facts_decide_in_order() -> None:
    assert judge(facts("a", protected_paths=("ci.yml",)), facts("b")).winner.engine == "b"
    assert judge(facts("a", lines_added=50), facts("b")).reason == "its diff is smaller (12 lines against 52)"
    assert judge(facts("a", cost_usd=0.5), facts("b", cost_usd=0.2)).winner.engine == "b"
    assert judge(facts("a", cost_usd=0.5), facts("b")).reason.startswith("both attempts are equal")
    assert judge(facts("a", seconds=30), facts("b", seconds=20)).winner.engine == "b"
    assert judge(facts("a", files_changed=0, lines_added=0, lines_removed=0, test_command=None, test_exit_code=None),
                 facts("b", test_command=None, test_exit_code=None)).winner.engine == "b"
    # A failing test loses to everything else combined.
    assert judge(facts("a", test_exit_code=1, lines_added=1), facts("b", protected_paths=("x",))).winner.engine == "b"


def test_test_files_are_recognised_in_the_usual_layouts() -> None:
    assert paths_holding_tests(["tests/check.sh", "src/app.py", "pkg/test_app.py", "web/button.test.tsx", "go/x_test.go",
                       "spec/a_spec.rb", "src/__tests__/a.js", "README.md"]) == [
        "go/x_test.go", "pkg/test_app.py", "spec/a_spec.rb", "src/__tests__/a.js", "tests/check.sh",
        "web/button.test.tsx",
    ]


# The `command` adapter twice: one attempt fixes the sum, the other only pretends and fails the repository's
# tests. The first attempt is `command` on `...-command`, the second `command-2` on its own branch; each
# says it is done.
TWO_SCRIPTS = """
case "$SHEPHERD_BRANCH" in
  *-{fixer}) printf 'echo $(($1 + $2))\\n' > calc.sh ;;
  *) printf '# looked at it\\n' >> calc.sh ;;
esac
git add -A
git commit -q -m "Work on the sum"
shepherd done "Fixed the sum"
"""


@pytest.mark.parametrize("fixer, other", [("command-2", "command"), ("command", "command-2")])
async def test_the_bakeoff_label_opens_one_pull_request_from_the_attempt_that_passes_the_tests(
        aiohttp_client, fake_github, git_remote, tmp_path, fixer, other):
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, TWO_SCRIPTS.replace("{fixer}", fixer)))
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff",
                                                           sender=MAINTAINER))
    session = await shepherd.ended(1)

    assert session.state == State.COMPLETE
    winner, loser = f"agent/issue-1-fix-the-sum-{fixer}", f"agent/issue-1-fix-the-sum-{other}"
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] == winner == session.branch
    assert git_remote.show(E2E_REPO, f"refs/heads/{winner}", "calc.sh") == "echo $(($1 + $2))\n"
    # The other attempt's branch is pushed too, and the PR body links it in the comparison.
    assert "# looked at it" in git_remote.show(E2E_REPO, f"refs/heads/{loser}", "calc.sh")
    body = pull["body"]
    assert f"| | `{fixer}` (this pull request) | `{other}` |" in body
    assert f"| Branch | `{winner}` | [`{loser}`](" in body and f"/tree/{loser})" in body
    assert f"| Tests (`{TEST_COMMAND}`, with the base branch's test files) | passed (exit 0) | failed (exit 1) |" in body
    assert f"Shepherd chose `{fixer}`: its tests passed and the other's did not." in body
    assert len(status_comments(fake_github, 1)) == 1
    assert fake_github.calls_to("pulls/merge") == []


def loaded(text: str | None) -> LoadedPolicy:
    return parse_policy(text, OperatorLimits(agent="claude", adapters=("claude", "codex", "command")),
                        default_branch="main")


def test_the_bakeoff_label_pits_the_policys_agent_against_its_first_engine() -> None:
    assert choose(loaded("engines:\n  agent:codex: codex\n"), "agent:bakeoff") == Choice(Mode.GO, "claude", "codex")
    assert choose(loaded(None), "Agent:Bakeoff") == Choice(Mode.GO, "claude", "claude")  # two tries of one agent
    assert attempt_names("claude", "codex") == ("claude", "codex")
    assert attempt_names("command", "command") == ("command", "command-2")
    assert rival_branch("agent/issue-4-x-2-command", "command", "command") == "agent/issue-4-x-2-command-2"


def test_a_bakeoff_session_starts_on_the_first_engines_branch_and_goes_on_with_the_winners() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    trigger = Trigger(repo="o/r", issue_number=4, issue_title="Fix it", mode=Mode.GO, actor="alice",
                      base_branch="main", engine="claude", rival="codex")
    session = decide(None, trigger, now).session
    assert session is not None and session.branch == "agent/issue-4-fix-it-claude" and session.rival == "codex"
    policy = loaded("engines:\n  agent:codex: codex\n").policy
    # Taking the bake-off label off cancels it; taking off the engine label of one of its engines does not.
    assert is_trigger_of(policy, session, "agent:bakeoff") and not is_trigger_of(policy, session, "agent:codex")

    # A verdict before both attempts have ended changes nothing (the winner carrying the session on, once
    # both have ended, is the next test's).
    early = decide(session, BakeOffJudged("codex", "agent/issue-4-fix-it-codex", "codex"), now).session
    assert early is not None and early.branch == session.branch and early.bakeoff_winner is None


ASKING_FIRST_ATTEMPT = """
if [ "$SHEPHERD_TURN" = 1 ] && [ "${SHEPHERD_BRANCH##*-}" = command ]; then
  shepherd ask "Add or subtract?" --option add --option subtract
  exit 0
fi
printf 'echo $(($1 + $2))\\n' > calc.sh
git add -A
git commit -q -m "Work on the sum"
shepherd done "Fixed the sum"
"""


async def test_a_bakeoff_attempts_question_reaches_the_issue_with_the_engines_name(
        aiohttp_client, fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, ASKING_FIRST_ATTEMPT))
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff",
                                                           sender=MAINTAINER))
    await shepherd.until(lambda: any("shepherd:question" in c["body"] for c in fake_github.comments(E2E_REPO, 1)))
    [question] = [c for c in fake_github.comments(E2E_REPO, 1) if "shepherd:question" in c["body"]]
    assert "### ❓ The agent `command` (one of the bake-off's two attempts) has a question" in question["body"]

    answer = fake_github.add_comment(E2E_REPO, 1, "1", user=MAINTAINER)
    await shepherd.deliver("issue_comment", payloads.issue_comment_created(fake_github, E2E_REPO, 1, answer))
    session = await shepherd.ended(1)

    assert session.state == State.COMPLETE
    # Both attempts pass and change as much, so time decides (the first's includes the wait for the answer).
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] in ("agent/issue-1-fix-the-sum-command", "agent/issue-1-fix-the-sum-command-2")
    assert "| Tests (`sh tests/check.sh`, with the base branch's test files) | passed (exit 0) | passed (exit 0) |" \
        in pull["body"]
    assert len(status_comments(fake_github, 1)) == 1


# -- the core: one session, two attempts at once (bot.core.attempts) ------------------------------

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(session, name, event, seconds):
    decision = decide(session, attempt_event(name, event), at(seconds))
    assert decision.session is not None
    return decision.session, decision.commands


def for_attempt(commands, name):
    return [c.inner for c in commands if isinstance(c, AttemptCommand) and c.attempt == name]


def two_attempts_running():
    trigger = Trigger(repo="o/r", issue_number=4, issue_title="Fix it", mode=Mode.GO, actor="alice",
                      base_branch="main", engine="claude", rival="codex")
    started = decide(None, trigger, T0)
    session = started.session
    assert session is not None
    assert [type(c).__name__ for c in for_attempt(started.commands, "claude")] == ["EnsureWorkspace"]
    assert for_attempt(started.commands, "codex")[0].branch == "agent/issue-4-fix-it-codex"
    for name in ("claude", "codex"):
        session, commands = step(session, name, WorkspaceReady(), 1)
        assert for_attempt(commands, name) == [RequestSlot()]
    for name in ("claude", "codex"):
        session, commands = step(session, name, SlotGranted(), 2)
        [start] = for_attempt(commands, name)
        assert isinstance(start, StartTurn) and start.turn == 1
    return session


def test_both_attempts_run_at_once_each_with_its_own_question_and_the_answers_go_to_the_right_one() -> None:
    session = two_attempts_running()
    assert session.state == State.WORKING

    session, commands = step(session, "claude", Asked("Add or subtract?", ("add", "subtract")), 10)
    [post] = [c for c in for_attempt(commands, "claude") if isinstance(c, PostQuestion)]
    assert AddLabel(LabelKind.NEEDS_INPUT) in commands
    # One attempt is stuck, the other still works: the session works on, the question waits.
    assert session.state == State.WORKING
    session, commands = step(session, "codex", Asked("Which file?"), 20)
    session, _ = step(session, "claude", QuestionPosted(post.question_id, 501, at(11)), 11)
    codex_q = find(session, "codex").session.question
    session, _ = step(session, "codex", QuestionPosted(codex_q.question_id, 502, at(21)), 21)
    for name in ("claude", "codex"):
        session, commands = step(session, name, TurnExited(exit_code=0), 30)
        assert for_attempt(commands, name) == [ReleaseSlot()]
    assert session.state == State.STUCK and session.question is not None
    assert session.question.text == "Add or subtract?"  # the oldest open question

    # A reply that names an engine goes to that engine's question, even though it is not the oldest.
    named = decide(session, ReplyReceived(601, "maria", "codex: calc.sh", at(40)), at(40))
    session = named.session
    assert React("eyes", 601) in named.commands
    assert for_attempt(named.commands, "codex")[:1] == [MarkQuestionAnswered(codex_q.question_id, "maria")]
    assert for_attempt(named.commands, "claude") == []
    assert RemoveLabel(LabelKind.NEEDS_INPUT) not in named.commands  # claude's question is still open
    assert find(session, "codex").session.pending_turn.reply == "codex: calc.sh"
    # A plain reply goes to the oldest open question, and the number picks its option.
    plain = decide(session, ReplyReceived(602, "maria", "1", at(41)), at(41))
    session = plain.session
    assert find(session, "claude").session.pending_turn.reply == "add"
    assert RemoveLabel(LabelKind.NEEDS_INPUT) in plain.commands
    # The same comment again changes nothing.
    assert decide(session, ReplyReceived(602, "maria", "1", at(42)), at(42)).commands == ()


def test_a_reply_that_quotes_a_question_goes_to_that_attempt() -> None:
    session = two_attempts_running()
    session, _ = step(session, "claude", Asked("Add or subtract?"), 10)
    session, _ = step(session, "codex", Asked("Which file holds the sum?"), 11)
    quoted = decide(session, ReplyReceived(700, "maria", "> Which file holds the sum?\n\ncalc.sh", at(12)), at(12))
    assert for_attempt(quoted.commands, "codex") and not for_attempt(quoted.commands, "claude")


def finish(session, name, seconds, spend=0.0):
    if spend:
        session, _ = step(session, name, SpendReported(find(session, name).session.turn_count, spend), seconds)
    session, _ = step(session, name, DoneReported("done"), seconds)
    session, commands = step(session, name, TurnExited(exit_code=0, has_new_commits=True), seconds)
    [work] = [c for c in for_attempt(commands, name) if isinstance(c, FinishWork)]
    assert work.branch == find(session, name).session.branch
    decision = decide(session, AttemptFinished(name), at(seconds))
    return decision.session, decision.commands


def test_the_judgement_waits_for_both_attempts_and_the_winner_carries_the_session_on() -> None:
    session = two_attempts_running()
    session, commands = finish(session, "claude", 62, spend=0.25)
    assert JudgeBakeOff() not in commands and session.state == State.WORKING and not session.finishing
    session, commands = finish(session, "codex", 122, spend=0.5)
    assert JudgeBakeOff() in commands and session.finishing
    # Each attempt's own time and spend: the sum of its own turns, its own reports.
    assert [(a.name, a.seconds, a.session.spent_usd) for a in session.attempts] == [
        ("claude", 60.0, 0.25), ("codex", 120.0, 0.5)]
    assert session.spent_usd == 0.75

    judged = decide(session, BakeOffJudged("codex", "agent/issue-4-fix-it-codex", "codex", table="| the table |"),
                    at(130))
    session = judged.session
    assert (session.branch, session.engine, session.bakeoff_winner, session.bakeoff_table) == (
        "agent/issue-4-fix-it-codex", "codex", "codex", "| the table |")
    assert FinishWork("agent/issue-4-fix-it-codex", "done", None) in judged.commands
    # Judged once: a replayed verdict changes nothing.
    assert decide(session, BakeOffJudged("claude", "agent/issue-4-fix-it-claude", "claude"), at(131)).session.branch \
        == session.branch
    # After a restart while judging, the judgement runs again.
    assert JudgeBakeOff() not in decide(session, Recovered(turn_alive=False), at(132)).commands


def test_a_judging_session_judges_again_after_a_restart_and_one_failed_attempt_leaves_the_other() -> None:
    session = two_attempts_running()
    session, _ = step(session, "claude", TurnExited(exit_code=3), 5)
    assert find(session, "claude").session.state == State.FAILED and session.state == State.WORKING
    session, commands = finish(session, "codex", 9)
    assert JudgeBakeOff() in commands
    assert JudgeBakeOff() in decide(session, Recovered(turn_alive=False), at(10)).commands


def test_both_attempts_failing_fails_the_session_and_a_cancel_stops_both() -> None:
    session = two_attempts_running()
    session, _ = step(session, "claude", TurnExited(exit_code=3), 5)
    session, commands = step(session, "codex", TurnExited(exit_code=0), 6)
    assert session.state == State.FAILED and "Both attempts failed" in session.failure_reason
    assert JudgeBakeOff() not in commands

    session = two_attempts_running()
    cancelled = decide(session, Cancel(CancelReason.STOP_COMMAND), at(3))
    assert cancelled.session.state == State.CANCELLED
    for name in ("claude", "codex"):
        assert StopAgent(0) in for_attempt(cancelled.commands, name)
        assert find(cancelled.session, name).session.state == State.CANCELLED


# Both attempts ask on their first turn (each names itself), and on the turn the answer resumes, write
# the answer they got into the work: `command-2` fixes the sum, `command` only looks at it.
BOTH_ASK = """
name="${SHEPHERD_BRANCH##*fix-the-sum-}"
if [ "$SHEPHERD_TURN" = 1 ]; then
  shepherd ask "How should $name fix the sum?" --option add --option subtract
  exit 0
fi
printf '%s\\n' "$SHEPHERD_REPLY" > answer.txt
case "$name" in
  command-2) printf 'echo $(($1 + $2))\\n' > calc.sh ;;
  *) printf '# looked at it\\n' >> calc.sh ;;
esac
git add -A
git commit -q -m "Work on the sum, as told"
shepherd done "Fixed the sum"
"""


def comment_body(fake_github, comment_id):
    return next(c["body"] for c in fake_github.comments(E2E_REPO, 1) if c["id"] == comment_id)


def questions_on(fake_github, number):
    return [c for c in fake_github.comments(E2E_REPO, number) if "shepherd:question" in c["body"]]


async def test_both_attempts_ask_at_once_and_each_answer_resumes_the_attempt_it_answers(
        aiohttp_client, fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, BOTH_ASK))
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff",
                                                           sender=MAINTAINER))
    # Both questions reach the issue before either is answered: the attempts run at the same time.
    await shepherd.until(lambda: len(questions_on(fake_github, 1)) == 2)
    first, second = sorted(questions_on(fake_github, 1), key=lambda c: "command-2" in c["body"])
    assert "### ❓ The agent `command` (one of the bake-off's two attempts) has a question" in first["body"]
    assert "How should command fix the sum?" in first["body"]
    assert "### ❓ The agent `command-2` (one of the bake-off's two attempts) has a question" in second["body"]
    # The one status comment shows both attempts, each with a link to its own question.
    await shepherd.until(lambda: all(f"#issuecomment-{q['id']})" in status_comments(fake_github, 1)[0]["body"]
                                     for q in (first, second)))
    [status] = status_comments(fake_github, 1)
    assert "| `command` | `agent/issue-1-fix-the-sum-command` | `stuck` |" in status["body"]
    assert "| `command-2` | `agent/issue-1-fix-the-sum-command-2` | `stuck` |" in status["body"]
    assert "agent:needs-input" in fake_github.labels(E2E_REPO, 1)

    # A reply that names the engine goes to that engine's attempt, though its question is not the oldest.
    named = fake_github.add_comment(E2E_REPO, 1, "command-2: add them", user=MAINTAINER)
    await shepherd.deliver("issue_comment", payloads.issue_comment_created(fake_github, E2E_REPO, 1, named))
    await shepherd.until(lambda: "answered by" in comment_body(fake_github, second["id"]))
    assert "answered by" not in comment_body(fake_github, first["id"])
    assert "agent:needs-input" in fake_github.labels(E2E_REPO, 1)  # the other question still waits
    # A plain reply goes to the question still open.
    plain = fake_github.add_comment(E2E_REPO, 1, "2", user=MAINTAINER)
    await shepherd.deliver("issue_comment", payloads.issue_comment_created(fake_github, E2E_REPO, 1, plain))
    session = await shepherd.ended(1)

    assert session.state == State.COMPLETE
    assert "agent:needs-input" not in fake_github.labels(E2E_REPO, 1)
    # Each answer resumed its own attempt: the answer is in that attempt's own work.
    assert git_remote.show(E2E_REPO, "refs/heads/agent/issue-1-fix-the-sum-command-2", "answer.txt") \
        == "command-2: add them\n"
    assert git_remote.show(E2E_REPO, "refs/heads/agent/issue-1-fix-the-sum-command", "answer.txt") == "subtract\n"
    # Exactly one PR, from the attempt that passes the tests, with the comparison table.
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] == "agent/issue-1-fix-the-sum-command-2" == session.branch
    assert "| | `command-2` (this pull request) | `command` |" in pull["body"]
    assert "Shepherd chose `command-2`: its tests passed and the other's did not." in pull["body"]
    assert len(status_comments(fake_github, 1)) == 1
    assert fake_github.calls_to("pulls/merge") == []


async def test_a_bakeoff_held_back_by_max_open_prs_opens_its_pull_request_later_with_the_table(
        aiohttp_client, fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, files=FILES,
                 policy=FAST_POLICY + f"test: {TEST_COMMAND}\nmax_open_prs: 1\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, TWO_SCRIPTS.replace("{fixer}", "command-2")))
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")
    fake_github.add_issue(E2E_REPO, title="Fix the sum again", user="carol")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:go", sender=MAINTAINER))
    await shepherd.ended(1)
    [first_pull] = fake_github.pulls(E2E_REPO)

    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 2, "agent:bakeoff",
                                                           sender=MAINTAINER))
    await shepherd.until(lambda: (s := shepherd.session(2)) is not None
                         and s.detail == Detail.WAITING_FOR_PULL_REQUEST_SLOT)
    await shepherd.settle()
    assert len(fake_github.pulls(E2E_REPO)) == 1
    merged = payloads.pull_request_closed(fake_github, E2E_REPO, first_pull["number"], merged=True, sender=MAINTAINER)
    await shepherd.deliver("pull_request", merged)
    await shepherd.until(lambda: shepherd.session(2).state == State.COMPLETE)
    await shepherd.settle()

    [pull] = [p for p in fake_github.pulls(E2E_REPO) if p["number"] != first_pull["number"]]
    assert pull["head"]["ref"] == "agent/issue-2-fix-the-sum-again-command-2"
    assert "| | `command-2` (this pull request) | `command` |" in pull["body"]
    assert "Shepherd chose `command-2`: its tests passed and the other's did not." in pull["body"]


async def test_a_restart_after_the_judgement_still_opens_the_pull_request_with_the_table(
        aiohttp_client, fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, TWO_SCRIPTS.replace("{fixer}", "command")))
    first = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    # The first Shepherd never gets to open the PR: it stops once the judgement is stored.
    never = asyncio.Event()

    async def held(*args, **kwargs):
        await never.wait()

    first.engine.finisher.finish = held
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")
    await first.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff", sender=MAINTAINER))
    judged = await first.until(lambda: (s := first.session(1)) is not None and s.bakeoff_winner is not None and s)
    assert judged.state == State.WORKING and judged.pr_number is None
    await first.client.close()
    assert fake_github.pulls(E2E_REPO) == []

    second = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    session = await second.ended(1)

    assert session.state == State.COMPLETE
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] == "agent/issue-1-fix-the-sum-command"
    assert "| | `command` (this pull request) | `command-2` |" in pull["body"]
    assert "Shepherd chose `command`: its tests passed and the other's did not." in pull["body"]


async def test_the_fact_check_tests_in_a_scratch_repository_that_leaves_nothing_in_the_mirror(workspaces):
    branch = bakeoff_branch(1, "fix-the-sum", "fixer")
    worktree = await workspaces.create_worktree(REPO, branch, "main")
    assert await run_shell(worktree, FIXES_THE_CODE) == 0
    assert await workspaces.commit_all(worktree, "fixer's work", "agent", "agent@example.invalid")
    await workspaces.export_branch(worktree, branch)
    mirror = workspaces.mirror(REPO)
    registered_during_the_test: list[str] = []
    tested_in: list[Path] = []

    async def run_and_look(folder: Path, command: str) -> int:
        # While the test runs, the mirror knows nothing of the scratch repository: a kill -9 now leaves
        # nothing registered there (a `git worktree add` would have left `worktrees/...` behind).
        listed = await workspaces.git.run("worktree", "list", "--porcelain", mirror=mirror)
        registered_during_the_test.extend(listed.split("\n\n"))
        tested_in.append(folder)
        return await run_shell(folder, command)

    facts = await check_attempt(workspaces.git, workspaces, REPO, engine="fixer", branch=branch, base="main",
                                test_command=TEST_COMMAND, protected_patterns=[], run_test=run_and_look)

    assert facts.test_exit_code == 0
    assert len([entry for entry in registered_during_the_test if entry.strip()]) == 1  # the mirror alone
    assert not (mirror.path / "worktrees").exists() or not any((mirror.path / "worktrees").iterdir())
    assert not tested_in[0].exists()


@pytest.fixture
def gate(tmp_path):
    """A folder the agents see (read-write) and wait in until the test drops `go` there; dropped at the
    end in any case, so that no agent is left waiting after a failed test."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        yield shared
    finally:
        (shared / "go").touch()


async def test_an_attempt_that_finds_no_free_slot_waits_its_turn_in_the_queue(
        aiohttp_client, fake_github, git_remote, tmp_path, gate):
    shared = gate
    # Whichever attempt runs first holds its slot until the test lets it go.
    holds = f"while [ ! -e {shared}/go ]; do sleep 0.05; done\n" + TWO_SCRIPTS.replace("{fixer}", "command")
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command", SHEPHERD_MAX_PER_REPO="1",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, holds),
                            SHEPHERD_SANDBOX_PATHS=f"{shared}:rw")
    shepherd = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")
    await shepherd.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff",
                                                           sender=MAINTAINER))

    def one_runs_one_waits():
        body = status_comments(fake_github, 1)[0]["body"] if status_comments(fake_github, 1) else ""
        return "`working`" in body and "`queued`, 1st in line" in body and body
    body = await shepherd.until(one_runs_one_waits)
    assert len(shepherd.engine.queue.running) == 1 and len(shepherd.engine.queue.waiting) == 1
    assert {entry.session_id for entry in (*shepherd.engine.queue.running, *shepherd.engine.queue.waiting)} == {
        "octo-org/widgets#1/1+command", "octo-org/widgets#1/1+command-2"}
    rows = [line for line in body.splitlines() if line.startswith("| `command")]
    assert len(rows) == 2 and sum("`queued`, 1st in line" in row for row in rows) == 1
    assert "| Engine | `command` against `command-2` |" in body

    (shared / "go").write_text("")
    session = await shepherd.ended(1)
    assert session.state == State.COMPLETE
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] == "agent/issue-1-fix-the-sum-command"


async def test_a_restart_while_both_attempts_wait_for_answers_keeps_both_questions(
        aiohttp_client, fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, BOTH_ASK))
    first = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")
    await first.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff", sender=MAINTAINER))
    await first.until(lambda: len(questions_on(fake_github, 1)) == 2)
    await first.settle()
    await first.client.close()

    second = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    await second.settle()
    assert len(questions_on(fake_github, 1)) == 2  # nothing asked twice
    for text in ("command-2: add them", "command: subtract"):
        answer = fake_github.add_comment(E2E_REPO, 1, text, user=MAINTAINER)
        await second.deliver("issue_comment", payloads.issue_comment_created(fake_github, E2E_REPO, 1, answer))
    session = await second.ended(1)

    assert session.state == State.COMPLETE
    assert git_remote.show(E2E_REPO, "refs/heads/agent/issue-1-fix-the-sum-command", "answer.txt") \
        == "command: subtract\n"
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] == "agent/issue-1-fix-the-sum-command-2"
    assert "| | `command-2` (this pull request) | `command` |" in pull["body"]


async def test_a_restart_while_both_attempts_run_reattaches_both_turns(
        aiohttp_client, fake_github, git_remote, tmp_path, gate):
    shared = gate
    # Each turn leaves a mark when it starts, then waits for the test's go.
    holds = (f'echo started >> {shared}/"${{SHEPHERD_BRANCH##*fix-the-sum-}}"\n'
             f"while [ ! -e {shared}/go ]; do sleep 0.05; done\n" + TWO_SCRIPTS.replace("{fixer}", "command-2"))
    prepare_repo(fake_github, git_remote, files=FILES, policy=FAST_POLICY + f"test: {TEST_COMMAND}\n")
    settings = settings_for(fake_github, tmp_path / "data", SHEPHERD_AGENT="command",
                            SHEPHERD_AGENT_COMMAND=agent_script(tmp_path, holds),
                            SHEPHERD_SANDBOX_PATHS=f"{shared}:rw")
    first = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    fake_github.add_issue(E2E_REPO, title="Fix the sum", user="carol")
    await first.deliver("issues", payloads.issue_labeled(fake_github, E2E_REPO, 1, "agent:bakeoff", sender=MAINTAINER))
    await first.until(lambda: (shared / "command").exists() and (shared / "command-2").exists())
    await first.client.close()

    second = await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)
    (shared / "go").write_text("")
    session = await second.ended(1)

    assert session.state == State.COMPLETE
    # Each attempt's turn ran once: the restarted Shepherd found both still running.
    assert (shared / "command").read_text() == (shared / "command-2").read_text() == "started\n"
    [pull] = fake_github.pulls(E2E_REPO)
    assert pull["head"]["ref"] == "agent/issue-1-fix-the-sum-command-2"
    assert "| | `command-2` (this pull request) | `command` |" in pull["body"]


def test_a_bakeoff_shares_the_sessions_cap_between_its_attempts_and_a_raise_reaches_both() -> None:
    # SPEC §8: `max_cost_usd` caps what one session spends; a bake-off is one session, so two attempts
    # spending the whole cap each would spend twice what the maintainer allowed.
    trigger = Trigger(repo="o/r", issue_number=4, issue_title="Fix it", mode=Mode.GO, actor="alice",
                      base_branch="main", engine="claude", rival="codex", limits=Limits(max_cost_usd=2.0))
    session = decide(None, trigger, T0).session
    assert [find(session, name).session.limits.max_cost_usd for name in ("claude", "codex")] == [1.0, 1.0]
    for name in ("claude", "codex"):
        session, _ = step(session, name, WorkspaceReady(), 1)
        session, _ = step(session, name, SlotGranted(), 2)

    session, commands = step(session, "claude", SpendReported(1, 1.05), 3)  # its half is spent
    assert any(isinstance(c, StopAgent) for c in for_attempt(commands, "claude"))
    session, _ = step(session, "claude", TurnExited(exit_code=-9, has_new_commits=False), 4)
    held = find(session, "claude").session
    assert (held.state, held.detail) == (State.STUCK, Detail.NEEDS_HUMAN)
    assert "its $1.00 share of the session's $2.00 budget" in held.stuck_reason
    assert "`/agent budget 4.00`" in held.stuck_reason  # a raise of the session's cap, as a person writes it
    assert find(session, "codex").session.state == State.WORKING  # the other attempt goes on

    session = decide(session, BudgetRaised("alice", 4.0), at(5)).session
    assert [find(session, name).session.limits.max_cost_usd for name in ("claude", "codex")] == [2.0, 2.0]
    assert find(session, "claude").session.state != State.STUCK  # the raise let it go on
