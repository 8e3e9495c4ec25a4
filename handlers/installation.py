"""The App's installations: an uninstalled or suspended installation loses its tokens and its sessions."""

from __future__ import annotations

import logging
from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import Engine
from bot.github.api import GitHub

log = logging.getLogger(__name__)

router = routing.Router()

ACTIVE = "active"
SUSPENDED = "suspended"
REMOVED = "removed"


def _installation(event: sansio.Event) -> tuple[int, str | None]:
    installation = event.data["installation"]
    account = (installation.get("account") or {}).get("login")
    return int(installation["id"]), account


@router.register("installation", action="created")
@router.register("installation", action="unsuspend")
@router.register("installation", action="new_permissions_accepted")
async def record_installation(event: sansio.Event, gh: GitHub, *, store: Any, clock: Any, **_: Any) -> None:
    """Remember an installation that can be served."""
    installation_id, account = _installation(event)
    store.set_installation_state(installation_id, ACTIVE, account=account, now=clock())
    log.info("installation %s (%s) is active", installation_id, account)


@router.register("installation", action="deleted")
@router.register("installation", action="suspend")
async def retire_installation(
    event: sansio.Event, gh: GitHub, *, store: Any, github: Any, clock: Any, engine: Engine | None = None, **_: Any
) -> None:
    """Drop an uninstalled or suspended installation's tokens and cancel its sessions."""
    installation_id, account = _installation(event)
    state = REMOVED if event.data["action"] == "deleted" else SUSPENDED
    store.set_installation_state(installation_id, state, account=account, now=clock())
    github.forget_installation(installation_id)
    if engine is not None:
        await engine.cancel_installation(installation_id, reason=f"installation {state}")
    log.info("installation %s (%s) is %s; tokens dropped", installation_id, account, state)


@router.register("installation_repositories", action="removed")
async def cancel_removed_repositories(
    event: sansio.Event, gh: GitHub, *, github: Any, engine: Engine | None = None, **_: Any
) -> None:
    """Cancel the sessions of repositories taken out of the installation; their tokens no longer cover them."""
    installation_id, _account = _installation(event)
    github.forget_installation(installation_id)
    removed = [repo["full_name"] for repo in event.data.get("repositories_removed") or []]
    if engine is not None:
        for full_name in removed:
            await engine.cancel_repository(full_name, reason="repository removed from the installation")
    log.info("installation %s lost repositories %s", installation_id, removed)


@router.register("installation_repositories", action="added")
async def note_added_repositories(event: sansio.Event, gh: GitHub, *, github: Any, **_: Any) -> None:
    """Drop cached tokens so the next one covers the added repositories."""
    installation_id, _account = _installation(event)
    github.forget_installation(installation_id)
