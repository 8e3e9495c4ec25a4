"""Test bed for the Temporal engine (SPEC §7): a real `temporal server start-dev`, front ends and worker hosts.

One dev server runs per test session, on free loopback ports with its SQLite file in the session's temp
folder, and is stopped (its whole process group) at the end. Each test takes a namespace of its own
(created when the server starts), so workflow ids like `octo-org/widgets#1` never meet across tests.
Front ends are the real app (`bot.app.create_app`) with `SHEPHERD_ENGINE=temporal` behind an aiohttp
test client; worker hosts are `bot.temporal.worker.run_host` in this process, or `python -m bot worker`
as processes of their own, each with its own data folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from bot.app import SERVICES, create_app
from bot.core.session import Session, State
from bot.ingest.consumer import RetryPolicy
from bot.settings import Settings
from bot.temporal.devserver import DevServer
from bot.temporal.worker import run_host
from tests.conftest import settings_for
from tests.e2e_support import REPO, agent_parent_env, prepare_repo, wait_for
from tests.fakes import payloads
from tests.fakes.github import FakeGitHub

NAMESPACES = 24
ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TemporalBed:
    server: DevServer
    namespaces: list[str]
    _next: Any = field(default_factory=lambda: itertools.count())

    def namespace(self) -> str:
        index = next(self._next)
        assert index < len(self.namespaces), "more Temporal tests than namespaces: raise NAMESPACES"
        return self.namespaces[index]


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory) -> Any:
    """A real Temporal dev server for the whole test session; killed with its process group at the end."""
    folder = tmp_path_factory.mktemp("temporal")
    names = [f"t{index}" for index in range(NAMESPACES)]
    server = DevServer.start(folder, namespaces=names)
    try:
        yield TemporalBed(server, names)
    finally:
        server.stop()


def temporal_settings(fake: FakeGitHub, data_dir: Path, bed: TemporalBed, namespace: str, command: str,
                      **env: str) -> Settings:
    return settings_for(fake, data_dir, **{
        "SHEPHERD_AGENT": "command", "SHEPHERD_AGENT_COMMAND": command, "SHEPHERD_ENGINE": "temporal",
        "TEMPORAL_ADDRESS": bed.server.address, "TEMPORAL_NAMESPACE": namespace, **env,
    })


@dataclass
class FrontEnd:
    """One `python -m bot serve` front end (the real app) behind an aiohttp test client."""

    fake: FakeGitHub
    client: Any

    @property
    def engine(self) -> Any:
        return self.client.app[SERVICES].engine

    async def deliver(self, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> int:
        body, headers = payloads.fake_delivery(self.fake, event, payload, delivery_id)
        response = await self.client.post("/webhook", data=body, headers=headers)
        await response.read()
        return response.status

    async def drain(self) -> None:
        await self.client.app[SERVICES].consumer.drain(30)

    async def session(self, number: int, repo: str = REPO) -> Session | None:
        return await self.engine.refresh(repo, number)

    async def until(self, number: int, predicate: Callable[[Session], Any], timeout: float = 30.0,
                    repo: str = REPO) -> Session:
        last: Session | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = await self.session(number, repo)
                    if last is not None and predicate(last):
                        return last
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"not reached in {timeout}s; the session is {last}") from None

    async def ended(self, number: int, repo: str = REPO, timeout: float = 30.0) -> Session:
        """Wait until the issue's session has ended and its workflow has carried out every command."""
        return await self.until(number, lambda s: s.state in ENDED and s.id in self.engine.idle_sessions,
                                timeout, repo)


@dataclass
class Bed:
    """A test's Temporal namespace, its repository and what it started."""

    fake: FakeGitHub
    remote: Any
    tmp: Path
    temporal: TemporalBed
    namespace: str
    aiohttp_client: Any
    command: str = ""
    env: dict[str, str] = field(default_factory=dict)
    hosts: list[asyncio.Task[None]] = field(default_factory=list)
    stops: list[asyncio.Event] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def settings(self, name: str, **env: str) -> Settings:
        return temporal_settings(self.fake, self.tmp / name, self.temporal, self.namespace, self.command,
                                 **{**self.env, **env})

    async def front_end(self, name: str = "front") -> FrontEnd:
        app = create_app(self.settings(name), retry=RetryPolicy(max_attempts=3, first_delay=0.05),
                         parent_env=agent_parent_env(self.tmp))
        return FrontEnd(self.fake, await self.aiohttp_client(app))

    def host(self, name: str = "host-a", **env: str) -> None:
        """A worker host in this process, with its own data folder."""
        stop = asyncio.Event()
        settings = self.settings(name, SHEPHERD_HOST_ID=name, **env)
        self.stops.append(stop)
        self.hosts.append(asyncio.create_task(run_host(settings, parent_env=agent_parent_env(self.tmp), stop=stop)))

    def host_process(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """`python -m bot worker` as a process of its own (its own data folder), for `kill -9`."""
        settings = self.settings(name, SHEPHERD_HOST_ID=name, **env)
        environ = {
            **agent_parent_env(self.tmp), "PYTHONPATH": str(ROOT),
            "GITHUB_APP_ID": str(settings.app_id), "GITHUB_PRIVATE_KEY": self.fake.private_key_pem,
            "GITHUB_WEBHOOK_SECRET": self.fake.webhook_secret, "GITHUB_API_URL": self.fake.url,
            "SHEPHERD_DATA_DIR": str(settings.data_dir), "SHEPHERD_WRITE_SPACING_SECONDS": "0",
            "SHEPHERD_AGENT": "command", "SHEPHERD_AGENT_COMMAND": self.command, "SHEPHERD_ENGINE": "temporal",
            "TEMPORAL_ADDRESS": self.temporal.server.address, "TEMPORAL_NAMESPACE": self.namespace,
            "SHEPHERD_HOST_ID": name, **self.env, **env,
        }
        log = (self.tmp / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "bot", "worker"], env=environ, cwd=str(self.tmp),
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    async def close(self) -> None:
        for stop in self.stops:
            stop.set()
        for task in self.hosts:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        for process in self.processes:
            kill_group(process)
        kill_leftovers(self.tmp)


def kill_leftovers(folder: Path) -> None:
    """Agents outlive their host by design (a restarted host finds them again); a test ends them: every
    process group with a command line in the test's folder, except this one's."""
    own = os.getpgrp()
    groups = set()
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(folder) in " ".join(process.info["cmdline"] or ()) and os.getpgid(process.pid) != own:
                groups.add(os.getpgid(process.pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait()


@pytest.fixture
async def temporal_bed(temporal_server, fake_github, git_remote, tmp_path, aiohttp_client) -> AsyncIterator[Bed]:
    """A prepared repository, a namespace of its own on the shared dev server; hosts stopped at the end."""
    prepare_repo(fake_github, git_remote)
    bed = Bed(fake_github, git_remote, tmp_path, temporal_server, temporal_server.namespace(), aiohttp_client)
    try:
        yield bed
    finally:
        await bed.close()


__all__ = ["Bed", "FrontEnd", "REPO", "temporal_bed", "temporal_server", "wait_for"]
