"""Prometheus metrics of one Shepherd app, kept in the app's own registry (no global state)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LAG_PROBE_SECONDS = 0.1


async def watch_event_loop_lag(metrics: Metrics) -> None:
    """Sleep 100 ms again and again; how much later than that the loop woke is its lag (a blocked
    loop answers no webhook). Runs for the app's life."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_PROBE_SECONDS)
        lag = max(0.0, loop.time() - start - LAG_PROBE_SECONDS)
        worst = max(worst, lag)
        metrics.event_loop_lag.labels("last").set(lag)
        metrics.event_loop_lag.labels("max").set(worst)


class Metrics:
    """The metrics named in SPEC §5, plus a few that explain them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sessions = Gauge(
            "shepherd_sessions", "Sessions by state.", ["state"], registry=self.registry
        )
        self.deliveries = Counter(
            "shepherd_deliveries",
            "Webhook deliveries answered, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.deliveries_waiting = Gauge(
            "shepherd_deliveries_waiting",
            "Stored deliveries not yet handled (a burst's backlog, retries waiting out their backoff).",
            registry=self.registry,
        )
        self.github_requests = Counter(
            "shepherd_github_requests",
            "REST requests sent to GitHub, by method and status.",
            ["method", "status"],
            registry=self.registry,
        )
        self.github_rate_limit_remaining = Gauge(
            "shepherd_github_rate_limit_remaining",
            "The x-ratelimit-remaining of the newest GitHub answer, by installation.",
            ["installation"],
            registry=self.registry,
        )
        self.turn_seconds = Histogram(
            "shepherd_turn_seconds",
            "Wall time of agent turns.",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )

        self.session_spend = Gauge(
            "shepherd_session_spend_usd",
            "What each session spent on the model so far, as its agent CLI reported it (SPEC §8).",
            ["repository", "session"],
            registry=self.registry,
        )
        self.repository_spend = Gauge(
            "shepherd_repository_spend_usd",
            "What the sessions of each repository spent on the model so far, all of them together.",
            ["repository"],
            registry=self.registry,
        )
        self.event_loop_lag = Gauge(
            "shepherd_event_loop_lag_seconds",
            "How late the event loop woke a 100 ms timer, most recently, and at worst since start.",
            ["which"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
