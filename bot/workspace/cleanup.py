"""Cleaning up after closed work (SPEC §1.10, §5 `shepherd prune`): worktrees and local branches go, unless
they hold work that exists nowhere else, which is kept and reported with the reason."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bot.core.session import PullRequestState, Session
from bot.workspace.workspaces import WorkspaceError, WorkspaceKept, Workspaces

log = logging.getLogger(__name__)

REMOVED_LINE = "removed {path} ({session})"
KEPT_LINE = "kept {path} ({session}): {reason}"
WOULD_REMOVE_LINE = "would remove {path} ({session})"
WOULD_KEEP_LINE = "would keep {path} ({session}): {reason}"
NOTHING_LINE = "no worktree of closed work to remove"
CLOSED_PR_STATES = frozenset({PullRequestState.MERGED, PullRequestState.CLOSED})


@dataclass(frozen=True)
class CleanupOutcome:
    """What happened to one session's worktree."""

    session_id: str
    path: Path
    removed: bool
    reason: str | None = None  # why it was kept


@dataclass
class PruneReport:
    removed: list[CleanupOutcome] = field(default_factory=list)
    kept: list[CleanupOutcome] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        """One line per worktree, for a person reading the terminal."""
        template = WOULD_REMOVE_LINE if self.dry_run else REMOVED_LINE
        lines = [template.format(path=o.path, session=o.session_id) for o in self.removed]
        kept = WOULD_KEEP_LINE if self.dry_run else KEPT_LINE
        lines += [kept.format(path=o.path, session=o.session_id, reason=o.reason) for o in self.kept]
        return lines or [NOTHING_LINE]


def is_closed_work(session: Session) -> bool:
    """Work whose PR was merged or closed: its worktree has no further use."""
    return session.pr_state in CLOSED_PR_STATES


async def remove_session_worktree(workspaces: Workspaces, session: Session) -> CleanupOutcome:
    """Carry out `CleanupWorkspace`: remove the worktree and its local branch, or keep it and say why.

    A worktree that is already gone counts as removed, so the command is safe to repeat."""
    path = workspaces.worktree_path(session.repo, session.branch)
    if not path.exists():
        return CleanupOutcome(session.id, path, removed=True)
    try:
        await workspaces.remove_worktree(path)
    except WorkspaceKept as kept:
        log.info("kept the worktree of %s: %s", session.id, kept.reason)
        return CleanupOutcome(session.id, path, removed=False, reason=kept.reason)
    log.info("removed the worktree of %s", session.id)
    return CleanupOutcome(session.id, path, removed=True)


async def prune(workspaces: Workspaces, sessions: Iterable[Session], *, dry_run: bool = False) -> PruneReport:
    """Remove the worktrees of every session whose PR was merged or closed; report what stayed and why."""
    report = PruneReport(dry_run=dry_run)
    for session in sessions:
        if not is_closed_work(session):
            continue
        try:
            path = workspaces.worktree_path(session.repo, session.branch)
        except WorkspaceError:
            continue
        if not path.exists():
            continue
        try:
            if dry_run:  # the same questions the real run asks, without removing anything
                workspaces.mirror(workspaces.repo_of(path))
                reason = await workspaces.reason_to_keep(path)
                outcome = CleanupOutcome(session.id, path, removed=reason is None, reason=reason)
            else:
                outcome = await remove_session_worktree(workspaces, session)
        except WorkspaceError as error:  # e.g. the mirror is gone: keep, and say so
            outcome = CleanupOutcome(session.id, path, removed=False, reason=str(error))
        (report.removed if outcome.removed else report.kept).append(outcome)
    return report
