"""Benchmark: from a stored `agent:go` delivery to the agent's first action, against a fresh clone and plain extraction.

    .venv/bin/python -m bench.spawn [--files 20000] [--commits 5000] [--rounds 5] [--pool 1]

The repository is generated once with `git fast-import` and cached under `bench/.cache/`
(`bench/generated_repo.py`), then served by the smart-HTTP test remote (`tests/fakes/git_remote.py`).
Shepherd runs in this process (`create_app` served on loopback, GitHub mode against the strict fake
GitHub) with a `command` agent whose first action writes `date +%s.%N` to a file. Each round signs
an `issues.labeled` delivery, notes the wall clock just before the POST and reads the agent's
timestamp: that difference is "label -> agent start", the whole path (ingress, store, consumer,
handler, policy, status comment, mirror fetch, worktree, slot, prompt, spawn).

The mirror is warm: an unmeasured session of the same repository runs first. The path is measured
twice: with the pool off (`SHEPHERD_WORKTREE_POOL=0`) and with a pool of `--pool` ready worktrees
(Shepherd ships with one), which the runtime refills in the background after every claim; before each pooled round
the benchmark waits until the refill is done, as it would be between two labels in practice.

Shepherd runs as shipped: every agent in its bubblewrap sandbox (the session repository made and
checked out inside the box, as the agent's uid, borrowing the mirror's objects). The agent stamps its
start into a folder the benchmark shows it with `SHEPHERD_SANDBOX_PATHS`.

In the same run it times the two baselines the target is stated against, like for like: a fresh
`git clone` over the same smart-HTTP remote and `git archive | tar -x` of the same tree from the mirror,
into the same file system as Shepherd's worktrees, one of each beside every measured session, taking
turns in which goes first, each from the same state: dirty pages written back and, as root, the caches
dropped before every step (see `settled`). It
prints the sandbox's own start cost (a box that runs `true`, against `true` alone), the disk each
session uses (`du -sk` of its worktree, of that repository's own `.git`, of its session folder) and of
the mirror once. Target: the whole path at least 10x faster than the clone and within 2x of the
extraction. Benchmarks print figures; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.generated_repo import cached_repo, describe  # noqa: E402
from bot.app import SERVICES, create_app  # noqa: E402
from bot.ingest.consumer import RetryPolicy  # noqa: E402
from bot.core.session import TERMINAL_STATES, State  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from tests.fakes import payloads  # noqa: E402  (the bench reuses the test bed's real payloads)
from tests.fakes.git_remote import TOKEN_USER, GitRemote  # noqa: E402
from tests.fakes.github import FakeGitHub  # noqa: E402
from tests.fakes.ports import free_port  # noqa: E402

REPO = "octo-org/monorepo"
INSTALLATION = 4242
MAINTAINER = "alice"
LABEL = "agent:go"
POLICY = "max_runtime_minutes: 5\nidle_timeout_minutes: 5\n"
# The agent holds its worktree until the benchmark has measured it, then exits.
HOLD_SECONDS = 120
SESSION_TIMEOUT = 180.0
POLL = 0.02

log = logging.getLogger("bench.spawn")

AGENT_SCRIPT = """\
date +%s.%N > "{stamps}/started-$SHEPHERD_ISSUE.tmp"
mv "{stamps}/started-$SHEPHERD_ISSUE.tmp" "{stamps}/started-$SHEPHERD_ISSUE"
waited=0
while [ ! -e "{stamps}/release-$SHEPHERD_ISSUE" ] && [ $waited -lt {hold_ticks} ]; do
  sleep 0.1
  waited=$((waited + 1))
done
"""


@dataclass
class SessionFigures:
    """One measured session: seconds from the POST to the agent's first action, and its disk use."""

    seconds: float
    worktree_kb: int
    git_kb: int
    session_kb: int
    # (command, seconds after the POST it started, seconds it took), up to the agent's start
    steps: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class Results:
    label_to_start: dict[str, list[SessionFigures]] = field(default_factory=dict)
    fresh_clone: list[float] = field(default_factory=list)
    archive_tar: list[float] = field(default_factory=list)
    clone_kb: int = 0
    mirror_kb: int = 0
    box_start: list[float] = field(default_factory=list)
    bare_start: list[float] = field(default_factory=list)
    files: int = 0
    commits: int = 0
    write_spacing: float = 1.0


