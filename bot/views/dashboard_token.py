"""The dashboard's bearer token: from `SHEPHERD_DASHBOARD_TOKEN`, else generated once and kept in the data folder."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from bot.settings import Settings

log = logging.getLogger(__name__)

TOKEN_FILE_NAME = "dashboard_token"
TOKEN_BYTES = 32

DASHBOARD_URL_TEXT = "Dashboard: %s/?token=%s (the token is kept in %s)"
DASHBOARD_URL_FROM_ENV_TEXT = "Dashboard: %s/ (token: the SHEPHERD_DASHBOARD_TOKEN you set)"


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE_NAME


def ensure_dashboard_token(settings: Settings) -> str:
    """The operator's token when set; otherwise the one in the data folder, created (mode 0600) if missing."""
    if settings.dashboard_token is not None:
        return settings.dashboard_token.get_secret_value()
    path = token_path(settings)
    existing = _read(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        # O_EXCL: two processes starting at once must not each write a different token.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path) or token
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def read_dashboard_token(settings: Settings) -> str | None:
    """The token without creating one (for the command line)."""
    if settings.dashboard_token is not None:
        return settings.dashboard_token.get_secret_value()
    return _read(token_path(settings))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def log_dashboard_url(settings: Settings, token: str) -> None:
    if settings.dashboard_token is not None:
        log.info(DASHBOARD_URL_FROM_ENV_TEXT, settings.public_url)
    else:
        log.info(DASHBOARD_URL_TEXT, settings.public_url, token, token_path(settings))


def token_matches(expected: str, offered: str | None) -> bool:
    """Constant-time comparison, so response times do not reveal how much of a guess was right."""
    if not offered:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), offered.encode("utf-8"))
