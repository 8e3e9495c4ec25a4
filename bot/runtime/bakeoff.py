"""The bake-off's fact check and judging (SPEC §8): what each attempt's branch really did, measured by
Shepherd itself, and the verdict reported to the core.

For an attempt whose branch is in the mirror, `check_attempt` reads the diff against the base (files,
lines, protected paths) and runs the repository's `test` command in a scratch repository holding the
attempt's work (it borrows the mirror's objects; nothing is written into the mirror), in which every
test file is the base branch's own: test files the attempt changed or deleted are put back, test files
it added are left out. An attempt therefore cannot win by editing the tests. The judgement itself is
the core's (`bot.core.bakeoff.judge`); `judge_attempts` carries it out once both attempts have ended.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from bot.core.attempts import find as find_attempt
from bot.core.bakeoff import AttemptFacts, comparison_table, judge, paths_holding_tests
from bot.core.protected import touched_protected_paths
from bot.core.session import Attempt, BakeOffJudged, Event, State
from bot.store.context import AttemptContext, RuntimeContext
from bot.store.sessions import StoredSession
from bot.workspace.git import Git, Mirror
from bot.workspace.workspaces import Workspaces

log = logging.getLogger(__name__)

# Runs the test command in a folder and returns its exit code (None: it did not finish). The runtime
# passes the session's confinement, so the tests run as the agent's would.
TestRunner = Callable[[Path, str], Awaitable[int | None]]


async def _diff(git: Git, mirror: Mirror, base_ref: str, head: str) -> tuple[int, int, int, dict[str, str]]:
    """Files, lines added, lines removed, and each changed path's status letter (A, M, D, ...)."""
    numstat = await git.run("diff", "--numstat", "--no-renames", "-z", f"{base_ref}...{head}", "--", mirror=mirror)
    added = removed = files = 0
    for entry in numstat.split("\0"):
        parts = entry.split("\t")
        if len(parts) < 3:
            continue
        files += 1
        added += int(parts[0]) if parts[0].isdigit() else 0  # "-" for a binary file
        removed += int(parts[1]) if parts[1].isdigit() else 0
    status_out = await git.run("diff", "--name-status", "--no-renames", "-z", f"{base_ref}...{head}", "--",
                               mirror=mirror)
    fields = [field for field in status_out.split("\0") if field]
    statuses = {fields[i + 1]: fields[i][:1] for i in range(0, len(fields) - 1, 2)}
    return files, added, removed, statuses


async def _test_with_base_tests(git: Git, workspaces: Workspaces, full_name: str, base: str, head: str,
                                statuses: dict[str, str], command: str, run: TestRunner) -> int | None:
    scratch_root = workspaces.data_dir / "scratch"
    scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A repository of its own that borrows the mirror's objects, made in the box like a session's (as the
    # coordination's test merge does), never a worktree of the mirror: nothing is registered there, so a
    # crash half-way leaves nothing in the mirror, and what the test run does never reaches it.
    scratch = Path(tempfile.mkdtemp(prefix="bakeoff-", dir=scratch_root)) / "repository"
    try:
        head_sha = (await git.run("rev-parse", "--verify", f"{head}^{{commit}}",
                                  mirror=workspaces.mirror(full_name))).strip()
        touched = paths_holding_tests(statuses)
        await workspaces.make_scratch(full_name, scratch, head_sha, base,
                                      base_files=[path for path in touched if statuses[path] != "A"],
                                      drop_files=[path for path in touched if statuses[path] == "A"])
        if touched:
            log.info("bake-off: %s tested with the base's %s", head, ", ".join(touched))
        return await run(scratch, command)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch.parent, True)


