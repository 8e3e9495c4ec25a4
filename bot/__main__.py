"""`python -m bot serve`: the one place that reads the environment and runs Shepherd."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from aiohttp import web

from bot import redaction
from bot.agent.secrecy import make_undumpable, scrub_environment
from bot.settings import (
    DASHBOARD_TOKEN_VAR,
    PRIVATE_KEY_PATH_VAR,
    PRIVATE_KEY_VAR,
    WEBHOOK_SECRET_VAR,
    Settings,
    SettingsError,
    load_settings,
)

# Read once into the settings, then gone from the process's environment (SPEC §4.1). The key's
# path is not secret, but it says where the key is.
SCRUBBED_VARIABLES = (PRIVATE_KEY_VAR, PRIVATE_KEY_PATH_VAR, WEBHOOK_SECRET_VAR, DASHBOARD_TOKEN_VAR)


def protect_secrets(settings: Settings) -> None:
    """Make the settings' secrets unreadable to other processes and masked in every redacted text.

    Called right after the settings are built, before the server starts anything; nothing later
    reads these variables from the environment (the agents' allow-list is drawn from what is left).
    """
    scrub_environment(SCRUBBED_VARIABLES)
    make_undumpable()
    for secret in (settings.private_key, settings.webhook_secret, settings.dashboard_token):
        if secret is not None:
            redaction.register_secret(secret.get_secret_value(), lasting=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Shepherd, the GitHub App.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the webhook server (the Procfile's web process)")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default: all)")
    commands.add_parser("worker", help="run a worker host of the Temporal engine (SHEPHERD_ENGINE=temporal, SPEC §7)")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from bot.ingest.webhook import QuietBadRequests

    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())
    try:
        settings = load_settings()
    except SettingsError as error:
        sys.stderr.write(f"shepherd: cannot start: {error}\n")
        return 2

    from bot.app import SERVICES, create_app  # imported late: settings errors must not need the whole app
    from bot.agent.sandbox import Sandbox, SandboxError

    if args.command == "worker":
        try:
            Sandbox.build(settings.sandbox, agent_user=settings.agent_user, state_dir=settings.data_dir / "sandbox")
        except SandboxError as error:
            sys.stderr.write(f"shepherd: cannot start: {error}\n")
            return 2
        if settings.mode != "github":
            sys.stderr.write("shepherd: cannot start a worker host without the App's credentials\n")
            return 2
        protect_secrets(settings)
        from bot.temporal.worker import run_until_signalled

        run_until_signalled(settings, parent_env=os.environ)
        return 0
    if args.command == "serve":
        try:  # a sandbox this machine cannot make is a start-up error, not a failed first session
            Sandbox.build(settings.sandbox, agent_user=settings.agent_user, state_dir=settings.data_dir / "sandbox")
        except SandboxError as error:
            sys.stderr.write(f"shepherd: cannot start: {error}\n")
            return 2
        protect_secrets(settings)
        logging.getLogger("bot").info(
            "Shepherd %s mode, listening on %s:%s (public URL %s)",
            settings.mode, args.host, settings.port, settings.public_url,
        )
        app = create_app(settings, parent_env=os.environ)

        async def register_dashboard_token(app: web.Application) -> None:
            # Runs after the app's own start-up, which may have generated the token.
            redaction.register_secret(app[SERVICES].dashboard_token, lasting=True)

        app.on_startup.append(register_dashboard_token)
        # Per-request access lines would cost more than storing a delivery; errors are logged anyway.
        web.run_app(app, host=args.host, port=settings.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
