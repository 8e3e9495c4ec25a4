"""One agent turn: its files and environment, its process, and what it reports, as session-core events.

`start_turn` writes the prompt (first turn) or the reply (resumed turns) into the session folder,
builds the allow-listed environment and spawns the adapter's command as its own process group.
`watch_turn` then tails `reports.jsonl` into `Progress`/`Asked`/`PlanSubmitted`/`DoneReported` and,
when the process is gone, measures the worktree and reports `TurnExited` or `TurnFailed`. The handle
and the last report seen are persisted by the caller, so a restarted Shepherd can watch the same turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot import redaction
from bot.agent import channel, processes
from bot.agent.environment import SessionEnvironment, write_reply_file
from bot.agent.adapters import Adapter
from bot.agent.confinement import Confinement
from bot.agent.processes import TurnHandle, TurnOutcome
from bot.core.protected import touched_protected_paths
from bot.core.session import (
    Asked,
    DoneReported,
    Event,
    FailureKind,
    PlanSubmitted,
    Progress,
    TurnExited,
    TurnFailed,
)
from bot.workspace.workspaces import WorkspaceError, Workspaces

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
REPOSITORY_UNREADABLE = "Shepherd: after the turn, the session's repository could not be read: {why}"
WATCH_POLL_SECONDS = 0.2
FAILURE_OF = {
    processes.REASON_RUNTIME: FailureKind.RUNTIME,
    processes.REASON_IDLE: FailureKind.IDLE,
    processes.REASON_VANISHED: FailureKind.CRASH,
}


@dataclass(frozen=True)
class TurnSetup:
    """Everything one turn's process needs besides its command."""

    environment: SessionEnvironment
    turn: int
    run_as_user: str | None = None
    confinement: Confinement | None = None

    @property
    def session_dir(self) -> Path:
        return self.environment.session_dir

    @property
    def worktree(self) -> Path:
        return self.environment.worktree

    @property
    def prompt_file(self) -> Path:
        return self.environment.prompt_file

    @property
    def log_path(self) -> Path:
        return turn_files(self.session_dir, self.turn)[0]

    @property
    def exit_path(self) -> Path:
        return turn_files(self.session_dir, self.turn)[1]

    @property
    def reply_file(self) -> Path:
        return self.session_dir / f"reply-{self.turn}.md"


def start_turn(
    setup: TurnSetup,
    adapter: Adapter,
    *,
    prompt: str | None,
    message: str | None,
    reply: str | None,
    resume_session_id: str | None,
    budget_usd: float | None = None,
) -> TurnHandle:
    """Spawn one turn. A first turn passes `prompt`; a resumed one passes `message` (what the agent
    is told) and `reply` (the human text it answers, for `SHEPHERD_REPLY` and its file)."""
    python = setup.confinement.sandbox.python if setup.confinement is not None else None
    channel.install_agent_tool(setup.environment.tool_bin_dir, **({"python": python} if python else {}))
    if prompt is not None:
        setup.prompt_file.write_text(prompt, encoding="utf-8")
        setup.prompt_file.chmod(0o644)
    reply_file = None
    if reply is not None:
        reply_file = write_reply_file(setup.reply_file, reply)
    env = setup.environment.build(setup.turn, reply=reply, reply_file=reply_file)
    if prompt is not None:
        command = adapter.first_turn(prompt, setup.prompt_file, budget_usd=budget_usd)
    elif resume_session_id is not None or adapter.name == "command":
        command = adapter.resume_turn(resume_session_id, message or "", budget_usd=budget_usd)
    else:
        # No agent session to resume: a fresh turn carrying the earlier prompt and the new message.
        earlier = setup.prompt_file.read_text(encoding="utf-8") if setup.prompt_file.is_file() else ""
        command = adapter.first_turn(f"{earlier}\n\n{message or ''}".strip(), setup.prompt_file, budget_usd=budget_usd)
    if setup.confinement is not None:
        return setup.confinement.spawn(
            command, name=f"turn-{setup.turn}", env=env, log_path=setup.log_path, exit_path=setup.exit_path
        )
    return processes.spawn_turn(
        command,
        cwd=setup.worktree,
        env=env,
        log_path=setup.log_path,
        exit_path=setup.exit_path,
        run_as_user=setup.run_as_user,
    )


def turn_files(session_dir: Path, turn: int) -> tuple[Path, Path]:
    """The log and the exit file of turn `turn` of the session whose control folder is `session_dir`."""
    return session_dir / f"turn-{turn}.log", session_dir / f"turn-{turn}.exit"


def find_running(session_dir: Path, turn: int, confinement: Confinement | None) -> TurnHandle | None:
    """Turn `turn`'s agent if it already runs: started by a Shepherd killed before it could record the turn."""
    cgroup = None
    if confinement is not None and confinement.sandbox.enabled and os.geteuid() == 0:
        cgroup = confinement.cgroup_name(f"turn-{turn}")
    log_path, exit_path = turn_files(session_dir, turn)
    return processes.find_turn(exit_path, log_path, cgroup=cgroup)


MAX_OPTIONS = 20


def _text(value: object, limit: int = channel.TEXT_LIMIT_CHARS) -> str:
    """A report's field as text within the tool's own budget: the agent can write the channel directly,
    around the tool's checks, so the budget is kept here too."""
    return str(value)[:limit]


