"""The dashboard issue as people use it (SPEC §5): which issue it is, and which plans a person ticked.

The dashboard issue is trusted only when a bot wrote it and it carries the dashboard marker; each
plan line carries its session id in a hidden marker, so a ticked box names the plan it approves.
"""

from __future__ import annotations

import re
from typing import Any

from bot.core.sanitize import find_marker

MARKER_KIND = "dashboard"
APPROVE_MARKER_KIND = "approve"


def is_dashboard_issue(issue: dict[str, Any]) -> bool:
    """Is this the dashboard issue (written by a bot, carrying the dashboard marker)? Markers in
    people's issues are not trusted."""
    user = issue.get("user") or {}
    by_bot = user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")
    return by_bot and find_marker(issue.get("body"), MARKER_KIND) is not None


_TICKED = re.compile(r"^\s*[-*]\s+\[[xX]\]\s")


def ticked_sessions(body: str | None) -> list[str]:
    """The session ids of the plan lines ticked in the dashboard issue's body, in order."""
    found: list[str] = []
    for line in (body or "").splitlines():
        if not _TICKED.match(line):
            continue
        fields = find_marker(line, APPROVE_MARKER_KIND)
        if fields and fields.get("session") and fields["session"] not in found:
            found.append(fields["session"])
    return found

