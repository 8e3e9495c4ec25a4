"""`python -m bot serve`: the one place that reads the environment and runs Shepherd."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from bot.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Shepherd, the GitHub App.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the webhook server (the Procfile's web process)")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default: all)")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings()
    except SettingsError as error:
        sys.stderr.write(f"shepherd: cannot start: {error}\n")
        return 2

    from bot.app import create_app  # imported late: settings errors must not need the whole app

    if args.command == "serve":
        logging.getLogger("bot").info(
            "Shepherd %s mode, listening on %s:%s (public URL %s)",
            settings.mode, args.host, settings.port, settings.public_url,
        )
        # Per-request access lines would cost more than storing a delivery; errors are logged anyway.
        web.run_app(
            create_app(settings, parent_env=os.environ), host=args.host, port=settings.port, print=None, access_log=None
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
