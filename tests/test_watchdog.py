"""The agent side of budgets and loop detection: the CLI arguments, reading Claude Code's and Codex's event
streams as they grow, and the evidence a person reads (secrets redacted, fences that hold)."""

from __future__ import annotations

import json
from pathlib import Path

from bot.agent.adapters import budget_argument, make_adapter
from bot.agent.watchdog import TurnWatchdog
from bot.core.budget import DEFAULT_PRICES
from bot.core.loops import LoopLimits
from bot.core.session import LoopDetected, SpendReported


def test_claude_gets_the_remaining_budget_and_the_others_do_not_need_it():
    claude = make_adapter("claude")
    assert claude.first_turn("Fix it", "/s/prompt.md", budget_usd=0.000525)[1:6] == [
        "-p", "--output-format", "stream-json", "--verbose", "--max-budget-usd"]
    assert "0.000525" in claude.first_turn("Fix it", "/s/prompt.md", budget_usd=0.000525)
    resumed = claude.resume_turn("sess-1", "go on", budget_usd=4.99895)
    assert resumed[resumed.index("--max-budget-usd") + 1] == "4.99895"
    assert resumed[-2:] == ["--", "go on"]
    assert "--max-budget-usd" not in claude.first_turn("Fix it", "/s/prompt.md")
    assert "--max-budget-usd" not in make_adapter("codex").first_turn("Fix it", "/s/p.md", budget_usd=1.0)
    assert budget_argument(5) == "5" and budget_argument(0.0) == "0.000001"  # a spent budget still stops at once


def lines(*events: dict) -> str:
    return "".join(json.dumps(event) + "\n" for event in events)


def watchdog(log: Path, adapter: str, **kwargs) -> TurnWatchdog:
    return TurnWatchdog(adapter=adapter, turn=2, log_path=log, limits=LoopLimits(repeats=2), file_states=None, **kwargs)


async def test_claude_failures_and_cost_are_read_as_the_log_grows(tmp_path):
    log = tmp_path / "turn-2.log"
    call = {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "npm test", "description": "x"}}]}}
    result = {"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
         "content": "Exit code 1\nFAIL test/app.test.js\nGITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789"}]}}
    dog = watchdog(log, "claude")
    text = lines(call, result)
    log.write_text(text[: len(text) // 2])  # half a line: nothing to read yet
    assert await dog.check() == []
    log.write_text(text)
    assert await dog.check() == []  # one failure is not a loop
    call2 = json.loads(json.dumps(call))
    call2["message"]["content"][0]["id"] = "t2"
    result2 = json.loads(json.dumps(result))
    result2["message"]["content"][0]["tool_use_id"] = "t2"
    with log.open("a") as stream:
        stream.write("stderr noise, not JSON\n" + lines(call2, result2, {"type": "result", "total_cost_usd": 0.3}))
    events = await dog.check()
    assert events[0] == SpendReported(2, 0.3)
    loop = events[1]
    assert isinstance(loop, LoopDetected) and "2 times" in loop.question
    assert "npm test" in loop.evidence and "FAIL test/app.test.js" in loop.evidence
    assert "ghp_" not in loop.evidence and "[redacted]" in loop.evidence
    assert await dog.check() == []  # one stop per turn, and the same cost is not reported twice


async def test_codex_token_usage_is_priced_and_failed_commands_counted(tmp_path):
    log = tmp_path / "turn-2.log"
    failed = {"type": "item.completed", "item": {"type": "command_execution", "command": "cargo build",
                                                 "aggregated_output": "error[E0425]: cannot find value", "exit_code": 101}}
    usage = {"type": "turn.completed", "usage": {"input_tokens": 200_000, "cached_input_tokens": 100_000,
                                                 "output_tokens": 10_000}}
    log.write_text(lines({"type": "thread.started", "thread_id": "th"}, failed, usage))
    dog = watchdog(log, "codex", prices=DEFAULT_PRICES)
    events = await dog.check()
    price = DEFAULT_PRICES["codex"]
    expected = (100_000 * price.input + 100_000 * price.cached_input + 10_000 * price.output) / 1_000_000
    assert len(events) == 1 and events[0].turn == 2
    assert abs(events[0].cost_usd - expected) < 1e-12
    with log.open("a") as stream:
        stream.write(lines(failed))
    [loop] = await dog.check()
    assert "cargo build" in loop.evidence and "exit code 101" in loop.evidence


async def test_the_flip_flop_evidence_is_the_diff_in_a_fence_the_content_cannot_close(tmp_path):
    log = tmp_path / "turn-1.log"
    log.write_text("")
    tree = tmp_path / "tree"
    tree.mkdir()
    content = "x = 1\n```\nnot the end of the fence\n"

    async def file_states():
        path = tree / "m.py"
        if not path.exists():
            return []
        text = path.read_text()
        return [("m.py", str(hash(text)), text)]

    ticks = iter(range(100))
    dog = TurnWatchdog(adapter="command", turn=1, log_path=log, limits=LoopLimits(flip_flops=2), file_states=file_states,
                       snapshot_seconds=1, clock=lambda: float(next(ticks)))
    found = []
    for present in (False, True, False, True):
        if present:
            (tree / "m.py").write_text(content)
        else:
            (tree / "m.py").unlink(missing_ok=True)
        found += await dog.check()
    [loop] = found
    assert "`m.py` back and forth 2 times" in loop.question
    assert "````diff" in loop.evidence and "+not the end of the fence" in loop.evidence
