"""End-to-end bed: the real app (`bot.app.create_app`) on the strict fake GitHub and a real git remote.

Signed real payloads go in through `POST /webhook`; everything after that (ingress, store, consumer,
handlers, engine, publisher, finisher, push) is the product's own code. Tests assert on what a maintainer
sees: the fake's comments, labels, reactions and pull requests, and the remote's refs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.app import SERVICES, create_app
from bot.ingest.consumer import RetryPolicy
from bot.core.session import Session, State
from bot.settings import Settings
from tests.conftest import settings_for
from tests import runtime_support
from tests.fakes import payloads
from tests.fakes.git_remote import GitRemote
from tests.fakes.github import FakeGitHub
from tests.runtime_support import INSTALLATION, REPO, agent_script, wait_for  # noqa: F401 - shared with e2e tests

MAINTAINER = "alice"
# Short limits so a stuck agent in a test cannot hold a slot for long.
FAST_POLICY = "max_runtime_minutes: 2\nidle_timeout_minutes: 2\n"
ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)


def prepare_repo(fake: FakeGitHub, remote: GitRemote, files: dict[str, str] | None = None,
                 policy: str | None = FAST_POLICY, repo: str = REPO) -> str:
    """A repository on the remote and the fake, installed, with `alice` allowed to drive Shepherd."""
    return runtime_support.prepare_repo(fake, remote, files, policy=policy, repo=repo)


def agent_settings(fake: FakeGitHub, data_dir: Path, command: str, **env: str) -> Settings:
    return settings_for(fake, data_dir, SHEPHERD_AGENT="command", SHEPHERD_AGENT_COMMAND=command, **env)


def agent_parent_env(home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home)}


@dataclass
class Shepherd:
    """The running app behind an aiohttp test client."""

    fake: FakeGitHub
    client: Any  # aiohttp.test_utils.TestClient

    @property
    def services(self) -> Any:
        return self.client.app[SERVICES]

    @property
    def engine(self) -> Any:
        return self.services.engine

    async def deliver(self, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> int:
        """POST one signed delivery, as GitHub does; returns the HTTP status."""
        body, headers = payloads.fake_delivery(self.fake, event, payload, delivery_id)
        response = await self.client.post("/webhook", data=body, headers=headers)
        await response.read()
        return response.status

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait until every delivery is handled and the engine has nothing pending or running."""
        async with asyncio.timeout(timeout):
            while True:
                await self.services.consumer.drain(timeout)
                await self.engine.idle()
                await asyncio.sleep(0.05)
                if not self.services.consumer._running and not self.engine.sessions.pending():  # noqa: SLF001
                    return

    def session(self, number: int, repo: str = REPO) -> Session | None:
        return self.engine.last_session(repo, number)

    async def until(self, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        return await wait_for(predicate, timeout)

    async def ended(self, number: int, repo: str = REPO, timeout: float = 60.0) -> Session:
        """Wait until the issue's session has ended, then until everything it started is done."""
        session = await self.until(
            lambda: (s := self.session(number, repo)) is not None and s.state in ENDED and s, timeout)
        await self.settle()
        return self.session(number, repo) or session


async def start_shepherd(aiohttp_client: Any, fake: FakeGitHub, settings: Settings, home: Path) -> Shepherd:
    app = create_app(settings, retry=RetryPolicy(max_attempts=3, first_delay=0.05),
                     parent_env=agent_parent_env(home))
    client = await aiohttp_client(app)
    return Shepherd(fake, client)


def wait_blocking(predicate: Callable[[], Any], timeout: float = 60.0, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(poll)


# Both agents change shared.txt, report progress and wait for the test's go-ahead (a `go` file in `{gate}`, a
# folder the operator shows the agents' boxes with SHEPHERD_SANDBOX_PATHS) before finishing.
OVERLAP_AGENT = """
echo "from issue $SHEPHERD_ISSUE" > shared.txt
echo "$SHEPHERD_ISSUE" > "own-$SHEPHERD_ISSUE.txt"
git add -A
git commit -q -m "Issue $SHEPHERD_ISSUE"
shepherd progress "changed shared.txt"
i=0
while [ ! -f "{gate}/go" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
shepherd done "Changed shared.txt"
"""


def bot_comments(fake: FakeGitHub, number: int, repo: str = REPO) -> list[dict[str, Any]]:
    return [c for c in fake.comments(repo, number) if c["user"]["login"] == fake.bot_login]


def status_comments(fake: FakeGitHub, number: int, repo: str = REPO) -> list[dict[str, Any]]:
    return [c for c in bot_comments(fake, number, repo) if "shepherd:status" in c["body"]]


@pytest.fixture
async def shepherd_with(aiohttp_client, fake_github, git_remote, tmp_path):
    """`await shepherd_with(agent_body, before_start=, **env)`: the prepared repository (then `before_start`,
    what happened while Shepherd was down) and the app running that agent."""

    async def start(agent_body: str, before_start: Callable[[], Any] | None = None, **env: str) -> Shepherd:
        prepare_repo(fake_github, git_remote)
        if before_start is not None:
            await before_start()
        command = agent_script(tmp_path, agent_body)
        settings = agent_settings(fake_github, tmp_path / "data", command, **env)
        return await start_shepherd(aiohttp_client, fake_github, settings, tmp_path)

    return start
