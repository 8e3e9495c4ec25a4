"""Is a running turn spinning? (SPEC §8) The decision, from facts the agent side observed, without the model.

Three kinds, each judged within one turn:
- **repeat**: the same command or tool call failed the same way `repeats` times;
- **flip-flop**: a file went back to a content it had two changes earlier (a change undone, or redone)
  `flip_flops` times;
- **stall**: the worktree did not change for `stall_seconds` while the agent kept producing output or
  spending (a silent agent is the idle timeout's business, not this one's).

`LoopWatch` is an immutable fold: `observe_failure` and `observe_snapshot` return the new watch and a
`LoopVerdict` once a threshold is reached. Times are plain seconds handed in by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

REPEAT = "repeat"
FLIP_FLOP = "flip-flop"
STALL = "stall"

QUESTION_REPEAT = (
    "Shepherd stopped the agent: it ran the same command {count} times and it failed the same way each "
    "time. How should it go on?"
)
QUESTION_FLIP_FLOP = (
    "Shepherd stopped the agent: it changed `{path}` back and forth {count} times without settling. "
    "Which version is right, or how should it go on?"
)
QUESTION_STALL = (
    "Shepherd stopped the agent: it kept working for {minutes} minutes without changing any file. "
    "How should it go on?"
)
# Volatile bits of an error (timings, addresses) that differ between two runs failing the same way.
_VOLATILE = re.compile(r"\b\d+\.\d+(?:s|ms)?\b|0x[0-9a-fA-F]+")
ERROR_KEY_CHARS = 2000


@dataclass(frozen=True)
class LoopLimits:
    """The policy's `loops` thresholds; `stall_seconds` None turns the stall check off."""

    repeats: int = 3
    flip_flops: int = 2
    stall_seconds: float | None = 20 * 60


@dataclass(frozen=True)
class Failure:
    """One failed command or tool call: what was called (its canonical text) and how it failed."""

    call: str
    error: str


@dataclass(frozen=True)
class Snapshot:
    """The worktree at time `at`: each file that differs from the base, with a digest of its content
    (a file back at its base content is absent); `activity` only grows while the agent works (its
    output's size, say)."""

    at: float
    files: tuple[tuple[str, str], ...]
    activity: int


@dataclass(frozen=True)
class LoopVerdict:
    """Why the turn should stop: `question` for the person; the rest is evidence for the agent side
    to show (`states`: the flip-flopping file's two contents, as digests)."""

    kind: str
    question: str
    call: str = ""
    error: str = ""
    count: int = 0
    path: str = ""
    states: tuple[str, str] = ("", "")


BASE = ""  # the digest of "this file is as the base has it"


@dataclass(frozen=True)
class LoopWatch:
    limits: LoopLimits = field(default_factory=LoopLimits)
    failures: tuple[tuple[Failure, int], ...] = ()
    files: tuple[tuple[str, str], ...] | None = None  # the last snapshot's files
    history: tuple[tuple[str, tuple[str, ...]], ...] = ()  # per path: its distinct states, in order
    flips: tuple[tuple[str, int], ...] = ()
    changed_at: float | None = None
    activity_at_change: int = 0


def error_key(error: str) -> str:
    """Two failures are "the same way" when their messages match once timings and addresses are gone."""
    return _VOLATILE.sub("#", error.strip())[-ERROR_KEY_CHARS:]


def observe_failure(watch: LoopWatch, failure: Failure) -> tuple[LoopWatch, LoopVerdict | None]:
    key = Failure(failure.call, error_key(failure.error))
    counts = dict(watch.failures)
    counts[key] = counts.get(key, 0) + 1
    watch = replace(watch, failures=tuple(counts.items()))
    count = counts[key]
    if count < watch.limits.repeats:
        return watch, None
    question = QUESTION_REPEAT.format(count=count)
    return watch, LoopVerdict(REPEAT, question, call=failure.call, error=failure.error, count=count)


def observe_snapshot(watch: LoopWatch, snapshot: Snapshot) -> tuple[LoopWatch, LoopVerdict | None]:
    if watch.files is None:
        # The first look: where the turn starts from, not a change it made.
        return replace(watch, files=snapshot.files, changed_at=snapshot.at, activity_at_change=snapshot.activity), None
    if snapshot.files != watch.files:
        watch, verdict = _observe_changes(watch, snapshot.files)
        watch = replace(watch, files=snapshot.files, changed_at=snapshot.at, activity_at_change=snapshot.activity)
        return watch, verdict
    stall = watch.limits.stall_seconds
    idle_since = watch.changed_at if watch.changed_at is not None else snapshot.at
    if stall is not None and snapshot.at - idle_since >= stall and snapshot.activity > watch.activity_at_change:
        minutes = f"{round((snapshot.at - idle_since) / 60, 1):g}"
        return watch, LoopVerdict(STALL, QUESTION_STALL.format(minutes=minutes))
    return watch, None


def _observe_changes(watch: LoopWatch, files: tuple[tuple[str, str], ...]) -> tuple[LoopWatch, LoopVerdict | None]:
    before = dict(watch.files or ())
    after = dict(files)
    history = dict(watch.history)
    flips = dict(watch.flips)
    verdict = None
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path, BASE), after.get(path, BASE)
        if old == new:
            continue
        states = history.get(path) or (old,)
        if len(states) >= 2 and states[-2] == new:
            # Back to what it was before the last change: that change was undone (or redone).
            flips[path] = flips.get(path, 0) + 1
            if verdict is None and flips[path] >= watch.limits.flip_flops:
                question = QUESTION_FLIP_FLOP.format(path=path, count=flips[path])
                verdict = LoopVerdict(FLIP_FLOP, question, path=path, count=flips[path],
                                      states=_change_that_came_and_went(states, new))
        history[path] = (*states, new)[-8:]
    return replace(watch, history=tuple(history.items()), flips=tuple(flips.items())), verdict


def _change_that_came_and_went(states: tuple[str, ...], new: str) -> tuple[str, str]:
    """The two contents a file flips between, in the order a person reads the change: from the base's
    content when it is one of them, else from the one seen first; the same whichever of the two the
    flip was caught on."""
    pair = (states[-1], new)
    if BASE in pair:
        return BASE, pair[0] if pair[1] == BASE else pair[1]
    first, second = sorted(pair, key=states.index)
    return first, second
