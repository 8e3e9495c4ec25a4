"""The seams between the session runtime and the parts that act on GitHub, as protocols and plain data.

The runtime (`bot/runtime/engine.py`) stores sessions and carries out the core's commands. Commands that touch
the issue or the PR are handed to a `Publisher` (`bot/runtime/publisher.py`); `FinishWork` is handed to a
`Finisher` (`bot/runtime/finisher.py`). Handlers talk to the runtime only through `Engine`. Keeping these seams
as protocols lets each side be built and tested on its own, and lets a Temporal runtime (SPEC §7) host
the same parts later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.core.policy import EffectivePolicy, LoadedPolicy, Problem
from bot.core.responses import Response
from bot.core.session import Command, Event, FinishWork, Mode, Session


@dataclass(frozen=True)
class ChangedFile:
    """One file of the session's diff against its base, for the status comment and the PR body."""

    path: str
    added: int
    removed: int


@dataclass(frozen=True)
class EgressRefusals:
    """What the session's egress proxy refused so far: how many connections, and how many per `host:port`."""

    refused: int = 0
    hosts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionContext:
    """What a publisher or finisher needs beyond the session itself; built by the runtime per command."""

    installation_id: int
    owner: str
    repo: str  # the repository's name, without the owner
    clone_url: str
    default_branch: str
    policy: EffectivePolicy
    worktree: Path | None = None
    session_dir: Path | None = None
    port: int | None = None  # the session's PORT: its turns, setup and test commands all get this one
    queue_position: int | None = None
    changed_files: tuple[ChangedFile, ...] = ()
    log_tail: str | None = None  # already redacted
    notes: tuple[str, ...] = ()  # extra lines for the status comment, e.g. "re-run after a restart"
    policy_problems: tuple[Problem | str, ...] = ()  # what is wrong in the policy file, reported once
    sandbox: str = "bwrap"  # the operator's sandbox mode (`SHEPHERD_SANDBOX`); "none" is warned about
    earlier: tuple[Session, ...] = ()  # the issue's earlier sessions, oldest first
    egress: EgressRefusals | None = None  # None where the session has no worktree (so no proxy) yet
    attempt: str | None = None  # a bake-off attempt's command: the attempt's name (its question names it)
    attempt_positions: Mapping[str, int | None] = field(default_factory=dict)  # a bake-off's queue places

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


class Publisher(Protocol):
    """Carries out the commands that show up on the issue or PR: status, questions, labels, reactions."""

    async def publish(self, session: Session, command: Command, context: SessionContext) -> Sequence[Event]:
        """Carry out one command idempotently; return the events it produced (e.g. `QuestionPosted`)."""
        ...

    async def respond(self, installation_id: int, full_name: str, number: int, response: Response) -> None:
        """Carry out one of the core's answers to a person outside a session, once."""
        ...

    def answered(self, full_name: str, number: int, comment_id: int) -> bool:
        """Was this command comment already carried out and acknowledged?"""
        ...


class Finisher(Protocol):
    """Turns finished work into a pushed branch and one pull request (SPEC §1.8)."""

    async def finish(self, session: Session, command: FinishWork, context: SessionContext,
                     appendix: str | None = None) -> Sequence[Event]:
        """Commit leftovers, check protected paths, run tests, push, open or update the PR (a new PR's body
        ends with `appendix` when given: a bake-off's comparison).

        Returns `PullRequestOpened`, `PullRequestUpdated`, `PushFailed` or `MergeConflict` (and nothing else)."""
        ...

    async def push(self, session: Session, context: SessionContext, branch: str) -> str:
        """Push one more of the session's branches (a bake-off's other attempt) the way its own is pushed."""
        ...

    async def checkpoint(self, session: Session, context: SessionContext, *, last: str | None = None) -> str | None:
        """Push the agent's commits so far as work in progress (a Temporal host, SPEC §7); the commit pushed."""
        ...

    def remember_push(self, session: Session, full_name: str, sha: str) -> None:
        """Take `sha` on the session's branch as Shepherd's own last push (another host's checkpoint)."""
        ...


@dataclass(frozen=True)
class IssueRef:
    """The issue a webhook is about, as the handlers know it from the payload."""

    installation_id: int
    owner: str
    repo: str
    number: int
    title: str
    body: str
    clone_url: str
    default_branch: str
    author: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


class Engine(Protocol):
    """What handlers may ask of the session runtime. Every method returns quickly; work happens later."""

    runs_bakeoffs: bool  # False where the bake-off label is answered with NotOffered (Temporal hosts, for now)

    async def trigger(self, issue: IssueRef, *, mode: Mode, actor: str, label: str, policy: LoadedPolicy,
                      labelled_at: datetime | None = None, edited_after_label: bool = False,
                      engine: str | None = None, rival: str | None = None) -> Session | None:
        """A go or plan label (or an engine label: `engine` is its adapter; the bake-off label: `rival` is
        the second engine) was added by an authorised
        person: start, continue, point to the PR, or nothing for a replayed label (`labelled_at` is
        GitHub's time of the label event). `policy` is the one reading of the repository's policy that
        gave the label its meaning; the session is built from it, never from a second reading."""
        ...

    async def respond(self, installation_id: int, full_name: str, issue_number: int,
                      responses: Sequence[Response]) -> None:
        """Carry out the core's answers to a person outside a session: a refusal, a command's outcome, help."""
        ...

    def answered(self, full_name: str, issue_number: int, comment_id: int) -> bool:
        """Whether a command comment was already carried out and acknowledged."""
        ...

    def waiting_plans(self, full_name: str) -> list[Session]:
        """The repository's sessions whose plan waits for approval."""
        ...

    async def signal(self, full_name: str, issue_number: int, event: Event) -> Session | None:
        """Feed one event to the issue's newest session; returns the session after the event, if any."""
        ...

    def last_session(self, full_name: str, issue_number: int) -> Session | None:
        """The issue's newest session, live or not."""
        ...

    def session_for_branch(self, full_name: str, branch: str) -> Session | None:
        """The newest session working on `branch` (for PR events)."""
        ...

    def session_for_pull(self, full_name: str, number: int) -> Session | None:
        """The newest session whose pull request is `number`, from Shepherd's own records."""
        ...

    async def cancel_installation(self, installation_id: int, *, reason: str) -> None: ...

    async def cancel_repository(self, full_name: str, *, reason: str) -> None: ...


class InstallationEvents(Protocol):
    """What the installation handlers may say happened (`bot.runtime.installations` does the rest)."""

    async def active(self, installation_id: int, account: str | None) -> None: ...

    async def retired(self, installation_id: int, account: str | None, state: str) -> None: ...

    async def repositories_added(self, installation_id: int, full_names: Sequence[str]) -> None: ...

    async def repositories_removed(self, installation_id: int, full_names: Sequence[str]) -> None: ...

    async def label(self, installation_id: int, full_names: Sequence[str]) -> None: ...
