"""One write gate per installation across every host and front end (SPEC §1.5, §7): `shepherd-writes-<id>`.

GitHub's limits are the installation's, not a machine's: a `Retry-After` it gives one host's write
holds every write of that installation, wherever it comes from. So each installation has one long-lived
workflow that hands out write permits, the same rules the one-process gate keeps
(`bot/github/pacing.py`, whose `WriteBudget` does the bookkeeping here too):

- A process asks for a permit with the `acquire` update (ticket, priority); the update returns when the
  write may go. Waiting permits leave most urgent first (questions and final states), then first come.
- One write of the installation is in flight at a time: the next permit waits for the `landed` signal
  of the last one, which carries the pause GitHub announced in its answer, if any. So a limit in one
  host's answer holds the next write of every host before it leaves. A process with another write
  waiting tells the landing inside that write's `acquire` instead (one call instead of two).
- A pause announced on a read comes as a `pause` signal. A process that stops waiting sends `withdraw`;
  a permit whose writer died without landing is taken back after `LEASE_SECONDS`.
- Spacing, the per-minute and per-hour content-creation limits count every process's writes.

Each process keeps at most one `acquire` in flight per installation (its most urgent waiting write;
`raise` lifts that request's priority when a more urgent one arrives), so the workflow stays within
Temporal's limit on concurrent updates. Before it grows long, the history starts over (continue-as-new)
with the budget, the pause and the waiting requests told to ask again.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bot.github.pacing import DEFAULT_MIN_SPACING, DEFAULT_PER_HOUR, DEFAULT_PER_MINUTE, Priority, WriteBudget

WRITES_WORKFLOW = "ShepherdWrites"
# Polled by every worker host (not by front ends: a front end's event loop also serves webhooks, and a
# workflow task it is slow to finish stalls every write of the installation until Temporal's timeout).
WRITES_QUEUE = "shepherd-writes"
UPDATE_ACQUIRE = "acquire"
SIGNAL_LANDED = "landed"
SIGNAL_PAUSE = "pause"
SIGNAL_WITHDRAW = "withdraw"
SIGNAL_RAISE = "raise"
QUERY_STATE = "state"
LEASE_SECONDS = 30.0  # a permit whose writer never reports back (its host died) is taken back after this
# Temporal bounds the updates of one run (2000 by default): start over well before that.
GRANTS_BEFORE_CONTINUE = 500
WITHDRAWN_KEPT = 64


def writes_id(installation_id: int) -> str:
    return f"shepherd-writes-{int(installation_id)}"


@workflow.defn(name=WRITES_WORKFLOW)
class WritesWorkflow:
    @workflow.init
    def __init__(self, state: dict[str, Any]) -> None:
        limits = state.get("limits") or {}
        self.limits: dict[str, float] = {
            "min_spacing": float(limits.get("min_spacing", DEFAULT_MIN_SPACING)),
            "per_minute": int(limits.get("per_minute", DEFAULT_PER_MINUTE)),
            "per_hour": int(limits.get("per_hour", DEFAULT_PER_HOUR)),
        }
        self.budget = WriteBudget(self.limits["min_spacing"], int(self.limits["per_minute"]),
                                  int(self.limits["per_hour"]))
        for moment in state.get("sent") or ():
            self.budget.record(float(moment))
        self.paused_until = float(state.get("paused_until") or 0.0)
        self.lease = float(state.get("lease") or LEASE_SECONDS)
        self.queue: list[tuple[int, int, str]] = []  # (priority, order, ticket); stale entries are skipped
        self.pending: dict[str, bool] = {}  # ticket -> hold, for the requests still waiting
        self.answers: dict[str, dict[str, Any]] = {}
        self.holder: str | None = None
        self.lease_end = 0.0
        self.order = 0
        self.grants = 0
        self.rolling = False
        self.withdrawn: deque[str] = deque(maxlen=WITHDRAWN_KEPT)

    def _now(self) -> float:
        return workflow.now().timestamp()

    def _state(self) -> dict[str, Any]:
        return {"limits": self.limits, "sent": self.budget.sent_times(), "paused_until": self.paused_until,
                "lease": self.lease}

    def _should_roll(self) -> bool:
        return self.grants >= GRANTS_BEFORE_CONTINUE or workflow.info().is_continue_as_new_suggested()

    def _push(self, ticket: str, priority: int) -> None:
        heapq.heappush(self.queue, (priority, self.order, ticket))
        self.order += 1

    def _pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self._now() + max(0.0, float(seconds)))

    @workflow.run
    async def run(self, state: dict[str, Any]) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self.pending) or self._should_roll())
            if self._should_roll():
                await self._roll()
            if self.holder is not None:
                try:
                    await workflow.wait_condition(lambda: self.holder is None,
                                                  timeout=max(0.001, self.lease_end - self._now()))
                except asyncio.TimeoutError:
                    workflow.logger.warning("write permit %s not landed in %.0f s; taken back",
                                            self.holder, self.lease)
                    self.holder = None
                continue
            _, _, ticket = self.queue[0]
            if ticket not in self.pending:  # withdrawn, or a duplicate left by `raise`
                heapq.heappop(self.queue)
                continue
            now = self._now()
            delay = max(self.budget.delay(now), self.paused_until - now)
            if delay > 0:
                # Weigh again afterwards: a more urgent request or a longer pause may have come meanwhile.
                try:
                    await workflow.wait_condition(self._should_roll, timeout=delay)
                except asyncio.TimeoutError:
                    pass
                continue
            heapq.heappop(self.queue)
            hold = self.pending.pop(ticket)
            self.budget.record(now)
            self.grants += 1
            if hold:
                self.holder, self.lease_end = ticket, now + self.lease
            self.answers[ticket] = {"granted": True}

    async def _roll(self) -> None:
        """Start over with a short history: waiting requests ask the next run; the write in flight lands."""
        self.rolling = True
        for ticket in list(self.pending):
            self.answers[ticket] = {"again": True}
        self.pending.clear()
        self.queue.clear()
        if self.holder is not None:
            try:
                await workflow.wait_condition(lambda: self.holder is None,
                                              timeout=max(0.001, self.lease_end - self._now()))
            except asyncio.TimeoutError:
                pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self._state())

    @workflow.update(name=UPDATE_ACQUIRE)
    async def acquire(self, request: dict[str, Any]) -> dict[str, Any]:
        """Returns `{"granted": True}` when the write may go, or `{"again": True}` to ask the next run."""
        ticket = str(request["ticket"])
        if request.get("landed"):  # the asking process's last write has its answer (see `landed`)
            self.landed(request["landed"])
        if self.rolling:
            return {"again": True}
        if ticket in self.withdrawn:
            return {"withdrawn": True}
        if ticket not in self.answers and ticket not in self.pending:
            self.pending[ticket] = bool(request.get("hold", True))
            self._push(ticket, int(request.get("priority", Priority.NORMAL)))
        await workflow.wait_condition(lambda: ticket in self.answers)
        return self.answers.pop(ticket)

    @workflow.signal(name=SIGNAL_LANDED)
    def landed(self, data: dict[str, Any]) -> None:
        """The write of `ticket` has its answer; `pause` is the wait GitHub asked for in it, if any."""
        if data.get("pause"):
            self._pause(data["pause"])
        if self.holder == data.get("ticket"):
            self.holder = None

    @workflow.signal(name=SIGNAL_PAUSE)
    def pause(self, data: dict[str, Any]) -> None:
        self._pause(data["seconds"])

    @workflow.signal(name=SIGNAL_WITHDRAW)
    def withdraw(self, data: dict[str, Any]) -> None:
        """Its writer stopped waiting (or asks again after an error): drop the request, or free the gate."""
        ticket = str(data.get("ticket"))
        if self.pending.pop(ticket, None) is not None:
            self.answers[ticket] = {"withdrawn": True}  # ends the waiting update; nobody reads it
        elif ticket not in self.answers and self.holder != ticket:
            self.withdrawn.append(ticket)  # came before its request: refuse that when it arrives
        if self.holder == ticket:
            self.holder = None

    @workflow.signal(name=SIGNAL_RAISE)
    def raise_priority(self, data: dict[str, Any]) -> None:
        """A more urgent write now waits behind the request `ticket`: weigh the request at its priority."""
        if data.get("ticket") in self.pending:
            self._push(str(data["ticket"]), int(data["priority"]))

    @workflow.query(name=QUERY_STATE)
    def state(self) -> dict[str, Any]:
        return {"waiting": len(self.pending), "holder": self.holder,
                "paused_for": max(0.0, self.paused_until - self._now())}
