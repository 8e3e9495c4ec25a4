"""Connecting to Temporal from the settings (`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_TLS_*_PATH`)."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.service import TLSConfig

from bot.settings import Settings

CONNECT_ATTEMPTS = 30


def tls_config(settings: Settings) -> TLSConfig | bool:
    """TLS when any of its files is set (the CA alone: server TLS; with a certificate and key: mTLS)."""
    paths = (settings.temporal_tls_ca, settings.temporal_tls_cert, settings.temporal_tls_key)
    if not any(paths):
        return False
    ca, cert, key = (path.read_bytes() if path is not None else None for path in paths)
    return TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key)


async def connect_once(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                tls=tls_config(settings))


async def connect(settings: Settings, *, attempts: int = CONNECT_ATTEMPTS, delay: float = 1.0) -> Client:
    """The client of the configured cluster; retries for a while, as the server may be starting too."""
    for attempt in range(1, attempts + 1):
        try:
            return await connect_once(settings)
        except RuntimeError:
            if attempt == attempts:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
