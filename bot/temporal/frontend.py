"""The front end of the Temporal engine: the `Engine` the handlers talk to, as Temporal calls (SPEC §7).

`python -m bot serve` with `SHEPHERD_ENGINE=temporal` keeps its webhook contract (stored first, §6) and
its handlers; only the engine behind them differs. A trigger is a signal-with-start of the issue's
workflow (`<owner>/<repo>#<n>`), every other event a signal, so two front ends behind one URL reach the
same workflow and the core there deduplicates (one live session, one forwarded reply per comment id).

Handlers read sessions synchronously (`last_session`, `session_for_branch`, ...). The front end keeps
a read copy of the sessions it has seen in its own store, refreshed from each workflow's `snapshot`
query before a delivery's handlers run (`before_delivery`) and after every signal it sends. The
dashboard, `/api/sessions` and `/metrics` refresh the whole copy from the workflows first
(`placements`), so every front end shows the same sessions, hosts and queue places.

The repository-wide observers (dashboard issue, coordination, dependency re-checks after a merge) are
not the front end's: a front end sees only its own deliveries, and two would run them twice. They run in
one workflow per repository (bot/temporal/repository.py), which a front end starts with the
repository's first session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from bot.store.context import RuntimeContext
from bot.core.effects import IssueRef
from bot.core.policy import LoadedPolicy
from bot.core.engines import trigger_event
from bot.core.responses import Response
from bot.core.session import (
    BRANCH_PREFIX,
    Cancel,
    CancelReason,
    Event,
    Mode,
    Session,
    decide_trigger,
    event_to_dict,
    issue_of,
)
from bot.runtime.engine import NOTE_EDITED_AFTER_LABEL, SessionReads, with_engine
from bot.settings import Settings
from bot.store.sessions import SessionStore
from bot.temporal.overview import ALL_SESSIONS, queue_places
from bot.temporal.slots import SLOTS_ID, SLOTS_WORKFLOW
from bot.views.status_view import Placements

from bot.temporal.workflow import (
    QUERY_SNAPSHOT,
    REPOSITORY_WORKFLOW,
    SHARED_QUEUE,
    SIGNAL_EVENT,
    SIGNAL_EVENT_FOR,
    SIGNAL_FACTS,
    SIGNAL_TRIGGER,
    WORKFLOW_NAME,
    repository_workflow_id,
    workflow_id,
)

log = logging.getLogger(__name__)

ISSUE_BRANCH = re.compile(re.escape(BRANCH_PREFIX) + r"issue-(\d+)-")


async def ensure_repository(client: Client, full_name: str) -> None:
    """Start the repository's observers' workflow unless it runs already (bot/temporal/repository.py)."""
    await client.start_workflow(
        REPOSITORY_WORKFLOW, {"full_name": full_name}, id=repository_workflow_id(full_name), task_queue=SHARED_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def ensure_slots(client: Client, settings: Settings) -> None:
    """Start the slot-queue workflow unless it runs already (every front end and host calls this)."""
    await client.start_workflow(
        SLOTS_WORKFLOW, {"per_repo": settings.max_per_repo}, id=SLOTS_ID, task_queue=SHARED_QUEUE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


class TemporalEngine(SessionReads):
    """Implements `bot.core.effects.Engine` with signal-with-start, signals and queries."""

    runs_bakeoffs = False  # the handlers answer the bake-off label with `NotOffered`

    def __init__(self, client: Client, store: Any, github: Any, publisher: Any, settings: Settings, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.sessions = SessionStore(store.db)
        self.github = github
        self.publisher = publisher
        self.settings = settings
        self.clock = clock
        self.hosts: dict[str, str | None] = {}  # session id -> the host holding it, as last seen
        self.idle_sessions: set[str] = set()  # sessions whose workflow had nothing left to carry out
        # Told of every change the front end sees (before, after, None), as the local engine's observers.
        self.observers: list[Callable[[Session | None, Session, Any], Awaitable[None]]] = []
        self.dependencies: Any = None  # a DependencyTracker, whose `engine` is this
        self.observed: set[str] = set()  # repositories whose observers' workflow this front end started
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle (the Assembly's) ---------------------------------------------------------------

    async def start(self) -> None:
        """Make sure the one slot queue runs; copy every issue's session, so the first deliveries and the
        first reconciliation see them."""
        await ensure_slots(self.client, self.settings)
        await self.refresh_all()

    async def refresh_all(self) -> None:
        """Refresh the copy of every issue's session from Temporal's list of workflows, including the
        sessions other front ends started (before a reconciliation, which must not start them again)."""
        seen: set[str] = set()
        async for execution in self.client.list_workflows(ALL_SESSIONS):
            if execution.id in seen:
                continue
            seen.add(execution.id)
            full_name, _, number = execution.id.rpartition("#")
            if full_name and number.isdigit():
                await self.refresh(full_name, int(number))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.github.close()

    # -- reads ----------------------------------------------------------------------------------

    def _handle(self, full_name: str, issue_number: int) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(workflow_id(full_name, issue_number))

    async def refresh(self, full_name: str, issue_number: int) -> Session | None:
        """Read the issue's workflow and keep its newest session in the local copy."""
        try:
            snapshot = await self._handle(full_name, issue_number).query(QUERY_SNAPSHOT)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if not snapshot.get("session"):
            return None
        session = Session.from_dict(snapshot["session"])
        known = self.sessions.get(session.id)
        before = known.session if known is not None else None
        if snapshot.get("idle"):
            self.idle_sessions.add(session.id)
        else:
            self.idle_sessions.discard(session.id)
        self.hosts[session.id] = snapshot.get("host")
        context = RuntimeContext.from_dict(snapshot["context"])
        if known is not None:
            # What the front end's own parts keep beside the workflow's copy, across refreshes: the issue body
            # an authorised person last edited (the dependency re-checks read it; the workflow hears of it too).
            context = replace(context, dependency_body=known.context.dependency_body)
        self.sessions.record(session, context, None, (), now=self.clock())
        if before is not None and before != session:
            for observer in self.observers:
                self._spawn(observer(before, session, None))
        return session

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apply(self, session_id: str, event: Event) -> Session | None:
        """Feed an event to one session (the dependency tracker's re-checks); a stale id is dropped."""
        full_name, number = issue_of(session_id)
        await self._handle(full_name, number).signal(
            SIGNAL_EVENT_FOR, {"session_id": session_id, "event": event_to_dict(event)})
        return await self.refresh(full_name, number)

    async def change_context(self, session_id: str, change: Callable[[RuntimeContext], RuntimeContext]
                             ) -> RuntimeContext | None:
        """Change the front end's copy of a session's facts (the dependency tracker's edited issue body) and
        tell the workflow, so its hosts and the repository's re-checks read the same."""
        stored = self.sessions.get(session_id)
        if stored is None:
            return None
        changed = change(stored.context)
        if changed.dependency_body != stored.context.dependency_body:
            self.sessions.save_context(session_id, changed)
            full_name, number = issue_of(session_id)
            await self._handle(full_name, number).signal(
                SIGNAL_FACTS, {"session_id": session_id, "facts": {"dependency_body": changed.dependency_body}})
        return changed

    async def before_delivery(self, payload: dict[str, Any]) -> None:
        """Refresh the sessions a delivery may be about: its issue, and the issue of an `agent/` branch."""
        repository = (payload.get("repository") or {}).get("full_name")
        if not repository:
            return
        numbers: set[int] = set()
        if isinstance(payload.get("issue"), dict) and payload["issue"].get("number"):
            numbers.add(int(payload["issue"]["number"]))
        pull = payload.get("pull_request") or {}
        for ref in ((pull.get("head") or {}).get("ref"), ((payload.get("check_suite") or {}).get("head_branch"))):
            match = ISSUE_BRANCH.match(ref or "")
            if match:
                numbers.add(int(match.group(1)))
        for number in sorted(numbers):
            await self.refresh(repository, number)

    def answered(self, full_name: str, issue_number: int, comment_id: int) -> bool:
        return bool(self.publisher.answered(full_name, issue_number, comment_id))

    # -- writes: Temporal calls -----------------------------------------------------------------

    async def trigger(self, issue: IssueRef, *, mode: Mode, actor: str, label: str, policy: LoadedPolicy,
                      labelled_at: datetime | None = None, edited_after_label: bool = False,
                      engine: str | None = None, rival: str | None = None) -> Session | None:
        """Signal-with-start: the workflow's core decides whether this starts, continues or is a replay.
        `policy` is the reading the caller took the label's meaning from, and the only one used here.
        A bake-off (`rival`) is not run by Temporal hosts yet: the handlers say so on the issue and never get
        here with one; anything else that does fails loudly rather than run half of it."""
        if rival is not None:
            raise NotImplementedError("a bake-off runs only with SHEPHERD_ENGINE=local for now")
        loaded = policy  # the one reading
        event = trigger_event(issue, loaded.policy, mode=mode, actor=actor, labelled_at=labelled_at, engine=engine)
        last = self.last_session(issue.full_name, issue.number)
        starts = decide_trigger(last, event, datetime.now(timezone.utc)).session
        if self.dependencies is not None and starts is not None and (last is None or starts.id != last.id):
            # Only a new session waits for its dependencies (the core's answer tells whether it starts).
            verdict = await self.dependencies.evaluate(
                issue.installation_id, issue.full_name, issue.number, issue.body, stack=loaded.policy.stack)
            event = replace(event, waiting_for=tuple(k.ref(issue.full_name) for k in verdict.waiting),
                            base_branch=verdict.stack_base or event.base_branch)
        context = {
            "installation_id": issue.installation_id,
            "owner": issue.owner,
            "repo": issue.repo,
            "clone_url": issue.clone_url,
            "default_branch": issue.default_branch,
            "issue_body": issue.body,
            "issue_author": issue.author,
            "trigger_label": label,
            "trigger_at": self.clock(),
            "policy": with_engine(loaded.policy, engine).as_dict(),
            "policy_problems": [str(problem) for problem in loaded.problems],
            "notes": [NOTE_EDITED_AFTER_LABEL.format(actor=actor)] if edited_after_label else [],
        }
        if issue.full_name not in self.observed:
            await ensure_repository(self.client, issue.full_name)
            self.observed.add(issue.full_name)
        await self.client.start_workflow(
            WORKFLOW_NAME, {"host_timeout": self.settings.host_timeout_seconds,
                            "max_per_repo": self.settings.max_per_repo,
                            "events_before_continue": self.settings.history_events},
            id=workflow_id(issue.full_name, issue.number), task_queue=SHARED_QUEUE,
            start_signal=SIGNAL_TRIGGER, start_signal_args=[{"event": event_to_dict(event), "context": context}],
        )
        return await self.refresh(issue.full_name, issue.number)

    async def signal(self, full_name: str, issue_number: int, event: Event) -> Session | None:
        try:
            await self._handle(full_name, issue_number).signal(SIGNAL_EVENT, event_to_dict(event))
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return await self.refresh(full_name, issue_number)

    async def respond(self, installation_id: int, full_name: str, issue_number: int,
                      responses: Sequence[Response]) -> None:
        for response in responses:
            await self.publisher.respond(installation_id, full_name, issue_number, response)

    async def cancel_installation(self, installation_id: int, *, reason: str) -> None:
        for stored in self.sessions.for_installation(installation_id):
            log.info("cancelling %s: %s", stored.session.id, reason)
            await self.signal(stored.session.repo, stored.session.issue_number, Cancel(CancelReason.UNINSTALLED))

    async def cancel_repository(self, full_name: str, *, reason: str) -> None:
        for stored in self.sessions.for_repository(full_name):
            log.info("cancelling %s: %s", stored.session.id, reason)
            await self.signal(full_name, stored.session.issue_number, Cancel(CancelReason.UNINSTALLED))

    # -- inspection (tests, dashboard) ----------------------------------------------------------

    def host_of(self, session_id: str) -> str | None:
        return self.hosts.get(session_id)

    async def placements(self) -> Placements:
        """Where the sessions run, for the operator's views: the copy is refreshed from every workflow first
        (sessions move on without a delivery, and other front ends start some), then the host each workflow
        names and the places of the one slot queue of all hosts."""
        await self.refresh_all()
        return Placements(hosts=dict(self.hosts), places=await queue_places(self.client))

    async def idle(self) -> None:
        return None


