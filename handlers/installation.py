"""The App's installations: a new one (or added repositories) gets the trigger labels; an uninstalled or
suspended installation loses its tokens and its sessions. The handlers say which of these happened; the
installations service (`bot.runtime.installations`) carries it out."""

from __future__ import annotations

from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import InstallationEvents
from bot.github.api import GitHubReader

router = routing.Router()

SUSPENDED = "suspended"
REMOVED = "removed"


def _installation(event: sansio.Event) -> tuple[int, str | None]:
    installation = event.data["installation"]
    account = (installation.get("account") or {}).get("login")
    return int(installation["id"]), account


def _names(repositories: list[dict[str, Any]] | None) -> list[str]:
    return [str(repository["full_name"]) for repository in repositories or []]


@router.register("installation", action="created")
@router.register("installation", action="unsuspend")
@router.register("installation", action="new_permissions_accepted")
async def record_installation(event: sansio.Event, gh: GitHubReader, *, installations: InstallationEvents,
                              **_: Any) -> None:
    """Remember an installation that can be served."""
    await installations.active(*_installation(event))


@router.register("installation", action="created")
async def label_installed_repositories(event: sansio.Event, gh: GitHubReader, *,
                                       installations: InstallationEvents, **_: Any) -> None:
    """Create the go and plan labels (`agent:go`, `agent:plan` unless renamed) in every repository of a new
    installation."""
    installation_id, _account = _installation(event)
    await installations.label(installation_id, _names(event.data.get("repositories")))


@router.register("installation", action="deleted")
@router.register("installation", action="suspend")
async def retire_installation(event: sansio.Event, gh: GitHubReader, *, installations: InstallationEvents,
                              **_: Any) -> None:
    """Drop an uninstalled or suspended installation's tokens and cancel its sessions."""
    installation_id, account = _installation(event)
    state = REMOVED if event.data["action"] == "deleted" else SUSPENDED
    await installations.retired(installation_id, account, state)


@router.register("installation_repositories", action="removed")
async def cancel_removed_repositories(event: sansio.Event, gh: GitHubReader, *,
                                      installations: InstallationEvents, **_: Any) -> None:
    """Cancel the sessions of repositories taken out of the installation; their tokens no longer cover them."""
    installation_id, _account = _installation(event)
    await installations.repositories_removed(installation_id, _names(event.data.get("repositories_removed")))


@router.register("installation_repositories", action="added")
async def note_added_repositories(event: sansio.Event, gh: GitHubReader, *, installations: InstallationEvents,
                                  **_: Any) -> None:
    """Drop cached tokens so the next one covers the added repositories, then label them."""
    installation_id, _account = _installation(event)
    await installations.repositories_added(installation_id, _names(event.data.get("repositories_added")))
