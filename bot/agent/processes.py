"""Running one agent turn as its own process group that a restarted Shepherd can find again (SPEC §4).

A turn's command runs under a small ``sh`` wrapper that is the leader of a new session and process
group. The wrapper writes the command's exit code into the session folder, so the result survives
Shepherd dying mid-turn. A turn is known by pid plus process create time (psutil), which tells a
live turn from a recycled pid after a restart, when Shepherd can no longer ``waitpid`` the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pwd
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import psutil

from bot import redaction

log = logging.getLogger(__name__)

WRAPPER_NAME = "shepherd-turn"
# psutil derives create time from clock ticks since boot; equal processes agree to well below this.
CREATE_TIME_TOLERANCE_S = 0.05
KILL_VERIFY_S = 5.0
TAIL_READ_BYTES = 64 * 1024
REDACTED = "[redacted]"

# Credentials that must never reach an issue comment, whatever the agent printed: the shapes the one
# redactor (bot/redaction.py) masks, named here for callers that look for them.
TOKEN_PATTERNS = tuple(pattern for pattern, _ in redaction.PATTERNS)

REASON_EXITED = "exited"
REASON_RUNTIME = "runtime"
REASON_IDLE = "idle"
REASON_VANISHED = "vanished"
REASON_LIMIT = "limit"
LIMIT_CHECK_SECONDS = 5.0

# Popen objects of turns this process started, so that finished children are reaped, not left
# as zombies; a re-attached turn has none and is polled through psutil and its exit file.
_children: dict[int, subprocess.Popen] = {}


@dataclasses.dataclass(frozen=True)
class TurnHandle:
    """Identity and files of one running turn; ``to_json``/``from_json`` carry it across restarts."""

    pid: int
    create_time: float
    log_path: str
    exit_path: str
    started_at: float
    cgroup: str | None = None

    @property
    def pgid(self) -> int:
        """The wrapper leads its own group, so the group id is its pid."""
        return self.pid

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> TurnHandle:
        return cls(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            log_path=str(data["log_path"]),
            exit_path=str(data["exit_path"]),
            started_at=float(data["started_at"]),
            cgroup=data.get("cgroup"),
        )


@dataclasses.dataclass(frozen=True)
class TurnOutcome:
    """How a turn ended: ``exit_code`` is None unless ``reason`` is ``exited``."""

    exit_code: int | None
    reason: str
    elapsed_s: float
    detail: str | None = None


@dataclasses.dataclass(frozen=True)
class Prelude:
    """What the wrapper does before the command: join the turn's cgroups, start its egress proxy."""

    cgroup: str | None = None
    cgroup_procs: tuple[str, ...] = ()
    proxy: tuple[str, ...] = ()

    def script(self) -> str:
        lines = []
        for procs in self.cgroup_procs:
            lines.append(f"echo $$ > {shlex.quote(procs)} || echo 'shepherd: could not join {procs}' >&2")
        if self.proxy:
            lines.append(f"{shlex.join(self.proxy)} </dev/null >/dev/null & proxy=$!")
        return "".join(line + "; " for line in lines)

    def epilogue(self) -> str:
        return "kill $proxy 2>/dev/null; " if self.proxy else ""


