"""`shepherd logs <owner/repo>#<n>`: a session's setup, turn and test logs for the operator, redacted."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from bot import redaction
from bot.settings import Settings, load_settings
from bot.views.dashboard_token import read_dashboard_token

LOGS_HELP = "print a session's setup, turn and test logs (secrets masked)"
ISSUE_HELP = "the issue, as owner/repo#number"
ATTEMPT_HELP = "which session of the issue (1 is the first; default: the newest)"
BAD_ISSUE = "{value!r} is not an issue; write it as owner/repo#number"
NO_LOGS = "no session logs for {issue}{attempt} in {folder}"
HEADER = "==> {path} <=="
ISSUE_PATTERN = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)/([A-Za-z0-9._-]+)#([1-9][0-9]*)")
TURN_LOG = re.compile(r"turn-([0-9]+)\.log")
SETUP_LOG = "setup.log"
TEST_LOG = "test.log"


def issue_argument(value: str) -> str:
    if not ISSUE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(BAD_ISSUE.format(value=value))
    return value


def session_folders(sessions_dir: Path, issue: str) -> dict[int, Path]:
    """The issue's session folders by attempt number (one folder per session; see the engine's naming)."""
    from bot.workspace.workspaces import session_folder  # the one rule that names a session's folder

    prefix = session_folder(f"{issue}/")
    found: dict[int, Path] = {}
    if not sessions_dir.is_dir():
        return found
    for folder in sessions_dir.iterdir():
        attempt = folder.name[len(prefix):]
        if folder.name.startswith(prefix) and attempt.isdigit() and folder.is_dir():
            found[int(attempt)] = folder
    return found


def log_files(folder: Path) -> list[Path]:
    """Setup first, then the turns in order, then the tests: the order they were written in."""
    turns = sorted(
        (int(match.group(1)), path) for path in folder.iterdir() if (match := TURN_LOG.fullmatch(path.name))
    )
    return [
        *([folder / SETUP_LOG] if (folder / SETUP_LOG).is_file() else []),
        *(path for _, path in turns),
        *([folder / TEST_LOG] if (folder / TEST_LOG).is_file() else []),
    ]


def known_secrets(settings: Settings) -> list[str | None]:
    secrets = [s.get_secret_value() if s is not None else None
               for s in (settings.private_key, settings.webhook_secret, settings.dashboard_token)]
    return [*secrets, read_dashboard_token(settings)]


def run_logs(args: argparse.Namespace) -> int:
    settings = load_settings()
    sessions_dir = settings.data_dir / "sessions"
    folders = session_folders(sessions_dir, args.issue)
    attempt = args.attempt if args.attempt is not None else max(folders, default=None)
    folder = folders.get(attempt) if attempt is not None else None
    files = log_files(folder) if folder is not None else []
    if not files:
        which = f" (session {args.attempt})" if args.attempt is not None else ""
        sys.stderr.write(NO_LOGS.format(issue=args.issue, attempt=which, folder=sessions_dir) + "\n")
        return 1
    secrets = known_secrets(settings)
    for index, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        sys.stdout.write(("\n" if index else "") + HEADER.format(path=path) + "\n")
        sys.stdout.write(redaction.redact(text, secrets))
        if text and not text.endswith("\n"):
            sys.stdout.write("\n")
    return 0


def add_logs_command(commands: Any) -> None:
    logs = commands.add_parser("logs", help=LOGS_HELP, description=LOGS_HELP)
    logs.add_argument("issue", type=issue_argument, help=ISSUE_HELP)
    logs.add_argument("--attempt", type=int, help=ATTEMPT_HELP)
    logs.set_defaults(run=run_logs)
