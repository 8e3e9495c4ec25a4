"""What an installation delivery changes outside the sessions: the installation's state in the store, its
cached tokens, the trigger labels of its new repositories, and the sessions it can no longer serve.

The installation handlers only say what happened (`bot.core.effects.InstallationEvents`); this service
does it, with the one GitHub door and the engine the rest of the runtime uses."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gidgethub

from bot.core.effects import Engine
from bot.github.labels import RepoPolicies, label_new_repository

log = logging.getLogger(__name__)

ACTIVE = "active"


class Installations:
    def __init__(self, github: Any, store: Any, engine: Engine, policies: RepoPolicies, *,
                 clock: Callable[[], float]) -> None:
        self._github = github
        self._store = store
        self._engine = engine
        self._policies = policies
        self._clock = clock

    async def active(self, installation_id: int, account: str | None) -> None:
        """A new, unsuspended or re-permitted installation can be served."""
        self._store.set_installation_state(installation_id, ACTIVE, account=account, now=self._clock())
        log.info("installation %s (%s) is active", installation_id, account)

    async def retired(self, installation_id: int, account: str | None, state: str) -> None:
        """An uninstalled or suspended installation: its tokens are dropped and its sessions cancelled."""
        self._store.set_installation_state(installation_id, state, account=account, now=self._clock())
        self._github.forget_installation(installation_id)
        await self._engine.cancel_installation(installation_id, reason=f"installation {state}")
        log.info("installation %s (%s) is %s; tokens dropped", installation_id, account, state)

    async def repositories_added(self, installation_id: int, full_names: Sequence[str]) -> None:
        """Tokens minted before cover only the old repositories; the new ones get the trigger labels."""
        self._github.forget_installation(installation_id)
        await self.label(installation_id, full_names)

    async def repositories_removed(self, installation_id: int, full_names: Sequence[str]) -> None:
        """The sessions of repositories taken out of the installation end; its tokens no longer cover them."""
        self._github.forget_installation(installation_id)
        for full_name in full_names:
            await self._engine.cancel_repository(full_name, reason="repository removed from the installation")
        log.info("installation %s lost repositories %s", installation_id, list(full_names))

    async def label(self, installation_id: int, full_names: Sequence[str]) -> None:
        """Create the go and plan labels (as each repository's policy names them) in every repository.

        One repository GitHub refuses (archived, gone again) must not cost the others their labels, nor
        send the delivery round the retries: the labels are a convenience people can also make by hand."""
        gh = self._github.installation(installation_id)
        for full_name in full_names:
            try:
                await label_new_repository(gh, full_name, self._policies.operator)
            except gidgethub.GitHubException as error:
                log.warning("could not create the trigger labels in %s: %s", full_name, error)
