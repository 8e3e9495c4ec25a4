"""The github.com web pages of the App Manifest flow, for a browser to walk through against a FakeGitHub.

GitHub's flow: the App's manifest is POSTed (form field `manifest`) to `/settings/apps/new?state=...` or
`/organizations/<org>/settings/apps/new?state=...`; GitHub shows the App it would create; the person
presses "Create GitHub App"; GitHub then redirects the browser to the manifest's `redirect_url` with a
one-time `code` and the same `state`. The code is what `POST /app-manifests/{code}/conversions` on the
API (the FakeGitHub) exchanges for the App's credentials, so this side registers it with the fake.

Started in the test's own event loop (`await GitHubWeb(fake).start()`); `manifests` keeps what was posted.
"""

from __future__ import annotations

import html
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tests.fakes.github import FakeGitHub

CREATE_PATH = "/settings/apps/new/create"
CREATE_BUTTON = "Create GitHub App"


@dataclass
class PostedManifest:
    """One manifest a browser posted, with the `state` and organisation it came with."""

    manifest: dict[str, Any]
    state: str
    org: str | None


class GitHubWeb:
    """github.com's "new GitHub App from a manifest" page and its redirect, on loopback."""

    def __init__(self, fake: FakeGitHub) -> None:
        self.fake = fake
        self.manifests: list[PostedManifest] = []
        self.codes: list[str] = []
        self._pending: dict[str, PostedManifest] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "GitHubWeb":
        app = web.Application()
        app.router.add_post("/settings/apps/new", self._new_app)
        app.router.add_post("/organizations/{org}/settings/apps/new", self._new_app)
        app.router.add_post(CREATE_PATH, self._create)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _new_app(self, request: web.Request) -> web.Response:
        form = await request.post()
        state = request.query.get("state", "")
        raw = form.get("manifest")
        if not isinstance(raw, str):
            return _page(422, "Invalid manifest", "<p>The request has no manifest.</p>")
        try:
            manifest = json.loads(raw)
        except ValueError:
            return _page(422, "Invalid manifest", "<p>The manifest is not JSON.</p>")
        problems = [key for key in ("name", "url", "hook_attributes", "redirect_url") if not manifest.get(key)]
        if problems:
            return _page(422, "Invalid manifest", f"<p>Missing: {html.escape(', '.join(problems))}</p>")
        posted = PostedManifest(manifest, state, request.match_info.get("org"))
        self.manifests.append(posted)
        ticket = secrets.token_urlsafe(12)
        self._pending[ticket] = posted
        owner = f"the organisation {posted.org}" if posted.org else "your personal account"
        body = (
            f"<p>Create a GitHub App named <strong id='app-name'>{html.escape(manifest['name'])}</strong> "
            f"for {html.escape(owner)}.</p>"
            f"<p>Webhook URL: <code id='hook-url'>{html.escape(manifest['hook_attributes']['url'])}</code></p>"
            f"<form method='post' action='{CREATE_PATH}'>"
            f"<input type='hidden' name='ticket' value='{ticket}'>"
            f"<button type='submit' id='create'>{CREATE_BUTTON}</button></form>"
        )
        return _page(200, "Create GitHub App", body)

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        posted = self._pending.pop(str(form.get("ticket", "")), None)
        if posted is None:
            return _page(404, "Not found", "<p>This page is gone.</p>")
        code = secrets.token_hex(10)
        self.codes.append(code)
        self.fake.add_manifest_code(code)
        query = urlencode({"code": code, "state": posted.state})
        raise web.HTTPFound(f"{posted.manifest['redirect_url']}?{query}")


def _page(status: int, title: str, body: str) -> web.Response:
    heading = html.escape(title)
    text = f"<!doctype html><html><head><title>{heading}</title></head><body><h1>{heading}</h1>{body}</body></html>"
    return web.Response(status=status, text=text, content_type="text/html")
