"""The GitHub App manifest: `app.yml` with its URLs taken from `SHEPHERD_PUBLIC_URL`, never from a request."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import yaml

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "app.yml"

WEBHOOK_PATH = "/webhook"
CALLBACK_PATH = "/setup/callback"

# GitHub's own rule for organisation logins: letters, digits and single hyphens, at most 39.
_ORG_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
# GitHub App names: at most 34 characters.
APP_NAME_MAX_LENGTH = 34


class ManifestError(ValueError):
    """An organisation or App name that GitHub would not accept."""


@functools.cache
def _read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict):
        raise ManifestError(f"{path} does not hold a YAML mapping")
    return data


def build_manifest(
    public_url: str, *, name: str | None = None, path: Path = MANIFEST_PATH
) -> dict[str, Any]:
    """The manifest to post to GitHub: `app.yml` with `url`, the webhook and the redirect under `public_url`."""
    manifest = copy.deepcopy(_read(path))
    base = public_url.rstrip("/")
    manifest["url"] = base
    manifest.setdefault("hook_attributes", {})
    manifest["hook_attributes"]["url"] = base + WEBHOOK_PATH
    manifest["hook_attributes"].setdefault("active", True)
    manifest["redirect_url"] = base + CALLBACK_PATH
    if name:
        name = name.strip()
        if len(name) > APP_NAME_MAX_LENGTH:
            raise ManifestError(f"a GitHub App name has at most {APP_NAME_MAX_LENGTH} characters")
        manifest["name"] = name
    return manifest


def required_permissions(path: Path = MANIFEST_PATH) -> dict[str, str]:
    """The permissions `app.yml` asks for, e.g. `{"issues": "write", ...}` (for `shepherd doctor`)."""
    return dict(_read(path).get("default_permissions") or {})


def check_org(org: str | None) -> str | None:
    """The organisation login, stripped, or None for a personal App; raises on a name GitHub forbids."""
    org = (org or "").strip()
    if not org:
        return None
    if not _ORG_PATTERN.match(org):
        raise ManifestError(f"{org!r} is not a GitHub organisation name")
    return org


def registration_url(github_url: str, state: str, org: str | None = None) -> str:
    """Where the manifest form posts: the personal or the organisation's "new App" page, with `state`."""
    base = github_url.rstrip("/")
    org = check_org(org)
    page = f"/organizations/{quote(org)}/settings/apps/new" if org else "/settings/apps/new"
    return f"{base}{page}?{urlencode({'state': state})}"
