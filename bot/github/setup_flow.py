"""Setup mode (SPEC §5): a one-time `/setup` URL registers the GitHub App from `app.yml` and switches to GitHub mode.

The flow is GitHub's App Manifest flow:
1. `GET /setup?code=<one-time code>` (the URL is logged at start) shows a form: organisation, App name.
2. `POST /setup/start` answers with a form that posts the manifest to `$GITHUB_URL/settings/apps/new`
   (or an organisation's) with a fresh random `state`; it submits itself.
3. GitHub sends the person back to `GET /setup/callback?code=...&state=...`. The `state` must be one this
   server minted in the last hour, and it works once. The code is exchanged through
   `POST /app-manifests/{code}/conversions` (the one GitHub client, no credentials), the App's id, key and
   webhook secret are written to `.env` (mode 0600, other lines kept), and `on_registered` switches the
   running app to GitHub mode. The page then says how to install the App and where the dashboard is.

The setup code stays valid until the App is registered (a reload or a second try must not lock the
operator out); after that every setup URL answers 410.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import cachetools
import gidgethub
import jinja2
from aiohttp import web

from bot.github.client import GitHubClient
from bot.github.reachability import unreachable_warning
from bot.github.manifest import CALLBACK_PATH, WEBHOOK_PATH, ManifestError, build_manifest, check_org, registration_url
from bot.metrics import Metrics
from bot.settings import APP_ID_VAR, PRIVATE_KEY_PATH_VAR, PRIVATE_KEY_VAR, WEBHOOK_SECRET_VAR, Settings

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
SETUP_PATH = "/setup"
START_PATH = "/setup/start"
STATE_TTL_SECONDS = 3600  # GitHub: the whole manifest flow must finish within an hour
MAX_PENDING_STATES = 100

SETUP_URL_TEXT = "Setup mode: open %s%s?code=%s in a browser to register Shepherd as a GitHub App"
REGISTERED_LOG_TEXT = "GitHub App %s (id %s) registered; credentials written to %s; now in GitHub mode"
START_INTRO = (
    "Shepherd has no GitHub App credentials yet. This registers a new GitHub App from app.yml; GitHub "
    "shows you its settings before anything is created."
)
ORG_HINT = "To create the App under an organisation, name it here (you must be one of its owners)."
NAME_HINT = "GitHub App names are unique across GitHub; you can also change it on GitHub's page."
START_BUTTON = "Create the GitHub App on GitHub"
POST_INTRO = "Sending the App's manifest to GitHub. If nothing happens, press the button."
POST_BUTTON = "Continue to GitHub"
DONE_HEADING = "Shepherd is registered"
DONE_INTRO = "GitHub created the App {name}. Shepherd now accepts its webhooks; no restart is needed."
INSTALL_TEXT = "Install the App on your repositories"
DASHBOARD_TEXT = "The dashboard (this link carries its token; it is also in the server's log and the data folder):"
ENV_TEXT = "The App's id, private key and webhook secret are in {path} (readable by its owner only). Keep it secret."
ERROR_HEADING = "Setup failed"
BAD_CODE_TEXT = "This setup link is not valid. Use the /setup?code=... URL from the server's log."
ALREADY_DONE_TEXT = "The GitHub App is already registered; this setup link no longer works."
BAD_STATE_TEXT = (
    "This answer from GitHub does not belong to a registration started here, or it was already used or "
    "is more than an hour old. Start again from the setup link in the server's log."
)
MISSING_CODE_TEXT = "GitHub's answer has no code. Start again from the setup link in the server's log."
CONVERSION_REFUSED_TEXT = (
    "GitHub refused the registration code ({status}). A code works once and for an hour; start again "
    "from the setup link in the server's log."
)
GITHUB_UNREACHABLE_TEXT = "Shepherd could not reach GitHub at {api_url}; try again from the setup link."
ENV_NOT_WRITABLE_TEXT = (
    "Shepherd cannot write {path} ({reason}), where the App's credentials go once GitHub creates it. "
    "Make that file (or its folder) writable by the user that runs Shepherd, then reload this page."
)
ENV_WRITE_FAILED_HEADING = "Shepherd is registered, but its credentials are not saved"
ENV_WRITE_FAILED_TEXT = (
    "GitHub created the App {name}, but Shepherd could not write {path}: {reason}. Shepherd runs in GitHub "
    "mode now, but forgets these credentials when it stops. Copy them below into {path} (or into the "
    "server's environment) before the next restart. This page shows them once; GitHub will not show the "
    "private key again (you can generate a new one on the App's settings page)."
)
BAD_FORM_TEXT = "{problem}. Go back and correct it."

_CREDENTIAL_NAMES = (APP_ID_VAR, PRIVATE_KEY_VAR, PRIVATE_KEY_PATH_VAR, WEBHOOK_SECRET_VAR)
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")

_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


class SetupError(Exception):
    """A step of the flow failed; `status` is the HTTP answer and the message is shown to the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=jinja2.StrictUndefined
    )


def _page(status: int = 200, **values: Any) -> web.Response:
    html = _environment().get_template("setup.html.j2").render(**values)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS)