def report_event(report: Mapping) -> Event | None:
    """The core event of one `shepherd` report, or None for a malformed one."""
    kind = report.get("kind")
    try:
        if kind == "progress":
            phase = report.get("phase")
            return Progress(note=_text(report["note"]), phase=phase if phase in channel.PHASES else None)
        if kind == "ask":
            options = report.get("options") or ()
            if not isinstance(options, (list, tuple)):
                return None
            context = report.get("context")
            return Asked(
                question=_text(report["question"]),
                options=tuple(_text(option) for option in options[:MAX_OPTIONS]),
                context=_text(context) if context is not None else None,
            )
        if kind == "plan":
            return PlanSubmitted(text=_text(report["plan"], channel.PLAN_LIMIT_BYTES))
        if kind == "done":
            return DoneReported(summary=_text(report["summary"]))
    except (KeyError, TypeError):
        return None
    return None


async def measure_worktree(
    workspaces: Workspaces, worktree: Path, base: str, protected: Sequence[str]
) -> tuple[bool, bool, tuple[str, ...]]:
    """(new commits no remote branch holds, uncommitted changes, protected paths in the diff)."""
    has_new_commits = await workspaces.has_unpushed(worktree)
    has_changes = await workspaces.is_dirty(worktree)
    touched: tuple[str, ...] = ()
    if protected:
        changed = await workspaces.changed_files(worktree, base)
        touched = tuple(touched_protected_paths([path for path, _, _ in changed], protected))
    return has_new_commits, has_changes, touched


async def watch_turn(
    handle: TurnHandle,
    *,
    session_dir: Path,
    after_seq: int,
    emit: Callable[[Event, int], Awaitable[None]],
    measure: Callable[[], Awaitable[tuple[bool, bool, tuple[str, ...]]]],
    max_runtime_s: float,
    idle_timeout_s: float,
    redact: Sequence[str] = (),
    poll: float = WATCH_POLL_SECONDS,
    confinement: Confinement | None = None,
    monitor: Callable[..., Awaitable[Sequence[Event]]] | None = None,
) -> Event:
    """Feed the turn's reports to `emit(event, seq)` as they come; return its end as an event.

    `monitor()` (the spend and loop watch, `bot.agent.watchdog`) is asked on every poll for events of
    its own, and once more with `final=True` after the process is gone, before the turn's end."""
    reports_path = channel.reports_path(session_dir)

    def heartbeat() -> float | None:
        try:
            return os.lstat(reports_path).st_mtime
        except OSError:
            return None

    limit_check = confinement.limit_check(handle) if confinement is not None else None
    waiting = asyncio.create_task(
        processes.wait_turn(handle, max_runtime_s=max_runtime_s, idle_timeout_s=idle_timeout_s,
                            heartbeat=heartbeat, poll=poll, limit_check=limit_check)
    )
    seq = after_seq
    seen: tuple[int, int] | None = None
    try:
        while True:
            done = waiting.done()
            stamp = _stamp(reports_path)
            if stamp != seen or done:
                seen = stamp
                # The channel is the agent's to write: read it off the loop, bounded, never through a link.
                for report in await asyncio.to_thread(channel.read_reports, session_dir, seq):
                    event = report_event(report)
                    seq = int(report["seq"])
                    if event is not None:
                        await emit(event, seq)
            if monitor is not None:
                for event in await monitor(final=done):
                    await emit(event, seq)
            if done:
                break
            await asyncio.wait({waiting}, timeout=poll)
    except BaseException:
        waiting.cancel()
        raise
    outcome: TurnOutcome = waiting.result()
    exceeded = confinement.finish(handle) if confinement is not None else None
    if exceeded is None and outcome.reason == processes.REASON_LIMIT:
        exceeded = outcome.detail
    if exceeded is not None:
        tail = processes.log_tail(handle.log_path, LOG_TAIL_LINES, redact)
        return TurnFailed(FailureKind.LIMIT, f"Shepherd: {exceeded}\n{tail}".rstrip())
    if outcome.reason == processes.REASON_EXITED and outcome.exit_code is not None:
        try:
            new_commits, changes, touched = await measure()
        except WorkspaceError as error:
            # The agent broke its own repository (e.g. `.git` swapped for a link): say so, with the tail.
            tail = processes.log_tail(handle.log_path, LOG_TAIL_LINES, redact)
            why = redaction.redact(str(error), tuple(redact))
            return TurnFailed(FailureKind.CRASH, f"{REPOSITORY_UNREADABLE.format(why=why)}\n{tail}".rstrip())
        tail = processes.log_tail(handle.log_path, LOG_TAIL_LINES, redact) if outcome.exit_code != 0 else ""
        return TurnExited(outcome.exit_code, new_commits, changes, touched, tail)
    tail = processes.log_tail(handle.log_path, LOG_TAIL_LINES, redact)
    return TurnFailed(FAILURE_OF.get(outcome.reason, FailureKind.CRASH), tail)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns)


def agent_session_id(adapter: Adapter, handle: TurnHandle) -> str | None:
    """The agent's own session id, from the turn's log, for `--resume`."""
    try:
        text = Path(handle.log_path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return adapter.parse_output(text).session_id
