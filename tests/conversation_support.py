"""Test bed for conversations on an issue: the strict fake GitHub, the real Publisher, and a small engine
that applies the real session core in memory (the handlers' `Engine`, minus agents and workspaces)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import aiohttp
import pytest
from gidgethub import sansio

from bot.github.permissions import PermissionCache
from bot.runtime.installations import Installations
from bot.runtime.publisher import Publisher
from bot.core.effects import IssueRef, SessionContext
from bot.github.client import GitHubApp
from bot.github.labels import RepoPolicies
from bot.metrics import Metrics
from bot.core.policy import OperatorLimits, default_policy
from bot.core.session import (
    AddLabel,
    Command,
    ExplainNeedsHuman,
    EditQuestion,
    Event,
    FinishWork,
    MarkQuestionAnswered,
    MarkQuestionCancelled,
    PointToPullRequest,
    PostPlan,
    PostQuestion,
    PostStatus,
    React,
    RemoveLabel,
    ReportFailure,
    Session,
    Trigger,
    WithdrawQuestion,
    decide,
    decide_trigger,
)
from bot.store.database import Store
from handlers import compose_router

INSTALLATION = 23
REPO = "octo-org/widgets"
OWNER, NAME = REPO.split("/")
START = 1714564800.0  # 2024-05-01 12:00:00 UTC

PUBLISHED = (
    React, PostStatus, PostQuestion, EditQuestion, WithdrawQuestion, MarkQuestionAnswered, MarkQuestionCancelled,
    AddLabel, RemoveLabel, PostPlan, PointToPullRequest, ReportFailure, ExplainNeedsHuman,
)


class Clock:
    """Wall-clock seconds under the test's control; `datetime()` is the same moment for the core."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, timezone.utc)

    def advance(self, seconds: float) -> None:
        self.now += seconds


Finish = Callable[[Session, FinishWork, SessionContext], Awaitable[list[Event]]]


