"""Puts the GitHub-mode parts together: the one GitHub client, workspaces, publisher, finisher, engine and caches.

The app factory calls `assemble` when it enters GitHub mode (at start, or after the setup flow) and
hands `dependencies` to the consumer, so every handler receives the same engine and caches as keyword
arguments. Nothing here reads the environment: the agents' parent environment arrives as an argument
from `bot/__main__.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bot.agent.confinement import build_sandbox
from bot.agent.sandbox import SANDBOX_OFF_WARNING
from bot.github.permissions import PermissionCache
from bot.runtime.publisher import Publisher
from bot.runtime.coordination import Coordinator
from bot.runtime.dashboard_issue import DashboardRefresher
from bot.runtime.dependencies import DependencyTracker
from bot.runtime.finisher import Finisher
from bot.runtime.installations import Installations
from bot.github.client import GitHubApp
from bot.github.gate import Gate
from bot.github.labels import RepoPolicies
from bot.metrics import Metrics
from bot.runtime.rounds import InlineCollector
from bot.runtime.engine import Engine
from bot.settings import Settings
from bot.store.pauses import WritePauses
from bot.store.database import Store
from bot.workspace.workspaces import Workspaces

log = logging.getLogger(__name__)


@dataclass
class Assembly:
    """The running GitHub-mode services; `start()` after building, `stop()` at shutdown."""

    github: GitHubApp
    engine: Engine
    inline_collector: InlineCollector
    permissions: PermissionCache
    policies: RepoPolicies
    dependencies: dict[str, Any] = field(default_factory=dict)
    dashboard: DashboardRefresher | None = None

    async def start(self) -> None:
        await self.engine.start()
        self.inline_collector.start()

    async def stop(self) -> None:
        await self.inline_collector.stop()
        await self.engine.stop()
        if self.dashboard is not None:
            await self.dashboard.stop()


def assemble(
    settings: Settings,
    *,
    store: Store,
    session: aiohttp.ClientSession,
    metrics: Metrics,
    clock: Callable[[], float],
    parent_env: Mapping[str, str],
) -> Assembly:
    """Build every GitHub-mode service from the settings; nothing starts until `Assembly.start()`."""
    assert settings.app_id is not None and settings.private_key is not None
    github = GitHubApp(
        session,
        app_id=settings.app_id,
        private_key=settings.private_key.get_secret_value(),
        api_url=settings.api_url,
        metrics=metrics,
        write_spacing=settings.write_spacing_seconds,
        pauses=WritePauses(store.db),
    )
    permissions = PermissionCache()
    policies = RepoPolicies(settings.operator_limits())
    sandbox = build_sandbox(settings, parent_env, settings.data_dir / "sandbox")
    if not sandbox.enabled:
        log.warning(SANDBOX_OFF_WARNING)
    workspaces = Workspaces(settings.data_dir, pool_size=settings.worktree_pool, sandbox=sandbox)
    publisher = Publisher(github, store, clock=clock)
    finisher = Finisher(
        github, workspaces, workspaces.git, store, settings, clock=clock, parent_env=parent_env
    )
    dependencies = DependencyTracker(github, store, clock=clock)
    engine = Engine(
        store, workspaces, github, publisher, finisher, settings,
        clock=clock, parent_env=parent_env, permissions=permissions, dependencies=dependencies, metrics=metrics,
    )
    dashboard = DashboardRefresher(github, store, engine.sessions)
    coordinator = Coordinator(engine, github, store, clock=clock)
    engine.observers += [dashboard.observe, dependencies.observe, coordinator.observe]

    assembly = services_around(github, engine, store, clock=clock, permissions=permissions,
                               policies=policies, dependencies=dependencies)
    assembly.dashboard = dashboard
    return assembly


def services_around(
    github: GitHubApp, engine: Any, store: Store, *, clock: Callable[[], float], permissions: PermissionCache,
    policies: RepoPolicies, dependencies: DependencyTracker,
) -> Assembly:
    """The services and the keyword arguments every handler receives, around either engine (the local one
    or the Temporal front end)."""
    inline_collector = InlineCollector(store, engine, clock=clock)
    assembly = Assembly(github, engine, inline_collector, permissions, policies)
    assembly.dependencies = {
        "github": github,
        "store": store,
        "clock": clock,
        "engine": engine,
        "permissions": permissions,
        "policies": policies,
        "gate": Gate(permissions, policies),
        "inline_collector": inline_collector,
        "dependencies": dependencies,
        "installations": Installations(github, store, engine, policies, clock=clock),
    }
    return assembly
