"""Loop and stall decisions in the pure core (SPEC §8): repeats, flip-flops and stalls, and honest work
that must never be taken for any of them; and what the session does with a `LoopDetected`."""

from __future__ import annotations

from hypothesis import given, strategies as st

from bot.core import loops
from bot.core.loops import Failure, LoopLimits, LoopWatch, Snapshot
from bot.core.session import (
    AddLabel, LabelKind, LoopDetected, PostQuestion, QuestionPosted, ReplyReceived, SlotGranted, StartTurn, State,
    StopAgent, TurnExited, TurnKind,
)
from tests.test_session_core import Clock, drive, running

LIMITS = LoopLimits(repeats=3, flip_flops=2, stall_seconds=600)


def fold_failures(failures, limits=LIMITS):
    watch, verdicts = LoopWatch(limits=limits), []
    for failure in failures:
        watch, verdict = loops.observe_failure(watch, failure)
        verdicts.append(verdict)
    return verdicts


def fold_snapshots(snapshots, limits=LIMITS):
    watch, verdicts = LoopWatch(limits=limits), []
    for snapshot in snapshots:
        watch, verdict = loops.observe_snapshot(watch, snapshot)
        verdicts.append(verdict)
    return verdicts


def test_the_same_command_failing_the_same_way_three_times_is_a_loop():
    failure = Failure("pytest tests/test_x.py", "E   AssertionError: 1 != 2\n1 failed in 0.03s")
    again = Failure("pytest tests/test_x.py", "E   AssertionError: 1 != 2\n1 failed in 0.05s")
    verdicts = fold_failures([failure, again, failure])
    assert verdicts[:2] == [None, None]
    assert verdicts[2].kind == loops.REPEAT and verdicts[2].count == 3
    assert verdicts[2].call == "pytest tests/test_x.py" and "1 != 2" in verdicts[2].error
    assert "3 times" in verdicts[2].question


def test_a_command_failing_differently_each_time_is_progress():
    errors = ["E   NameError: name 'x'", "E   AssertionError: 1 != 2", "E   AssertionError: 2 != 3",
              "E   TypeError: bad operand"]
    assert fold_failures([Failure("pytest", error) for error in errors]) == [None] * 4


def test_different_commands_failing_the_same_way_are_not_one_loop():
    assert fold_failures([Failure(f"make target{n}", "No rule to make target") for n in range(5)]) == [None] * 5


def snap(at, files, activity=0):
    return Snapshot(at=at, files=tuple(sorted(files.items())), activity=activity)


def test_a_change_undone_and_redone_is_a_flip_flop_with_both_contents():
    verdicts = fold_snapshots([
        snap(0, {}), snap(10, {"app.py": "v1"}), snap(20, {}), snap(30, {"app.py": "v1"}),
    ])
    assert verdicts[:3] == [None, None, None]
    assert verdicts[3].kind == loops.FLIP_FLOP and verdicts[3].path == "app.py"
    assert verdicts[3].states == (loops.BASE, "v1")  # the change that came back: base -> v1


def test_the_change_reads_the_same_whichever_side_the_flip_is_caught_on():
    # Caught on the undo (the file gone again), or seen first with the change already made: still base -> v1.
    on_undo = fold_snapshots([snap(0, {}), snap(10, {"app.py": "v1"}), snap(20, {}), snap(30, {"app.py": "v1"}),
                              snap(40, {})], LoopLimits(flip_flops=3))
    assert on_undo[4].states == (loops.BASE, "v1")
    made_first = fold_snapshots([snap(0, {"app.py": "v1"}), snap(10, {}), snap(20, {"app.py": "v1"}), snap(30, {})])
    assert made_first[3].kind == loops.FLIP_FLOP and made_first[3].states == (loops.BASE, "v1")
    between_two = fold_snapshots([snap(0, {}), snap(5, {"a": "v1"}), snap(10, {"a": "v2"}), snap(20, {"a": "v1"}),
                                  snap(30, {"a": "v2"})])
    assert between_two[4].states == ("v1", "v2")


def test_one_revert_is_allowed():
    assert fold_snapshots([snap(0, {}), snap(10, {"a": "v1"}), snap(20, {}), snap(30, {"a": "v2"})]) == [None] * 4


def test_a_file_rewritten_many_times_forward_is_not_a_flip_flop():
    shots = [snap(t * 10, {"a": f"v{t}", "b": f"w{t // 2}"}) for t in range(30)]
    assert fold_snapshots(shots) == [None] * 30


def test_no_change_for_the_stretch_while_the_log_grows_is_a_stall():
    verdicts = fold_snapshots([snap(0, {"a": "v1"}, 100), snap(300, {"a": "v1"}, 5000), snap(600, {"a": "v1"}, 9000)])
    assert verdicts[:2] == [None, None]
    assert verdicts[2].kind == loops.STALL and "10 minutes" in verdicts[2].question


def test_a_silent_agent_is_not_a_stall_and_a_change_restarts_the_clock():
    assert fold_snapshots([snap(0, {}, 100), snap(900, {}, 100)]) == [None, None]  # the idle timeout's job
    shots = [snap(0, {}, 0), snap(500, {"a": "v1"}, 10), snap(1000, {"a": "v2"}, 20), snap(1090, {"a": "v2"}, 30)]
    assert fold_snapshots(shots) == [None] * 4


def test_the_stall_check_can_be_off():
    off = LoopLimits(stall_seconds=None)
    assert fold_snapshots([snap(0, {}, 0), snap(10**6, {}, 10**6)], off) == [None, None]


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40))
def test_honest_work_that_always_moves_forward_is_never_stopped(steps):
    """A slow agent that keeps writing new content, each change within the stall window, never trips."""
    at, shots, version = 0.0, [snap(0, {}, 0)], 0
    for gap in steps:
        at += gap * 10  # at most 500 s between changes: under the 600 s stall window
        version += 1
        shots.append(snap(at, {"work.py": f"v{version}", "notes.md": f"n{version // 3}"}, version * 100))
    assert all(verdict is None for verdict in fold_snapshots(shots))


# --- the session's answer ---------------------------------------------------------------------


def test_a_loop_stops_the_turn_now_and_asks_with_the_evidence():
    clock = Clock()
    s = running(clock=clock)
    decision = drive(s, LoopDetected("Shepherd stopped the agent: ...", "```\nmake\n```"), clock=clock)
    s = decision.session
    assert s.state == State.STUCK and s.question.context == "```\nmake\n```"
    assert StopAgent(0) in decision.commands  # no grace: the turn is spinning
    assert AddLabel(LabelKind.NEEDS_INPUT) in decision.commands
    assert any(isinstance(c, PostQuestion) and c.mention == "alice" for c in decision.commands)


def test_the_reply_to_a_loop_question_resumes_the_same_agent_session():
    clock = Clock()
    s = running(clock=clock)
    s = drive(s, LoopDetected("stopped", "evidence"), TurnExited(-9), clock=clock).session
    s = drive(s, QuestionPosted(s.question.question_id, 77, clock.now), clock=clock).session
    decision = drive(s, ReplyReceived(78, "alice", "install the package first", clock.tick()), SlotGranted(),
                     clock=clock)
    start = next(c for c in decision.commands if isinstance(c, StartTurn))
    assert start.kind == TurnKind.REPLY and start.resume_session_id == "agent-1"
    assert start.reply == "install the package first"


def test_a_second_loop_report_in_the_same_turn_is_ignored():
    clock = Clock()
    s = drive(running(clock=clock), LoopDetected("first", "e1"), clock=clock).session
    assert drive(s, LoopDetected("second", "e2"), clock=clock).session == s
