"""The open-PR cap (SPEC §3 `max_open_prs`, §8): how many agent PRs a repository has open, and the line of
finished sessions waiting for one of them to be merged or closed. Pure: it reads sessions, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.core.session import Detail, PullRequestDeferred, PullRequestState, Session, State


def is_waiting(session: Session) -> bool:
    """Finished work whose PR waits for a free place under the cap."""
    return session.state == State.QUEUED and session.detail == Detail.WAITING_FOR_PULL_REQUEST_SLOT


def open_count(sessions: Iterable[Session], *, besides: str | None = None) -> int:
    """The agent PRs Shepherd opened that are still open (`besides`: a session id not to count)."""
    return sum(1 for s in sessions if s.pr_state == PullRequestState.OPEN and s.pr_number is not None
               and s.id != besides)


def waiting_line(sessions: Iterable[Session]) -> list[Session]:
    """The waiting sessions, first come first served."""
    waiting = [s for s in sessions if is_waiting(s)]
    return sorted(waiting, key=lambda s: (s.pr_wait_since or s.updated_at, s.id))


def place(sessions: Iterable[Session], session: Session) -> int | None:
    """`session`'s place (1 = next) in its repository's line, or None when it does not wait."""
    line = [s.id for s in waiting_line(sessions)]
    return line.index(session.id) + 1 if session.id in line else None


def verdict(sessions: Iterable[Session], session: Session, cap: int) -> PullRequestDeferred | None:
    """Whether `session` must wait before it opens its PR: the cap is reached, or others wait before it."""
    known = list(sessions)
    count = open_count(known, besides=session.id)
    ahead = [s for s in waiting_line(known) if s.id != session.id]
    if session.pr_wait_since is not None:
        ahead = [s for s in ahead if (s.pr_wait_since or s.updated_at) < session.pr_wait_since]
    if count >= cap or (ahead and count + len(ahead) >= cap):
        return PullRequestDeferred(count)
    return None
