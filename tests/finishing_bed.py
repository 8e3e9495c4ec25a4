"""Test bed for finishing and PR rounds: strict FakeGitHub, a real git remote that accepts the fake's
tokens, real worktrees, the real GitHub client, and sessions driven by the pure core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.core.effects import SessionContext
from bot.runtime.finisher import Finisher
from bot.runtime.publisher import Publisher
from bot.github.client import GitHubApp
from bot.metrics import Metrics
from bot.core.policy import OperatorLimits, default_policy
from bot.core.session import (
    ExplainNeedsHuman,
    Command,
    Decision,
    DoneReported,
    Event,
    FinishWork,
    Limits,
    Mode,
    Session,
    SlotGranted,
    Trigger,
    TurnExited,
    TurnStarted,
    WorkspaceReady,
    decide,
)
from bot.store.database import Store
from bot.workspace.workspaces import Workspaces
from tests.fakes.git_remote import GitRemote

REPO = "acme/web"
OWNER, NAME = REPO.split("/")
INSTALLATION = 77
ACTOR = "alice"
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)


@dataclass
class Bed:
    fake: Any
    remote: GitRemote
    github: GitHubApp
    workspaces: Workspaces
    store: Store
    data_dir: Path
    clone_url: str
    finisher: Finisher
    now: datetime = T0
    commands: list[Command] = field(default_factory=list)

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def apply(self, session: Session | None, event: Event) -> Session:
        decision: Decision = decide(session, event, self.tick())
        self.commands = list(decision.commands)
        assert decision.session is not None
        return decision.session

    def context(self, session: Session, **changes: Any) -> SessionContext:
        policy = default_policy(OperatorLimits(), "main")
        if changes:
            policy = policy.model_copy(update=changes)
        return SessionContext(
            installation_id=INSTALLATION,
            owner=OWNER,
            repo=NAME,
            clone_url=self.clone_url,
            default_branch="main",
            policy=policy,
            worktree=self.workspaces.worktree_path(REPO, session.branch),
            session_dir=self.data_dir / "sessions" / "s1",
        )

    def finish_command(self) -> FinishWork:
        found = [c for c in self.commands if isinstance(c, FinishWork)]
        assert len(found) == 1, self.commands
        return found[0]

    def sync_pull_head(self, number: int, sha: str) -> None:
        """GitHub moves a PR's head when its branch is pushed; the fake learns it from the test."""
        with self.fake._lock:  # noqa: SLF001 - the fake has no public way to follow a real git push
            state = self.fake._repos[REPO]  # noqa: SLF001
            state.refs[f"heads/{state.pulls[number]['head']['ref']}"] = sha
            state.pulls[number]["head"]["sha"] = sha


@pytest.fixture
async def bed(fake_github, tmp_path) -> AsyncIterator[Bed]:
    fake = fake_github
    fake.add_installation(INSTALLATION, account=OWNER, repositories=[REPO])
    fake.set_permission(REPO, ACTOR, "write")
    remote = GitRemote(tmp_path / "remote", authorize=lambda token, repo, write: fake.is_token_valid(token, repo))
    clone_url = remote.create_repo(REPO, {"README.md": "# web\n", "src/app.py": "print('hi')\n"})
    fake.set_clone_url(REPO, clone_url)
    data_dir = tmp_path / "data"
    http = aiohttp.ClientSession()
    github = GitHubApp(
        http, app_id=fake.app_id, private_key=fake.private_key_pem, api_url=fake.url, metrics=Metrics(),
        write_spacing=0.0,
    )
    store = Store.open(data_dir / "shepherd.db")
    workspaces = Workspaces(data_dir)
    finisher = Finisher(github, workspaces, workspaces.git, store, None, clock=lambda: 0.0,
                        parent_env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, poll=0.02)
    try:
        yield Bed(fake, remote, github, workspaces, store, data_dir, clone_url, finisher)
    finally:
        await github.close()
        await http.close()
        store.close()
        remote.stop()