def _error_page(error: SetupError) -> web.Response:
    return _page(error.status, page="error", heading=ERROR_HEADING, message=str(error))


def write_env(path: Path, values: dict[str, str]) -> None:
    """Set `values` in the dotenv file `path`, keeping its other lines; the file ends up mode 0600.

    Lines naming any App credential are dropped first, so an old `GITHUB_PRIVATE_KEY_PATH` cannot
    contradict the new key. Values are single-quoted: python-dotenv then takes them literally, and
    `bot/settings.py` turns the key's escaped `\\n` back into line breaks.
    """
    kept: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _ASSIGNMENT.match(line)
            if match and (match.group(1) in values or match.group(1) in _CREDENTIAL_NAMES):
                continue
            kept.append(line)
    for name, value in values.items():
        escaped = value.strip().replace("\r\n", "\n").replace("\n", "\\n")
        if "'" in escaped:
            raise ValueError(f"{name} holds a single quote, which a .env file cannot carry literally")
        kept.append(f"{name}='{escaped}'")
    text = "\n".join(kept) + "\n"
    # Written beside the target and renamed over it: a crash never leaves half a file of secrets.
    descriptor, temporary = tempfile.mkstemp(prefix=".env.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    path.chmod(0o600)


class SetupFlow:
    """The state of one setup-mode server: its one-time code and the `state` values it handed out."""

    def __init__(
        self,
        settings: Settings,
        *,
        env_file: Path,
        on_registered: Callable[[Settings], Awaitable[None]],
        metrics: Metrics | None = None,
        code: str | None = None,
        dashboard_token: str | None = None,
    ) -> None:
        self.settings = settings
        self.dashboard_token = dashboard_token  # the done page links to the dashboard with it
        self.env_file = env_file
        self.code = code or secrets.token_urlsafe(24)
        self.registered = False
        self._on_registered = on_registered
        self._metrics = metrics or Metrics()
        self._states: cachetools.TTLCache[str, str | None] = cachetools.TTLCache(
            maxsize=MAX_PENDING_STATES, ttl=STATE_TTL_SECONDS
        )
        self._lock = asyncio.Lock()

    @property
    def setup_url(self) -> str:
        return f"{self.settings.public_url}{SETUP_PATH}?code={self.code}"

    def log_setup_url(self) -> None:
        log.warning(SETUP_URL_TEXT, self.settings.public_url, SETUP_PATH, self.code)

    def _dashboard_url(self) -> str:
        """The dashboard, signed in: the person who just registered the App is its operator (the page is
        sent no-store and no-referrer, as the dashboard's own are)."""
        base = self.settings.public_url + "/"
        return f"{base}?{urlencode({'token': self.dashboard_token})}" if self.dashboard_token else base

    def check_env_writable(self) -> None:
        """Prove, before the person goes to GitHub, that the credentials can be saved where they belong:
        `write_env` writes a file beside `.env` and renames it over, so that is what is tried."""
        try:
            descriptor, probe = tempfile.mkstemp(prefix=".env.", dir=self.env_file.parent)
            os.close(descriptor)
            os.unlink(probe)
            if self.env_file.exists() and not self.env_file.is_file():
                raise IsADirectoryError(21, "Is a directory")
        except OSError as error:
            reason = error.strerror or str(error)
            raise SetupError(500, ENV_NOT_WRITABLE_TEXT.format(path=self.env_file, reason=reason)) from None

    def _check_code(self, offered: str | None) -> None:
        if self.registered:
            raise SetupError(410, ALREADY_DONE_TEXT)
        if not offered or not hmac.compare_digest(offered.encode(), self.code.encode()):
            raise SetupError(404, BAD_CODE_TEXT)

    def new_state(self, org: str | None) -> str:
        state = secrets.token_urlsafe(24)
        self._states[state] = org
        return state

    def take_state(self, state: str | None) -> bool:
        """True once for a `state` this server minted within the hour; never again afterwards."""
        if not state:
            return False
        return self._states.pop(state, False) is not False

    # -- the three pages ------------------------------------------------------------------------

    async def show_start(self, request: web.Request) -> web.Response:
        try:
            self._check_code(request.query.get("code"))
        except SetupError as error:
            return _error_page(error)
        base = self.settings.public_url
        return _page(
            page="start",
            intro=START_INTRO,
            start_path=START_PATH,
            setup_code=self.code,
            org_hint=ORG_HINT,
            name_hint=NAME_HINT,
            default_name=build_manifest(base)["name"],
            warning=unreachable_warning(base),
            button=START_BUTTON,
            webhook_url=base + WEBHOOK_PATH,
            callback_url=base + CALLBACK_PATH,
        )

    async def post_manifest(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            self._check_code(_field(form, "code"))
            self.check_env_writable()
            try:
                org = check_org(_field(form, "org"))
                # The URLs come from SHEPHERD_PUBLIC_URL only: a Host header is whatever the client says.
                manifest = build_manifest(self.settings.public_url, name=_field(form, "name"))
            except ManifestError as problem:
                raise SetupError(400, BAD_FORM_TEXT.format(problem=str(problem).rstrip("."))) from None
        except SetupError as error:
            return _error_page(error)
        state = self.new_state(org)
        return _page(
            page="post",
            action=registration_url(self.settings.github_url, state, org),
            manifest=json.dumps(manifest, separators=(",", ":")),
            intro=POST_INTRO,
            button=POST_BUTTON,
        )

    async def callback(self, request: web.Request) -> web.Response:
        async with self._lock:  # two tabs finishing at once must not register twice
            try:
                if self.registered:
                    raise SetupError(410, ALREADY_DONE_TEXT)
                if not self.take_state(request.query.get("state")):
                    raise SetupError(400, BAD_STATE_TEXT)
                code = request.query.get("code", "").strip()
                if not code:
                    raise SetupError(400, MISSING_CODE_TEXT)
                app = await self.convert(code)
                name = str(app.get("name") or app.get("slug") or app["id"])
                unsaved: str | None = None
                try:
                    write_env(
                        self.env_file,
                        {
                            APP_ID_VAR: str(app["id"]),
                            PRIVATE_KEY_VAR: app["pem"],
                            WEBHOOK_SECRET_VAR: app["webhook_secret"],
                        },
                    )
                except (OSError, ValueError) as error:
                    # GitHub made the App already: going on in memory is the only way not to lose it
                    # (a retry would register a second one). The person saves the credentials by hand.
                    log.error("cannot write %s: %s; GitHub mode in memory only", self.env_file, error)
                    unsaved = getattr(error, "strerror", None) or str(error)
                registered = self.settings.with_credentials(
                    int(app["id"]), app["pem"], app["webhook_secret"]
                )
                self.registered = True
                await self._on_registered(registered)
            except SetupError as error:
                return _error_page(error)
        if unsaved is not None:
            return _page(
                page="unsaved",
                heading=ENV_WRITE_FAILED_HEADING,
                intro=ENV_WRITE_FAILED_TEXT.format(name=name, path=self.env_file, reason=unsaved),
                env_lines=_env_lines(app),
                install_url=_install_url(app, self.settings.github_url),
                install_text=INSTALL_TEXT,
            )
        log.info(REGISTERED_LOG_TEXT, name, app["id"], self.env_file)
        return _page(
            page="done",
            heading=DONE_HEADING,
            intro=DONE_INTRO.format(name=name),
            install_url=_install_url(app, self.settings.github_url),
            install_text=INSTALL_TEXT,
            dashboard_text=DASHBOARD_TEXT,
            dashboard_url=self._dashboard_url(),
            env_text=ENV_TEXT.format(path=self.env_file),
        )

    async def convert(self, code: str) -> dict[str, Any]:
        """Exchange the manifest code for the App's credentials, through the allow-listed client."""
        # A one-off call in the life of the server, before any GitHub client exists; its own session.
        async with aiohttp.ClientSession() as session:
            client = GitHubClient(session, metrics=self._metrics, base_url=self.settings.api_url)
            try:
                answer = await client.post("/app-manifests/{code}/conversions", {"code": code}, data=b"")
            except gidgethub.HTTPException as error:
                log.warning("manifest conversion refused: %s", error.status_code)
                raise SetupError(
                    502, CONVERSION_REFUSED_TEXT.format(status=int(error.status_code))
                ) from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                log.warning("manifest conversion failed: %s", error)
                raise SetupError(502, GITHUB_UNREACHABLE_TEXT.format(api_url=self.settings.api_url)) from None
        if not isinstance(answer, dict) or not {"id", "pem", "webhook_secret"} <= answer.keys():
            raise SetupError(502, CONVERSION_REFUSED_TEXT.format(status="incomplete answer"))
        return answer


def _install_url(app: dict[str, Any], github_url: str) -> str:
    html_url = str(app.get("html_url") or f"{github_url}/apps/{app.get('slug')}")
    return html_url.rstrip("/") + "/installations/new"


def _env_lines(app: dict[str, Any]) -> str:
    """The `.env` lines of the App's credentials, as `write_env` would have written them."""
    pem = str(app["pem"]).strip().replace("\r\n", "\n").replace("\n", "\\n")
    return "\n".join([
        f"{APP_ID_VAR}={app['id']}",
        f"{PRIVATE_KEY_VAR}='{pem}'",
        f"{WEBHOOK_SECRET_VAR}='{app['webhook_secret']}'",
    ])


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def add_routes(app: web.Application, flow_of: Callable[[web.Request], SetupFlow | None]) -> None:
    """Register the setup pages; `flow_of(request)` is the running flow, or None in GitHub mode (410: setup is over)."""

    def routed(step: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            flow = flow_of(request)
            if flow is None:
                return _error_page(SetupError(410, ALREADY_DONE_TEXT))
            response: web.StreamResponse = await getattr(flow, step)(request)
            return response

        return handle

    app.router.add_get(SETUP_PATH, routed("show_start"))
    app.router.add_post(START_PATH, routed("post_manifest"))
    app.router.add_get(CALLBACK_PATH, routed("callback"))
