"""The one slot queue of all hosts (SPEC §1.2, §7), as a long-lived workflow: `shepherd-slots`.

Session workflows send it `request`, `hold` and `release` signals as they carry out the core's
`RequestSlot`, `HoldSlot` and `ReleaseSlot`, and it signals `SlotGranted` back to the session whose turn
may start. The bookkeeping is the core's own `SlotQueue` (first come first served, resumed turns at the
front, the per-repository limit and each repository's `max_parallel`), the same one the local engine
uses; here it holds across every host and front end. Each host still bounds its own running agents
(SHEPHERD_MAX_WORKERS) when the turn activity starts there, so the queue has no global limit of its own.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bot.core.session import SlotGranted, event_to_dict
    from bot.core.slots import SlotLimits, SlotQueue

SLOTS_WORKFLOW = "ShepherdSlots"
SLOTS_ID = "shepherd-slots"
SIGNAL_REQUEST = "request"
SIGNAL_HOLD = "hold"
SIGNAL_RELEASE = "release"
QUERY_QUEUE = "queue"
NO_GLOBAL_LIMIT = 1_000_000  # each host bounds its own agents
SIGNALS_BEFORE_CONTINUE = 5000


@workflow.defn(name=SLOTS_WORKFLOW)
class SlotsWorkflow:
    @workflow.init
    def __init__(self, state: dict[str, Any]) -> None:
        self.queue = SlotQueue.from_dict(state.get("queue") or {})
        self.per_repo = int(state.get("per_repo") or 2)
        self.overrides: dict[str, int] = dict(state.get("overrides") or {})
        self.owners: dict[str, str] = dict(state.get("owners") or {})  # session id -> its workflow id
        self.grants: list[str] = list(state.get("grants") or [])  # session ids to tell
        self.signals = 0

    def _state(self) -> dict[str, Any]:
        return {"queue": self.queue.to_dict(), "per_repo": self.per_repo, "overrides": self.overrides,
                "owners": self.owners, "grants": self.grants}

    @workflow.run
    async def run(self, state: dict[str, Any]) -> None:
        while True:
            await workflow.wait_condition(
                lambda: bool(self.grants) or self.signals >= SIGNALS_BEFORE_CONTINUE
                or workflow.info().is_continue_as_new_suggested())
            if not self.grants:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._state())
            session_id = self.grants.pop(0)
            owner = self.owners.get(session_id)
            if owner is None:
                continue
            try:
                await workflow.get_external_workflow_handle(owner).signal("event", event_to_dict(SlotGranted()))
            except Exception:  # noqa: BLE001 - the session's workflow is gone: its slot is free again
                workflow.logger.warning("could not grant a slot to %s", session_id)
                self._release(session_id)

    def _admit(self) -> None:
        limits = SlotLimits(global_limit=NO_GLOBAL_LIMIT, per_repo=self.per_repo, repo_overrides=self.overrides)
        self.grants.extend(self.queue.admit(limits))

    def _learn(self, data: dict[str, Any]) -> None:
        self.signals += 1
        self.owners[data["session_id"]] = data["workflow_id"]
        if data.get("per_repo"):
            self.per_repo = int(data["per_repo"])
        if data.get("max_parallel"):
            self.overrides[data["repo"]] = int(data["max_parallel"])

    def _release(self, session_id: str) -> None:
        self.queue.release(session_id)
        self.owners.pop(session_id, None)
        self._admit()

    @workflow.signal(name=SIGNAL_REQUEST)
    def request(self, data: dict[str, Any]) -> None:
        self._learn(data)
        self.queue.enqueue(data["session_id"], data["repo"], front=bool(data.get("front")))
        self._admit()

    @workflow.signal(name=SIGNAL_HOLD)
    def hold(self, data: dict[str, Any]) -> None:
        self._learn(data)
        self.queue.hold(data["session_id"], data["repo"])

    @workflow.signal(name=SIGNAL_RELEASE)
    def release(self, data: dict[str, Any]) -> None:
        self.signals += 1
        self._release(data["session_id"])

    @workflow.query(name=QUERY_QUEUE)
    def position(self) -> dict[str, Any]:
        return self.queue.to_dict()