def disk_kb(path: Path) -> int:
    """`du -sk`: what the folder takes on disk, in KiB."""
    if not path.exists():
        return 0
    out = subprocess.run(["du", "-sk", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def settled() -> None:
    """The same state of the file system before every measured step: what earlier steps left dirty is
    written back and (as root) the caches are dropped, so every step starts cold and none pays for or
    profits from the one before. Without the drop, creating the same 20,000 files took anywhere from
    0.5 s to 14 s here, growing with every tree written and deleted before; cold, 0.48-0.52 s."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        pass


def time_box_start(workspaces: Any, worktree: Path, times: int) -> tuple[list[float], list[float]]:
    """The sandbox's own start cost: a box of the worktree running `true`, and `true` alone."""
    from bot.agent.sandbox import Box

    box, bare = [], []
    argv = workspaces.sandbox.wrap(["true"], Box(worktree=str(worktree), cwd=str(worktree)))
    for _ in range(times):
        for command, into in ((argv, box), (["true"], bare)):
            start = time.perf_counter()
            subprocess.run(command, check=True)
            into.append(time.perf_counter() - start)
    return box, bare


def plain_git_env(scratch: Path, token: str) -> dict[str, str]:
    """Plain git for the baselines: no user configuration, the token from an askpass script."""
    askpass = scratch / "askpass"
    askpass.write_text(f"#!/bin/sh\necho {token}\n")
    askpass.chmod(0o700)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(scratch),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ASKPASS": str(askpass),
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C.UTF-8",
    }


def time_fresh_clone(url: str, target: Path, env: dict[str, str]) -> float:
    """A full `git clone` over smart HTTP, checkout included, as a session without a mirror would need."""
    with_user = url.replace("http://", f"http://{TOKEN_USER}@")
    start = time.perf_counter()
    subprocess.run(["git", "clone", "--quiet", with_user, str(target)], env=env, check=True)
    return time.perf_counter() - start


def time_archive_tar(mirror: Path, target: Path, env: dict[str, str]) -> float:
    """The same tree written out with no git bookkeeping at all: the floor for any worktree."""
    target.mkdir(parents=True)
    start = time.perf_counter()
    archive = subprocess.Popen(
        ["git", "--git-dir", str(mirror), "archive", "refs/remotes/origin/main"],
        env=env, stdout=subprocess.PIPE,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0:
        raise RuntimeError("git archive failed")
    return time.perf_counter() - start


def time_baselines(results: Results, bed: Bed, mirror: Path, env: dict[str, str], where: Path) -> None:
    """One fresh clone and one extraction, each into a new folder after a `sync`, then removed."""
    where.mkdir(parents=True)
    settled()
    clone = where / "clone"
    results.fresh_clone.append(time_fresh_clone(bed.url, clone, env))
    results.clone_kb = disk_kb(clone)
    shutil.rmtree(clone)
    settled()
    export = where / "export"
    results.archive_tar.append(time_archive_tar(mirror, export, env))
    shutil.rmtree(where)


class Bed:
    """Fake GitHub, git remote and an in-process Shepherd served on loopback."""

    def __init__(self, scratch: Path, repo: Path, write_spacing: float) -> None:
        self.scratch = scratch
        self.write_spacing = write_spacing
        self.stamps = scratch / "stamps"
        self.stamps.mkdir()
        self.fake = FakeGitHub().start()
        self.remote = GitRemote(scratch / "remote")
        served = self.remote.path_of(REPO)
        served.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(repo, served)
        self.url = self.remote.url_of(REPO)
        self.fake.add_installation(INSTALLATION, account=REPO.split("/")[0], repositories=[REPO])
        self.fake.set_clone_url(REPO, self.url)
        self.fake.set_permission(REPO, MAINTAINER, "write")
        self.fake.set_file(REPO, ".github/shepherd.yml", POLICY)
        fake = self.fake
        # Fetches are accepted with exactly the installation tokens the fake minted, as on GitHub.
        self.remote.authorize = lambda token, full_name, write: fake.is_token_valid(
            token, full_name, "contents", "write" if write else "read")
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.port = free_port()
        self.issues: list[int] = []
        self.trace: list[tuple[str, str, float, float]] = []

    async def start(self) -> None:
        script = self.scratch / "agent.sh"
        script.write_text(AGENT_SCRIPT.format(stamps=self.stamps, hold_ticks=HOLD_SECONDS * 10))
        self.stamps.chmod(0o777)  # the agents' uid writes its stamps here
        settings = load_settings({
            "GITHUB_APP_ID": str(self.fake.app_id),
            "GITHUB_PRIVATE_KEY": self.fake.private_key_pem,
            "GITHUB_WEBHOOK_SECRET": self.fake.webhook_secret,
            "GITHUB_API_URL": self.fake.url,
            "SHEPHERD_DATA_DIR": str(self.scratch / "data"),
            "SHEPHERD_DASHBOARD_TOKEN": "bench-dashboard-token",
            "SHEPHERD_AGENT": "command",
            "SHEPHERD_AGENT_COMMAND": f"sh {script}",
            "PORT": str(self.port),
            "SHEPHERD_WRITE_SPACING_SECONDS": str(self.write_spacing),
            "SHEPHERD_SANDBOX_PATHS": f"{self.stamps}:rw",
        }, env_file=None)
        home = self.scratch / "agent-home"
        home.mkdir()
        app = create_app(
            settings, retry=RetryPolicy(max_attempts=3, first_delay=0.05),
            parent_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)},
        )
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.http = aiohttp.ClientSession()
        self.trace_commands()

    def trace_commands(self) -> None:
        """Record when each outbox command ran, to show where the path spends its time."""
        engine = self.engine
        carry_out = engine._execute  # noqa: SLF001 - observed, not changed
        trace = self.trace

        async def traced(session_id: str, command: Any) -> Any:
            started = time.time()
            name = type(command).__name__
            try:
                return await carry_out(session_id, command)
            except Exception:
                # A failing command is retried with back-off, which would inflate the figures unseen.
                name += " (failed)"
                raise
            finally:
                trace.append((session_id, name, started, time.time()))

        engine._execute = traced  # noqa: SLF001

    def steps_of(self, number: int, posted_at: float, started_at: float) -> list[tuple[str, float, float]]:
        session_id = self.engine.last_session(REPO, number).id
        return [(name, begin - posted_at, end - begin) for sid, name, begin, end in self.trace
                if sid == session_id and begin <= started_at]

    @property
    def engine(self) -> Any:
        assert self.runner is not None
        return self.runner.app[SERVICES].engine

    async def stop(self) -> None:
        for number in self.issues:
            (self.stamps / f"release-{number}").touch()
        if self.http is not None:
            await self.http.close()
        if self.runner is not None:
            await self.runner.cleanup()
        self.remote.stop()
        self.fake.stop()

    async def label_to_start(self, title: str) -> tuple[float, float, int]:
        """POST a signed `agent:go` delivery: (POST time, agent's own start timestamp, issue number)."""
        assert self.http is not None
        issue = self.fake.add_issue(REPO, title=title, body="Benchmark issue: nothing to change.", user=MAINTAINER)
        number = int(issue["number"])
        self.issues.append(number)
        body, headers = payloads.fake_delivery(
            self.fake, "issues", payloads.issue_labeled(self.fake, REPO, number, LABEL))
        stamp = self.stamps / f"started-{number}"
        posted_at = time.time()
        async with self.http.post(f"http://127.0.0.1:{self.port}/webhook", data=body, headers=headers) as response:
            await response.read()
            if response.status != 202:
                raise RuntimeError(f"the webhook answered {response.status}")
        deadline = time.monotonic() + SESSION_TIMEOUT
        while not stamp.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent of issue {number} never started")
            await asyncio.sleep(POLL)
        return posted_at, float(stamp.read_text()), number

    def worktree_of(self, number: int) -> Path:
        session = self.engine.last_session(REPO, number)
        return Path(self.engine.context_of(session.id).worktree)

    def disk_of(self, number: int) -> tuple[int, int, int]:
        """(worktree, its own `.git`, session folder) in KiB, while the agent runs."""
        session = self.engine.last_session(REPO, number)
        worktree = self.worktree_of(number)
        return (disk_kb(worktree), disk_kb(worktree / ".git"), disk_kb(self.engine.session_dir(session.id)))

    async def finish(self, number: int) -> None:
        """Let the agent exit, then wait until its session stops and the engine is idle."""
        (self.stamps / f"release-{number}").touch()
        deadline = time.monotonic() + SESSION_TIMEOUT
        while True:
            session = self.engine.last_session(REPO, number)
            if session is not None and (session.state in TERMINAL_STATES or session.state == State.STUCK):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the session of issue {number} did not end")
            await asyncio.sleep(POLL)
        if session.state not in TERMINAL_STATES:
            # A session waiting for a person keeps its slot: close the issue, as a maintainer would.
            body, headers = payloads.fake_delivery(
                self.fake, "issues", payloads.issue_closed(self.fake, REPO, number))
            assert self.http is not None
            async with self.http.post(f"http://127.0.0.1:{self.port}/webhook", data=body, headers=headers) as response:
                await response.read()
            while self.engine.last_session(REPO, number).state not in TERMINAL_STATES:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the session of issue {number} was not cancelled")
                await asyncio.sleep(POLL)
        await self.engine.idle()

    async def quiet(self) -> None:
        """Wait until GitHub saw no write for one write spacing: the label lands on a quiet installation.

        Background writes of earlier sessions (status edits, the dashboard issue) would otherwise make
        the measured session's first write wait for the pacer.
        """
        calm = self.write_spacing + 0.2
        seen, since = len(self.fake.writes()), time.monotonic()
        while time.monotonic() - since < calm:
            await asyncio.sleep(POLL)
            now_seen = len(self.fake.writes())
            if now_seen != seen:
                seen, since = now_seen, time.monotonic()

    async def pool_ready(self, size: int) -> None:
        """Wait until the background refill has put `size` ready worktrees in the pool."""
        pool = self.engine.workspaces.pool_dir(REPO)
        deadline = time.monotonic() + SESSION_TIMEOUT
        while sum(1 for p in (pool.iterdir() if pool.is_dir() else ()) if p.name.endswith(".ready")) < size:
            if time.monotonic() > deadline:
                raise RuntimeError("the pool was never refilled")
            await asyncio.sleep(POLL)
        # The refill's task ends after its last repository is ready; let it finish before timing.
        while self.engine._tasks:  # noqa: SLF001 - the benchmark waits for the runtime's background work
            await asyncio.sleep(POLL)


