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
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.agent import processes, turns
from bot.agent.confinement import for_session as confinement_for
from bot.core.bakeoff import (
    AttemptFacts,
    attempt_names,
    comparison_table,
    judge,
    paths_holding_tests,
    rival_branch,
)
from bot.core.protected import touched_protected_paths
from bot.core.session import BakeOffJudged
from bot.workspace.git import Git, GitError, Mirror
from bot.workspace.workspaces import Workspaces, session_folder

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


# -- running a bake-off ---------------------------------------------------------------------------
#
# The session (one, SPEC §8) has run the first engine's attempt when the core asks for its PR. Here the
# second engine's attempt runs with the same prompt in its own workspace, both are checked and judged
# (`bot.core.bakeoff.judge`), the core learns the winner (`BakeOffJudged`), the other branch is pushed,
# and the finisher opens the one PR from the winner with the comparison table. See `bot.core.bakeoff`.

RIVAL_COMMIT_MESSAGE = "Shepherd: the {name} attempt's leftover changes"
RIVAL_SLOT = "{session}+{name}"  # the second attempt's own slot in the engine's queue


def _tree_url(clone_url: str, branch: str) -> str:
    return f"{clone_url.removesuffix('.git')}/tree/{branch}"


async def _run_rival(engine: Any, stored: Any, context: Any, name: str, adapter_name: str,
                     branch: str) -> tuple[Path, float]:
    """The second attempt: one agent run with the first attempt's prompt, to its end; its worktree and time."""
    from bot.runtime.engine import with_engine  # the engine imports this module

    session = replace(stored.session, branch=branch)
    full_name = session.repo
    worktree = engine.workspaces.worktree_path(full_name, branch)
    if not (worktree / ".git").exists():
        worktree = await engine.workspaces.create_worktree(full_name, branch, session.base_branch)
    folder = f"{session_folder(session.id)}-{name}"
    session_dir = engine.workspaces.session_dir(folder)
    policy = with_engine(context.policy, adapter_name)
    confinement = confinement_for(engine.workspaces, folder, worktree, full_name, policy.network.allow)
    environment = await engine._environment(session, stored.context, worktree, session_dir)
    prompt = await engine._render_prompt(replace(stored, session=session), worktree)
    setup = turns.TurnSetup(environment, turn=1, confinement=confinement)
    handle = turns.start_turn(setup, engine.adapter_factory(policy), prompt=prompt, message=None, reply=None,
                              resume_session_id=None, budget_usd=session.limits.max_cost_usd)
    outcome = await processes.wait_turn(
        handle, max_runtime_s=policy.max_runtime_seconds, idle_timeout_s=policy.idle_timeout_minutes * 60,
        heartbeat=lambda: None, poll=engine.poll,
    )
    log.info("bake-off %s: the %s attempt ended (%s, exit %s)", session.id, name, outcome.reason, outcome.exit_code)
    return worktree, outcome.elapsed_s


async def run_bakeoff(engine: Any, stored: Any, command: Any, context: Any) -> tuple[Any, Any, Any, str]:
    """Run the second attempt and judge both; the session, FinishWork and context of the winner, and the
    comparison for its PR's body (the engine's `_finish` goes on with them)."""
    session = stored.session
    first_name, second_name = attempt_names(session.engine, session.rival)
    second_branch = rival_branch(session.branch, session.engine, session.rival)
    full_name, workspaces = session.repo, engine.workspaces
    bot_name, bot_email = await engine.github.bot_identity()
    first_worktree = Path(context.worktree)
    slot = RIVAL_SLOT.format(session=session.id, name=second_name)
    engine.queue.hold(slot, full_name)
    try:
        second_worktree, second_seconds = await _run_rival(engine, stored, context, second_name, session.rival,
                                                           second_branch)
    finally:
        engine.queue.release(slot)
    for worktree, branch in ((first_worktree, session.branch), (second_worktree, second_branch)):
        await workspaces.commit_all(worktree, RIVAL_COMMIT_MESSAGE.format(name=branch.rsplit("-", 1)[-1]),
                                    bot_name, bot_email)
        await workspaces.export_branch(worktree, branch)

    async def run_test(folder: Path, test_command: str) -> int | None:
        name = f"{session_folder(session.id)}-test"
        confinement = confinement_for(workspaces, name, folder, full_name, context.policy.network.allow)
        box_dir = workspaces.session_dir(name)
        env = (await engine._environment(session, stored.context, folder, box_dir)).build(0)
        outcome = await confinement.run(test_command, name="bakeoff-test", env=env, log_path=box_dir / "test.log",
                                        exit_path=box_dir / "test.exit", timeout_s=context.policy.max_runtime_seconds,
                                        poll=engine.poll)
        return outcome.exit_code if outcome.reason == "exited" else None

    started = session.created_at.timestamp()
    checks = dict(test_command=context.policy.test, protected_patterns=context.policy.protected_paths,
                  run_test=run_test)
    first = await check_attempt(workspaces.git, workspaces, full_name, engine=first_name, branch=session.branch,
                                base=session.base_branch, cost_usd=session.spent_usd or None,
                                seconds=max(0.0, engine.clock() - started - second_seconds), **checks)
    second = await check_attempt(workspaces.git, workspaces, full_name, engine=second_name, branch=second_branch,
                                 base=session.base_branch, seconds=second_seconds, **checks)
    verdict = judge(first, second)
    log.info("bake-off %s: %s wins: %s", session.id, verdict.winner.engine, verdict.reason)
    winner_second = verdict.winner is second
    winner_worktree, other_worktree = (second_worktree, first_worktree) if winner_second else (
        first_worktree, second_worktree)
    winner_adapter = session.rival if winner_second else session.engine
    if winner_second:
        await engine.change_context(session.id, lambda known: replace(known, worktree=str(second_worktree)))
    judged = await engine.apply(session.id, BakeOffJudged(verdict.winner.engine, verdict.winner.branch,
                                                          winner_adapter))
    judged = judged or replace(session, branch=verdict.winner.branch, engine=winner_adapter)
    await engine.finisher.push(judged, context, verdict.other.branch)
    try:
        await workspaces.remove_worktree(other_worktree)
    except Exception:  # noqa: BLE001 - a kept repository is only disk; the branch is pushed
        log.warning("bake-off %s: kept %s", session.id, other_worktree, exc_info=True)
    table = comparison_table(verdict, _tree_url(context.clone_url, verdict.other.branch))
    return (judged, replace(command, branch=verdict.winner.branch), replace(context, worktree=winner_worktree),
            table)