async def check_attempt(
    git: Git, workspaces: Workspaces, full_name: str, *, engine: str, branch: str, base: str,
    test_command: str | None, protected_patterns: Iterable[str], run_test: TestRunner,
    cost_usd: float | None = None, seconds: float | None = None,
) -> AttemptFacts:
    """The facts of the attempt on `branch` (already in the mirror) against the remote's `base`."""
    mirror = workspaces.mirror(full_name)
    base_ref = f"refs/remotes/origin/{base}"
    head = f"refs/heads/{branch}"
    files, added, removed, statuses = await _diff(git, mirror, base_ref, head)
    exit_code = None
    if test_command is not None:
        exit_code = await _test_with_base_tests(git, workspaces, full_name, base, head, statuses, test_command,
                                                run_test)
    return AttemptFacts(
        engine=engine, branch=branch, test_command=test_command, test_exit_code=exit_code,
        files_changed=files, lines_added=added, lines_removed=removed,
        protected_paths=tuple(touched_protected_paths(statuses, protected_patterns)),
        cost_usd=cost_usd, seconds=seconds,
    )


# -- judging a bake-off ---------------------------------------------------------------------------
#
# Both attempts of the session (SPEC §8) have ended (`JudgeBakeOff`): the finished ones are checked, both
# are judged (`bot.core.bakeoff.judge`), the other branch is pushed, and the core learns the winner and
# the comparison (`BakeOffJudged`); the session's own `FinishWork` then opens the one PR from the winner.


class BakeOffHost(Protocol):
    """What judging needs from the engine (`bot.runtime.engine.Engine`): its public bake-off seam."""

    workspaces: Workspaces

    def attempt(self, session_id: str, name: str) -> StoredSession | None: ...

    async def run_check(self, stored: StoredSession, folder: Path, command: str) -> int | None: ...

    async def push_branch(self, stored: StoredSession, branch: str) -> None: ...

    async def change_context(self, session_id: str,
                             change: Callable[[RuntimeContext], RuntimeContext]) -> RuntimeContext | None: ...


def _tree_url(clone_url: str, branch: str) -> str:
    return f"{clone_url.removesuffix('.git')}/tree/{branch}"


async def _facts(host: BakeOffHost, stored: StoredSession, attempt: Attempt) -> AttemptFacts:
    session, policy = stored.session, stored.context.policy
    own = attempt.session
    cost, seconds = own.spent_usd or None, attempt.seconds
    if own.state != State.COMPLETE:
        return AttemptFacts(engine=attempt.name, branch=own.branch, test_command=policy.test, test_exit_code=None,
                            files_changed=0, lines_added=0, lines_removed=0,
                            failure=own.failure_reason or str(own.state), cost_usd=cost, seconds=seconds)
    view = host.attempt(session.id, attempt.name)
    assert view is not None

    async def run_test(folder: Path, command: str) -> int | None:
        return await host.run_check(view, folder, command)

    workspaces = host.workspaces
    return await check_attempt(workspaces.git, workspaces, session.repo, engine=attempt.name, branch=own.branch,
                               base=session.base_branch, test_command=policy.test,
                               protected_patterns=policy.protected_paths, run_test=run_test, cost_usd=cost,
                               seconds=seconds)


async def judge_attempts(host: BakeOffHost, stored: StoredSession) -> Sequence[Event]:
    """Check and judge both attempts, push the other branch, and report `BakeOffJudged`."""
    session = stored.session
    first_attempt, second_attempt = session.attempts
    first = await _facts(host, stored, first_attempt)
    second = await _facts(host, stored, second_attempt)
    verdict = judge(first, second)
    log.info("bake-off %s: %s wins: %s", session.id, verdict.winner.engine, verdict.reason)
    winner = find_attempt(session, verdict.winner.engine)
    assert winner is not None
    if verdict.other.failure is None:
        await host.push_branch(stored, verdict.other.branch)
    own = stored.context.attempts.get(winner.name, AttemptContext())
    # The session's PR is opened from the winner's workspace.
    await host.change_context(session.id, lambda known: replace(known, worktree=own.worktree, port=own.port))
    other = stored.context.attempts.get(verdict.other.engine, AttemptContext())
    if other.worktree:
        try:
            await host.workspaces.remove_worktree(Path(other.worktree))
        except Exception:  # noqa: BLE001 - a kept repository is only disk; the branch is in the mirror
            log.warning("bake-off %s: kept %s", session.id, other.worktree, exc_info=True)
    if other.port:
        host.workspaces.release_port(other.port)
    table = comparison_table(verdict, _tree_url(stored.context.clone_url, verdict.other.branch))
    return (BakeOffJudged(winner.name, winner.session.branch, winner.session.engine or "", table=table),)
