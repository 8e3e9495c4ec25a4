"""The watch on a running turn for spend and spinning (SPEC §8): the inputs the core's decisions need.

`TurnWatchdog.check` is called on every poll of `bot.agent.turns.watch_turn`. It reads what the turn's
log gained since the last call and, every `snapshot_seconds`, what the worktree's files are, and turns
them into core events:
- `SpendReported` whenever the agent CLI reports a new cost for the turn (Claude Code: the stream-json
  `result`'s `total_cost_usd`; Codex: each `turn.completed`'s token usage, priced by the operator's
  table, `bot.core.budget`); the core decides whether the cap is reached;
- `LoopDetected` once `bot.core.loops` judges the turn to spin, with the evidence rendered here: the
  repeated command and its last error, or the flip-flopping change as a diff. Failures are read from
  Claude Code's tool results and Codex's command executions; any adapter, the `command` one included,
  is watched through its worktree and the growth of its log.

The watch lives in memory: after a restart, a re-attached turn is watched afresh.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Awaitable

from bot import redaction
from bot.agent.adapters import json_objects
from bot.core import loops
from bot.core.budget import DEFAULT_PRICES, ModelPrice, price_tokens
from bot.core.session import Event, LoopDetected, SpendReported

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 4 << 20
EVIDENCE_ERROR_LINES = 30
EVIDENCE_CHARS = 4000
SNAPSHOT_SECONDS = 10.0
REPEAT_EVIDENCE = "The command, {count} times:\n\n{fence}text\n{call}\n{fence}\n\nIts last error:\n\n{fence}text\n{error}\n{fence}"
FLIP_FLOP_EVIDENCE = "The change to `{path}` that came and went:\n\n{fence}diff\n{diff}\n{fence}"
FLIP_FLOP_NO_TEXT = "`{path}` kept switching between two contents (not shown: binary or large)."
STALL_EVIDENCE = "No file changed since {since}; the agent's log grew by {grown} bytes meanwhile."

FileStates = Callable[[], Awaitable[list[tuple[str, str, str | None]]]]


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so the agent's text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _clip(text: str, lines: int = EVIDENCE_ERROR_LINES) -> str:
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept[-EVIDENCE_CHARS:]


class StreamParser:
    """Reads one adapter's JSON events into failures and the turn's cost so far."""

    def __init__(
        self, adapter: str, prices: Mapping[str, ModelPrice], model: str | None = None,
        earlier_logs: Callable[[], Iterable[Path]] = lambda: (),
    ) -> None:
        self.adapter = adapter
        self.prices = prices
        self.model = model
        self.earlier_logs = earlier_logs
        self.calls: dict[str, str] = {}  # Claude Code's tool_use id -> the call's canonical text
        self.cost: float | None = None
        self.thread_id: str | None = None

    def feed(self, event: Mapping[str, Any]) -> list[loops.Failure]:
        if self.adapter == "claude":
            return self._claude(event)
        if self.adapter == "codex":
            return self._codex(event)
        return []

    def _claude(self, event: Mapping[str, Any]) -> list[loops.Failure]:
        kind = event.get("type")
        message = event.get("message") if isinstance(event.get("message"), dict) else {}
        blocks = message.get("content") if isinstance(message.get("content"), list) else []
        failures: list[loops.Failure] = []
        if kind == "assistant":
            for block in blocks:
                if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                    self.calls[block["id"]] = _claude_call(block.get("name"), block.get("input"))
        elif kind == "user":
            for block in blocks:
                if not isinstance(block, dict) or block.get("type") != "tool_result" or not block.get("is_error"):
                    continue
                call = self.calls.get(str(block.get("tool_use_id")))
                if call is not None:
                    failures.append(loops.Failure(call, _result_text(block.get("content"))))
        elif kind == "result":
            cost = event.get("total_cost_usd")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0:
                self.cost = float(cost)
        return failures

    def _codex(self, event: Mapping[str, Any]) -> list[loops.Failure]:
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            self.thread_id = event["thread_id"]
        elif kind == "item.completed":
            item = event.get("item") if isinstance(event.get("item"), dict) else {}
            code = item.get("exit_code")
            if item.get("type") == "command_execution" and isinstance(code, int) and code != 0:
                output = item.get("aggregated_output") if isinstance(item.get("aggregated_output"), str) else ""
                return [loops.Failure(str(item.get("command")), f"exit code {code}\n{output}")]
        elif kind == "turn.completed":
            # The usage counts the whole thread, from before a resume too: this turn's share is what it
            # added to the thread's total at the end of the last turn that ran it.
            used = _codex_usage(event)
            before = self._thread_usage_before() if self.thread_id else (0, 0, 0)
            added = tuple(max(0, now - then) for now, then in zip(used, before))
            keys = (self.model, "codex") if self.model else ("codex",)
            cost = price_tokens(self.prices, keys, input_tokens=added[0], cached_tokens=added[1], output_tokens=added[2])
            if cost is not None:
                self.cost = cost
        return []

    def _thread_usage_before(self) -> tuple[int, int, int]:
        """The thread's usage at the end of the newest earlier turn of this session that ran it."""
        for log_path in self.earlier_logs():
            thread, usage = None, None
            for event in _read_events(log_path):
                if event.get("type") == "thread.started":
                    thread = event.get("thread_id")
                elif event.get("type") == "turn.completed":
                    usage = _codex_usage(event)
            if thread == self.thread_id and usage is not None:
                return usage
        return (0, 0, 0)


