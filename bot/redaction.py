"""The one redactor: every text Shepherd shows or logs that could hold a credential goes through `redact`.

It masks, as `[redacted]`, the secrets a caller names, the secrets registered process-wide with
`register_secret` (the App's private key and its lines, the webhook secret, the dashboard token and
every installation or push token Shepherd minted or used), and anything shaped like a credential:
GitHub tokens, JWTs, PEM private key blocks (whole or cut off at either end), `x-access-token:...@`,
`Authorization:` header values and the userinfo of URLs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable

from cachetools import TTLCache

REDACTED = "[redacted]"

# A registered secret shorter than this is not registered: masking it process-wide would blank
# ordinary words in every log tail (explicit secrets passed to `redact` have no such floor).
MIN_REGISTERED_LENGTH = 8
# A PEM line shorter than this (a short last base64 line) is too common to mask on its own.
MIN_PEM_LINE_LENGTH = 17
# Installation and push tokens live one hour; keeping them twice that covers a log read late.
TOKEN_LIFETIME_SECONDS = 2 * 60 * 60
# Bounds of the registry: lasting secrets are a handful per App; tokens are one per installation
# per hour plus one per push, so a busy server stays well under this.
MAX_LASTING_SECRETS = 256
MAX_TOKENS = 8192

GITHUB_TOKEN = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9_]{8,}|github_pat_[A-Za-z0-9_]{8,})")
JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# A block cut off at the end (a truncated log) is masked to the end of the text.
PEM_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
# A block cut off at the start (a log tail that begins inside a key): the run of base64 lines before
# an END line, and that line. The lookbehinds let a match start only where a run starts, so a long
# run with no END line is scanned once, not once per line.
PEM_TAIL = re.compile(
    r"(?<![A-Za-z0-9+/=]\n)(?<![A-Za-z0-9+/=]\r\n)"
    r"(?:^[ \t]*[A-Za-z0-9+/=]+\r?\n)*^[ \t]*-----END [A-Z0-9 ]*PRIVATE KEY-----",
    re.M,
)
ACCESS_TOKEN_USERINFO = re.compile(r"(?<=x-access-token:)[^@\s]+(?=@)")
AUTHORIZATION = re.compile(
    r"(?i)(?<=authorization)([\"']?\s*[:=]\s*[\"']?)(?:bearer|token|basic)\s+[^\s\"',;]+"
)
# Whole userinfo, since a token may be the user name (`https://<token>@host`); the one user name
# kept is `x-access-token`, already followed by a mask, which tells a reader what was there.
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?!x-access-token:\[redacted\]@)[^/?#@\s]+@")

# Applied in this order, after the named and registered secrets: whole PEM blocks first, so their
# inner lines are not masked one by one; the userinfo pattern last, after the access-token one.
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (PEM_BLOCK, REDACTED),
    (PEM_TAIL, REDACTED),
    (GITHUB_TOKEN, REDACTED),
    (JWT, REDACTED),
    (ACCESS_TOKEN_USERINFO, REDACTED),
    (AUTHORIZATION, rf"\1{REDACTED}"),
    (URL_USERINFO, rf"\1{REDACTED}@"),
)

_lock = threading.Lock()
# Insertion-ordered, so the oldest lasting secret goes first when the cap is reached.
_lasting: dict[str, None] = {}
_tokens: TTLCache[str, None] = TTLCache(MAX_TOKENS, TOKEN_LIFETIME_SECONDS, timer=time.monotonic)


def register_secret(value: str | None, *, lasting: bool = False) -> None:
    """Mask `value` in every later `redact` call of this process.

    `lasting` secrets (the private key, the webhook secret, the dashboard token) stay registered for
    the life of the process; others (installation and push tokens) for `TOKEN_LIFETIME_SECONDS`.
    A private key's PEM lines are registered too, so a key printed in pieces is masked as well.
    """
    if not value:
        return
    values = [value]
    if "PRIVATE KEY-----" in value:
        # Only the base64 lines: a registered BEGIN line would be masked before the PEM pattern
        # could see it, leaving the body of another key in the same text unmasked.
        lines = (line.strip() for line in value.splitlines())
        values += [line for line in lines if len(line) >= MIN_PEM_LINE_LENGTH and not line.startswith("-----")]
    with _lock:
        for item in values:
            if len(item) < MIN_REGISTERED_LENGTH:
                continue
            if lasting:
                _lasting.pop(item, None)
                _lasting[item] = None
                while len(_lasting) > MAX_LASTING_SECRETS:
                    del _lasting[next(iter(_lasting))]
            else:
                _tokens[item] = None


def forget_registered_secrets() -> None:
    """Empty the registry (for tests)."""
    with _lock:
        _lasting.clear()
        _tokens.clear()


def registered_secrets() -> list[str]:
    """The secrets registered right now (a copy)."""
    with _lock:
        _tokens.expire()
        return [*_lasting, *_tokens]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with `secrets`, every registered secret and every credential-shaped string masked."""
    if not text:
        return text
    # Longest first: a secret that contains another (a key and its lines) is masked whole.
    for secret in sorted({s for s in (*secrets, *registered_secrets()) if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text