async def prepare_worktree(bed: Bed, session: Session) -> Path:
    token = bed.fake.mint_token(INSTALLATION, repositories=[REPO])
    await bed.workspaces.ensure_mirror(REPO, bed.clone_url, token)
    return await bed.workspaces.create_worktree(REPO, session.branch, "main")


async def agent_commit(bed: Bed, worktree: Path, files: dict[str, str], message: str) -> str:
    """Commit as the agent would inside its worktree (with the bot identity from its environment)."""
    for name, text in files.items():
        target = worktree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    sha = await bed.workspaces.commit_all(worktree, message, "agent", "agent@example.invalid")
    assert sha is not None
    return sha


def triggered(bed: Bed, title: str = "Add an export button", number: int | None = None,
              limits: Limits = Limits()) -> Session:
    if number is None:
        number = bed.fake.add_issue(REPO, title=title, user=ACTOR)["number"]
    session = bed.apply(None, Trigger(REPO, number, title, Mode.GO, ACTOR, "main", limits))
    session = bed.apply(session, WorkspaceReady())
    session = bed.apply(session, SlotGranted())
    return bed.apply(session, TurnStarted("agent-session-1"))


def turn_done(bed: Bed, session: Session, summary: str | None) -> Session:
    """The agent reports done and exits: the core asks for FinishWork."""
    if summary is not None:
        session = bed.apply(session, DoneReported(summary))
    session = bed.apply(session, TurnExited(exit_code=0, has_new_commits=True))
    bed.finish_command()
    return session


def as_finished(session: Session, **changes: Any) -> Session:
    return replace(session, **changes)


class MemoryEngine:
    """A small in-memory runtime for handler tests: applies the core's `decide`, records events and commands."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.sessions: dict[str, Session] = {}
        self.events: list[Event] = []
        self.commands: list[Command] = []

    def put(self, session: Session) -> Session:
        self.sessions[session.id] = session
        return session

    async def signal(self, full_name: str, issue_number: int, event: Event) -> Session | None:
        session = self.last_session(full_name, issue_number)
        if session is None:
            return None
        self.events.append(event)
        decision = decide(session, event, self.bed.tick())
        self.commands += decision.commands
        assert decision.session is not None
        after = self.put(decision.session)
        for command in decision.commands:
            if isinstance(command, ExplainNeedsHuman):  # the one PR comment the core asks for here
                await Publisher(self.bed.github, self.bed.store, clock=lambda: self.bed.tick().timestamp()).publish(
                    after, command, self.bed.context(after))
        return after

    def last_session(self, full_name: str, issue_number: int) -> Session | None:
        found = [s for s in self.sessions.values() if s.repo == full_name and s.issue_number == issue_number]
        return max(found, key=lambda s: s.attempt) if found else None

    def session_for_branch(self, full_name: str, branch: str) -> Session | None:
        found = [s for s in self.sessions.values() if s.repo == full_name and s.branch == branch]
        return max(found, key=lambda s: s.attempt) if found else None

    def session_for_pull(self, full_name: str, number: int) -> Session | None:
        found = [s for s in self.sessions.values() if s.repo == full_name and s.pr_number == number]
        return max(found, key=lambda s: s.attempt) if found else None


async def opened_session(bed: Bed, engine: MemoryEngine, limits: Limits = Limits(), files: dict[str, str] | None = None):
    """A session whose work is pushed and whose PR is open, as the core sees it; returns (session, worktree)."""
    session = triggered(bed, limits=limits)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, files or {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    events = list(await bed.finisher.finish(session, bed.finish_command(), bed.context(session)))
    opened = events[0]
    session = bed.apply(session, opened)
    bed.sync_pull_head(opened.number, opened.head_sha)
    return engine.put(session), tree


async def dispatch(router: Any, event: Any, gh: Any, **deps: Any) -> None:
    """Run every callback the router selects, as the consumer does."""
    for callback in router.fetch(event):
        await callback(event, gh, **deps)
