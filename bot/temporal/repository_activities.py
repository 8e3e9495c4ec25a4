"""The I/O of the repository's observers under Temporal (bot/temporal/repository.py), on worker hosts.

Each activity reuses the local engine's observer code: the dashboard issue's `refresh_dashboard`, the
coordination comment's `post_coordination`, and the `DependencyTracker`, which here reads the sessions
of every issue workflow (`bot/temporal/overview.py`) and feeds its verdicts to them as signals. The
listing of changed files runs on the host holding the worktrees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client

from bot.core.session import Event, Session, event_to_dict, issue_of
from bot.runtime.coordination import post_coordination
from bot.runtime.dashboard_issue import refresh_dashboard
from bot.runtime.dependencies import DependencyTracker
from bot.store.context import RuntimeContext
from bot.store.posted import PostedRecords
from bot.store.sessions import StoredSession
from bot.temporal.overview import Snapshot, snapshots
from bot.temporal.repository import CHANGED_FILES, POST_COORDINATION, RECHECK_DEPENDENCIES, REFRESH_DASHBOARD
from bot.temporal.workflow import SIGNAL_EVENT_FOR, workflow_id


class WorkflowSessions:
    """Every issue workflow's newest session, read once, in the shape the DependencyTracker reads."""

    def __init__(self, found: list[Snapshot]) -> None:
        self.found = [(snapshot, RuntimeContext.from_dict(snapshot.context)) for snapshot in found
                      if snapshot.context.get("policy")]

    def live(self) -> list[StoredSession]:
        return [StoredSession(snapshot.session, context, context.installation_id)
                for snapshot, context in self.found if snapshot.session.is_live]

    def last_for_issue(self, repo: str, issue_number: int) -> StoredSession | None:
        for snapshot, context in self.found:
            if snapshot.session.repo.lower() == repo.lower() and snapshot.session.issue_number == issue_number:
                return StoredSession(snapshot.session, context, context.installation_id)
        return None


class SignallingEngine:
    """The tracker's engine: it reads `WorkflowSessions` and signals each verdict to the session's workflow."""

    def __init__(self, client: Client, sessions: WorkflowSessions) -> None:
        self.client = client
        self.sessions = sessions

    async def apply(self, session_id: str, event: Event) -> Session | None:
        await self.client.get_workflow_handle(workflow_id(*issue_of(session_id))).signal(
            SIGNAL_EVENT_FOR, {"session_id": session_id, "event": event_to_dict(event)})
        return None


class RepositoryActivities:
    """The observers' activities a worker host registers: GitHub through the host's paced client, records
    of what was posted in the host's store (a comment another host posted is found by its marker)."""

    def __init__(self, *, github: Any, store: Any, workspaces: Any, client: Client,
                 clock: Callable[[], float] = time.time) -> None:
        self.github = github
        self.store = store
        self.workspaces = workspaces
        self.client = client
        self.clock = clock

    @activity.defn(name=REFRESH_DASHBOARD)
    async def refresh_dashboard_issue(self, data: dict[str, Any]) -> int:
        sessions = [Session.from_dict(session) for session in data["sessions"]]
        return await refresh_dashboard(self.github, self.store, int(data["installation_id"]), data["full_name"],
                                       sessions)

    @activity.defn(name=CHANGED_FILES)
    async def changed_files(self, data: dict[str, Any]) -> dict[str, list[str]]:
        """The files each session changed in its worktree on this host; a worktree that is gone, none."""
        found: dict[str, list[str]] = {}
        for item in data["worktrees"]:
            worktree = Path(item["worktree"])
            if not worktree.is_dir():
                continue
            try:
                files = await self.workspaces.changed_files(worktree, item["base"])
            except Exception:  # noqa: BLE001 - a worktree being removed has nothing to compare
                activity.logger.warning("could not list the changed files of %s", item["session_id"], exc_info=True)
                continue
            found[item["session_id"]] = sorted(path for path, _, _ in files)
        return found

    @activity.defn(name=POST_COORDINATION)
    async def post_coordination(self, data: dict[str, Any]) -> None:
        others = [(int(other["issue_number"]), tuple(other["paths"])) for other in data["others"]]
        await post_coordination(self.github, PostedRecords(self.store), installation_id=int(data["installation_id"]),
                                session=Session.from_dict(data["session"]), clone_url=data["clone_url"],
                                others=others, now=self.clock())

    @activity.defn(name=RECHECK_DEPENDENCIES)
    async def recheck_dependencies(self, data: dict[str, Any]) -> None:
        """Re-check every issue waiting for dependencies, in any repository (a merge here may free them)."""
        tracker = DependencyTracker(self.github, self.store, clock=self.clock)
        tracker.engine = SignallingEngine(self.client, WorkflowSessions(await snapshots(self.client)))
        await tracker.recheck()

    def all(self) -> list[Any]:
        return [self.refresh_dashboard_issue, self.changed_files, self.post_coordination, self.recheck_dependencies]
