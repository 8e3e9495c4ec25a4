"""`python -m bot serve`: the one place that reads the environment and runs Shepherd."""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO

from aiohttp import web

from bot import redaction
from bot.agent.adapters import agent_cli_install_spec
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

LOCK_FILE_NAME = "shepherd.lock"
DATA_DIR_NOT_WRITABLE = (
    "the data folder {path} cannot be written ({reason}); set SHEPHERD_DATA_DIR to a folder this user can write"
)
DATA_DIR_IN_USE = (
    "another Shepherd server is using the data folder {path} (it holds {lock}); stop it, or give this one "
    "its own SHEPHERD_DATA_DIR"
)
AGENT_CLI_INTERPRETER_MISSING = (
    "the agent CLI `{cli}` needs `{interpreter}`, which is not on PATH; install it (for node: Node.js 18 or "
    "later) or set SHEPHERD_AGENT to an agent this server has"
)
AGENT_CLI_MISSING = (
    "the agent CLI `{cli}` (SHEPHERD_AGENT={cli}) is not on PATH; run scripts/serve, which installs it, or "
    "npm install -g {spec}, or set SHEPHERD_AGENT to an agent this server has"
)
PORT_IN_USE = "port {port} is already in use on {host}; stop what listens there or set PORT to a free port"
PORT_REFUSED = "cannot listen on {host}:{port} ({reason}); check --host and PORT"


class StartupError(Exception):
    """A problem the operator fixes before Shepherd can start; its text is the one line printed."""


def claim_data_folder(data_dir: Path) -> IO[str]:
    """Create the data folder, prove it writable and lock it for this process (held until it exits).

    The lock is `flock` on `<data>/shepherd.lock`: the kernel drops it when the process dies, even by
    `kill -9`, so a crash never leaves a stale lock behind."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = open(data_dir / LOCK_FILE_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
    except OSError as error:
        raise StartupError(DATA_DIR_NOT_WRITABLE.format(path=data_dir, reason=error.strerror or error)) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StartupError(DATA_DIR_IN_USE.format(path=data_dir, lock=LOCK_FILE_NAME)) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError as error:
        handle.close()
        raise StartupError(DATA_DIR_NOT_WRITABLE.format(path=data_dir, reason=error.strerror or error)) from None
    return handle


def check_agent_cli(agent: str, path: str | None) -> None:
    """The default agent's CLI is installed, and so is the interpreter its `#!/usr/bin/env` line names
    (Claude Code and Codex are node scripts): without either, every session would fail with exit code 127."""
    spec = agent_cli_install_spec(agent)
    if spec is None:
        return
    found = shutil.which(agent, path=path)
    if found is None:
        raise StartupError(AGENT_CLI_MISSING.format(cli=agent, spec=spec))
    interpreter = _env_interpreter(Path(found))
    if interpreter is not None and shutil.which(interpreter, path=path) is None:
        raise StartupError(AGENT_CLI_INTERPRETER_MISSING.format(cli=agent, interpreter=interpreter))


def _env_interpreter(script: Path) -> str | None:
    """`node` of a script that starts `#!/usr/bin/env node`; None for anything else."""
    try:
        with script.open("rb") as file:
            first = file.readline(256)
    except OSError:
        return None
    words = first[2:].decode("utf-8", "replace").split() if first.startswith(b"#!") else []
    if len(words) >= 2 and words[0].endswith("/env"):
        rest = [word for word in words[1:] if not word.startswith("-")]
        return rest[0] if rest else None
    return None


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything says it listens (the app serves on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise StartupError(PORT_IN_USE.format(port=port, host=host)) from None
        raise StartupError(PORT_REFUSED.format(host=host, port=port, reason=error.strerror or error)) from None
    sock.setblocking(False)
    return sock


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


SERVE_HELP = "run the webhook server (the Procfile's web process)"


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The options of `serve`, shared by `python -m bot serve` and the operator's `shepherd serve`."""
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default: all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Shepherd, the GitHub App.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(commands.add_parser("serve", help=SERVE_HELP))
    commands.add_parser("worker", help="run a worker host of the Temporal engine (SHEPHERD_ENGINE=temporal, SPEC §7)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except SettingsError as error:
        sys.stderr.write(f"shepherd: cannot start: {error}\n")
        return 2
    from bot.ingest.webhook import QuietBadRequests
    from bot.views.log_lines import configure_logging

    configure_logging(settings.log_format, sys.stderr)
    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())

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
        try:  # a worker host runs the turns: without the CLI each of its sessions would fail with 127
            check_agent_cli(settings.agent, os.environ.get("PATH"))
        except StartupError as error:
            sys.stderr.write(f"shepherd: cannot start: {error}\n")
            return 2
        protect_secrets(settings)
        from bot.temporal.worker import run_until_signalled

        run_until_signalled(settings, parent_env=os.environ)
        return 0
    if args.command == "serve":
        try:
            lock = claim_data_folder(settings.data_dir)
            # A sandbox this machine cannot make is a start-up error, not a failed first session.
            Sandbox.build(settings.sandbox, agent_user=settings.agent_user, state_dir=settings.data_dir / "sandbox")
            check_agent_cli(settings.agent, os.environ.get("PATH"))
            listener = bind_listener(args.host, settings.port)
        except (StartupError, SandboxError) as error:
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
        try:
            web.run_app(app, sock=listener, print=None, access_log=None)
        finally:
            lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
