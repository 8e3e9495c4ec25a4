"""The agent-only ``shepherd`` executable (SPEC §4): the agent's one way to report to Shepherd.

This file is self-contained and uses the standard library only: ``bot.agent.channel`` copies it
into a session's tool folder, where it runs with Shepherd's interpreter in isolated mode (``-I``),
whatever Python the repository under work uses. It never imports ``bot``, and nothing imports it:
the names and budgets it shares with Shepherd are kept here as copies, which a test compares with
``bot/agent/channel.py`` by reading this source.

Each command appends one JSON line to ``$SHEPHERD_SESSION_DIR/channel/reports.jsonl``, the one folder of
the session that the sandbox lets the agent write besides its worktree, home and /tmp. The lines carry a
sequence number taken under an exclusive ``flock`` and are written with a single ``O_APPEND`` write,
so concurrent calls neither interleave nor repeat numbers. ``status.json`` is Shepherd's: this tool
only reads it. Exit codes: 0 recorded, 2 bad usage, 1 the report could not be recorded.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import sys

# Shared with bot/agent/channel.py (same names, same values; a test holds them equal).
REPORTS_NAME = "reports.jsonl"
CHANNEL_NAME = "channel"
TOOL_NAME = "shepherd"
KINDS = ("progress", "ask", "plan", "done")
PHASES = ("planning", "working")
PLAN_LIMIT_BYTES = 256 * 1024
TEXT_LIMIT_CHARS = 64 * 1024
FINISHED_STATUSES = ("cancelled", "failed", "complete")

DESCRIPTION = "Report to Shepherd, which relays to the people on the issue."
CONFIRM_PROGRESS = "Progress noted. Keep working."
CONFIRM_ASK = "Question posted. End your turn now; the reply will start your next turn."
CONFIRM_PLAN = "Plan submitted for approval. End your turn now; the decision will start your next turn."
CONFIRM_DONE = "Done recorded. End your turn now; Shepherd will open the pull request."
NOTICE_FINISHED = "Note: Shepherd has marked this session {status}; stop working and end your turn."
ERROR_EMPTY = "{what} must not be empty."
ERROR_TOO_LONG = "{what} is longer than {limit} characters; shorten it."
ERROR_NO_SESSION = "SHEPHERD_SESSION_DIR is not set or is not a folder; this tool only works inside a Shepherd turn."
ERROR_PLAN_UNREADABLE = "Cannot read the plan file {path}: {reason}"
ERROR_PLAN_TOO_BIG = "The plan file {path} is over {limit} bytes; write a shorter plan."
ERROR_RECORD = "Could not record the report: {reason}"

CONFIRMATIONS = {
    "progress": CONFIRM_PROGRESS,
    "ask": CONFIRM_ASK,
    "plan": CONFIRM_PLAN,
    "done": CONFIRM_DONE,
}


class UsageError(Exception):
    """A command line this tool refuses; the message tells the agent what to fix."""


def build_parser() -> argparse.ArgumentParser:
    """The command line of SPEC §4, and nothing more."""
    parser = argparse.ArgumentParser(prog=TOOL_NAME, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(KINDS) + "}")
    progress = commands.add_parser("progress", help="a heartbeat and checkpoint note")
    progress.add_argument("note")
    progress.add_argument("--phase", choices=PHASES)
    ask = commands.add_parser("ask", help="you are stuck: ask the people on the issue, then end your turn")
    ask.add_argument("question")
    ask.add_argument("--option", action="append", default=[], dest="options")
    ask.add_argument("--context")
    plan = commands.add_parser("plan", help="submit a plan file for approval, then end your turn")
    plan.add_argument("file")
    done = commands.add_parser("done", help="the work is finished")
    done.add_argument("summary")
    return parser


def build_report(args: argparse.Namespace) -> dict:
    """Turn parsed arguments into the report's fields (without ``seq`` and ``at``)."""
    if args.command == "progress":
        report = {"kind": "progress", "note": _text(args.note, "The note")}
        if args.phase:
            report["phase"] = args.phase
        return report
    if args.command == "ask":
        report = {
            "kind": "ask",
            "question": _text(args.question, "The question"),
            "options": [_text(option, "An option") for option in args.options],
        }
        if args.context is not None:
            report["context"] = _text(args.context, "The context")
        return report
    if args.command == "plan":
        return {"kind": "plan", "file": os.path.abspath(args.file), "plan": _read_plan(args.file)}
    return {"kind": "done", "summary": _text(args.summary, "The summary")}


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise UsageError(ERROR_EMPTY.format(what=what))
    if len(value) > TEXT_LIMIT_CHARS:
        raise UsageError(ERROR_TOO_LONG.format(what=what, limit=TEXT_LIMIT_CHARS))
    return value


