"""The bake-off (SPEC §8): which engines it pits, what their attempts are called, which of the two attempts
on the same issue is better by facts Shepherd checked itself, and the table that says so in the pull
request's body. Pure: the facts come in measured.

How a bake-off runs: the `agent:bakeoff` label starts ONE go session whose `engine` is the first engine
and whose `rival` is the second. It holds two attempts (`bot.core.attempts`), one per engine, that run
at the same time, each in its own workspace on `agent/issue-<n>-<slug>-<engine>` with its own slot, turns
and one open question, under the issue's one status comment. When both have ended, the runtime
(`bot.runtime.bakeoff`) checks the finished ones with the same fact check, the judgement below picks the
winner, and the core is told (`BakeOffJudged`, with the comparison table, which the session keeps): the
session carries the winner's branch and engine from then on, so the one PR, its review rounds and its CI
rounds all follow the winning attempt. The other branch is pushed too and linked from the PR body.
Nothing is merged.

The engines: the policy's `agent` first, then the first adapter the policy's `engines` map names (the
same agent again when it names none, which still gives two independent tries). Two attempts with the
same adapter are told apart by name: `command` and `command-2`.

The order of the facts is the order of the judgement: the attempt finishing its work at all (an
attempt that failed loses), the repository's `test` command passing (run with
the base branch's own test files, so no attempt wins by editing the tests), no protected path touched,
any change at all, then the smaller diff, the lower cost and the shorter time. The first fact that
differs decides; two attempts equal in every fact keep the first engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.core.protected import is_protected
from bot.core.session import BRANCH_PREFIX

# Paths that hold tests in the layouts most repositories use; the base branch's version of each is what
# an attempt's work is tested against.
TEST_PATTERNS = (
    "test/**", "tests/**", "spec/**", "**/__tests__/**", "**/test_*.py", "**/*_test.py", "**/*_test.go",
    "**/*.test.*", "**/*.spec.*", "**/*Test.java", "**/*Tests.cs",
)

BAKEOFF_LABEL = "agent:bakeoff"  # a fixed default: the `labels` schema is a contract this does not widen
SECOND_SUFFIX = "-2"

UNKNOWN = "unknown"
NO_TEST_COMMAND = "no `test` command"
REASON_FINISHED = "the other attempt did not finish its work"
REASON_TESTS = "its tests passed and the other's did not"
REASON_PROTECTED = "it left the protected paths alone"
REASON_CHANGES = "it changed something"
REASON_DIFF = "its diff is smaller ({mine} lines against {theirs})"
REASON_COST = "it cost less ({mine} against {theirs})"
REASON_TIME = "it took less time ({mine} against {theirs})"
REASON_TIE = "both attempts are equal on every checked fact, so the first engine's is kept"


@dataclass(frozen=True)
class AttemptFacts:
    """What Shepherd measured of one attempt, after its agent finished."""

    engine: str
    branch: str
    test_command: str | None
    test_exit_code: int | None  # None: no test command, or the test did not finish
    files_changed: int
    lines_added: int
    lines_removed: int
    protected_paths: tuple[str, ...] = ()
    cost_usd: float | None = None
    seconds: float | None = None
    failure: str | None = None  # the attempt ended without finished work (then nothing else was checked)

    @property
    def tests_passed(self) -> bool | None:
        if self.test_command is None:
            return None
        return self.test_exit_code == 0

    @property
    def diff_lines(self) -> int:
        return self.lines_added + self.lines_removed


@dataclass(frozen=True)
class Verdict:
    """The attempt whose PR opens, the other one, and the fact that decided between them."""

    winner: AttemptFacts
    other: AttemptFacts
    reason: str


def bakeoff_branch(issue_number: int, slug: str, engine: str) -> str:
    """`agent/issue-<n>-<slug>-<engine>` (SPEC §8)."""
    return f"{BRANCH_PREFIX}issue-{issue_number}-{slug}-{engine}"


def bakeoff_engines(agent: str, engines: Iterable[str]) -> tuple[str, str]:
    """The two adapters a bake-off pits: the policy's `agent`, then the first one `engines` maps to."""
    return agent, next(iter(engines), agent)


