"""Webhook handlers, one module per behaviour, each with its own Router, composed here in one place.

A handler turns a webhook into a domain event and returns: it never runs git, never waits on an agent,
never reads the environment, never builds a client and never writes. Signature:
``async def on_x(event, gh, **deps)``, where ``gh`` is the installation's client from the one door to
GitHub with its writes taken away (`bot.github.api.ReadsOnly`, put on by the router below) and ``deps``
are the keyword arguments the consumer dispatches with (``engine``, ``gate``, ``installations``, ...).
"""

import functools
import logging
from typing import Any

from gidgethub import routing, sansio

from bot.core.payload import missing_fields
from bot.github.api import ReadsOnly
from handlers import comments, dashboard, dependencies, installation, pull_requests, triggers

log = logging.getLogger(__name__)


class ShapedRouter(routing.Router):
    """A router whose handlers leave alone a delivery that lacks what GitHub always sends with its event
    (`bot.core.payload.REQUIRED_FIELDS`): one line in the log instead of a KeyError in every handler, and
    whose handlers get the installation's client for reading only. Which handlers an event routes to is
    unchanged (the consumer asks that of a bare event)."""

    def __init__(self, *other_routers: routing.Router) -> None:
        super().__init__(*other_routers)
        self._guards: dict[Any, Any] = {}

    def fetch(self, event: sansio.Event) -> frozenset[Any]:
        return frozenset(self._guard(callback) for callback in super().fetch(event))

    def _guard(self, callback: Any) -> Any:
        guarded = self._guards.get(callback)
        if guarded is None:
            @functools.wraps(callback)  # the same name: the consumer stores outcomes by it
            async def guarded(event: sansio.Event, gh: Any, *args: Any, **kwargs: Any) -> Any:
                missing = missing_fields(event.event, event.data)
                if missing:
                    log.warning("delivery %s (%s) lacks %s, which GitHub always sends; %s does nothing",
                                event.delivery_id, event.event, ", ".join(missing), callback.__name__)
                    return None
                return await callback(event, ReadsOnly(gh) if gh is not None else None, *args, **kwargs)

            guarded = self._guards[callback] = guarded
        return guarded


def compose_router() -> routing.Router:
    """The one router the consumer dispatches through."""
    return ShapedRouter(
        installation.router, triggers.router, comments.router, pull_requests.router, dashboard.router,
        dependencies.router,
    )
