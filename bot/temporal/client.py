"""Connecting to Temporal from the settings (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`)."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from bot.settings import Settings

CONNECT_ATTEMPTS = 30


async def connect(settings: Settings, *, attempts: int = CONNECT_ATTEMPTS, delay: float = 1.0) -> Client:
    """The client of the configured cluster; retries for a while, as the server may be starting too."""
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
        except RuntimeError:
            if attempt == attempts:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
