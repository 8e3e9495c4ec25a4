"""The slot queue: FIFO, answers to the front, global and per-repository limits (SPEC §1.2)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.slots import SlotLimits, SlotQueue


def test_admits_in_fifo_order_up_to_the_global_limit():
    queue = SlotQueue()
    for n in range(6):
        queue.enqueue(f"s{n}", f"o/r{n}")

    assert queue.admit(SlotLimits(global_limit=4)) == ["s0", "s1", "s2", "s3"]
    assert queue.position("s4") == 1
    assert queue.position("s5") == 2
    assert queue.position("s0") is None


def test_a_full_repository_is_skipped_and_keeps_its_place():
    queue = SlotQueue()
    queue.enqueue("a1", "o/a")
    queue.enqueue("a2", "o/a")
    queue.enqueue("a3", "o/a")
    queue.enqueue("b1", "o/b")

    assert queue.admit(SlotLimits(global_limit=4, per_repo=2)) == ["a1", "a2", "b1"]
    assert queue.position("a3") == 1

    queue.release("a1")
    assert queue.admit(SlotLimits(global_limit=4, per_repo=2)) == ["a3"]


def test_repository_policy_only_lowers_the_per_repo_limit():
    limits = SlotLimits(global_limit=4, per_repo=2, repo_overrides={"o/a": 1, "o/b": 9})
    queue = SlotQueue()
    for sid in ("a1", "a2"):
        queue.enqueue(sid, "o/a")
    for sid in ("b1", "b2", "b3"):
        queue.enqueue(sid, "o/b")

    assert queue.admit(limits) == ["a1", "b1", "b2"]


def test_a_resumed_turn_goes_to_the_front():
    queue = SlotQueue()
    queue.enqueue("s1", "o/r")
    queue.enqueue("s2", "o/r")
    queue.enqueue("answered", "o/x", front=True)

    assert queue.position("answered") == 1
    assert queue.admit(SlotLimits(global_limit=1)) == ["answered"]


def test_enqueue_is_idempotent_and_running_sessions_are_not_queued_again():
    queue = SlotQueue()
    queue.enqueue("s1", "o/r")
    queue.enqueue("s2", "o/r")
    queue.enqueue("s1", "o/r")
    assert [entry.session_id for entry in queue.waiting] == ["s1", "s2"]

    queue.admit(SlotLimits(global_limit=1))
    queue.enqueue("s1", "o/r", front=True)
    assert [entry.session_id for entry in queue.waiting] == ["s2"]
    assert queue.is_running("s1")


def test_release_frees_the_slot_and_leaves_the_line():
    queue = SlotQueue()
    queue.enqueue("s1", "o/r")
    queue.enqueue("s2", "o/r")
    queue.admit(SlotLimits(global_limit=1))
    queue.release("s2")
    queue.release("s1")
    queue.release("unknown")

    assert queue.running == () and queue.waiting == ()


def test_hold_counts_a_reattached_turn_against_the_limits():
    queue = SlotQueue()
    queue.hold("alive", "o/r")
    queue.enqueue("s1", "o/r")

    assert queue.admit(SlotLimits(global_limit=1)) == []
    assert queue.is_running("alive")


def test_json_round_trip():
    queue = SlotQueue()
    queue.enqueue("s1", "o/r")
    queue.enqueue("s2", "o/q")
    queue.admit(SlotLimits(global_limit=1))

    assert SlotQueue.from_dict(json.loads(json.dumps(queue.to_dict()))) == queue


operations = st.lists(
    st.tuples(
        st.sampled_from(["enqueue", "enqueue_front", "release", "admit"]),
        st.integers(min_value=0, max_value=9),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=operations,
    global_limit=st.integers(min_value=1, max_value=5),
    per_repo=st.integers(min_value=1, max_value=3),
)
def test_limits_are_never_exceeded_and_nobody_is_both_waiting_and_running(ops, global_limit, per_repo):
    limits = SlotLimits(global_limit=global_limit, per_repo=per_repo)
    queue = SlotQueue()
    for op, n in ops:
        sid, repo = f"s{n}", f"o/r{n % 3}"
        if op == "enqueue":
            queue.enqueue(sid, repo)
        elif op == "enqueue_front":
            queue.enqueue(sid, repo, front=True)
        elif op == "release":
            queue.release(sid)
        else:
            admitted = queue.admit(limits)
            # Whatever was left waiting could not start: its repository or the whole host is full.
            for entry in queue.waiting:
                repo_count = sum(1 for r in queue.running if r.repo == entry.repo)
                assert len(queue.running) >= global_limit or repo_count >= per_repo
            assert all(queue.is_running(s) for s in admitted)
        assert len(queue.running) <= global_limit
        for repo_name in {entry.repo for entry in queue.running}:
            assert sum(1 for entry in queue.running if entry.repo == repo_name) <= per_repo
        waiting_ids = [entry.session_id for entry in queue.waiting]
        running_ids = [entry.session_id for entry in queue.running]
        assert len(set(waiting_ids)) == len(waiting_ids)
        assert not set(waiting_ids) & set(running_ids)
