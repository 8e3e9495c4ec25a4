"""The operator's `shepherd` command line (SPEC §5): one argparse subcommand per task.

Bare `shepherd` prints the help (as `gh` does); `shepherd serve` is `python -m bot serve`.

Other subcommands (`status`, `doctor`) register themselves in `build_parser` the same way `prune` does:
a subparser with `set_defaults(run=...)`, where `run(args) -> int` is the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from bot.workspace.cleanup import prune
from bot.views.doctor import add_doctor_command
from bot.views.session_logs import add_logs_command
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


def installed_version() -> str:
    try:
        return version("shepherd")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def run_serve(args: argparse.Namespace) -> int:
    from bot.__main__ import main as serve  # the one place that runs the server

    return serve(["serve", "--host", args.host])


def build_parser() -> argparse.ArgumentParser:
    from bot.__main__ import SERVE_HELP, add_serve_arguments

    parser = argparse.ArgumentParser(prog="shepherd", description="Operate a Shepherd installation.")
    parser.add_argument("--version", action="version", version=f"shepherd {installed_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serving = commands.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP)
    add_serve_arguments(serving)
    serving.set_defaults(run=run_serve)
    pruning = commands.add_parser("prune", help=PRUNE_HELP, description=PRUNE_HELP)
    pruning.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    pruning.set_defaults(run=run_prune)
    add_status_command(commands)
    add_doctor_command(commands)
    add_logs_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:  # bare `shepherd`: what it can do, not a usage error
        parser.print_help()
        return 0
    try:
        return int(args.run(args))
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
