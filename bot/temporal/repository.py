"""The repository-wide observers under Temporal (SPEC §1, §5, §7): one small workflow per repository.

Under the local engine three observers watch every session of the process: the dashboard issue
(`bot/runtime/dashboard_issue.py`), the coordination of sessions that change the same files
(`bot/runtime/coordination.py`) and the re-check of issues waiting for a dependency whose PR merged or
opened (`bot/runtime/dependencies.py`). Under Temporal no process sees every session: front ends see
the deliveries they get, hosts the sessions they hold. So each repository gets one workflow,
`shepherd-repo:<owner>/<repo>`, that owns these observers:

- Each issue workflow tells it of the changes that matter to them (`changed`), right where the core
  decided them, so every change is seen once whoever caused it (a delivery, a host, a timer).
- Temporal's workflow id makes it one per repository, however many front ends and hosts run: two front
  ends cannot both edit the dashboard issue or post a coordination comment. A front end starts it with
  the first session of the repository (`ensure_repository`); it runs for good, continuing as new.
- Like the local observers it coalesces: changes that arrive while it works make one more round, at
  most one round every `PACE`; the I/O is activities on any host (`bot/temporal/repository_activities.py`),
  except the changed files, which each session's own host lists from its worktree.

The alternative, a lease held by one front end, would need a lease store and would still see only the
changes that front end happens to refresh; the workflow sees each change where it is decided.
Only deterministic code lives here; the decisions are the core's (`bot.core.overlaps`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from bot.temporal.workflow import (
    COORDINATION,
    DASHBOARD,
    DEPENDENCIES,
    REPOSITORY_WORKFLOW,
    SIGNAL_FACTS,
    SIGNAL_REPOSITORY_CHANGED,
    host_queue,
    repository_workflow_id,
    workflow_id,
)

with workflow.unsafe.imports_passed_through():
    from bot.core.overlaps import find_overlaps
    from bot.core.session import TERMINAL_STATES

ENDED = frozenset(state.value for state in TERMINAL_STATES)  # the notices carry the state as its value

# Polled by every host beside its other queues, so a host busy claiming a session still takes these.
OBSERVERS_QUEUE = "shepherd-observers"
REFRESH_DASHBOARD = "refresh_dashboard_issue"
CHANGED_FILES = "changed_files"
POST_COORDINATION = "post_coordination"
RECHECK_DEPENDENCIES = "recheck_dependencies"
PACE = timedelta(seconds=3)
SIGNALS_BEFORE_CONTINUE = 2000
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                             maximum_attempts=5)
ACTIVITY_LIMIT = timedelta(minutes=10)
HOST_ANSWER = timedelta(seconds=60)  # a host that does not take up its files listing in time counts as gone

__all__ = ["RepositoryWorkflow", "repository_workflow_id"]


@workflow.defn(name=REPOSITORY_WORKFLOW)
class RepositoryWorkflow:
    """The newest session of each issue of one repository, and the observers' rounds over them."""

    @workflow.init
    def __init__(self, state: dict[str, Any]) -> None:
        self.full_name: str = state["full_name"]
        # Issue number (as text) -> the newest notice: session, installation, host, worktree, dashboard on/off.
        self.issues: dict[str, dict[str, Any]] = dict(state.get("issues") or {})
        self.overlaps: dict[str, dict[str, list[str]]] = dict(state.get("overlaps") or {})
        self.coordinated: list[str] = list(state.get("coordinated") or [])  # sessions with a coordination comment
        self.wanted: list[str] = list(state.get("wanted") or [])
        self.signals = 0

    def _state(self) -> dict[str, Any]:
        return {"full_name": self.full_name, "issues": self.issues, "overlaps": self.overlaps,
                "coordinated": self.coordinated, "wanted": self.wanted}

    @workflow.run
    async def run(self, state: dict[str, Any]) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.wanted) or self.signals >= SIGNALS_BEFORE_CONTINUE
                                          or workflow.info().is_continue_as_new_suggested())
            if not self.wanted:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._state())
            wanted, self.wanted = self.wanted, []
            for kind, step in ((DEPENDENCIES, self._recheck_dependencies), (COORDINATION, self._coordinate),
                               (DASHBOARD, self._refresh_dashboard)):
                if kind in wanted:
                    try:
                        await step()
                    except ActivityError as error:  # a view: the next change tries again
                        workflow.logger.warning("%s of %s failed: %s", kind, self.full_name, error.cause or error)
            await workflow.sleep(PACE)

    @workflow.signal(name=SIGNAL_REPOSITORY_CHANGED)
    def changed(self, notice: dict[str, Any]) -> None:
        """An issue workflow's session changed; `wants` names the observers that should look again."""
        self.signals += 1
        session = notice["session"]
        known = self.issues.get(str(session["issue_number"]))
        if known is None or int(known["session"].get("attempt", 1)) <= int(session.get("attempt", 1)):
            self.issues[str(session["issue_number"])] = notice
        self.wanted += [kind for kind in notice.get("wants") or () if kind not in self.wanted]

    # -- the observers ----------------------------------------------------------------------------

    def _newest(self) -> dict[str, Any] | None:
        return max(self.issues.values(), key=lambda notice: str(notice["session"].get("updated_at") or ""),
                   default=None)

    async def _activity(self, name: str, argument: dict[str, Any], *, task_queue: str | None = None) -> Any:
        return await workflow.execute_activity(
            name, argument, task_queue=task_queue or OBSERVERS_QUEUE, start_to_close_timeout=ACTIVITY_LIMIT,
            schedule_to_start_timeout=HOST_ANSWER if task_queue else None, retry_policy=ACTIVITY_RETRY)

    async def _refresh_dashboard(self) -> None:
        newest = self._newest()
        if newest is None or not newest.get("dashboard", True):
            return  # the repository turned its dashboard issue off
        await self._activity(REFRESH_DASHBOARD, {
            "installation_id": newest["installation_id"], "full_name": self.full_name,
            "sessions": [notice["session"] for notice in self.issues.values()]})

    async def _recheck_dependencies(self) -> None:
        newest = self._newest()
        if newest is not None:
            await self._activity(RECHECK_DEPENDENCIES, {"full_name": self.full_name})

    async def _coordinate(self) -> None:
        """Compare the files the live sessions change; tell each session and its issue what overlaps."""
        live = {notice["session"]["id"]: notice for notice in self.issues.values()
                if notice["session"]["state"] not in ENDED and notice.get("host") and notice.get("worktree")}
        by_host: dict[str, list[dict[str, Any]]] = {}
        for session_id, notice in live.items():
            by_host.setdefault(notice["host"], []).append(
                {"session_id": session_id, "worktree": notice["worktree"], "base": notice["session"]["base_branch"]})
        changes: dict[str, set[str]] = {}
        for host, worktrees in sorted(by_host.items()):
            try:
                found = await self._activity(CHANGED_FILES, {"worktrees": worktrees}, task_queue=host_queue(host))
            except ActivityError:
                # The host is gone: its sessions move, and the files are compared after their next turn.
                # Comparing without them now would tell the others their overlap is gone.
                workflow.logger.warning("host %s did not list its files; coordination of %s waits", host,
                                        self.full_name)
                return
            changes.update({session_id: set(paths) for session_id, paths in found.items()})
        overlaps = find_overlaps(changes)
        for session_id, notice in sorted(live.items()):
            session = notice["session"]
            shown = {f"#{live[other]['session']['issue_number']}": list(paths)
                     for other, paths in sorted(overlaps.get(session_id, {}).items())}
            if shown == self.overlaps.get(session_id, {}):
                continue
            self.overlaps[session_id] = shown
            handle = workflow.get_external_workflow_handle(workflow_id(self.full_name, session["issue_number"]))
            await handle.signal(SIGNAL_FACTS, {"session_id": session_id, "facts": {"overlaps": shown}})
            if shown or session_id in self.coordinated:
                others = [{"issue_number": live[other]["session"]["issue_number"], "paths": list(paths)}
                          for other, paths in overlaps.get(session_id, {}).items()]
                await self._activity(POST_COORDINATION, {
                    "installation_id": notice["installation_id"], "session": session,
                    "clone_url": notice.get("clone_url") or "", "others": others})
                if session_id not in self.coordinated:
                    self.coordinated.append(session_id)
        for session_id in [known for known in self.overlaps if known not in live]:
            del self.overlaps[session_id]  # ended: nothing more to tell it
