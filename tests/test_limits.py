"""Per-turn resource limits (bot/agent/limits.py) against the host's real cgroups.

Processes join a turn's group the way the turn wrapper does: ``sh`` writes its own pid into each
``cgroup.procs`` file and then execs the command. Every test kills what it started and removes its
groups in a finaliser, whatever happens.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from bot.agent import limits
from bot.agent.limits import TurnCgroup, TurnLimits

SUPPORT = limits.detect()
needs_cgroups = pytest.mark.skipif(
    not SUPPORT.usable, reason=f"cgroups are not usable by this process: {SUPPORT.reason}"
)
WAIT_S = 60.0  # how long to wait for something that should happen at once (not an assertion)


def _wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def _gone(pid: int, created: float) -> bool:
    try:
        process = psutil.Process(pid)
        return process.create_time() != created or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Turns:
    """Creates turn groups and starts processes in them; ``close`` undoes all of it."""

    def __init__(self) -> None:
        self.groups: list[TurnCgroup] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def group(self, limits_: TurnLimits = TurnLimits()) -> TurnCgroup:
        name = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        cgroup = limits.create(name, limits_, support=SUPPORT)
        assert cgroup is not None, f"create({name!r}) failed although detect() said {SUPPORT}"
        self.groups.append(cgroup)
        return cgroup

    def start(self, cgroup: TurnCgroup, command: str, **popen) -> subprocess.Popen[bytes]:
        joins = " ".join(shlex.quote(f) for f in cgroup.procs_files())
        script = f"for f in {joins}; do echo $$ > $f || exit 99; done; exec {command}"
        process = subprocess.Popen(["sh", "-c", script], start_new_session=True, **popen)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for cgroup in self.groups:
            try:
                cgroup.remove()
            finally:
                for path in cgroup.paths:
                    if os.path.isdir(path):
                        for pid in cgroup.pids():
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                        try:
                            os.rmdir(path)
                        except OSError:
                            pass
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def turns() -> Iterator[Turns]:
    made = Turns()
    try:
        yield made
    finally:
        made.close()


FORK_LOOP = r"""
import os, signal, sys
made = refused = 0
for _ in range(300):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        signal.pause()
        os._exit(0)
    made += 1
