"""Agent PR outcomes per repository and engine, as the dashboard and `/metrics` show them (issue 18 part 6)."""

from __future__ import annotations

from typing import Any

from bot.core.outcomes import Outcome, outcomes, record_of
from bot.metrics import Metrics
from bot.store.sessions import SessionStore


def load_outcomes(db: Any) -> list[Outcome]:
    """Every repository's and engine's agent PRs, from the store (`db` is its connection)."""
    store = SessionStore(db)
    agents = store.agents()
    records = [record_of(session, agents.get(session.id, "")) for session, _ in store.every_session()]
    return outcomes(record for record in records if record is not None)


def format_duration(seconds: float | None) -> str:
    """A median time such as `3h 5m`, `2d 4h` or `–` when nothing was merged yet."""
    if seconds is None:
        return "–"
    minutes = int(seconds) // 60
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{int(seconds)}s"


def outcome_rows(found: list[Outcome]) -> list[dict[str, Any]]:
    """The dashboard's table rows."""
    return [
        {
            "repo": o.repo, "engine": o.engine, "opened": o.opened, "merged": o.merged,
            "closed_unmerged": o.closed_unmerged, "median_time": format_duration(o.median_seconds_to_merge),
            "median_cost": f"${o.median_cost_usd:.2f}" if o.median_cost_usd is not None else "–",
        }
        for o in found
    ]


def export_outcomes(metrics: Metrics, found: list[Outcome]) -> None:
    """Set the outcome gauges; label sets of repositories or engines no longer seen are dropped."""
    metrics.agent_pull_requests.clear()
    metrics.merged_pull_request_seconds.clear()
    metrics.merged_pull_request_cost.clear()
    for o in found:
        for outcome, count in (("opened", o.opened), ("merged", o.merged), ("closed", o.closed_unmerged)):
            metrics.agent_pull_requests.labels(repo=o.repo, engine=o.engine, outcome=outcome).set(count)
        if o.median_seconds_to_merge is not None:
            metrics.merged_pull_request_seconds.labels(repo=o.repo, engine=o.engine).set(o.median_seconds_to_merge)
        if o.median_cost_usd is not None:
            metrics.merged_pull_request_cost.labels(repo=o.repo, engine=o.engine).set(o.median_cost_usd)
