"""The slot queue: which waiting agent turns may start now under the global and per-repository limits (SPEC §1.2).

Pure bookkeeping with no I/O and no clock: the runtime calls `enqueue`/`release` as it carries out the
session core's `RequestSlot`/`ReleaseSlot`/`HoldSlot` commands, then `admit` to learn which sessions
get `SlotGranted`. Only running agent processes hold slots; stuck sessions, plans awaiting approval and
sessions waiting for dependencies simply are not in the queue. The state is small and plain, so it
round-trips through JSON (`to_dict`/`from_dict`) for the runtime to store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_GLOBAL_LIMIT = 4
DEFAULT_PER_REPO_LIMIT = 2


@dataclass(frozen=True)
class SlotLimits:
    """The operator's limits (SHEPHERD_MAX_WORKERS / SHEPHERD_MAX_PER_REPO) and the per-repository
    `max_parallel` values, which can only lower the per-repository limit."""

    global_limit: int = DEFAULT_GLOBAL_LIMIT
    per_repo: int = DEFAULT_PER_REPO_LIMIT
    repo_overrides: dict[str, int] = field(default_factory=dict)

    def for_repo(self, repo: str) -> int:
        return min(self.per_repo, self.repo_overrides.get(repo, self.per_repo))


@dataclass(frozen=True)
class SlotEntry:
    session_id: str
    repo: str


class SlotQueue:
    """FIFO of sessions waiting for a slot, plus the sessions holding one."""

    def __init__(self, waiting: list[SlotEntry] | None = None, running: list[SlotEntry] | None = None):
        self._waiting: list[SlotEntry] = list(waiting or [])
        self._running: list[SlotEntry] = list(running or [])

    @property
    def waiting(self) -> tuple[SlotEntry, ...]:
        return tuple(self._waiting)

    @property
    def running(self) -> tuple[SlotEntry, ...]:
        return tuple(self._running)

    def _find(self, entries: list[SlotEntry], session_id: str) -> SlotEntry | None:
        return next((entry for entry in entries if entry.session_id == session_id), None)

    def enqueue(self, session_id: str, repo: str, front: bool = False) -> None:
        """Wait for a slot; `front` for a turn resuming after a human answer. A session already
        running is left alone; one already waiting keeps its place unless it now asks for the front."""
        if self._find(self._running, session_id) is not None:
            return
        present = self._find(self._waiting, session_id)
        if present is not None:
            if not front:
                return
            self._waiting.remove(present)
        entry = SlotEntry(session_id, repo)
        if front:
            self._waiting.insert(0, entry)
        else:
            self._waiting.append(entry)

    def hold(self, session_id: str, repo: str) -> None:
        """Count a turn that already runs (re-attached after a restart), even over the limits:
        the process exists whether or not the limits allow it."""
        present = self._find(self._waiting, session_id)
        if present is not None:
            self._waiting.remove(present)
        if self._find(self._running, session_id) is None:
            self._running.append(SlotEntry(session_id, repo))

    def release(self, session_id: str) -> None:
        """Give the slot back, or leave the waiting line; unknown ids are ignored."""
        self._waiting = [entry for entry in self._waiting if entry.session_id != session_id]
        self._running = [entry for entry in self._running if entry.session_id != session_id]

    def admit(self, limits: SlotLimits) -> list[str]:
        """Move the sessions that may start now to running, in queue order, skipping over sessions
        whose repository is full (they keep their place), and return their ids."""
        admitted: list[str] = []
        per_repo: dict[str, int] = {}
        for entry in self._running:
            per_repo[entry.repo] = per_repo.get(entry.repo, 0) + 1
        for entry in list(self._waiting):
            if len(self._running) >= limits.global_limit:
                break
            if per_repo.get(entry.repo, 0) >= limits.for_repo(entry.repo):
                continue
            self._waiting.remove(entry)
            self._running.append(entry)
            per_repo[entry.repo] = per_repo.get(entry.repo, 0) + 1
            admitted.append(entry.session_id)
        return admitted

    def position(self, session_id: str) -> int | None:
        """1-based place in the waiting line, for the status comment; None when not waiting."""
        for index, entry in enumerate(self._waiting, start=1):
            if entry.session_id == session_id:
                return index
        return None

    def is_running(self, session_id: str) -> bool:
        return self._find(self._running, session_id) is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "waiting": [[entry.session_id, entry.repo] for entry in self._waiting],
            "running": [[entry.session_id, entry.repo] for entry in self._running],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlotQueue:
        return cls(
            waiting=[SlotEntry(session_id, repo) for session_id, repo in data.get("waiting", [])],
            running=[SlotEntry(session_id, repo) for session_id, repo in data.get("running", [])],
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotQueue):
            return NotImplemented
        return self._waiting == other._waiting and self._running == other._running

    def __repr__(self) -> str:
        return f"SlotQueue(waiting={self._waiting!r}, running={self._running!r})"