def spawn_turn(
    command: Sequence[str] | str,
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    log_path: str | os.PathLike[str],
    exit_path: str | os.PathLike[str],
    run_as_user: str | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
    prelude: Prelude | None = None,
) -> TurnHandle:
    """Start one turn: argv, or a shell command line if ``command`` is a string.

    Standard input is ``/dev/null``; stdout and stderr append to ``log_path``. ``wrap`` puts the
    command in its sandbox (``bot.agent.sandbox``); the wrapper itself stays Shepherd's, so the agent can
    neither kill it nor forge the exit file. ``run_as_user`` (no sandbox) drops only the command to
    that user with ``setpriv``.
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    if wrap is not None:
        argv = wrap(argv)
    elif run_as_user is not None:
        argv = _drop_privileges(run_as_user) + argv
    prelude = prelude or Prelude()
    script = (
        "exit_file=$1; shift; " + prelude.script() + '"$@"; code=$?; ' + prelude.epilogue()
        + 'umask 077; printf "%s\\n" "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"'
    )
    Path(exit_path).unlink(missing_ok=True)
    Path(exit_path).with_name(Path(exit_path).name + ".tmp").unlink(missing_ok=True)
    log_descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", script, WRAPPER_NAME, os.fspath(exit_path), *argv],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_descriptor,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_descriptor)
    _children[process.pid] = process
    try:
        create_time = psutil.Process(process.pid).create_time()
    except psutil.NoSuchProcess:
        # Finished before we looked: it is still our unreaped child, so the pid cannot be reused yet.
        create_time = time.time()
    handle = TurnHandle(
        pid=process.pid,
        create_time=create_time,
        log_path=os.fspath(log_path),
        exit_path=os.fspath(exit_path),
        started_at=time.time(),
        cgroup=prelude.cgroup,
    )
    log.debug("turn started", extra={"pid": handle.pid, "log_path": handle.log_path})
    return handle


def find_turn(exit_path: str | os.PathLike[str], log_path: str | os.PathLike[str], *,
              cgroup: str | None = None) -> TurnHandle | None:
    """The live wrapper of a turn that is already running, found by the exit file on its command line.

    A `kill -9` of Shepherd after it started a turn's agent but before it recorded the turn leaves the agent
    running with nothing naming it; the restart starts the turn again. Finding the wrapper first lets it
    watch that agent instead of running the turn twice."""
    wanted = os.fspath(exit_path)
    for process in psutil.process_iter(["cmdline", "create_time", "status"]):
        cmdline = process.info["cmdline"] or []
        if (len(cmdline) >= 5 and cmdline[0] == "/bin/sh" and cmdline[3] == WRAPPER_NAME and cmdline[4] == wanted
                and process.info["status"] != psutil.STATUS_ZOMBIE):
            created = float(process.info["create_time"])
            return TurnHandle(pid=process.pid, create_time=created, log_path=os.fspath(log_path), exit_path=wanted,
                              started_at=created, cgroup=cgroup)
    return None


def _drop_privileges(user: str) -> list[str]:
    entry = pwd.getpwnam(user)
    return [
        "setpriv",
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--init-groups",
        "--no-new-privs",
        "--",
    ]


def attach(handle: TurnHandle) -> bool:
    """Is the very process of ``handle`` still running (same pid and same create time)?"""
    _reap(handle.pid)
    process = _same_process(handle)
    if process is None:
        return False
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _same_process(handle: TurnHandle) -> psutil.Process | None:
    try:
        process = psutil.Process(handle.pid)
        if abs(process.create_time() - handle.create_time) > CREATE_TIME_TOLERANCE_S:
            return None
        return process
    except psutil.NoSuchProcess:
        return None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def read_exit_code(handle: TurnHandle) -> int | None:
    """The exit code the wrapper recorded, or None if there is none (yet)."""
    try:
        return int(Path(handle.exit_path).read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError):
        return None


def group_members(handle: TurnHandle) -> list[psutil.Process]:
    """The live processes of the turn's group, leader included, zombies left out.

    When the leader is gone its pid may have been recycled; members are then recognised as
    started no earlier than the turn, and, if a newcomer leads a group with the same id, before it.
    """
    newcomer_started = None
    if _same_process(handle) is None:
        try:
            newcomer = psutil.Process(handle.pgid)
            if os.getpgid(newcomer.pid) == handle.pgid:
                newcomer_started = newcomer.create_time()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    members = []
    for process in psutil.process_iter(["create_time", "status"]):
        try:
            if os.getpgid(process.pid) != handle.pgid:
                continue
        except ProcessLookupError:
            continue
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["create_time"] is None:
            continue
        if info["create_time"] < handle.create_time - CREATE_TIME_TOLERANCE_S:
            continue
        if newcomer_started is not None and info["create_time"] >= newcomer_started:
            continue
        members.append(process)
    return members


def kill_group(handle: TurnHandle, grace_s: float = 5.0) -> None:
    """SIGTERM the turn's whole group, SIGKILL what remains after ``grace_s``; safe if already gone.

    A sandboxed turn's processes live in their own pid namespace and session, out of the group's
    reach: they die with the namespace when bwrap goes, and whatever is left in the turn's cgroup
    is killed last. Raises ``RuntimeError`` if members survive SIGKILL (e.g. stuck in the kernel).
    """
    _signal_group(handle, signal.SIGTERM)
    _, alive = psutil.wait_procs(group_members(handle), timeout=grace_s)
    deadline = time.monotonic() + KILL_VERIFY_S
    while True:
        _signal_group(handle, signal.SIGKILL)
        _reap(handle.pid)
        alive = group_members(handle)
        if not alive:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {[p.pid for p in alive]} of turn {handle.pid} survived SIGKILL")
        psutil.wait_procs(alive, timeout=0.1)
    _reap(handle.pid)
    if handle.cgroup is not None:
        from bot.agent import limits

        cgroup = limits.open(handle.cgroup)
        if cgroup is not None:
            cgroup.kill_all()
    log.debug("turn group killed", extra={"pid": handle.pid})


def signal_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Send `signum` to every process of the group `pgid`, Shepherd's one `killpg`.

    A group that is already gone, or one whose members Shepherd may no longer signal, is left alone:
    callers are cleaning up after a timeout or a stop, and a failure here must not hide why."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """End a server Shepherd started as its own group leader: SIGTERM to the group, up to `grace` seconds to
    leave, then SIGKILL to whatever of the group is left, and reap the leader."""
    if process.poll() is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(handle: TurnHandle, signum: int) -> None:
    # killpg reaches members forked after we listed them, but only while the leader (alive or an
    # unreaped zombie) still holds the group id; otherwise the id could belong to someone else.
    if _same_process(handle) is not None:
        signal_group(handle.pgid, signum)
    for process in group_members(handle):
        try:
            process.send_signal(signum)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


async def wait_turn(
    handle: TurnHandle,
    *,
    max_runtime_s: float,
    idle_timeout_s: float,
    heartbeat: Callable[[], float | None],
    poll: float = 0.2,
    grace_s: float = 5.0,
    limit_check: Callable[[], str | None] | None = None,
) -> TurnOutcome:
    """Wait until the turn ends; kill its group when it runs too long or goes idle.

    Idle means neither log growth nor a ``heartbeat()`` (a timestamp, e.g. the reports file's
    mtime) for ``idle_timeout_s``. Times are wall-clock so a re-attached turn keeps its deadlines.
    Processes left in the group after the command exits are killed too: a turn must not outlive
    itself, holding the worktree or the session's port. ``limit_check`` (run in a thread every few
    seconds) names a sandbox limit the turn went past, such as the size of its worktree.
    """
    next_check = time.monotonic() + LIMIT_CHECK_SECONDS
    while True:
        code = read_exit_code(handle)
        if code is None and not attach(handle):
            code = read_exit_code(handle)  # the wrapper may have finished between the two looks
            if code is None:
                await asyncio.to_thread(kill_group, handle, 0)
                return TurnOutcome(None, REASON_VANISHED, time.time() - handle.started_at)
        if code is not None:
            await asyncio.to_thread(kill_group, handle, 0)
            return TurnOutcome(code, REASON_EXITED, time.time() - handle.started_at)
        now = time.time()
        if now - handle.started_at > max_runtime_s:
            return await _stop(handle, REASON_RUNTIME, grace_s)
        if now - _last_activity(handle, heartbeat) > idle_timeout_s:
            return await _stop(handle, REASON_IDLE, grace_s)
        if limit_check is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + LIMIT_CHECK_SECONDS
            exceeded = await asyncio.to_thread(limit_check)
            if exceeded is not None:
                outcome = await _stop(handle, REASON_LIMIT, 0)
                return dataclasses.replace(outcome, detail=exceeded)
        await asyncio.sleep(poll)


async def _stop(handle: TurnHandle, reason: str, grace_s: float) -> TurnOutcome:
    log.warning("turn stopped", extra={"pid": handle.pid, "reason": reason})
    await asyncio.to_thread(kill_group, handle, grace_s)
    return TurnOutcome(None, reason, time.time() - handle.started_at)


def _last_activity(handle: TurnHandle, heartbeat: Callable[[], float | None]) -> float:
    moments = [handle.started_at]
    try:
        moments.append(os.stat(handle.log_path).st_mtime)
    except FileNotFoundError:
        pass
    beat = heartbeat()
    if beat is not None:
        moments.append(beat)
    return max(moments)


def log_tail(
    log_path: str | os.PathLike[str], lines: int = 40, redact: Iterable[str] = ()
) -> str:
    """The last ``lines`` lines of a turn's log, with secrets and token-like strings redacted."""
    try:
        with open(log_path, "rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_READ_BYTES)
            stream.seek(start)
            data = stream.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if start > 0:
        text = text.partition("\n")[2]  # a cut line could hold the tail end of a secret
    text = redaction.redact(text, tuple(redact))
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""