@dataclass
class MemoryEngine:
    """`bot.core.effects.Engine` in memory: the core decides, the Publisher carries out what shows on GitHub."""

    publisher: Publisher
    clock: Clock
    finish: Finish | None = None
    sessions: dict[tuple[str, int], list[Session]] = field(default_factory=dict)
    contexts: dict[str, SessionContext] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    triggered_with: list[IssueRef] = field(default_factory=list)

    async def trigger(self, issue: IssueRef, *, mode: Any, actor: str, label: str, policy: Any,
                      labelled_at: Any = None, edited_after_label: bool = False,
                      engine: str | None = None) -> Session | None:
        last = self.last_session(issue.full_name, issue.number)
        trigger = Trigger(repo=issue.full_name, issue_number=issue.number, issue_title=issue.title, mode=mode,
                          actor=actor, base_branch=issue.default_branch, labelled_at=labelled_at, engine=engine)
        decision = decide_trigger(last, trigger, self.clock.datetime())
        self.triggered_with.append(issue)
        if decision.session is not None and (last is None or decision.session.id != last.id):
            self.contexts[decision.session.id] = SessionContext(
                installation_id=issue.installation_id, owner=issue.owner, repo=issue.repo,
                clone_url=issue.clone_url, default_branch=issue.default_branch,
                policy=default_policy(OperatorLimits(), issue.default_branch),
                notes=("The issue was edited after it was labelled.",) if edited_after_label else (),
            )
        return await self._apply(decision)

    async def signal(self, full_name: str, issue_number: int, event: Event) -> Session | None:
        session = self.last_session(full_name, issue_number)
        if session is None:
            return None
        decision = decide(session, event, self.clock.datetime())
        if decision.session is not None and decision.session.id != session.id:
            self.contexts[decision.session.id] = self.contexts[session.id]
        return await self._apply(decision)

    async def feed(self, session: Session, *events: Event) -> Session:
        """Agent-side events (workspace, slots, turns, progress, asks) for the session's issue."""
        current: Session | None = session
        for event in events:
            current = await self.signal(session.repo, session.issue_number, event)
        assert current is not None
        return current

    async def respond(self, installation_id: int, full_name: str, issue_number: int, responses: Any) -> None:
        for response in responses:
            await self.publisher.respond(installation_id, full_name, issue_number, response)

    def answered(self, full_name: str, issue_number: int, comment_id: int) -> bool:
        return self.publisher.answered(full_name, issue_number, comment_id)

    def waiting_plans(self, full_name: str) -> list[Session]:
        return [history[-1] for (repo, _n), history in self.sessions.items()
                if repo == full_name and history and str(history[-1].detail) == "plan-awaiting-approval"]

    def last_session(self, full_name: str, issue_number: int) -> Session | None:
        found = self.sessions.get((full_name, issue_number))
        return found[-1] if found else None

    def session_for_branch(self, full_name: str, branch: str) -> Session | None:
        for (repo, _number), sessions in self.sessions.items():
            for session in reversed(sessions):
                if repo == full_name and session.branch == branch:
                    return session
        return None

    def session_for_pull(self, full_name: str, number: int) -> Session | None:
        for (repo, _number), sessions in self.sessions.items():
            for session in reversed(sessions):
                if repo == full_name and session.pr_number == number:
                    return session
        return None

    async def cancel_installation(self, installation_id: int, *, reason: str) -> None:  # pragma: no cover
        raise NotImplementedError

    async def cancel_repository(self, full_name: str, *, reason: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def set_context(self, session: Session, **changes: Any) -> None:
        self.contexts[session.id] = replace(self.contexts[session.id], **changes)

    def _store(self, session: Session) -> None:
        history = self.sessions.setdefault((session.repo, session.issue_number), [])
        if history and history[-1].id == session.id:
            history[-1] = session
        else:
            history.append(session)

    async def _apply(self, decision: Any) -> Session | None:
        session = decision.session
        if session is None:
            return None
        self._store(session)
        for command in decision.commands:
            self.commands.append(command)
            events: list[Event] = []
            if isinstance(command, PUBLISHED):
                events = list(await self.publisher.publish(session, command, self.contexts[session.id]))
            elif isinstance(command, FinishWork) and self.finish is not None:
                events = await self.finish(session, command, self.contexts[session.id])
            for event in events:
                follow = decide(self.last_session(session.repo, session.issue_number), event, self.clock.datetime())
                await self._apply(follow)
            session = self.last_session(session.repo, session.issue_number)
        return self.last_session(session.repo, session.issue_number)


@dataclass
class Bed:
    """Everything a conversation test drives."""

    fake: Any
    github: GitHubApp
    gh: Any
    store: Store
    clock: Clock
    publisher: Publisher
    engine: MemoryEngine
    dependencies: dict[str, Any]

    async def deliver(self, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> None:
        """Dispatch one webhook through the composed router, as the consumer does."""
        webhook = sansio.Event(payload, event=event, delivery_id=delivery_id or str(uuid.uuid4()))
        await compose_router().dispatch(webhook, self.gh, **self.dependencies)

    def writes(self) -> list[Any]:
        """Writes to the repository (issues, comments, labels, reactions, PRs); token minting is not one."""
        return [call for call in self.fake.writes() if call.path.startswith("/repos/")]

    def bodies(self, number: int = 1) -> list[str]:
        return [c["body"] for c in self.fake.comments(REPO, number)]

    def bot_bodies(self, number: int = 1) -> list[str]:
        return [c["body"] for c in self.fake.comments(REPO, number) if c["user"]["login"] == self.fake.bot_login]


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def bed(fake_github: Any, tmp_path: Any) -> AsyncIterator[Bed]:
    fake = fake_github
    fake.add_installation(INSTALLATION, account=OWNER, repositories=[REPO])
    fake.set_permission(REPO, "alice", "write")
    fake.set_permission(REPO, "bob", "maintain")
    fake.set_permission(REPO, "eve", "read")
    fake.add_issue(REPO, title="Add CSV export", body="Export the table as CSV.", user="alice")
    store = Store.open(tmp_path / "shepherd.db")
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        github = GitHubApp(session, app_id=fake.app_id, private_key=fake.private_key_pem, api_url=fake.url,
                           metrics=Metrics(), write_spacing=0.0, sleep=_no_wait)
        publisher = Publisher(github, store, clock=clock)
        engine = MemoryEngine(publisher, clock)
        policies = RepoPolicies(clock=clock)
        dependencies = {
            "engine": engine, "store": store, "github": github, "clock": clock,
            "permissions": PermissionCache(clock=clock), "policies": policies,
            "installations": Installations(github, store, engine, policies, clock=clock),
        }
        try:
            yield Bed(fake, github, github.installation(INSTALLATION), store, clock, publisher, engine, dependencies)
        finally:
            await github.close()
            store.close()
