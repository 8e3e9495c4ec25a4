"""Per-turn resource limits: a cgroup per turn, a worktree+home size check and rlimits (SPEC §4.1).

Why cgroups. The obvious per-process knob, ``RLIMIT_NPROC``, counts every process of a *uid*: all
sessions that run under the same agent uid share one budget, so a fork bomb in one session would
use it up and stop every other session from starting a process. Memory rlimits are per process and
say nothing about a tree of them. A cgroup is per turn: a group ``shepherd/<name>`` holds exactly
the turn's process tree, however it detaches itself (double fork, ``setsid``, ``nohup``), and
bounds its process count, memory (swap included) and CPU weight, so a fork bomb or a memory hog in
one session neither slows Shepherd's webhook answers nor stops another session. The same group is
how a turn is ended: every member is killed, whatever its process group or session.

How a turn joins. Shepherd itself never joins a turn's group. The turn's process tree is started
by a small root-owned ``/bin/sh`` wrapper that writes its own pid into every file of
``TurnCgroup.procs_files()`` (``echo $$ > .../cgroup.procs``) before it starts the sandbox, so
every descendant is born inside.

Where. ``shepherd/<name>`` below the root of each hierarchy: on cgroup v2 one folder under the
cgroup2 mount (``memory``, ``pids`` and, when available, ``cpu`` enabled through
``cgroup.subtree_control``); on cgroup v1 one folder under each of the ``memory``, ``pids`` and,
when mounted, ``cpu`` hierarchies. v2 is used when it is usable (its controllers may all be bound
to v1 hierarchies on a hybrid host, as on Shepherd's reference machine), else v1. The groups live
under the hierarchy's root rather than under Shepherd's own cgroup so that a restarted Shepherd,
whatever cgroup its new process starts in, finds a running turn again (``open``).

What counts as "exceeded". Reaching the memory limit is normal (the page cache fills up to it and
is reclaimed), so ``memory_exceeded`` needs both the limit reached (v1 ``failcnt``, or the
high-water mark ``max_usage_in_bytes`` at the limit, because Linux 6.x leaves v1 ``failcnt`` at 0
even when the group's own limit OOM-kills; v2 ``max``/``oom`` in ``memory.events`` or
``memory.peak``) and an OOM kill inside the group (a global OOM kill alone is not the turn's
fault). On v2 the group has ``memory.oom.group`` set, so an OOM kill stops the whole turn instead
of one of its processes at random. For processes it is ``pids.events`` ``max``: a ``fork`` refused
at ``pids.max``.

Besides the cgroup: ``tree_size`` measures the turn's worktree and home (checked every few seconds
from a thread; the turn fails past ``TurnLimits.disk_bytes``), and ``rlimit_args`` is a ``prlimit``
command prefix (largest file, no core dumps) used whatever the cgroup support.
"""

from __future__ import annotations

import builtins
import errno
import itertools
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

log = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

BASE = "shepherd"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MOUNTINFO = "/proc/self/mountinfo"
REQUIRED = ("memory", "pids")
OPTIONAL = ("cpu",)
# v1 cpu.shares and v2 cpu.weight of a group that weighs the same as an ordinary process.
V1_SHARES_UNIT = 1024
V2_WEIGHT_UNIT = 100
KILL_PAUSE_S = 0.02
PROBE_TIMEOUT_S = 10.0

_probe_counter = itertools.count()


@dataclass(frozen=True)
class TurnLimits:
    """What one turn may use. ``cpu_weight`` is the turn's CPU share relative to Shepherd's own
    (0.5 = half: v1 ``cpu.shares`` 512, v2 ``cpu.weight`` 50); it only matters when the CPU is
    busy."""

    memory_bytes: int = 4 * GiB
    pids: int = 512
    cpu_weight: float = 0.5
    disk_bytes: int = 10 * GiB
    file_size_bytes: int = 2 * GiB

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "pids", "disk_bytes", "file_size_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TurnLimits.{name} must be a positive integer, not {value!r}")
        if not self.cpu_weight > 0:
            raise ValueError(f"TurnLimits.cpu_weight must be positive, not {self.cpu_weight!r}")

    @property
    def v1_cpu_shares(self) -> int:
        return max(2, min(262144, round(V1_SHARES_UNIT * self.cpu_weight)))

    @property
    def v2_cpu_weight(self) -> int:
        return max(1, min(10000, round(V2_WEIGHT_UNIT * self.cpu_weight)))