def attempt_names(engine: str, rival: str) -> tuple[str, str]:
    """What the two attempts are called in branches and comments; the same adapter twice is `x`, `x-2`."""
    return engine, rival if rival != engine else rival + SECOND_SUFFIX


def rival_branch(first_branch: str, engine: str, rival: str) -> str:
    """The second attempt's branch, next to the first's (`...-<first>` becomes `...-<second>`)."""
    first, second = attempt_names(engine, rival)
    assert first_branch.endswith("-" + first), first_branch
    return first_branch[: len(first_branch) - len(first)] + second


def paths_holding_tests(paths: Iterable[str]) -> list[str]:
    """The paths among `paths` that hold tests."""
    return sorted({path for path in paths if is_protected(path, TEST_PATTERNS)})


def _money(value: float | None) -> str:
    return f"${value:.2f}" if value is not None else UNKNOWN


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}m {rest}s" if minutes else f"{rest}s"


def judge(first: AttemptFacts, second: AttemptFacts) -> Verdict:
    """The better of two attempts, and why."""
    def rank(facts: AttemptFacts, other: AttemptFacts) -> list[tuple[int, str]]:
        return [
            (0 if facts.failure is not None else 1, REASON_FINISHED),
            (1 if facts.tests_passed else 0, REASON_TESTS),
            (0 if facts.protected_paths else 1, REASON_PROTECTED),
            (1 if facts.diff_lines or facts.files_changed else 0, REASON_CHANGES),
            (-facts.diff_lines, REASON_DIFF.format(mine=facts.diff_lines, theirs=other.diff_lines)),
            (0 if facts.cost_usd is None or other.cost_usd is None else -round(facts.cost_usd * 100),
             REASON_COST.format(mine=_money(facts.cost_usd), theirs=_money(other.cost_usd))),
            (0 if facts.seconds is None or other.seconds is None else -int(facts.seconds),
             REASON_TIME.format(mine=_duration(facts.seconds), theirs=_duration(other.seconds))),
        ]
    for (mine, why_first), (theirs, why_second) in zip(rank(first, second), rank(second, first), strict=True):
        if mine > theirs:
            return Verdict(first, second, why_first)
        if theirs > mine:
            return Verdict(second, first, why_second)
    return Verdict(first, second, REASON_TIE)


def _tests(facts: AttemptFacts) -> str:
    if facts.failure is not None:
        return "not run"
    if facts.test_command is None:
        return NO_TEST_COMMAND
    if facts.test_exit_code is None:
        return "did not finish"
    return "passed (exit 0)" if facts.test_exit_code == 0 else f"failed (exit {facts.test_exit_code})"


def comparison_table(verdict: Verdict, other_branch_url: str | None) -> str:
    """The PR body's Markdown table comparing both attempts, with a link to the other attempt's branch."""
    winner, other = verdict.winner, verdict.other
    other_branch = f"[`{other.branch}`]({other_branch_url})" if other_branch_url and other.failure is None \
        else f"`{other.branch}`"
    command = f" (`{winner.test_command}`, with the base branch's test files)" if winner.test_command else ""
    rows = [
        f"| | `{winner.engine}` (this pull request) | `{other.engine}` |",
        "|---|---|---|",
        f"| Branch | `{winner.branch}` | {other_branch} |",
        f"| Tests{command} | {_tests(winner)} | {_tests(other)} |",
        f"| Diff | {winner.files_changed} files, +{winner.lines_added} −{winner.lines_removed} | "
        f"{other.files_changed} files, +{other.lines_added} −{other.lines_removed} |",
        f"| Protected paths touched | {', '.join(f'`{p}`' for p in winner.protected_paths) or 'none'} | "
        f"{', '.join(f'`{p}`' for p in other.protected_paths) or 'none'} |",
        f"| Cost | {_money(winner.cost_usd)} | {_money(other.cost_usd)} |",
        f"| Time | {_duration(winner.seconds)} | {_duration(other.seconds)} |",
    ]
    if other.failure is not None:
        rows.append(f"| Outcome | finished | failed: {other.failure} |")
    return "\n".join(rows) + f"\n\nShepherd chose `{winner.engine}`: {verdict.reason}.\n"
