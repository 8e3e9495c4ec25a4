"""What agent PRs came to, per repository and engine (SPEC §8, issue 18 part 6): opened, merged, closed
unmerged, and the median time (and cost, when the agent reported one) per merged PR. Pure: it reads
records the views build from the store.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from bot.core.session import PullRequestState, Session


@dataclass(frozen=True)
class PullRecord:
    """One session's PR: its repository, the engine that wrote it, what became of it and what it took."""

    repo: str
    engine: str
    state: PullRequestState
    started_at: datetime  # when the session began
    closed_at: datetime | None  # when the PR was merged or closed
    cost_usd: float | None = None


@dataclass(frozen=True)
class Outcome:
    """The PRs of one repository and engine."""

    repo: str
    engine: str
    opened: int
    merged: int
    closed_unmerged: int
    median_seconds_to_merge: float | None
    median_cost_usd: float | None

    @property
    def merge_rate(self) -> float | None:
        decided = self.merged + self.closed_unmerged
        return self.merged / decided if decided else None


def record_of(session: Session, engine: str) -> PullRecord | None:
    """The PR record of a session, or None when it opened no PR; its cost is what its agent reported."""
    if session.pr_number is None or session.pr_state is None:
        return None
    cost = session.spent_usd if session.spent_usd > 0 else None  # an agent that reports nothing costs unknown
    return PullRecord(session.repo, session.engine or engine, session.pr_state, session.created_at,
                      session.pr_closed_at, cost)


def outcomes(records: Iterable[PullRecord]) -> list[Outcome]:
    """One `Outcome` per repository and engine, sorted by both."""
    groups: dict[tuple[str, str], list[PullRecord]] = {}
    for record in records:
        groups.setdefault((record.repo, record.engine), []).append(record)
    found = []
    for (repo, engine), group in sorted(groups.items()):
        merged = [r for r in group if r.state == PullRequestState.MERGED]
        times = [(r.closed_at - r.started_at).total_seconds() for r in merged if r.closed_at is not None]
        costs = [r.cost_usd for r in merged if r.cost_usd is not None]
        found.append(Outcome(
            repo=repo, engine=engine, opened=len(group), merged=len(merged),
            closed_unmerged=sum(1 for r in group if r.state == PullRequestState.CLOSED),
            median_seconds_to_merge=statistics.median(times) if times else None,
            median_cost_usd=statistics.median(costs) if costs else None,
        ))
    return found