async def measure(files: int, commits: int, rounds: int, pool: int, write_spacing: float) -> Results:
    repo = cached_repo(files, commits)
    results = Results(write_spacing=write_spacing)
    results.files, results.commits = describe(repo)
    scratch = Path(tempfile.mkdtemp(prefix="shepherd-bench-spawn-"))
    bed = Bed(scratch, repo, write_spacing)
    try:
        await bed.start()
        env = plain_git_env(scratch, bed.fake.mint_token(INSTALLATION, repositories=[REPO]))
        # Warm-up: the first session of the repository creates the mirror.
        _, _, first = await bed.label_to_start("Warm-up session")
        await bed.finish(first)
        mirror = bed.engine.workspaces.mirror_path(REPO)

        modes = [("no pool (SHEPHERD_WORKTREE_POOL=0)", 0)] + ([(f"pool of {pool}", pool)] if pool else [])
        for name, size in modes:
            bed.engine.workspaces.pool_size = size
            if size:
                # The pool is filled by the runtime after a claim; one unmeasured session starts it.
                _, _, number = await bed.label_to_start("Warm-up session for the pool")
                await bed.finish(number)
            figures: list[SessionFigures] = []
            for round_number in range(rounds):
                # The baselines take turns with the session in going first, on the same file system.
                baselines_first = round_number % 2 == 1
                if baselines_first:
                    time_baselines(results, bed, mirror, env, scratch / f"{size}-{round_number}")
                if size:
                    await bed.pool_ready(size)
                await bed.quiet()
                settled()
                posted_at, started_at, number = await bed.label_to_start(
                    f"Measured session {round_number} ({name})")
                worktree_kb, git_kb, session_kb = bed.disk_of(number)
                figures.append(SessionFigures(started_at - posted_at, worktree_kb, git_kb, session_kb,
                                              bed.steps_of(number, posted_at, started_at)))
                if not results.box_start:
                    results.box_start, results.bare_start = time_box_start(
                        bed.engine.workspaces, bed.worktree_of(number), 20)
                await bed.finish(number)
                if not baselines_first:
                    time_baselines(results, bed, mirror, env, scratch / f"{size}-{round_number}")
            results.label_to_start[name] = figures
        results.mirror_kb = disk_kb(mirror)
    finally:
        await bed.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def report(results: Results) -> str:
    clone = statistics.median(results.fresh_clone)
    extract = statistics.median(results.archive_tar)
    lines = [
        f"label -> agent start, warm mirror: {results.files} files, {results.commits} commits "
        f"({len(results.fresh_clone)} rounds, GitHub write spacing {results.write_spacing:g} s; seconds)",
        f"  {'path':<46} {'median':>8} {'min':>8} {'max':>8}",
    ]
    for name, figures in results.label_to_start.items():
        seconds = [f.seconds for f in figures]
        lines.append(f"  {'label -> agent start, ' + name:<46} {statistics.median(seconds):8.3f}"
                     f" {min(seconds):8.3f} {max(seconds):8.3f}")
    for name, values in (("fresh git clone over HTTP", results.fresh_clone),
                         ("git archive | tar -x", results.archive_tar)):
        lines.append(f"  {name:<46} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}")
    if results.box_start:
        box, bare = statistics.median(results.box_start), statistics.median(results.bare_start)
        lines.append(f"  {'the sandbox itself: a box running true':<46} {box:8.3f} {min(results.box_start):8.3f}"
                     f" {max(results.box_start):8.3f}   (true alone: {bare:.3f})")
    lines.append("  against the targets (medians):")
    for name, figures in results.label_to_start.items():
        whole = statistics.median(f.seconds for f in figures)
        lines.append(f"    {name:<24} {clone / whole:5.1f}x faster than the clone (target >= 10x), "
                     f"{whole / extract:5.2f}x the extraction (target <= 2x)")
    lines.append("  disk per session (du -sk, KiB; median):")
    for name, figures in results.label_to_start.items():
        lines.append(
            f"    {name:<24} worktree {statistics.median(f.worktree_kb for f in figures):>8.0f}"
            f"  its .git {statistics.median(f.git_kb for f in figures):>6.0f}"
            f"  session folder {statistics.median(f.session_kb for f in figures):>5.0f}"
        )
    lines.append(f"    shared once: mirror {results.mirror_kb} KiB; for comparison a fresh clone takes "
                 f"{results.clone_kb} KiB")
    failures = sorted({step for figures in results.label_to_start.values() for f in figures
                       for step, _, _ in f.steps if step.endswith("(failed)")})
    if failures:
        lines.append(f"  WARNING: commands failed and were retried during measured rounds: {', '.join(failures)}")
    lines.append("  where the median round's time went (the session's outbox commands up to the agent's "
                 "start: name @start +took, seconds after the POST):")
    for name, figures in results.label_to_start.items():
        middle = sorted(figures, key=lambda f: f.seconds)[len(figures) // 2]
        lines.append(f"    {name}:")
        lines.append("      " + ", ".join(f"{step} @{begin:.2f} +{took:.2f}" for step, begin, took in middle.steps))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--commits", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool", type=int, default=1, help="ready worktrees for the pooled path (0: skip it)")
    parser.add_argument("--write-spacing", type=float, default=1.0,
                        help="SHEPHERD_WRITE_SPACING_SECONDS for the server (1.0 is the shipped default)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = asyncio.run(measure(options.files, options.commits, options.rounds, options.pool,
                                    options.write_spacing))
    print(report(results))  # a benchmark's output is its figures


if __name__ == "__main__":
    main()