print(made, refused, flush=True)
signal.pause()
"""


@needs_cgroups
def test_a_fork_bomb_stays_within_pids_max_and_is_killed(turns: Turns) -> None:
    cgroup = turns.group(TurnLimits(pids=64))
    bomb = turns.start(
        cgroup, shlex.join([sys.executable, "-c", FORK_LOOP]), stdout=subprocess.PIPE
    )
    line = bomb.stdout.readline().decode()
    assert line, "the fork loop died before reporting"
    made, refused = map(int, line.split())

    # The loop (pid 1 of the group) plus its children never exceed 64 processes.
    assert made + 1 <= 64
    assert refused > 0
    members = cgroup.pids()
    assert bomb.pid in members
    assert 1 < len(members) <= 64
    assert cgroup.pids_exceeded()
    assert "64 processes" in limits.exceeded_reason(cgroup)

    # Meanwhile Shepherd (this process) still starts processes.
    assert subprocess.run(["true"], check=False).returncode == 0

    created = {pid: psutil.Process(pid).create_time() for pid in members}
    cgroup.kill_all()
    assert cgroup.pids() == set()
    assert all(_gone(pid, at) for pid, at in created.items())


MEMORY_HOG = "b = bytearray(1 << 29)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n"


@needs_cgroups
def test_a_memory_hog_is_killed_and_reported(turns: Turns) -> None:
    cgroup = turns.group(TurnLimits(memory_bytes=128 * limits.MiB))
    assert not cgroup.memory_exceeded()
    hog = turns.start(cgroup, shlex.join([sys.executable, "-c", MEMORY_HOG]))
    assert hog.wait(timeout=WAIT_S) == -signal.SIGKILL
    assert cgroup.memory_exceeded()
    reason = limits.exceeded_reason(cgroup)
    assert reason is not None and "memory" in reason and "128 MiB" in reason


@needs_cgroups
def test_a_detached_daemon_stays_in_the_group_and_is_killed(turns: Turns, tmp_path: Path) -> None:
    cgroup = turns.group()
    pid_file = tmp_path / "daemon.pid"
    quoted = shlex.quote(str(pid_file))
    daemon = f"echo $$ > {quoted}.tmp && mv {quoted}.tmp {quoted}; exec sleep 300"
    outer = f"setsid sh -c {shlex.quote(daemon)} </dev/null >/dev/null 2>&1 & exit 0"
    parent = turns.start(cgroup, f"sh -c {shlex.quote(outer)}")
    assert parent.wait(timeout=WAIT_S) == 0

    _wait_for(pid_file.exists, "the daemon to write its pid")
    pid = int(pid_file.read_text())
    process = psutil.Process(pid)
    _wait_for(lambda: process.name() == "sleep", "the daemon to exec sleep")
    assert os.getsid(pid) == pid  # it left the wrapper's session
    assert pid in cgroup.pids()
    created = process.create_time()

    cgroup.kill_all()
    assert _gone(pid, created)
    assert cgroup.pids() == set()


@needs_cgroups
def test_create_is_idempotent_open_finds_it_and_remove_removes_it(turns: Turns) -> None:
    first = turns.group(TurnLimits(pids=77))
    again = limits.create(first.name, TurnLimits(pids=77), support=SUPPORT)
    assert again is not None
    assert again.paths == first.paths
    assert all(os.path.isdir(path) for path in first.paths)
    assert first.pids_limit() == 77
    assert first.memory_limit() == TurnLimits().memory_bytes
    assert limits.exceeded_reason(first) is None

    found = limits.open(first.name)
    assert found is not None
    assert sorted(found.paths) == sorted(first.paths)
    assert found.version == first.version

    assert found.remove()
    assert not any(os.path.exists(path) for path in first.paths)
    assert limits.open(first.name) is None
    found.remove()  # already gone is fine


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x", "a b", "x\n"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        limits.create(name, TurnLimits())
    with pytest.raises(ValueError):
        limits.open(name)


def test_detect_says_why_when_there_are_no_cgroups(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 1 0:21 / /proc rw,nosuid - proc proc rw\n")
    support = limits.detect(str(mountinfo))
    assert not support.usable and support.version is None
    assert "no cgroup filesystem is mounted" in str(support)
    assert limits.create("x", TurnLimits(), support=support) is None


def test_limits_and_rlimit_prefix() -> None:
    default = TurnLimits()
    assert (default.v1_cpu_shares, default.v2_cpu_weight) == (512, 50)
    assert default.memory_bytes == 4 * limits.GiB and default.pids == 512
    args = limits.rlimit_args(TurnLimits(file_size_bytes=1000))
    assert args[1:] == ["--fsize=1000:1000", "--core=0:0", "--"]
    # The prefix really applies the limit.
    shown = subprocess.run(
        [*args, "sh", "-c", "ulimit -f; ulimit -c"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["1", "0"]  # `ulimit -f` counts 1024-byte blocks
    with pytest.raises(ValueError):
        TurnLimits(pids=0)


# --- tree_size -------------------------------------------------------------------------------


def _tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x").write_bytes(b"x" * 100)
    (root / "a" / "b" / "y").write_bytes(b"y" * 50)
    os.link(root / "a" / "x", root / "a" / "x-again")  # the same bytes, counted once
    os.symlink("/usr", root / "usr")
    os.symlink("/etc/passwd", root / "a" / "passwd")
    os.mkfifo(root / "a" / "fifo")


def test_tree_size_counts_file_bytes_and_follows_no_symlink(tmp_path: Path) -> None:
    _tree(tmp_path / "work")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "z").write_bytes(b"z" * 7)
    os.symlink("/usr", tmp_path / "linked")
    total = limits.tree_size(
        [tmp_path / "work", str(tmp_path / "home"), tmp_path / "linked", tmp_path / "missing"],
        10 * limits.GiB,
    )
    assert total == 157


def test_tree_size_stops_early_past_the_limit(tmp_path: Path) -> None:
    for i in range(200):
        (tmp_path / f"f{i}").write_bytes(b"." * 10)
    assert limits.tree_size([tmp_path], 10**6) == 2000
    early = limits.tree_size([tmp_path], 25)
    assert 25 < early < 2000


def test_tree_size_survives_files_vanishing_mid_walk(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "keep").write_bytes(b"k" * 5)
    (tmp_path / "victim").write_bytes(b"v" * 1000)
    (tmp_path / "victim-dir").mkdir()
    (tmp_path / "victim-dir" / "inner").write_bytes(b"i" * 1000)
    real_scandir = os.scandir

    class DeletingScandir:
        """Lists a folder, then deletes each ``victim*`` entry just before handing it out."""

        def __init__(self, path):
            self.inner = real_scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def __iter__(self):
            for entry in self.inner:
                if entry.name == "victim":
                    os.unlink(entry.path)
                elif entry.name == "victim-dir":
                    os.unlink(os.path.join(entry.path, "inner"))
                    os.rmdir(entry.path)
                yield entry

    monkeypatch.setattr(limits.os, "scandir", DeletingScandir)
    assert limits.tree_size([tmp_path], 10**6) == 5



@needs_cgroups
def test_an_emptied_turn_group_gives_back_the_page_cache_of_what_it_wrote(turns: Turns, tmp_path: Path) -> None:
    # Pages still charged to a removed group keep it alive in the kernel as a dying group; one per
    # turn adds up to a slower host. Before removing a group, Shepherd reclaims them.
    if SUPPORT.version != "v1":
        pytest.skip("memory.force_empty is cgroup v1's; v2 reparents a removed group's pages itself")
    cgroup = turns.group()
    process = turns.start(cgroup, f"dd if=/dev/urandom of={tmp_path / 'written'} bs=1M count=16 status=none")
    assert process.wait(timeout=60) == 0
    memory = next(path for path in cgroup.paths if "/memory/" in path)
    charged = int(Path(memory, "memory.usage_in_bytes").read_text())
    assert charged > 8 * 1024 * 1024  # the 16 MiB it wrote sit in the page cache, charged to it
    cgroup.release_memory()
    assert int(Path(memory, "memory.usage_in_bytes").read_text()) < charged // 4
    assert cgroup.remove()
