"""`python -m bot worker`: one worker host of the Temporal engine (SPEC §7).

A host has its own data folder (store, mirrors, worktrees, session folders, sandbox state). It polls
its own task queue, `shepherd-host-<SHEPHERD_HOST_ID>`, for the activities of the sessions it holds
(workspace, turns, status, finishing), the shared queue `shepherd` for the session and repository
workflows and for taking new sessions, and `shepherd-observers` for the repositories' observers (the
dashboard issue, coordination comments, dependency re-checks; bot/temporal/repository.py). The parts are the local engine's: the same Workspaces, Publisher and Finisher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp
from temporalio.worker import Worker

from bot.agent.confinement import build_sandbox
from bot.metrics import Metrics
from bot.runtime.finisher import Finisher
from bot.runtime.publisher import Publisher
from bot.settings import Settings
from bot.store.database import Store
from bot.temporal.activities import HostActivities, HostEngine
from bot.temporal.client import connect
from bot.temporal.frontend import ensure_slots
from bot.temporal.permits import paced_github, writes_worker
from bot.temporal.repository import OBSERVERS_QUEUE, RepositoryWorkflow
from bot.temporal.repository_activities import RepositoryActivities
from bot.temporal.slots import SlotsWorkflow
from bot.temporal.workflow import SHARED_QUEUE, SessionWorkflow, host_queue
from bot.workspace.workspaces import Workspaces

log = logging.getLogger(__name__)

# Status posts, workspace steps and finishing run beside the agents; the agents themselves are bounded
# by the host's slots (SHEPHERD_MAX_WORKERS), not by this.
OTHER_ACTIVITIES = 32


def host_name(settings: Settings) -> str:
    return settings.host_name


async def run_host(settings: Settings, *, parent_env: Mapping[str, str], stop: asyncio.Event | None = None,
                   clock: Callable[[], float] = time.time) -> None:
    """Run one worker host until `stop` is set (or forever)."""
    stop = stop or asyncio.Event()
    host = host_name(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    client = await connect(settings)
    store = Store.open(settings.data_dir / "shepherd.db")
    session = aiohttp.ClientSession()
    try:
        github = paced_github(settings, session, client, metrics=Metrics(), owner=f"host-{host}")
        sandbox = build_sandbox(settings, parent_env, settings.data_dir / "sandbox")
        workspaces = Workspaces(settings.data_dir, pool_size=settings.worktree_pool, sandbox=sandbox)
        publisher = Publisher(github, store, clock=clock)
        finisher = Finisher(github, workspaces, workspaces.git, store, settings, clock=clock, parent_env=parent_env)
        engine = HostEngine(store, workspaces, github, publisher, finisher, settings, clock=clock,
                            parent_env=parent_env, client=client, host_id=host)
        activities = HostActivities(engine)
        observing = RepositoryActivities(github=github, store=store, workspaces=workspaces, client=client, clock=clock)
        shared = Worker(client, task_queue=SHARED_QUEUE, workflows=[SessionWorkflow, SlotsWorkflow, RepositoryWorkflow],
                        activities=[activities.claim_host], max_concurrent_activities=1)
        own = Worker(client, task_queue=host_queue(host),
                     activities=[activities.carry_out, activities.stop_agent, activities.run_turn,
                                 observing.changed_files],
                     max_concurrent_activities=OTHER_ACTIVITIES + settings.max_workers)
        observers = Worker(client, task_queue=OBSERVERS_QUEUE, activities=[
            observing.refresh_dashboard_issue, observing.post_coordination, observing.recheck_dependencies])
        log.info("worker host %s polling %s and %s at %s", host, host_queue(host), SHARED_QUEUE,
                 settings.temporal_address)
        await ensure_slots(client, settings)
        # The writes gate's worker stops last: an activity that is writing as the host stops (a status, the
        # dashboard issue) still gets its permit, rather than waiting for a gate nobody serves.
        async with writes_worker(client), shared, own, observers:
            await stop.wait()
        await engine.stop()
        await github.close()
    finally:
        await session.close()
        store.close()


def run_until_signalled(settings: Settings, *, parent_env: Mapping[str, str]) -> None:
    """`python -m bot worker`: run the host until SIGTERM or SIGINT."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        await run_host(settings, parent_env=parent_env, stop=stop)

    asyncio.run(main())
