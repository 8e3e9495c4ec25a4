"""Whether GitHub can reach a public URL: loopback, private and single-label hosts it cannot.

GitHub refuses a webhook URL it cannot reach, so the setup page, the start-up log and `shepherd doctor`
warn before the person is sent to GitHub. A relay (a tunnel such as cloudflared or ngrok) has a public
host name and passes."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK = "{url} is a loopback address"
PRIVATE = "{url} is a private-network address"
LOCAL_NAMES = (".local", ".internal", ".lan", ".home.arpa", ".localdomain")
SETUP_GUIDE = "docs/setup.md"
UNREACHABLE_TEXT = (
    "GitHub cannot reach {url} ({why}): set SHEPHERD_PUBLIC_URL to a public URL that reaches this server, "
    "such as a cloudflared or ngrok tunnel (see {guide})"
)


def unreachable_reason(url: str) -> str | None:
    """Why GitHub cannot reach `url`, or None when its host is public (a name with a dot, or a public IP)."""
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith(".localhost"):
            return LOOPBACK.format(url=url)
        if "." not in host or host.endswith(LOCAL_NAMES):
            return PRIVATE.format(url=url)
        return None
    if address.is_loopback:
        return LOOPBACK.format(url=url)
    if not address.is_global:
        return PRIVATE.format(url=url)
    return None


def unreachable_warning(url: str) -> str | None:
    """The one sentence the setup page and the start-up log show, or None when GitHub can reach `url`."""
    why = unreachable_reason(url)
    if why is None:
        return None
    kind = "a loopback address" if why.endswith("loopback address") else "a private-network address"
    return UNREACHABLE_TEXT.format(url=url, why=kind, guide=SETUP_GUIDE)