# --- where the hierarchies are ---------------------------------------------------------------


@dataclass(frozen=True)
class _Mounts:
    v1: Mapping[str, str]  # controller -> mount point
    v2: tuple[str, ...]  # cgroup2 mount points


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _mounts(mountinfo: str = MOUNTINFO) -> _Mounts:
    v1: dict[str, str] = {}
    v2: list[str] = []
    try:
        with _open_text(mountinfo) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return _Mounts({}, ())
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        point, fstype, options = _unescape(fields[4]), fields[dash + 1], fields[dash + 3]
        if fstype == "cgroup2":
            if point not in v2:
                v2.append(point)
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in REQUIRED + OPTIONAL:
                    v1.setdefault(option, point)
    return _Mounts(v1, tuple(v2))


def _open_text(path: str, mode: str = "r") -> TextIO:
    """The builtin ``open`` (this module's own ``open`` finds a turn's cgroup)."""
    return builtins.open(path, mode, encoding="utf-8", errors="surrogateescape")


def _read(path: str) -> str:
    with _open_text(path) as handle:
        return handle.read()


def _write(path: str, value: str) -> None:
    # One write() per value: cgroup files take a whole value per write.
    with _open_text(path, "w") as handle:
        handle.write(value)


def _keyed(path: str) -> dict[str, int]:
    """A flat-keyed cgroup file ("key value" per line) as a dict; missing file -> {}."""
    values: dict[str, int] = {}
    try:
        text = _read(path)
    except (FileNotFoundError, NotADirectoryError):
        return values
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


def _number(path: str) -> int | None:
    try:
        text = _read(path).strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"invalid cgroup name {name!r}: use letters, digits, '_', '.' and '-'")


# --- detection -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    version: str  # "v1" or "v2"
    roots: Mapping[str, str]  # controller -> hierarchy root (v2: the same mount for each)

    def base(self, controller: str) -> str:
        return os.path.join(self.roots[controller], BASE)

    def group_dirs(self, name: str) -> dict[str, str]:
        return {controller: os.path.join(self.base(controller), name) for controller in self.roots}


@dataclass(frozen=True)
class CgroupSupport:
    """Which cgroup version this process can use for turns, and a one-line reason."""

    version: str | None  # "v1", "v2" or None
    reason: str
    controllers: tuple[str, ...] = ()
    _layout: _Layout | None = field(default=None, repr=False, compare=False)

    @property
    def usable(self) -> bool:
        return self.version is not None

    def __str__(self) -> str:
        return self.reason


def _ensure_enabled(directory: str, controllers: Iterable[str]) -> None:
    """Enable controllers for the children of a v2 group, each one only if not already on."""
    control = os.path.join(directory, "cgroup.subtree_control")
    for controller in controllers:
        if controller not in _read(control).split():
            _write(control, f"+{controller}")


def _v2_controllers(mount: str) -> tuple[tuple[str, ...], str | None]:
    """The controllers Shepherd would use on this cgroup2 mount, or a reason it cannot."""
    try:
        available = _read(os.path.join(mount, "cgroup.controllers")).split()
    except OSError as error:
        return (), f"cannot read {mount}/cgroup.controllers ({error.strerror or error})"
    missing = [c for c in REQUIRED if c not in available]
    if missing:
        return (), (
            f"cgroup2 at {mount} lacks the {' and '.join(missing)} controller"
            f"{'s' if len(missing) > 1 else ''} (bound to cgroup v1 hierarchies?)"
        )
    return REQUIRED + tuple(c for c in OPTIONAL if c in available), None


