"""Who may drive Shepherd: permission levels from the API, cached at most five minutes; bots never."""

from __future__ import annotations

pytest_plugins = ["tests.fakes.plugin"]

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bot.github.permissions import PermissionCache, is_bot, is_self, level_of
from bot.github.client import GitHubApp
from bot.metrics import Metrics

INSTALLATION = 23
REPO = "octo-org/widgets"
OWNER, NAME = REPO.split("/")
PERMISSION_OP = "repos/get-collaborator-permission-level"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake(fake_github: Any) -> Any:
    fake_github.add_installation(INSTALLATION, account=OWNER, repositories=[REPO])
    return fake_github


@pytest.fixture
async def gh(fake: Any) -> AsyncIterator[Any]:
    async def no_wait(_: float) -> None:
        await asyncio.sleep(0)

    async with aiohttp.ClientSession() as session:
        github = GitHubApp(
            session,
            app_id=fake.app_id,
            private_key=fake.private_key_pem,
            api_url=fake.url,
            metrics=Metrics(),
            write_spacing=0.0,
            sleep=no_wait,
        )
        yield github.installation(INSTALLATION)
        await github.close()


def person(login: str) -> dict[str, Any]:
    return {"login": login, "type": "User"}


async def test_a_permission_is_asked_once_within_five_minutes(gh: Any, fake: Any) -> None:
    fake.set_permission(REPO, "alice", "write")
    clock = Clock()
    cache = PermissionCache(clock=clock)
    assert await cache.permission(gh, OWNER, NAME, "alice") == "write"
    clock.now = 299.0
    assert await cache.permission(gh, "Octo-Org", "Widgets", "ALICE") == "write"  # same key, any case
    assert len(fake.calls_to(PERMISSION_OP)) == 1

    fake.set_permission(REPO, "alice", "read")  # demoted: seen once the entry is older than 5 minutes
    clock.now = 301.0
    assert await cache.permission(gh, OWNER, NAME, "alice") == "read"
    assert len(fake.calls_to(PERMISSION_OP)) == 2


async def test_a_longer_ttl_is_capped_at_five_minutes(gh: Any, fake: Any) -> None:
    fake.set_permission(REPO, "alice", "write")
    clock = Clock()
    cache = PermissionCache(ttl=3600, clock=clock)
    await cache.permission(gh, OWNER, NAME, "alice")
    clock.now = 301.0
    await cache.permission(gh, OWNER, NAME, "alice")
    assert len(fake.calls_to(PERMISSION_OP)) == 2


@pytest.mark.parametrize(
    ("role", "drives"),
    [("admin", True), ("maintain", True), ("write", True), ("triage", False), ("read", False), ("none", False)],
)
async def test_people_drive_from_write_up(gh: Any, fake: Any, role: str, drives: bool) -> None:
    fake.set_permission(REPO, "carol", role)
    cache = PermissionCache()
    assert await cache.permission(gh, OWNER, NAME, "carol") == role
    assert await cache.may_drive(gh, OWNER, NAME, person("carol")) is drives


async def test_maintain_counts_as_maintain_not_write(gh: Any, fake: Any) -> None:
    fake.set_permission(REPO, "mia", "maintain")
    fake.set_permission(REPO, "will", "write")
    cache = PermissionCache()
    assert await cache.may_drive(gh, OWNER, NAME, person("mia"), minimum="maintain")
    assert not await cache.may_drive(gh, OWNER, NAME, person("will"), minimum="maintain")


async def test_someone_github_does_not_know_has_no_permission(gh: Any, fake: Any) -> None:
    cache = PermissionCache()
    assert await cache.permission(gh, OWNER, NAME, "ghost") == "none"
    assert [c.status for c in fake.calls_to(PERMISSION_OP)] == [404]
    assert not await cache.may_drive(gh, OWNER, NAME, person("ghost"))
    assert len(fake.calls_to(PERMISSION_OP)) == 1  # the "none" is cached too


async def test_bots_never_drive_even_as_admins(gh: Any, fake: Any) -> None:
    fake.add_user("dependabot[bot]", type="Bot")
    fake.set_permission(REPO, "dependabot[bot]", "admin")
    fake.set_permission(REPO, "robo", "admin")
    cache = PermissionCache()
    assert not await cache.may_drive(gh, OWNER, NAME, {"login": "dependabot[bot]", "type": "Bot"})
    assert not await cache.may_drive(gh, OWNER, NAME, {"login": "robo", "type": "Bot"})
    assert not await cache.may_drive(gh, OWNER, NAME, {"login": f"{fake.app_slug}[bot]", "type": "User"})
    assert fake.calls_to(PERMISSION_OP) == []  # decided without asking GitHub


async def test_an_unknown_minimum_is_an_error(gh: Any) -> None:
    with pytest.raises(ValueError, match="unknown permission level 'owner'"):
        await PermissionCache().may_drive(gh, OWNER, NAME, person("alice"), minimum="owner")


def test_bot_and_self_detection() -> None:
    assert is_bot({"login": "renovate[bot]", "type": "Bot"})
    assert is_bot({"login": "someapp[bot]", "type": "User"})
    assert is_bot({"login": "ci-runner", "type": "Bot"})
    assert not is_bot({"login": "alice", "type": "User"})
    assert not is_bot(None)
    assert is_self({"login": "Shepherd[bot]", "type": "Bot"}, "shepherd[bot]")
    assert not is_self({"login": "other[bot]", "type": "Bot"}, "shepherd[bot]")
    assert not is_self(None, "shepherd[bot]")


def test_levels_come_from_role_name_with_custom_roles_falling_back() -> None:
    assert level_of({"permission": "write", "role_name": "maintain"}) == "maintain"
    assert level_of({"permission": "read", "role_name": "triage"}) == "triage"
    assert level_of({"permission": "write", "role_name": "release-manager"}) == "write"
    assert level_of({"permission": "weird"}) == "none"
