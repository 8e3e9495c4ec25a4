"""Prometheus metrics of one Shepherd app, kept in the app's own registry (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
