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
            "Webhook requests answered, by HTTP status (202 stored, 200 a redelivery, 4xx refused).",
            ["status"],
            registry=self.registry,
        )
        self.deliveries_handled = Counter(
            "shepherd_deliveries_handled",
            "Attempts to handle a stored delivery, by outcome: done, retried (a handler failed; it runs "
            "again after a backoff) or failed (for good, after the last attempt).",
            ["outcome"],
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
        self.github_pause_seconds = Gauge(
            "shepherd_github_pause_seconds",
            "Seconds left before an installation's writes may go again, after a rate limit GitHub signalled.",
            ["installation"],
            registry=self.registry,
        )
        self.github_pauses = Counter(
            "shepherd_github_pauses",
            "Pauses of an installation's writes GitHub asked for, by installation and limit (primary, secondary).",
            ["installation", "limit"],
            registry=self.registry,
        )
        self.turn_seconds = Histogram(
            "shepherd_turn_seconds",
            "Wall time of agent turns, from the agent's start to its end (recorded when a turn ends).",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )
        self.agent_pull_requests = Gauge(
            "shepherd_agent_pull_requests",
            "Agent pull requests by repository, engine and outcome (opened: all of them; merged; closed: "
            "closed without merging).",
            ["repo", "engine", "outcome"],
            registry=self.registry,
        )
        self.merged_pull_request_seconds = Gauge(
            "shepherd_merged_pull_request_seconds_median",
            "Median time from a session's start to its pull request's merge, by repository and engine.",
            ["repo", "engine"],
            registry=self.registry,
        )
        self.merged_pull_request_cost = Gauge(
            "shepherd_merged_pull_request_cost_usd_median",
            "Median model cost of the sessions of merged pull requests, where the agent reported it.",
            ["repo", "engine"],
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
        self.session_host = Gauge(
            "shepherd_session_host",
            "1 for each live session on the host that holds it (this machine under the local engine).",
            ["repository", "session", "host"],
            registry=self.registry,
        )
        self.queue_position = Gauge(
            "shepherd_queue_position",
            "The place of each waiting session in the queue for an agent slot (1 goes next).",
            ["repository", "session"],
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
