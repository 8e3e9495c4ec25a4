"""The App's installations: a new one (or added repositories) gets the trigger labels; an uninstalled or
suspended installation loses its tokens and its sessions."""

from __future__ import annotations

import logging
from typing import Any

import gidgethub
from gidgethub import routing, sansio

from bot.core.effects import Engine
from bot.github.api import GitHub
from bot.github.labels import RepoPolicies, label_new_repository

log = logging.getLogger(__name__)

router = routing.Router()

ACTIVE = "active"
SUSPENDED = "suspended"
REMOVED = "removed"


async def _label_each(gh: GitHub, repositories: list[dict[str, Any]], policies: RepoPolicies | None) -> None:
    # One repository GitHub refuses (archived, gone again) must not cost the others their labels, nor
    # send the delivery round the retries: the labels are a convenience people can also make by hand.
    operator = policies.operator if policies is not None else None
    for repository in repositories:
        try:
            await label_new_repository(gh, repository["full_name"], operator)
        except gidgethub.GitHubException as error:
            log.warning("could not create the trigger labels in %s: %s", repository["full_name"], error)


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


@router.register("installation", action="created")
async def label_installed_repositories(
    event: sansio.Event, gh: GitHub, *, policies: RepoPolicies | None = None, **_: Any
) -> None:
    """Create the go and plan labels (`agent:go`, `agent:plan` unless renamed) in every repository of a new
    installation."""
    await _label_each(gh, event.data.get("repositories") or [], policies)


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
async def note_added_repositories(
    event: sansio.Event, gh: GitHub, *, github: Any, policies: RepoPolicies | None = None, **_: Any
) -> None:
    """Drop cached tokens so the next one covers the added repositories, then label them."""
    installation_id, _account = _installation(event)
    github.forget_installation(installation_id)
    await _label_each(gh, event.data.get("repositories_added") or [], policies)
