"""The bake-off's fact check (SPEC §8): what one attempt's branch really did, measured by Shepherd itself.

For an attempt whose branch is in the mirror, `check_attempt` reads the diff against the base (files,
lines, protected paths) and runs the repository's `test` command in a scratch worktree of the attempt
in which every test file is the base branch's own: test files the attempt changed or deleted are put
back, test files it added are left out. An attempt therefore cannot win by editing the tests. The
judgement itself is the core's (`bot.core.bakeoff.judge`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from bot.core.bakeoff import AttemptFacts, paths_holding_tests
from bot.core.protected import touched_protected_paths
from bot.workspace.git import Git, GitError, Mirror
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


async def _test_with_base_tests(git: Git, workspaces: Workspaces, mirror: Mirror, base_ref: str, head: str,
                                statuses: dict[str, str], command: str, run: TestRunner) -> int | None:
    scratch_root = workspaces.data_dir / "scratch"
    scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bakeoff-", dir=scratch_root))
    shutil.rmtree(scratch)  # git worktree add wants to create it
    await git.run("worktree", "add", "--quiet", "--detach", str(scratch), head, mirror=mirror)
    try:
        touched = paths_holding_tests(statuses)
        restore = [path for path in touched if statuses[path] != "A"]
        if restore:
            await git.run("checkout", base_ref, "--", *restore, mirror=mirror, worktree=scratch)
        for path in (path for path in touched if statuses[path] == "A"):
            (scratch / path).unlink(missing_ok=True)
        if touched:
            log.info("bake-off: %s tested with the base's %s", head, ", ".join(touched))
        return await run(scratch, command)
    finally:
        try:
            await git.run("worktree", "remove", "--force", str(scratch), mirror=mirror)
        except GitError:
            shutil.rmtree(scratch, ignore_errors=True)
            await git.run("worktree", "prune", mirror=mirror)


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
        exit_code = await _test_with_base_tests(git, workspaces, mirror, base_ref, head, statuses, test_command,
                                                run_test)
    return AttemptFacts(
        engine=engine, branch=branch, test_command=test_command, test_exit_code=exit_code,
        files_changed=files, lines_added=added, lines_removed=removed,
        protected_paths=tuple(touched_protected_paths(statuses, protected_patterns)),
        cost_usd=cost_usd, seconds=seconds,
    )