def _prepare(layout: _Layout) -> None:
    """Create the ``shepherd`` base groups (and on v2 enable the controllers down to them)."""
    if layout.version == "v2":
        mount = next(iter(layout.roots.values()))
        controllers = tuple(layout.roots)
        _ensure_enabled(mount, controllers)
        os.makedirs(os.path.join(mount, BASE), exist_ok=True)
        _ensure_enabled(os.path.join(mount, BASE), controllers)
    else:
        for controller in layout.roots:
            os.makedirs(layout.base(controller), exist_ok=True)


def _probe(layout: _Layout) -> str | None:
    """Create a throw-away group, move a shell into it as the turn wrapper would, remove it.
    Returns None when that all worked, else why not."""
    name = f"_probe-{os.getpid()}-{next(_probe_counter)}"
    dirs = layout.group_dirs(name)
    made: list[str] = []
    try:
        _prepare(layout)
        for directory in dict.fromkeys(dirs.values()):
            os.mkdir(directory)
            made.append(directory)
        needed = (
            (("memory", "memory.max"), ("pids", "pids.max"))
            if layout.version == "v2"
            else (("memory", "memory.limit_in_bytes"), ("pids", "pids.max"))
        )
        for controller, file in needed:
            if not os.path.exists(os.path.join(dirs[controller], file)):
                return f"{dirs[controller]} has no {file}"
        procs = [os.path.join(d, "cgroup.procs") for d in made]
        joined = subprocess.run(
            ["/bin/sh", "-c", 'for f in "$@"; do echo $$ > "$f" || exit 1; done', "sh", *procs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
        if joined.returncode != 0:
            detail = joined.stderr.decode(errors="replace").strip().splitlines()
            return f"a process cannot join {made[0]} ({detail[-1] if detail else 'refused'})"
        return None
    except OSError as error:
        where = error.filename or "the cgroup hierarchy"
        return f"cannot set up {where} ({error.strerror or error})"
    except subprocess.TimeoutExpired:
        return "the probe process did not finish"
    finally:
        for directory in reversed(made):
            _rmdir_patiently(directory, 1.0)


def detect(mountinfo: str = MOUNTINFO) -> CgroupSupport:
    """Which cgroup version THIS process can use for turns: v2 if usable, else v1, else none.

    Usable means really tried: a throw-away ``shepherd/<probe>`` group is created (on v2 with the
    controllers enabled through ``cgroup.subtree_control``), a shell joins it the way the turn
    wrapper does, and it is removed again. The reason is one line for ``shepherd doctor`` and
    the start-up log."""
    mounts = _mounts(mountinfo)
    reasons: list[str] = []
    for mount in mounts.v2:
        controllers, why = _v2_controllers(mount)
        if why is None:
            layout = _Layout("v2", {c: mount for c in controllers})
            why = _probe(layout)
            if why is None:
                return CgroupSupport(
                    "v2", f"cgroup v2 at {mount} ({', '.join(controllers)})", controllers, layout
                )
        reasons.append(why)
    missing = [c for c in REQUIRED if c not in mounts.v1]
    if missing and mounts.v1:
        reasons.append(f"no cgroup v1 {' or '.join(missing)} hierarchy is mounted")
    elif not missing:
        roots = {c: mounts.v1[c] for c in REQUIRED + OPTIONAL if c in mounts.v1}
        layout = _Layout("v1", roots)
        why = _probe(layout)
        if why is None:
            controllers = tuple(roots)
            where = ", ".join(roots[c] for c in controllers)
            return CgroupSupport("v1", f"cgroup v1 ({where})", controllers, layout)
        reasons.append(why)
    if not mounts.v1 and not mounts.v2:
        reasons.append("no cgroup filesystem is mounted")
    return CgroupSupport(None, "no usable cgroups: " + "; ".join(reasons))


# --- one turn's group ------------------------------------------------------------------------


class TurnCgroup:
    """The cgroup(s) of one turn: ``shepherd/<name>`` in each hierarchy Shepherd uses."""

    def __init__(self, name: str, version: str, dirs: Mapping[str, str]) -> None:
        self.name = name
        self.version = version
        self.dirs = dict(dirs)  # controller -> group folder

    def __repr__(self) -> str:
        return f"TurnCgroup({self.name!r}, {self.version}, {sorted(set(self.dirs.values()))})"

    @property
    def paths(self) -> list[str]:
        """The distinct group folders (v2: one)."""
        return list(dict.fromkeys(self.dirs.values()))

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the turn wrapper writes its pid into, one per hierarchy."""
        return [os.path.join(path, "cgroup.procs") for path in self.paths]

    def _groups(self) -> list[str]:
        """Each group folder and any folder nested below it (an agent cannot make those, but a
        member must not hide in one)."""
        found: list[str] = []
        for path in self.paths:
            for top, subdirs, _ in os.walk(path):
                found.append(top)
                subdirs.sort()
        return found

    def pids(self) -> set[int]:
        """Every process in the turn's group(s) now."""
        members: set[int] = set()
        for group in self._groups():
            try:
                text = _read(os.path.join(group, "cgroup.procs"))
            except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
                continue
            except OSError as error:
                if error.errno in (errno.ENODEV, errno.ENOENT):
                    continue
                raise
            members.update(int(pid) for pid in text.split() if pid.isdigit() and pid != "0")
        return members

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every member, again and again, until the group is empty (a process forked
        between reading the member list and killing its parent is caught on the next pass).
        On v2 ``cgroup.kill`` does it at once where the kernel has it. Past ``timeout`` (a
        process stuck in the kernel) it logs and returns; ``remove`` then leaves the group."""
        own = os.getpid()
        deadline = time.monotonic() + timeout
        while True:
            members = self.pids()
            if not members:
                return
            if own in members:
                raise RuntimeError(f"Shepherd's own process is in the turn cgroup {self.name}")
            if self.version == "v2":
                kill_file = os.path.join(self.paths[0], "cgroup.kill")
                if os.path.exists(kill_file):
                    try:
                        _write(kill_file, "1")
                    except OSError:
                        pass
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() >= deadline:
                log.warning(
                    "turn cgroup %s still has processes %s after %.1f s of SIGKILL",
                    self.name,
                    sorted(members),
                    timeout,
                )
                return
            time.sleep(KILL_PAUSE_S)

    def memory_limit(self) -> int | None:
        directory = self.dirs.get("memory")
        if directory is None:
            return None
        file = "memory.max" if self.version == "v2" else "memory.limit_in_bytes"
        return _number(os.path.join(directory, file))

    def pids_limit(self) -> int | None:
        directory = self.dirs.get("pids")
        return None if directory is None else _number(os.path.join(directory, "pids.max"))

    def memory_exceeded(self) -> bool:
        """The group hit its memory limit and the OOM killer killed a process in it."""
        directory = self.dirs.get("memory")
        if directory is None:
            return False
        if self.version == "v2":
            events = _keyed(os.path.join(directory, "memory.events"))
            peak = _number(os.path.join(directory, "memory.peak"))
            limit = _number(os.path.join(directory, "memory.max"))
            hit = (
                events.get("max", 0) > 0
                or events.get("oom", 0) > 0
                or (peak is not None and limit is not None and peak >= limit)
            )
            return hit and (events.get("oom_kill", 0) > 0 or events.get("oom_group_kill", 0) > 0)
        # The limit was reached: a failed charge, or (Linux 6.x leaves failcnt at 0 even when the
        # group's own limit OOM-kills) the high-water mark at the limit, with or without swap.
        hit = any(
            (_number(os.path.join(directory, file)) or 0) > 0
            for file in ("memory.failcnt", "memory.memsw.failcnt")
        ) or any(
            peak is not None and limit is not None and peak >= limit
            for peak, limit in (
                (
                    _number(os.path.join(directory, f"memory.{kind}max_usage_in_bytes")),
                    _number(os.path.join(directory, f"memory.{kind}limit_in_bytes")),
                )
                for kind in ("", "memsw.")
            )
        )
        oom = _keyed(os.path.join(directory, "memory.oom_control"))
        if "oom_kill" in oom:  # Linux >= 4.13
            return hit and oom["oom_kill"] > 0
        return hit

    def pids_exceeded(self) -> bool:
        """A fork in the group was refused at ``pids.max``."""
        directory = self.dirs.get("pids")
        if directory is None:
            return False
        return _keyed(os.path.join(directory, "pids.events")).get("max", 0) > 0

    def release_memory(self) -> None:
        """Reclaim the page cache charged to the (empty) group.

        A removed memory group still charged with the files its turn wrote lingers in the kernel as
        a dying group; one per turn, hundreds of them slowed every file operation on this host (file
        creation several times slower until `drop_caches`). v1's `memory.force_empty` lets it go at
        once; v2 has no such file and reparents the pages itself.
        """
        for group in self._groups():
            force_empty = os.path.join(group, "memory.force_empty")
            if os.path.exists(force_empty):
                try:
                    _write(force_empty, "0")
                except OSError:
                    pass

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill every member, then remove the group folder(s), nested ones first. A folder that is
        already gone is fine. Returns whether everything is gone."""
        self.kill_all(timeout)
        self.release_memory()
        gone = True
        for group in sorted(self._groups(), key=len, reverse=True):
            gone = _rmdir_patiently(group, timeout) and gone
        return gone


def _rmdir_patiently(directory: str, timeout: float) -> bool:
    """rmdir a cgroup; EBUSY right after the last member died is retried for a while."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return True
        except FileNotFoundError:
            return True
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                log.warning("cannot remove cgroup %s: %s", directory, error.strerror or error)
                return False
        time.sleep(KILL_PAUSE_S)


def _set_v1_memory(directory: str, limit: int) -> None:
    memory = os.path.join(directory, "memory.limit_in_bytes")
    memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
    has_memsw = os.path.exists(memsw)
    # memsw must stay >= memory: lower memory first, raise memsw first.
    try:
        _write(memory, str(limit))
    except OSError as error:
        if error.errno != errno.EINVAL or not has_memsw:
            raise
        _write(memsw, str(limit))
        _write(memory, str(limit))
    if has_memsw:
        _write(memsw, str(limit))


def _apply(layout: _Layout, dirs: Mapping[str, str], limits: TurnLimits) -> None:
    if layout.version == "v2":
        directory = dirs["memory"]
        _write(os.path.join(directory, "memory.max"), str(limits.memory_bytes))
        for file, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if os.path.exists(os.path.join(directory, file)):
                _write(os.path.join(directory, file), value)
        _write(os.path.join(directory, "pids.max"), str(limits.pids))
        if "cpu" in dirs and os.path.exists(os.path.join(directory, "cpu.weight")):
            _write(os.path.join(directory, "cpu.weight"), str(limits.v2_cpu_weight))
        return
    _set_v1_memory(dirs["memory"], limits.memory_bytes)
    _write(os.path.join(dirs["pids"], "pids.max"), str(limits.pids))
    if "cpu" in dirs:
        _write(os.path.join(dirs["cpu"], "cpu.shares"), str(limits.v1_cpu_shares))


def create(
    name: str, limits: TurnLimits = TurnLimits(), *, support: CgroupSupport | None = None
) -> TurnCgroup | None:
    """Create (or re-attach to) ``shepherd/<name>`` with the limits written, or None when this
    host has no usable cgroups or setting one up failed (logged; the turn then runs with the
    rlimits only). Creating a group that exists is fine: a restarted Shepherd re-attaches to a
    running turn, and its limits are written again."""
    _check_name(name)
    support = support if support is not None else detect()
    layout = support._layout
    if layout is None:
        log.warning("turn %s runs without cgroup limits: %s", name, support.reason)
        return None
    dirs = layout.group_dirs(name)
    made: list[str] = []
    try:
        _prepare(layout)
        for directory in dict.fromkeys(dirs.values()):
            try:
                os.mkdir(directory)
                made.append(directory)
            except FileExistsError:
                pass
        _apply(layout, dirs, limits)
    except OSError as error:
        log.warning(
            "turn %s runs without cgroup limits: cannot set up %s (%s)",
            name,
            error.filename or "its cgroup",
            error.strerror or error,
        )
        for directory in reversed(made):
            _rmdir_patiently(directory, 1.0)
        return None
    return TurnCgroup(name, layout.version, dirs)


def open(name: str, mountinfo: str = MOUNTINFO) -> TurnCgroup | None:  # noqa: A001
    """Find an existing turn group (after a restart), or None if there is none."""
    _check_name(name)
    mounts = _mounts(mountinfo)
    for mount in mounts.v2:
        directory = os.path.join(mount, BASE, name)
        if os.path.isdir(directory):
            available = _read(os.path.join(directory, "cgroup.controllers")).split()
            controllers = [c for c in REQUIRED + OPTIONAL if c in available] or list(REQUIRED)
            return TurnCgroup(name, "v2", {c: directory for c in controllers})
    dirs = {
        controller: os.path.join(root, BASE, name)
        for controller, root in mounts.v1.items()
        if os.path.isdir(os.path.join(root, BASE, name))
    }
    return TurnCgroup(name, "v1", dirs) if dirs else None


# --- what the maintainer reads ---------------------------------------------------------------


def human_size(amount: int) -> str:
    """`4 GiB`, `1.5 MiB`, `12 bytes`: a size as a maintainer reads it."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if amount >= size:
            value = amount / size
            return f"{value:.0f} {unit}" if amount % size == 0 else f"{value:.1f} {unit}"
    return f"{amount} bytes"


def exceeded_reason(cgroup: TurnCgroup | None) -> str | None:
    """Why the turn was stopped by its limits, as a sentence for the issue, or None."""
    if cgroup is None:
        return None
    if cgroup.memory_exceeded():
        limit = cgroup.memory_limit()
        amount = f"more than {human_size(limit)} of memory" if limit else "more memory than allowed"
        return f"the turn used {amount} and was stopped"
    if cgroup.pids_exceeded():
        limit = cgroup.pids_limit()
        amount = f"more than {limit} processes" if limit else "more processes than allowed"
        return f"the turn tried to run {amount} at once and was stopped"
    return None


# --- size of the worktree and home -----------------------------------------------------------


def tree_size(paths: Iterable[str | os.PathLike[str]], limit: int) -> int:
    """Total bytes of the regular files under ``paths``, never following a symlink (not even a
    given path that is one), a hard-linked file counted once. Stops as soon as the total is past
    ``limit`` and returns that partial total (> limit). Files and folders that vanish during the
    walk are skipped. Blocking: run it with ``asyncio.to_thread``."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack: list[str] = []
    for path in paths:
        path = os.fspath(path)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                stack.append(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    info = entry.stat(follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if info.st_nlink > 1:
                    key = (info.st_dev, info.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += info.st_size
                if total > limit:
                    return total
    return total


# --- rlimits -----------------------------------------------------------------------------------


def rlimit_args(limits: TurnLimits) -> list[str]:
    """A command prefix that sets the turn's rlimits with util-linux ``prlimit``: the largest file
    it may write (RLIMIT_FSIZE) and no core dumps."""
    size = limits.file_size_bytes
    return [shutil.which("prlimit") or "prlimit", f"--fsize={size}:{size}", "--core=0:0", "--"]
