"""The dashboard issue as people use it (SPEC §5): which issue it is, and which plans a person ticked.

The dashboard issue is trusted only when Shepherd's own bot wrote it and it carries the dashboard marker; each
plan line carries its session id in a hidden marker, so a ticked box names the plan it approves.
"""

from __future__ import annotations

import re
from typing import Any

from bot.core.sanitize import find_marker

MARKER_KIND = "dashboard"
APPROVE_MARKER_KIND = "approve"


def carries_dashboard_marker(issue: dict[str, Any]) -> bool:
    """Whether the issue's body carries the dashboard marker, whoever wrote it (anyone can copy a marker)."""
    return find_marker(issue.get("body"), MARKER_KIND) is not None


def is_dashboard_issue(issue: dict[str, Any], bot_login: str) -> bool:
    """Is this Shepherd's dashboard issue: written by Shepherd's own bot login (the App's `<slug>[bot]`) and
    carrying the dashboard marker? A marker in anyone else's issue, a person's or another App's, is not
    trusted, as for every marked thing Shepherd finds (`bot.runtime.marked`)."""
    author = str((issue.get("user") or {}).get("login", ""))
    return author.lower() == bot_login.lower() and carries_dashboard_marker(issue)


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

