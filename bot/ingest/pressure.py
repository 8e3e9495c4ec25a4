"""Ingest first: during a burst of webhooks, the consumer gives the event loop to the webhook.

GitHub waits at most 10 s for a delivery's answer and counts a slow one as failed; a stored delivery can
wait to be handled. So while deliveries arrive faster than `busy_rate` a second, the consumer starts at
most `trickle_rate` of them a second and handles the rest once the burst is over. The trickle keeps the
consumer moving however long a burst lasts; below `busy_rate` (any normal day) it runs at full speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A delivery rate no single App sees on a normal day: the webhook gets the loop first above it.
BUSY_RATE = 200.0
# How many deliveries the consumer still starts a second during a burst.
TRICKLE_RATE = 50.0
# Arrivals are counted in windows this long.
WINDOW_SECONDS = 0.1


class IngestPressure:
    """`arrived()` per newly stored delivery (`Consumer.enqueue`); `may_start()` before each dispatch."""

    def __init__(
        self,
        *,
        busy_rate: float = BUSY_RATE,
        trickle_rate: float = TRICKLE_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._busy_per_window = busy_rate * WINDOW_SECONDS
        self._trickle_interval = 1.0 / trickle_rate
        self._clock = clock
        self._window_start = clock()
        self._count = 0  # arrivals in the current window
        self._previous = 0  # arrivals in the window before it
        self._next_start = 0.0  # during a burst: when the consumer may start its next delivery

    def arrived(self) -> None:
        self._roll()
        self._count += 1

    def busy(self) -> bool:
        """Whether deliveries arrive faster than the busy rate (judged on the last whole window too)."""
        self._roll()
        return max(self._count, self._previous) > self._busy_per_window

    def may_start(self) -> float:
        """0 if the consumer may start a delivery now (and it counts as started); else seconds to wait."""
        if not self.busy():
            return 0.0
        now = self._clock()
        if now < self._next_start:
            return self._next_start - now
        self._next_start = now + self._trickle_interval
        return 0.0

    def _roll(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < WINDOW_SECONDS:
            return
        self._previous = self._count if elapsed < 2 * WINDOW_SECONDS else 0
        self._count = 0
        self._window_start = now
