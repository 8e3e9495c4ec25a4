"""Turn reports become core events; malformed ones are dropped."""

from __future__ import annotations

from bot.core.session import Asked, DoneReported, PlanSubmitted, Progress
from bot.agent.turns import report_event


def test_reports_map_to_events():
    assert report_event({"kind": "progress", "note": "n", "phase": "working"}) == Progress("n", "working")
    assert report_event({"kind": "ask", "question": "q", "options": ["a", "b"]}) == Asked("q", ("a", "b"), None)
    assert report_event({"kind": "plan", "plan": "p"}) == PlanSubmitted("p")
    assert report_event({"kind": "done", "summary": "s"}) == DoneReported("s")
    assert report_event({"kind": "done"}) is None
    assert report_event({"kind": "merge"}) is None