def _codex_usage(event: Mapping[str, Any]) -> tuple[int, int, int]:
    """(input, cached input, output) tokens of a Codex `turn.completed`."""
    usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
    return (_count(usage.get("input_tokens")), _count(usage.get("cached_input_tokens")), _count(usage.get("output_tokens")))


def _read_events(log_path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a finished turn's log (its last READ_CHUNK_BYTES), skipping whatever else is there."""
    try:
        with open(log_path, "rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(0, size - READ_CHUNK_BYTES))
            data = stream.read()
    except OSError:
        return []
    return list(json_objects(data.split(b"\n")))


def earlier_turn_logs(log_path: Path) -> list[Path]:
    """The logs of the session's earlier turns (`turn-<n>.log` beside this one), newest first."""
    match = re.fullmatch(r"turn-(\d+)\.log", log_path.name)
    if match is None:
        return []
    return [log_path.with_name(f"turn-{n}.log") for n in range(int(match.group(1)) - 1, 0, -1)]


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _claude_call(name: Any, tool_input: Any) -> str:
    if name == "Bash" and isinstance(tool_input, dict) and isinstance(tool_input.get("command"), str):
        return tool_input["command"]
    # Other tools: the name and the input, canonical, without Bash's free-text description.
    shown = {k: v for k, v in tool_input.items() if k != "description"} if isinstance(tool_input, dict) else tool_input
    return f"{name} {json.dumps(shown, sort_keys=True, ensure_ascii=False)}"


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class TurnWatchdog:
    """One turn's watch; `check()` returns the events to apply, in order."""

    def __init__(
        self, *, adapter: str, turn: int, log_path: Path, limits: loops.LoopLimits, file_states: FileStates | None,
        prices: Mapping[str, ModelPrice] = DEFAULT_PRICES, model: str | None = None,
        snapshot_seconds: float = SNAPSHOT_SECONDS, clock: Callable[[], float] = time.monotonic,
        redact: Iterable[str] = (),
    ) -> None:
        self.turn = turn
        self.log_path = Path(log_path)
        self.parser = StreamParser(adapter, prices, model, earlier_logs=lambda: earlier_turn_logs(self.log_path))
        self.file_states = file_states
        self.snapshot_seconds = snapshot_seconds
        self.clock = clock
        self.redact = tuple(redact)
        self.watch = loops.LoopWatch(limits=limits)
        self.offset = 0
        self.partial = b""
        self.reported_cost: float | None = None
        self.next_snapshot = 0.0
        self.contents: dict[str, str] = {}  # digest -> text, for the flip-flop's diff
        self.stopped = False
        self.started_at = time.time()

    async def check(self, *, final: bool = False) -> list[Event]:
        events: list[Event] = []
        verdict: loops.LoopVerdict | None = None
        for event in self._new_events():
            for failure in self.parser.feed(event):
                if verdict is None and not self.stopped:
                    self.watch, verdict = loops.observe_failure(self.watch, failure)
        cost = self.parser.cost
        if cost is not None and cost != self.reported_cost:
            self.reported_cost = cost
            events.append(SpendReported(self.turn, cost))
        now = self.clock()
        if verdict is None and not final and not self.stopped and self.file_states is not None and now >= self.next_snapshot:
            self.next_snapshot = now + self.snapshot_seconds
            verdict = await self._snapshot(now)
        if verdict is not None:
            self.stopped = True  # one stop per turn
            events.append(LoopDetected(verdict.question, self._evidence(verdict)))
        return events

    def _new_events(self) -> list[dict[str, Any]]:
        try:
            with open(self.log_path, "rb") as stream:
                stream.seek(self.offset)
                data = stream.read(READ_CHUNK_BYTES)
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-READ_CHUNK_BYTES:]
        return list(json_objects(lines))

    async def _snapshot(self, now: float) -> loops.LoopVerdict | None:
        assert self.file_states is not None
        try:
            rows = await self.file_states()
        except Exception:  # noqa: BLE001 - a worktree that cannot be read now is read at the next look
            log.debug("could not read the worktree of %s", self.log_path, exc_info=True)
            return None
        for _, digest, text in rows:
            if text is not None and len(self.contents) < 2000:
                self.contents.setdefault(digest, text)
        try:
            activity = os.stat(self.log_path).st_size
        except OSError:
            activity = 0
        snapshot = loops.Snapshot(at=now, files=tuple((path, digest) for path, digest, _ in rows), activity=activity)
        self.watch, verdict = loops.observe_snapshot(self.watch, snapshot)
        return verdict

    def _evidence(self, verdict: loops.LoopVerdict) -> str:
        if verdict.kind == loops.REPEAT:
            error = _clip(verdict.error) or "(no output)"
            text = REPEAT_EVIDENCE.format(count=verdict.count, call=verdict.call[:1000], error=error,
                                          fence=_fence(verdict.call + "\n" + error))
        elif verdict.kind == loops.FLIP_FLOP:
            text = self._flip_flop(verdict)
        else:
            since = self.watch.changed_at
            grown = "some"
            try:
                grown = str(os.stat(self.log_path).st_size - self.watch.activity_at_change)
            except OSError:
                pass
            ago = 0.0 if since is None else self.clock() - since
            text = STALL_EVIDENCE.format(since=f"{ago / 60:.1f} minutes ago", grown=grown)
        return redaction.redact(text, self.redact)

    def _flip_flop(self, verdict: loops.LoopVerdict) -> str:
        before, after = verdict.states
        old = "" if before == loops.BASE else self.contents.get(before)
        new = "" if after == loops.BASE else self.contents.get(after)
        if old is None or new is None:
            return FLIP_FLOP_NO_TEXT.format(path=verdict.path)
        diff = "\n".join(
            line.rstrip("\n") for line in difflib.unified_diff(
                old.splitlines(), new.splitlines(), f"a/{verdict.path}", f"b/{verdict.path}", lineterm="", n=2,
            )
        )
        diff = diff[:EVIDENCE_CHARS] or "(no difference in text)"
        return FLIP_FLOP_EVIDENCE.format(path=verdict.path, diff=diff, fence=_fence(diff))
