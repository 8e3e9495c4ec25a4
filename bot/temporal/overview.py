"""What the operator's views read from Temporal (SPEC §5, §7): every issue's session, its host, its queue place.

Under the Temporal engine the sessions live in their workflows, not in one database, so the dashboard,
`/api/sessions`, `/metrics` and `shepherd status` ask the workflows: each issue workflow's `snapshot`
query gives its newest session and the host holding it, and the one slot queue (`shepherd-slots`) gives
the waiting line. Any front end, or `shepherd status` on any machine, thus shows the same thing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client

from bot.core.session import Session
from bot.settings import Settings
from bot.temporal.slots import QUERY_QUEUE, SLOTS_ID
from bot.temporal.workflow import QUERY_SNAPSHOT, WORKFLOW_NAME
from bot.views.status_view import Placements, SessionRow, sort_rows

log = logging.getLogger(__name__)

ALL_SESSIONS = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'"
# A query needs a worker to answer it; with every host down, say so soon rather than hang the views.
QUERY_TIMEOUT = timedelta(seconds=10)
QUERIES_AT_ONCE = 16


@dataclass(frozen=True)
class Snapshot:
    """One issue workflow's answer to `snapshot`."""

    session: Session
    context: dict[str, Any]
    host: str | None
    idle: bool

    @property
    def installation_id(self) -> int | None:
        value = self.context.get("installation_id")
        return int(value) if value else None


def snapshot_of(data: dict[str, Any] | None) -> Snapshot | None:
    if not data or not data.get("session"):
        return None
    return Snapshot(Session.from_dict(data["session"]), dict(data.get("context") or {}), data.get("host"),
                    bool(data.get("idle")))


async def workflow_ids(client: Client) -> list[str]:
    """The ids of every running issue workflow (`owner/repo#n`), each once."""
    seen: dict[str, None] = {}  # in the order listed
    async for execution in client.list_workflows(ALL_SESSIONS):
        seen.setdefault(execution.id)
    return list(seen)


async def snapshots(client: Client) -> list[Snapshot]:
    """Every issue's newest session, as its workflow answers now; one that cannot answer is left out."""
    limit = asyncio.Semaphore(QUERIES_AT_ONCE)

    async def one(workflow_id: str) -> Snapshot | None:
        async with limit:
            try:
                return snapshot_of(await client.get_workflow_handle(workflow_id).query(
                    QUERY_SNAPSHOT, rpc_timeout=QUERY_TIMEOUT))
            except Exception:  # noqa: BLE001 - one workflow must not hide the others
                log.warning("could not read the session of %s", workflow_id, exc_info=True)
                return None

    found = await asyncio.gather(*(one(workflow_id) for workflow_id in await workflow_ids(client)))
    return [snapshot for snapshot in found if snapshot is not None]


async def queue_places(client: Client) -> dict[str, int]:
    """The 1-based place of each session in the one waiting line of all hosts (`bot/temporal/slots.py`)."""
    try:
        queue = await client.get_workflow_handle(SLOTS_ID).query(QUERY_QUEUE, rpc_timeout=QUERY_TIMEOUT)
    except Exception:  # noqa: BLE001 - no queue yet (nothing was ever triggered), or no host to answer
        log.warning("could not read the slot queue", exc_info=True)
        return {}
    return {entry[0]: place for place, entry in enumerate(queue.get("waiting") or (), start=1)}


async def read_rows(settings: Settings) -> list[SessionRow]:
    """`shepherd status` under Temporal: every session with its host and queue place, stuck first."""
    from bot.temporal.client import connect

    client = await connect(settings, attempts=3)
    found = await snapshots(client)
    placements = Placements(hosts={s.session.id: s.host for s in found}, places=await queue_places(client))
    return sort_rows([(s.session, s.installation_id) for s in found], placements)
