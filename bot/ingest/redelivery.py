"""Asks GitHub to redeliver webhook deliveries that never reached Shepherd (SPEC §6).

GitHub does not retry a failed delivery by itself. The App's delivery log lists every attempt; a
delivery id (guid) none of whose attempts was answered 2xx, and that Shepherd has not stored, is
redelivered once per sweep. GitHub keeps deliveries for 3 days, so older ones are not asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from bot.core.payload import parse_time

log = logging.getLogger(__name__)

REDELIVERY_WINDOW = timedelta(days=3)


class DeliveryLog(Protocol):
    def list_hook_deliveries(self) -> Any: ...  # async iterator of GitHub's delivery records

    async def redeliver(self, delivery_id: int) -> None: ...


async def redeliver_failed(
    github: DeliveryLog, *, already_stored: Callable[[str], bool], now: datetime
) -> list[str]:
    """Redeliver each recent delivery that failed every attempt and was never stored; return the guids."""
    attempts: dict[str, list[dict[str, Any]]] = {}
    async for record in github.list_hook_deliveries():
        at = parse_time(record.get("delivered_at"))
        if at is not None and now - at > REDELIVERY_WINDOW:
            continue  # past GitHub's redelivery window (the log itself holds little more than that)
        guid = record.get("guid")
        if isinstance(guid, str):
            attempts.setdefault(guid, []).append(record)
    redelivered: list[str] = []
    for guid, records in attempts.items():
        if any(200 <= int(r.get("status_code") or 0) < 300 for r in records):
            continue
        if already_stored(guid):
            continue
        newest = max(records, key=lambda r: (r.get("delivered_at") or "", int(r.get("id") or 0)))
        try:
            await github.redeliver(int(newest["id"]))
        except Exception:
            log.exception("could not ask GitHub to redeliver %s", guid)
            continue
        log.info("asked GitHub to redeliver %s (%s)", guid, newest.get("event"))
        redelivered.append(guid)
    return redelivered


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