def _read_plan(file: str) -> str:
    try:
        with open(file, "rb") as stream:
            data = stream.read(PLAN_LIMIT_BYTES + 1)
    except OSError as error:
        raise UsageError(ERROR_PLAN_UNREADABLE.format(path=file, reason=error.strerror)) from error
    if len(data) > PLAN_LIMIT_BYTES:
        raise UsageError(ERROR_PLAN_TOO_BIG.format(path=file, limit=PLAN_LIMIT_BYTES))
    return _text(data.decode("utf-8", errors="replace"), "The plan")


def append_report(session_dir: str | os.PathLike[str], report: dict) -> dict:
    """Give ``report`` the next ``seq`` and a timestamp, and append it as one line."""
    channel = os.path.join(os.fspath(session_dir), CHANNEL_NAME)
    os.makedirs(channel, exist_ok=True)
    path = os.path.join(channel, REPORTS_NAME)
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        record = {"seq": _last_seq(descriptor) + 1, "kind": report["kind"], "at": _now()}
        record.update(report)
        turn = os.environ.get("SHEPHERD_TURN", "")
        if turn.isdigit():
            record["turn"] = int(turn)
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        os.write(descriptor, line)
        os.fsync(descriptor)
        return record
    finally:
        os.close(descriptor)  # also releases the lock


def _last_seq(descriptor: int) -> int:
    size = os.fstat(descriptor).st_size
    chunk = b""
    start = size
    # Read backwards until the last whole line that carries a seq is found.
    while start > 0:
        start = max(0, start - 65536)
        chunk = os.pread(descriptor, size - start, start)
        lines = chunk.split(b"\n")
        if start > 0:
            lines = lines[1:]
        for line in reversed(lines):
            try:
                seq = json.loads(line).get("seq")
            except (ValueError, AttributeError):
                continue
            if isinstance(seq, int):
                return seq
    return 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finished_notice() -> str | None:
    """Read ``status.json`` (never write it) to tell the agent when Shepherd has stopped the session."""
    path = os.environ.get("SHEPHERD_STATUS_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            status = json.load(stream).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    if status in FINISHED_STATUSES:
        return NOTICE_FINISHED.format(status=status)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command of the agent-only tool; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage and unknown commands
    try:
        report = build_report(args)
    except UsageError as error:
        parser.exit(2, f"{TOOL_NAME}: error: {error}\n")
    session_dir = os.environ.get("SHEPHERD_SESSION_DIR", "")
    if not session_dir or not os.path.isdir(session_dir):
        sys.stderr.write(f"{TOOL_NAME}: error: {ERROR_NO_SESSION}\n")
        return 1
    try:
        append_report(session_dir, report)
    except OSError as error:
        sys.stderr.write(f"{TOOL_NAME}: error: {ERROR_RECORD.format(reason=error)}\n")
        return 1
    # The agent reads this line, so it is printed rather than logged.
    sys.stdout.write(CONFIRMATIONS[report["kind"]] + "\n")
    notice = _finished_notice()
    if notice:
        sys.stdout.write(notice + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
