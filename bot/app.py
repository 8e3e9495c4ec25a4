"""Builds Shepherd's aiohttp application from a settings object; nothing runs until it is served."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.ingest import webhook as ingress
from bot.github import setup_flow
from bot.views import http as views
from bot.runtime.assembly import Assembly, assemble
from bot.store.checkpointer import Checkpointer
from bot.ingest.consumer import Consumer, RetryPolicy
from bot.ingest.writer import DeliveryWriter
from bot.views.dashboard_token import ensure_dashboard_token, log_dashboard_url
from bot.github.client import GitHubApp
from bot.github.reachability import unreachable_warning
from bot.metrics import Metrics, watch_event_loop_lag
from bot.ingest.reconcile import reconcile
from bot.ingest.redelivery import redeliver_failed, utc_now
from bot.runtime.engine import Engine
from bot.settings import Settings
from bot.store.database import Store
from handlers import compose_router

log = logging.getLogger(__name__)

# SPEC §6: reconcile (and sweep failed deliveries) at start-up and every 15 minutes.
SWEEP_INTERVAL_SECONDS = 15 * 60

NOT_CONFIGURED = "Shepherd is in setup mode: register the GitHub App first (see the /setup URL in the log)"


@dataclass
class Services:
    """What the running app holds; reachable from handlers' requests as ``app[SERVICES]``."""

    settings: Settings
    store: Store
    metrics: Metrics
    github: GitHubApp | None = None
    consumer: Consumer | None = None
    receive_webhook: Callable[[web.Request], Any] | None = None
    dashboard_token: str | None = None
    setup: setup_flow.SetupFlow | None = None  # only in setup mode, until the App is registered
    engine: Engine | None = None
    assembly: Assembly | None = None  # everything GitHub mode runs, once it is entered


SERVICES = web.AppKey("services", Services)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    retry: RetryPolicy = RetryPolicy(),
    sweep_interval: float = SWEEP_INTERVAL_SECONDS,
    env_file: Path = Path(".env"),
    parent_env: Mapping[str, str] | None = None,
) -> web.Application:
    """The web app: `POST /webhook`, `GET /healthz`, setup and operator views. Storage and clients open on start-up.

    `parent_env` is the environment agents' allow-listed variables are drawn from (`ANTHROPIC_*`, ...);
    `bot/__main__.py` passes the process's own, tests pass what their agents need."""
    parent_env = dict(parent_env or {})
    app = web.Application(client_max_size=ingress.MAX_BODY_BYTES + 1)
    metrics = Metrics()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings.data_dir.chmod(0o700)
        store = Store.open(settings.data_dir / "shepherd.db")
        services = Services(settings=settings, store=store, metrics=metrics)
        app[SERVICES] = services
        services.dashboard_token = ensure_dashboard_token(settings)
        session = aiohttp.ClientSession()
        writer = DeliveryWriter(store, clock)
        checkpointer = Checkpointer(store)
        checkpointer.start()
        background: list[asyncio.Task[None]] = []
        try:
            async def enter_github_mode(settings: Settings) -> None:
                # Also called by the setup flow once the App is registered: no restart needed.
                services.settings = settings
                if settings.engine == "temporal":  # SPEC §7: this process is a front end
                    from bot.temporal.frontend import assemble_front_end

                    services.assembly = await assemble_front_end(
                        settings, store=store, session=session, metrics=metrics, clock=clock
                    )
                else:
                    services.assembly = assemble(
                        settings, store=store, session=session, metrics=metrics, clock=clock,
                        parent_env=parent_env,
                    )
                services.github = services.assembly.github
                services.engine = services.assembly.engine
                await services.assembly.start()
                services.consumer = Consumer(
                    store=store,
                    writer=writer,
                    router=compose_router(),
                    client_for=_client_for(services.github),
                    dependencies=services.assembly.dependencies,
                    clock=clock,
                    retry=retry,
                    metrics=metrics,
                    before_handlers=getattr(services.engine, "before_delivery", None),
                )
                services.consumer.start()
                metrics.deliveries_waiting.set_function(services.consumer.waiting)
                assert settings.webhook_secret is not None
                services.receive_webhook = ingress.make_webhook_handler(
                    secret=settings.webhook_secret.get_secret_value(),
                    writer=writer,
                    metrics=metrics,
                    on_stored=services.consumer.enqueue,
                )
                background.append(
                    asyncio.create_task(_sweep_forever(services, clock, sweep_interval))
                )

            async def leave_setup_mode(registered: Settings) -> None:
                services.setup = None
                await enter_github_mode(registered)

            background.append(asyncio.create_task(watch_event_loop_lag(metrics)))
            if settings.mode == "github":
                await enter_github_mode(settings)
            else:
                services.setup = setup_flow.SetupFlow(
                    settings,
                    env_file=env_file.absolute(),
                    on_registered=leave_setup_mode,
                    metrics=metrics,
                    dashboard_token=services.dashboard_token,
                )
                services.setup.log_setup_url()
            log_dashboard_url(settings, services.dashboard_token)
            unreachable = unreachable_warning(settings.public_url)
            if unreachable is not None:
                log.warning(unreachable)
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if services.consumer is not None:
                await services.consumer.stop()
            await writer.close()
            if services.assembly is not None:
                await services.assembly.stop()
            await session.close()
            checkpointer.stop()
            store.close()

    app.cleanup_ctx.append(lifecycle)

    async def receive_webhook(request: web.Request) -> web.StreamResponse:
        receive = request.app[SERVICES].receive_webhook
        if receive is None:
            return web.json_response({"message": NOT_CONFIGURED}, status=503)
        return await receive(request)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "mode": request.app[SERVICES].settings.mode})

    app.router.add_post("/webhook", receive_webhook)
    app.router.add_get("/healthz", healthz)
    views.add_routes(app, lambda request: request.app[SERVICES])
    setup_flow.add_routes(app, lambda request: request.app[SERVICES].setup)
    return app


def _client_for(github: GitHubApp) -> Callable[[int | None], Any]:
    def client_for(installation_id: int | None) -> Any:
        return github.installation(installation_id) if installation_id is not None else None

    return client_for


async def _sweep_forever(services: Services, clock: Callable[[], float], interval: float) -> None:
    """Forget expired delivery ids, ask GitHub to redeliver what failed and reconcile (SPEC §6), now and
    then every interval. Each step runs even when the one before it failed."""
    while True:
        try:
            services.store.forget_old_deliveries(now=clock())
            assert services.github is not None
            await redeliver_failed(
                services.github, already_stored=services.store.has_delivery, now=utc_now()
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic sweep failed; next try in %ss", interval)
        try:
            assembly = services.assembly
            assert assembly is not None
            refresh_all = getattr(assembly.engine, "refresh_all", None)
            if refresh_all is not None:  # a Temporal front end: see the sessions other front ends started
                await refresh_all()
            await reconcile(
                assembly.github, assembly.engine,
                policies=assembly.policies, permissions=assembly.permissions, store=services.store,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconciliation failed; next try in %ss", interval)
        await asyncio.sleep(interval)
