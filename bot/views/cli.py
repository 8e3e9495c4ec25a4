"""The operator's `shepherd` command line (SPEC §5): one argparse subcommand per task.

Other subcommands (`status`, `doctor`) register themselves in `build_parser` the same way `prune` does:
a subparser with `set_defaults(run=...)`, where `run(args) -> int` is the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bot.workspace.cleanup import prune
from bot.views.doctor import add_doctor_command
from bot.core.session import Session
from bot.settings import SettingsError, load_settings
from bot.views.status_view import add_status_command
from bot.store.database import Store
from bot.store.sessions import SessionStore
from bot.workspace.workspaces import Workspaces

PRUNE_HELP = "remove the worktrees of sessions whose pull request was merged or closed"
DRY_RUN_HELP = "only list what would be removed"
NO_DATABASE = "no Shepherd database at {path}; nothing to prune"


def stored_sessions(store: Store) -> list[Session]:
    """Every stored session (newest state of each)."""
    return [session for session, _installation in SessionStore(store.db).every_session()]


def run_prune(args: argparse.Namespace) -> int:
    settings = load_settings()
    database = settings.data_dir / "shepherd.db"
    if not database.is_file():
        print(NO_DATABASE.format(path=database))
        return 0
    store = Store.open(database)
    try:
        sessions = stored_sessions(store)
    finally:
        store.close()
    report = asyncio.run(prune(Workspaces(settings.data_dir), sessions, dry_run=args.dry_run))
    for line in report.lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shepherd", description="Operate a Shepherd installation.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pruning = commands.add_parser("prune", help=PRUNE_HELP, description=PRUNE_HELP)
    pruning.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    pruning.set_defaults(run=run_prune)
    add_status_command(commands)
    add_doctor_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
