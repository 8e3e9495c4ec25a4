"""Shepherd's side of the channel to the agent (SPEC §4): install the tool, read its reports, write status.json.

The agent-only ``shepherd`` executable (`bot/agent/tool.py`) is a file that is copied into each
session's box and run there; nothing in Shepherd imports it. It keeps its own copies of the names and
budgets below, and `tests/test_agent_tool.py` checks, by reading its source, that both sides agree.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path

# The tool's source, copied by path (never imported).
TOOL_SOURCE = Path(__file__).with_name("tool.py")
TOOL_NAME = "shepherd"
CHANNEL_NAME = "channel"
REPORTS_NAME = "reports.jsonl"
STATUS_NAME = "status.json"
# Shepherd reads at most this much of the channel; a report is a few KiB, a flood only hurts its writer.
REPORTS_LIMIT_BYTES = 4 * 1024 * 1024
KINDS = ("progress", "ask", "plan", "done")
PHASES = ("planning", "working")
PLAN_LIMIT_BYTES = 256 * 1024
TEXT_LIMIT_CHARS = 64 * 1024


def reports_path(session_dir: str | os.PathLike[str]) -> Path:
    """Where the tool appends the reports of the session whose control folder is `session_dir`."""
    return Path(session_dir) / CHANNEL_NAME / REPORTS_NAME


def install_agent_tool(bin_dir: str | os.PathLike[str], python: str = sys.executable) -> Path:
    """Copy the tool to ``<bin_dir>/shepherd``, run by ``python -I``, mode 0755."""
    folder = Path(bin_dir)
    folder.mkdir(parents=True, exist_ok=True)
    source = TOOL_SOURCE.read_text(encoding="utf-8")
    if source.startswith("#!"):
        source = source.split("\n", 1)[1]
    target = folder / TOOL_NAME
    temporary = folder / (TOOL_NAME + ".tmp")
    temporary.write_text(f"#!{python} -I\n{source}", encoding="utf-8")
    os.chmod(temporary, 0o755)
    os.replace(temporary, target)
    return target


def write_status(path: str | os.PathLike[str], data: dict) -> None:
    """Write ``status.json`` atomically (temporary file, fsync, rename), readable by the agent."""
    target = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=".status-", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            json.dump(data, stream, ensure_ascii=False, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_reports(session_dir: str | os.PathLike[str], after_seq: int = 0) -> list[dict]:
    """Return the well-formed reports with ``seq > after_seq``, in sequence order.

    The agent can write to the file directly, so anything that is not a whole line holding a known
    kind with an integer ``seq`` is skipped rather than trusted.
    """
    text = read_channel_file(reports_path(session_dir), REPORTS_LIMIT_BYTES)
    reports = {}
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a write still under way
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if not isinstance(report, dict) or report.get("kind") not in KINDS:
            continue
        seq = report.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > after_seq:
            reports.setdefault(seq, report)
    return [reports[seq] for seq in sorted(reports)]


def read_channel_file(path: str | os.PathLike[str], limit: int) -> str:
    """The first ``limit`` bytes of a file the agent may have replaced: never a link, a FIFO or a device."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return ""
        chunks = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(descriptor)
