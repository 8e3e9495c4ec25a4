"""The bake-off's judgement (SPEC §8): two attempts at one issue, each a real command agent run in its own
worktree on `agent/issue-<n>-<slug>-<engine>`, checked by Shepherd with the repository's own test command
and the base branch's test files, then judged, with the comparison table a PR body carries.

What is NOT covered here, because it is not built yet: running both attempts inside one session of the
engine (slots, the shared status comment, questions marked with the engine) and opening the one PR.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.core.bakeoff import AttemptFacts, bakeoff_branch, comparison_table, judge, paths_holding_tests
from bot.runtime.bakeoff import check_attempt
from bot.workspace.workspaces import Workspaces
from tests.fakes.git_remote import GitRemote

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