async def assemble_front_end(settings: Settings, *, store: Any, session: Any, metrics: Any,
                             clock: Callable[[], float]) -> Any:
    """The GitHub-mode services of a front end: as `bot.runtime.assembly.assemble`, with this engine.

    A front end runs no agents: it has no workspaces, finisher or sandbox, only the Publisher for the
    answers it gives outside a session (refusals, command outcomes, help)."""
    from bot.github.labels import RepoPolicies
    from bot.github.permissions import PermissionCache
    from bot.runtime.assembly import services_around
    from bot.runtime.dependencies import DependencyTracker
    from bot.runtime.publisher import Publisher
    from bot.temporal.client import connect
    from bot.temporal.permits import paced_github

    client = await connect(settings)
    github = paced_github(settings, session, client, metrics=metrics,
                          owner=f"front-{socket.gethostname()}-{os.getpid()}")
    permissions = PermissionCache()
    policies = RepoPolicies(settings.operator_limits())
    engine = TemporalEngine(client, store, github, Publisher(github, store, clock=clock), settings, clock=clock)
    dependencies = DependencyTracker(github, store, clock=clock)
    dependencies.engine = engine
    engine.dependencies = dependencies  # at a trigger and on deliveries; the re-checks after a merge are the
    # repository workflow's (bot/temporal/repository.py), so two front ends never both run them
    return services_around(github, engine, store, clock=clock, permissions=permissions, policies=policies,
                           dependencies=dependencies)
