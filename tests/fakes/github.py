"""FakeGitHub: a strict, stateful GitHub REST API on loopback, checked against GitHub's OpenAPI description."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import hashlib
import logging
import secrets
import socket
import string
import threading
import urllib.error
import urllib.request
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode

import jwt
from aiohttp import web
from multidict import CIMultiDict
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.openapi import Operation, RouteNotFound, Spec, load_spec

log = logging.getLogger(__name__)

DOCS_URL = "https://docs.github.com/rest"
HTML_ROOT = "https://github.com"
TOKEN_LIFETIME = dt.timedelta(hours=1)
JWT_MAX_LIFETIME = 600
# GitHub tolerates a little clock drift on `iat`; gidgethub and PyGithub backdate by 60 s anyway.
JWT_CLOCK_SLACK = 30
RATE_LIMIT = 5000
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100

ROLES = ("admin", "maintain", "write", "triage", "read", "none")
LEGACY_ROLE = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read", "none": "none"}
LEVELS = {"read": 1, "write": 2, "admin": 3}
DEFAULT_APP_PERMISSIONS = {
    "checks": "read",
    "contents": "write",
    "issues": "write",
    "metadata": "read",
    "pull_requests": "write",
    "statuses": "read",
}
DEFAULT_APP_EVENTS = [
    "check_run",
    "check_suite",
    "issue_comment",
    "issues",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
]
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")

# Installation lookups outside /app that GitHub only answers for the app's JWT.
JWT_OPERATIONS = frozenset({"apps/get-repo-installation", "apps/get-org-installation", "apps/get-user-installation"})
# Operations that must never be called by Shepherd, whatever the test.
FORBIDDEN_OPERATIONS = frozenset({"pulls/merge", "repos/merge"})

MSG_NOT_FOUND = "Not Found"
MSG_BAD_CREDENTIALS = "Bad credentials"
MSG_REQUIRES_AUTH = "Requires authentication"
MSG_BAD_JWT = "A JSON web token could not be decoded"
MSG_JWT_EXPIRY = "'Expiration time' claim ('exp') is too far in the future"
MSG_JWT_IAT = "'Issued at' claim ('iat') must be an Integer representing a time in the past"
MSG_JWT_ISSUER = "'Issuer' claim ('iss') must be the app id"
MSG_JWT_REQUIRED = "A JSON web token is required to access this endpoint"
MSG_NOT_ACCESSIBLE = "Resource not accessible by integration"
MSG_VALIDATION_FAILED = "Validation Failed"
MSG_LABEL_MISSING = "Label does not exist"
MSG_SUSPENDED = "This installation has been suspended"
MSG_NEVER_MERGE = "Shepherd must never merge"
MSG_NO_GRAPHQL = "Shepherd must never merge, and the fake serves no GraphQL"
MSG_SERVER_ERROR = "Server Error"

VIOLATION_UNKNOWN_PATH = "unknown path: {method} {path}"
VIOLATION_INVALID = "invalid request {method} {path} ({operation_id}): {errors}"
VIOLATION_UNEXPECTED = "unexpected request {method} {path} ({operation_id}): not implemented by the fake"
VIOLATION_AUTH = "refused credentials on {method} {path} ({operation_id}): {reason}"
VIOLATION_MERGE = "merge attempted: {method} {path} ({operation_id}): " + MSG_NEVER_MERGE
VIOLATION_GRAPHQL = "GraphQL request: {method} {path}: " + MSG_NO_GRAPHQL
VIOLATION_CRASH = "the fake failed on {method} {path} ({operation_id}): {error!r}"
VIOLATION_RETRY_AFTER = ("write inside a Retry-After window of installation {installation} "
                         "({early:.2f} s early): {method} {path} ({operation_id})")
MSG_SECONDARY_LIMIT = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
VIOLATION_PERMISSION = "token lacks {permission}:{level} for {method} {path} ({operation_id})"
MSG_VIOLATIONS = "FakeGitHub saw {count} violation(s):\n{lines}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _iso(moment: dt.datetime | None = None) -> str:
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0:{kind}{number}".encode()).decode().rstrip("=")


def _sha(*parts: Any) -> str:
    return hashlib.sha1("\0".join(str(p) for p in parts).encode()).hexdigest()


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Reply(Exception):
    """An answer other than the happy path, raised from an operation handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        violation: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.violation = violation
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "documentation_url": DOCS_URL, "status": str(self.status)}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def _not_found() -> Reply:
    return Reply(404, MSG_NOT_FOUND)


def _invalid(resource: str, code: str, field_name: str, message: str | None = None) -> Reply:
    error = {"resource": resource, "code": code, "field": field_name}
    if message:
        error["message"] = message
    return Reply(422, MSG_VALIDATION_FAILED, errors=[error])


@dataclass
class Call:
    """One request the fake received, as the test sees it."""

    method: str
    path: str
    operation_id: str | None
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0
    at: float = 0.0  # arrival, on the fake's `clock` (time.monotonic unless a test sets its own)
    installation_id: int | None = None  # whose installation token made the call, if any


@dataclass
class Token:
    """An installation access token the fake minted."""

    token: str
    installation_id: int
    repositories: list[str]
    permissions: dict[str, str]
    expires_at: dt.datetime


@dataclass
class Actor:
    """Who made a request: the app itself (JWT), an installation token, or nobody."""

    kind: str  # "app" | "installation" | "anonymous"
    token: Token | None = None


@dataclass(frozen=True)
class Fault:
    """What `FakeGitHub.fault_for` does to one installation write: fail it before applying it, apply it and
    lose the answer, or answer a secondary rate limit with `Retry-After`."""

    BEFORE = "before"
    AFTER = "after"
    LIMIT = "limit"

    kind: str
    retry_after: int = 0


@dataclass
class Injection:
    operation_id: str
    status: int
    json: Any
    headers: dict[str, str]
    times: int


@dataclass
class RepoState:
    """Everything the fake knows about one repository."""

    json: dict[str, Any]
    files: dict[tuple[str, str | None], str] = field(default_factory=dict)
    file_source: Callable[[str, str | None], str | None] | None = None
    refs: dict[str, str] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    issue_events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # oldest first, as GitHub lists them
    reactions: list[dict[str, Any]] = field(default_factory=list)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    review_comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    check_runs: list[dict[str, Any]] = field(default_factory=list)
    check_suites: list[dict[str, Any]] = field(default_factory=list)
    next_number: int = 1


_HANDLERS: dict[str, str] = {}


def operation(operation_id: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a FakeGitHub method as the answer to one OpenAPI operation."""

    def register(method: Callable[..., Any]) -> Callable[..., Any]:
        _HANDLERS[operation_id] = method.__name__
        return method

    return register


@dataclass
class Request:
    """What an operation handler gets to see."""

    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    actor: Actor

    def repo_name(self) -> str:
        return f"{self.params['owner']}/{self.params['repo']}"

    def number(self, name: str) -> int:
        try:
            return int(self.params[name])
        except ValueError:
            raise _not_found() from None


class FakeGitHub:
    """A loopback GitHub that enforces auth and the OpenAPI contract, and keeps state for tests."""

    def __init__(
        self,
        *,
        app_id: int = 4242,
        app_slug: str = "shepherd-test",
        webhook_secret: str = "fake-webhook-secret",
        app_permissions: dict[str, str] | None = None,
        spec: Spec | None = None,
    ) -> None:
        self.spec = spec or load_spec()
        self.app_id = app_id
        self.app_slug = app_slug
        self.webhook_secret = webhook_secret
        self.app_permissions = dict(app_permissions or DEFAULT_APP_PERMISSIONS)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_key_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held_open: threading.Event | None = None
        self._held_count = 0
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        # The port is reserved now so every URL in the fake's JSON points back at the fake,
        # even for objects a test builds before starting it.
        self._socket: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.bot_login = f"{app_slug}[bot]"
        self._lock = threading.RLock()
        self._next_id = 1000
        self._users: dict[str, dict[str, Any]] = {}
        self._repos: dict[str, RepoState] = {}
        self._installations: dict[int, dict[str, Any]] = {}
        self._installation_repos: dict[int, list[str]] = {}
        self._tokens: dict[str, Token] = {}
        self._deliveries: list[dict[str, Any]] = []
        self._manifest_codes: set[str] = set()
        self._injections: list[Injection] = []
        self._calls: list[Call] = []
        self._violations: list[str] = []
        self._redeliveries: list[int] = []
        self.redelivery_status_code = 200
        self.fault_for: Callable[[Call], Fault | None] | None = None  # chaos: decides per installation write
        self.enforce_retry_after = False  # a write inside an announced Retry-After window is a violation
        self._retry_after_until: dict[int, float] = {}
        self._retry_after_announced: dict[int, float] = {}  # when each installation's window was last announced
        self.webhook_url: str | None = None  # where `send_webhook` and redeliveries POST, when set
        self._delivery_bodies: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.clock: Callable[[], float] = time.monotonic
        self.bot_id = self._new_id()
        self._users[self.bot_login] = self._user_json(self.bot_login, "Bot", self.bot_id)

    # ------------------------------------------------------------------ server lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeGitHub":
        sock = self._socket
        if sock is None or self._thread is not None:
            raise RuntimeError("a FakeGitHub can be started once")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(sock, ready, failure), name="fake-github", daemon=True
        )
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def _serve(self, sock: socket.socket, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            app = web.Application(client_max_size=32 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.SockSite(self._runner, sock).start())
        except BaseException as error:  # noqa: BLE001 - handed to the starting thread
            failure.append(error)
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def stop(self) -> None:
        self.release()
        if self._thread is None or self._loop is None:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return
        self._socket = None  # owned and closed by the server now
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "FakeGitHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ building blocks

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _user_json(self, login: str, kind: str, user_id: int) -> dict[str, Any]:
        api = self.url + "/users/" + login
        return {
            "login": login,
            "id": user_id,
            "node_id": _node_id("U" if kind != "Bot" else "BOT", user_id),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{HTML_ROOT}/{login}" if kind != "Bot" else f"{HTML_ROOT}/apps/{login[:-5]}",
            "followers_url": api + "/followers",
            "following_url": api + "/following{/other_user}",
            "gists_url": api + "/gists{/gist_id}",
            "starred_url": api + "/starred{/owner}{/repo}",
            "subscriptions_url": api + "/subscriptions",
            "organizations_url": api + "/orgs",
            "repos_url": api + "/repos",
            "events_url": api + "/events{/privacy}",
            "received_events_url": api + "/received_events",
            "type": kind,
            "user_view_type": "public",
            "site_admin": False,
        }

    def _api(self, path: str) -> str:
        return self.url + path

    def _user(self, login: str) -> dict[str, Any]:
        with self._lock:
            if login not in self._users:
                self.add_user(login, type="Bot" if login.endswith("[bot]") else "User")
            return copy.deepcopy(self._users[login])

    def _repo(self, full_name: str) -> RepoState:
        try:
            return self._repos[full_name]
        except KeyError:
            raise _not_found() from None

    def app_json(self) -> dict[str, Any]:
        owner = self._user("octo-org") if "octo-org" in self._users else self._user_json("octo-org", "Organization", 1)
        return {
            "id": self.app_id,
            "slug": self.app_slug,
            "node_id": _node_id("A", self.app_id),
            "client_id": f"Iv1.{self.app_id:016x}",
            "owner": owner,
            "name": self.app_slug,
            "description": "Shepherd under test",
            "external_url": "https://example.invalid/shepherd",
            "html_url": f"{HTML_ROOT}/apps/{self.app_slug}",
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
            "permissions": dict(self.app_permissions),
            "events": list(DEFAULT_APP_EVENTS),
            "installations_count": len(self._installations),
        }

    def _author_association(self, state: RepoState, login: str) -> str:
        if login == state.json["owner"]["login"]:
            return "OWNER"
        if state.permissions.get(login, "none") != "none":
            return "COLLABORATOR"
        return "NONE"

    def _actor_login(self, actor: Actor | None, fallback: str) -> tuple[str, dict[str, Any] | None]:
        if actor is not None and actor.kind == "installation":
            return self.bot_login, self.app_json()
        return fallback, None

    # ------------------------------------------------------------------ state API for tests

    def add_user(self, login: str, *, type: str = "User") -> dict[str, Any]:  # noqa: A002 - GitHub's field name
        with self._lock:
            if login not in self._users:
                self._users[login] = self._user_json(login, type, self._new_id())
            return copy.deepcopy(self._users[login])

    def add_installation(
        self,
        installation_id: int,
        *,
        account: str = "octo-org",
        repositories: list[str] | None = None,
        suspended: bool = False,
        permissions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            if account not in self._users:
                self.add_user(account, type="Organization")
            repos = list(repositories if repositories is not None else ["octo-org/widgets"])
            for name in repos:
                if name not in self._repos:
                    self.add_repo(name)
            account_json = copy.deepcopy(self._users[account])
            self._installations[installation_id] = {
                "id": installation_id,
                "account": account_json,
                "repository_selection": "selected",
                "access_tokens_url": self._api(f"/app/installations/{installation_id}/access_tokens"),
                "repositories_url": self._api("/installation/repositories"),
                "html_url": f"{HTML_ROOT}/organizations/{account}/settings/installations/{installation_id}",
                "app_id": self.app_id,
                "app_slug": self.app_slug,
                "client_id": f"Iv1.{self.app_id:016x}",
                "target_id": account_json["id"],
                "target_type": account_json["type"],
                "permissions": dict(permissions or self.app_permissions),
                "events": list(DEFAULT_APP_EVENTS),
                "created_at": _iso(),
                "updated_at": _iso(),
                "single_file_name": None,
                "has_multiple_single_files": False,
                "single_file_paths": [],
                "suspended_at": _iso() if suspended else None,
                "suspended_by": None,
            }
            self._installation_repos[installation_id] = repos
            return copy.deepcopy(self._installations[installation_id])

    def suspend_installation(self, installation_id: int, suspended: bool = True) -> None:
        with self._lock:
            self._installations[installation_id]["suspended_at"] = _iso() if suspended else None

    def remove_installation(self, installation_id: int) -> None:
        with self._lock:
            self._installations.pop(installation_id, None)
            self._installation_repos.pop(installation_id, None)

    def set_installation_repositories(self, installation_id: int, repositories: list[str]) -> None:
        with self._lock:
            for name in repositories:
                if name not in self._repos:
                    self.add_repo(name)
            self._installation_repos[installation_id] = list(repositories)

    def installation(self, installation_id: int) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._installations[installation_id])

    def add_repo(
        self,
        full_name: str,
        *,
        default_branch: str = "main",
        clone_url: str | None = None,
        private: bool = False,
        head_sha: str | None = None,
    ) -> dict[str, Any]:
        owner_login, name = full_name.split("/", 1)
        with self._lock:
            if owner_login not in self._users:
                self.add_user(owner_login, type="Organization")
            repo_id = self._new_id()
            api = f"{self.url}/repos/{full_name}"
            html = f"{HTML_ROOT}/{full_name}"
            repo = {
                "id": repo_id,
                "node_id": _node_id("R", repo_id),
                "name": name,
                "full_name": full_name,
                "private": private,
                "owner": copy.deepcopy(self._users[owner_login]),
                "html_url": html,
                "description": f"{name} (fake)",
                "fork": False,
                "url": api,
                "issues_url": api + "/issues{/number}",
                "pulls_url": api + "/pulls{/number}",
                "labels_url": api + "/labels{/name}",
                "contents_url": api + "/contents/{+path}",
                "git_url": f"git://github.com/{full_name}.git",
                "ssh_url": f"git@github.com:{full_name}.git",
                "clone_url": clone_url or html + ".git",
                "svn_url": html,
                "homepage": None,
                "size": 1,
                "stargazers_count": 0,
                "watchers_count": 0,
                "language": "Python",
                "has_issues": True,
                "has_projects": False,
                "has_downloads": True,
                "has_wiki": False,
                "has_pages": False,
                "has_discussions": False,
                "forks_count": 0,
                "archived": False,
                "disabled": False,
                "open_issues_count": 0,
                "license": None,
                "allow_forking": True,
                "is_template": False,
                "topics": [],
                "visibility": "private" if private else "public",
                "forks": 0,
                "open_issues": 0,
                "watchers": 0,
                "default_branch": default_branch,
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": _iso(),
                "pushed_at": _iso(),
            }
            state = RepoState(json=repo)
            state.refs[f"heads/{default_branch}"] = head_sha or _sha(full_name, default_branch)
            self._repos[full_name] = state
            return copy.deepcopy(repo)

    def repo(self, full_name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._repo(full_name).json)

    def set_clone_url(self, full_name: str, clone_url: str) -> None:
        with self._lock:
            self._repo(full_name).json["clone_url"] = clone_url

    def set_file(self, full_name: str, path: str, text: str, ref: str | None = None) -> None:
        with self._lock:
            self._repo(full_name).files[(path.strip("/"), ref)] = text

    def remove_file(self, full_name: str, path: str, ref: str | None = None) -> None:
        with self._lock:
            self._repo(full_name).files.pop((path.strip("/"), ref), None)

    def set_file_source(self, full_name: str, source: Callable[[str, str | None], str | None]) -> None:
        with self._lock:
            self._repo(full_name).file_source = source

    def set_ref(self, full_name: str, ref: str, sha: str) -> None:
        """Point `heads/<branch>` (or `tags/<t>`) at a commit, as a push would."""
        with self._lock:
            self._repo(full_name).refs[ref.removeprefix("refs/")] = sha

    def set_permission(self, full_name: str, login: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        with self._lock:
            self.add_user(login)
            self._repo(full_name).permissions[login] = role

    def add_label(self, full_name: str, name: str, *, color: str = "ededed", description: str | None = None) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._ensure_label(self._repo(full_name), name, color=color, description=description))

    def _ensure_label(
        self, state: RepoState, name: str, *, color: str = "ededed", description: str | None = None
    ) -> dict[str, Any]:
        for existing in state.labels.values():
            if existing["name"].lower() == name.lower():
                return existing
        label_id = self._new_id()
        label = {
            "id": label_id,
            "node_id": _node_id("LA", label_id),
            "url": f"{self.url}/repos/{state.json['full_name']}/labels/{name}",
            "name": name,
            "color": color,
            "default": False,
            "description": description,
        }
        state.labels[name] = label
        return label

    def add_issue(
        self,
        full_name: str,
        *,
        title: str = "Something to do",
        body: str | None = "",
        user: str = "alice",
        labels: list[str] | None = None,
        state: str = "open",
    ) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._create_issue(self._repo(full_name), title, body, user, labels or [], None, state))

    def _create_issue(
        self,
        state: RepoState,
        title: str,
        body: str | None,
        login: str,
        labels: list[str],
        app: dict[str, Any] | None,
        issue_state: str = "open",
    ) -> dict[str, Any]:
        number = state.next_number
        state.next_number += 1
        issue_id = self._new_id()
        full_name = state.json["full_name"]
        api = f"{self.url}/repos/{full_name}/issues/{number}"
        now = _iso()
        issue = {
            "id": issue_id,
            "node_id": _node_id("I", issue_id),
            "url": api,
            "repository_url": f"{self.url}/repos/{full_name}",
            "labels_url": api + "/labels{/name}",
            "comments_url": api + "/comments",
            "events_url": api + "/events",
            "html_url": f"{HTML_ROOT}/{full_name}/issues/{number}",
            "number": number,
            "state": issue_state,
            "state_reason": None if issue_state == "open" else "completed",
            "title": title,
            "body": body,
            "user": self._user(login),
            "labels": [copy.deepcopy(self._ensure_label(state, name)) for name in labels],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": 0,
            "created_at": now,
            "updated_at": now,
            "closed_at": None if issue_state == "open" else now,
            "closed_by": None,
            "author_association": self._author_association(state, login),
            "performed_via_github_app": app,
            "reactions": self._reaction_summary(api + "/reactions", []),
        }
        state.issues[number] = issue
        for label in issue["labels"]:
            self._record_issue_event(state, number, "labeled", login, label)
        return issue

    def _record_issue_event(
        self, state: RepoState, number: int, event: str, login: str, label: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One entry of the issue's events API (who labelled or unlabelled it, and when)."""
        event_id = self._new_id()
        record: dict[str, Any] = {
            "id": event_id,
            "node_id": _node_id("LE", event_id),
            "url": f"{self.url}/repos/{state.json['full_name']}/issues/events/{event_id}",
            "actor": self._user(login),
            "event": event,
            "commit_id": None,
            "commit_url": None,
            "created_at": _iso(),
            "performed_via_github_app": None,
        }
        if label is not None:
            record["label"] = {"name": label["name"], "color": label.get("color", "ededed")}
        state.issue_events.setdefault(number, []).append(record)
        return record

    def label_issue(self, full_name: str, number: int, label: str, *, by: str) -> None:
        """A person (or another app) puts `label` on the issue, as the web UI would: an event records who."""
        with self._lock:
            state = self._repo(full_name)
            issue = self._issue(state, number)
            if label.lower() in (entry["name"].lower() for entry in issue["labels"]):
                return
            entry = copy.deepcopy(self._ensure_label(state, label))
            issue["labels"].append(entry)
            issue["updated_at"] = _iso()
            self._record_issue_event(state, number, "labeled", by, entry)

    def unlabel_issue(self, full_name: str, number: int, label: str, *, by: str) -> None:
        with self._lock:
            state = self._repo(full_name)
            issue = self._issue(state, number)
            gone = [entry for entry in issue["labels"] if entry["name"].lower() == label.lower()]
            issue["labels"] = [entry for entry in issue["labels"] if entry not in gone]
            for entry in gone:
                issue["updated_at"] = _iso()
                self._record_issue_event(state, number, "unlabeled", by, entry)

    def issue_events(self, full_name: str, number: int) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._repo(full_name).issue_events.get(number, []))

    def _reaction_summary(self, url: str, contents: list[str]) -> dict[str, Any]:
        summary: dict[str, Any] = {"url": url, "total_count": len(contents)}
        for content in REACTIONS:
            summary[content] = contents.count(content)
        return summary

    def add_comment(self, full_name: str, issue_number: int, body: str, *, user: str = "alice") -> dict[str, Any]:
        with self._lock:
            state = self._repo(full_name)
            return copy.deepcopy(self._create_comment(state, self._issue(state, issue_number), body, user, None))

    def delete_comment(self, full_name: str, comment_id: int) -> None:
        """A person deletes a comment (as in GitHub's web page)."""
        with self._lock:
            del self._repo(full_name).comments[comment_id]

    def _issue(self, state: RepoState, number: int) -> dict[str, Any]:
        try:
            return state.issues[number]
        except KeyError:
            raise _not_found() from None

    def _create_comment(
        self, state: RepoState, issue: dict[str, Any], body: str, login: str, app: dict[str, Any] | None
    ) -> dict[str, Any]:
        comment_id = self._new_id()
        full_name = state.json["full_name"]
        api = f"{self.url}/repos/{full_name}/issues/comments/{comment_id}"
        kind = "pull" if issue.get("pull_request") else "issues"
        now = _iso()
        comment = {
            "id": comment_id,
            "node_id": _node_id("IC", comment_id),
            "url": api,
            "html_url": f"{HTML_ROOT}/{full_name}/{kind}/{issue['number']}#issuecomment-{comment_id}",
            "issue_url": issue["url"],
            "body": body,
            "user": self._user(login),
            "created_at": now,
            "updated_at": now,
            "author_association": self._author_association(state, login),
            "performed_via_github_app": app,
            "reactions": self._reaction_summary(api + "/reactions", []),
        }
        state.comments[comment_id] = comment
        issue["comments"] += 1
        issue["updated_at"] = now
        return comment

    def add_pull(
        self,
        full_name: str,
        *,
        head: str,
        base: str | None = None,
        title: str = "A change",
        body: str | None = "",
        user: str = "alice",
        draft: bool = False,
        head_sha: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            state = self._repo(full_name)
            return copy.deepcopy(
                self._create_pull(state, head, base or state.json["default_branch"], title, body, user, None, draft, head_sha)
            )

    def _branch_json(self, state: RepoState, ref: str, sha: str) -> dict[str, Any]:
        owner = state.json["owner"]
        return {
            "label": f"{owner['login']}:{ref}",
            "ref": ref,
            "sha": sha,
            "user": copy.deepcopy(owner),
            "repo": copy.deepcopy(state.json),
        }

    def _create_pull(
        self,
        state: RepoState,
        head: str,
        base: str,
        title: str,
        body: str | None,
        login: str,
        app: dict[str, Any] | None,
        draft: bool,
        head_sha: str | None = None,
    ) -> dict[str, Any]:
        branch = head.split(":", 1)[-1]
        full_name = state.json["full_name"]
        sha = head_sha or state.refs.get(f"heads/{branch}") or _sha(full_name, branch, time.time())
        base_sha = state.refs.get(f"heads/{base}") or _sha(full_name, base)
        issue = self._create_issue(state, title, body, login, [], app)
        number = issue["number"]
        api = f"{self.url}/repos/{full_name}/pulls/{number}"
        html = f"{HTML_ROOT}/{full_name}/pull/{number}"
        issue["pull_request"] = {
            "url": api,
            "html_url": html,
            "diff_url": html + ".diff",
            "patch_url": html + ".patch",
            "merged_at": None,
        }
        issue["html_url"] = html
        pull_id = self._new_id()
        pull = {
            "url": api,
            "id": pull_id,
            "node_id": _node_id("PR", pull_id),
            "html_url": html,
            "diff_url": html + ".diff",
            "patch_url": html + ".patch",
            "issue_url": issue["url"],
            "commits_url": api + "/commits",
            "review_comments_url": api + "/comments",
            "review_comment_url": f"{self.url}/repos/{full_name}/pulls/comments{{/number}}",
            "comments_url": issue["comments_url"],
            "statuses_url": f"{self.url}/repos/{full_name}/statuses/{sha}",
            "number": number,
            "state": "open",
            "locked": False,
            "title": title,
            "user": copy.deepcopy(issue["user"]),
            "body": body,
            "labels": [],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "closed_at": None,
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": self._branch_json(state, branch, sha),
            "base": self._branch_json(state, base, base_sha),
            "_links": {
                "self": {"href": api},
                "html": {"href": html},
                "issue": {"href": issue["url"]},
                "comments": {"href": issue["comments_url"]},
                "review_comments": {"href": api + "/comments"},
                "review_comment": {"href": f"{self.url}/repos/{full_name}/pulls/comments{{/number}}"},
                "commits": {"href": api + "/commits"},
                "statuses": {"href": f"{self.url}/repos/{full_name}/statuses/{sha}"},
            },
            "author_association": issue["author_association"],
            "auto_merge": None,
            "draft": draft,
            "merged": False,
            "mergeable": True,
            "rebaseable": True,
            "mergeable_state": "clean",
            "merged_by": None,
            "comments": 0,
            "review_comments": 0,
            "maintainer_can_modify": False,
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }
        state.pulls[number] = pull
        state.reviews[number] = []
        state.review_comments[number] = []
        return pull

    def _pull(self, state: RepoState, number: int) -> dict[str, Any]:
        try:
            return state.pulls[number]
        except KeyError:
            raise _not_found() from None

    def _pull_view(self, state: RepoState, number: int) -> dict[str, Any]:
        """A pull with the fields it shares with its issue brought up to date."""
        pull = self._pull(state, number)
        issue = state.issues[number]
        pull["labels"] = copy.deepcopy(issue["labels"])
        pull["comments"] = issue["comments"]
        pull["review_comments"] = len(state.review_comments.get(number, []))
        return copy.deepcopy(pull)

    def merge_pull(self, full_name: str, number: int, *, by: str = "alice") -> dict[str, Any]:
        """Merge as a human would in the web UI (Shepherd itself never merges)."""
        with self._lock:
            state = self._repo(full_name)
            pull = self._pull(state, number)
            now = _iso()
            pull.update(
                state="closed",
                merged=True,
                merged_at=now,
                closed_at=now,
                merged_by=self._user(by),
                merge_commit_sha=_sha(full_name, number, "merge"),
                mergeable=None,
                mergeable_state="unknown",
            )
            issue = state.issues[number]
            issue.update(state="closed", state_reason="completed", closed_at=now, updated_at=now, closed_by=self._user(by))
            issue["pull_request"]["merged_at"] = now
            state.refs[f"heads/{pull['base']['ref']}"] = pull["merge_commit_sha"]
            return copy.deepcopy(pull)

    def close_pull(self, full_name: str, number: int, *, by: str = "alice") -> dict[str, Any]:
        with self._lock:
            state = self._repo(full_name)
            pull = self._pull(state, number)
            now = _iso()
            pull.update(state="closed", closed_at=now, updated_at=now)
            state.issues[number].update(state="closed", state_reason="not_planned", closed_at=now, closed_by=self._user(by))
            return copy.deepcopy(pull)

    def add_review(
        self, full_name: str, number: int, *, user: str = "alice", state: str = "CHANGES_REQUESTED", body: str | None = ""
    ) -> dict[str, Any]:
        with self._lock:
            repo = self._repo(full_name)
            pull = self._pull(repo, number)
            review_id = self._new_id()
            review = {
                "id": review_id,
                "node_id": _node_id("PRR", review_id),
                "user": self._user(user),
                "body": body or "",
                "state": state.upper(),
                "html_url": f"{pull['html_url']}#pullrequestreview-{review_id}",
                "pull_request_url": pull["url"],
                "author_association": self._author_association(repo, user),
                "_links": {"html": {"href": f"{pull['html_url']}#pullrequestreview-{review_id}"},
                           "pull_request": {"href": pull["url"]}},
                "submitted_at": _iso(),
                "commit_id": pull["head"]["sha"],
            }
            repo.reviews[number].append(review)
            return copy.deepcopy(review)

    def add_review_comment(
        self,
        full_name: str,
        number: int,
        body: str,
        *,
        user: str = "alice",
        path: str = "README.md",
        line: int = 1,
        review_id: int | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            repo = self._repo(full_name)
            pull = self._pull(repo, number)
            comment_id = self._new_id()
            api = f"{self.url}/repos/{full_name}/pulls/comments/{comment_id}"
            html = f"{pull['html_url']}#discussion_r{comment_id}"
            now = _iso()
            comment = {
                "url": api,
                "pull_request_review_id": review_id,
                "id": comment_id,
                "node_id": _node_id("PRRC", comment_id),
                "diff_hunk": "@@ -1 +1 @@",
                "path": path,
                "position": line,
                "original_position": line,
                "commit_id": pull["head"]["sha"],
                "original_commit_id": pull["head"]["sha"],
                "user": self._user(user),
                "body": body,
                "created_at": now,
                "updated_at": now,
                "html_url": html,
                "pull_request_url": pull["url"],
                "author_association": self._author_association(repo, user),
                "_links": {"self": {"href": api}, "html": {"href": html}, "pull_request": {"href": pull["url"]}},
                "start_line": None,
                "original_start_line": None,
                "start_side": None,
                "line": line,
                "original_line": line,
                "side": "RIGHT",
                "subject_type": "line",
                "reactions": self._reaction_summary(api + "/reactions", []),
            }
            repo.review_comments[number].append(comment)
            return copy.deepcopy(comment)

    def add_check_suite(
        self,
        full_name: str,
        *,
        head_sha: str,
        head_branch: str | None = None,
        status: str = "completed",
        conclusion: str | None = "success",
        app_slug: str = "github-actions",
    ) -> dict[str, Any]:
        with self._lock:
            repo = self._repo(full_name)
            suite_id = self._new_id()
            suite = {
                "id": suite_id,
                "node_id": _node_id("CS", suite_id),
                "head_branch": head_branch,
                "head_sha": head_sha,
                "status": status,
                "conclusion": conclusion if status == "completed" else None,
                "url": f"{self.url}/repos/{full_name}/check-suites/{suite_id}",
                "before": None,
                "after": head_sha,
                "pull_requests": self._pulls_for_sha(repo, head_sha),
                "app": {"id": 15368, "slug": app_slug, "node_id": "MDM6QXBwMTUzNjg=", "name": app_slug,
                        "owner": copy.deepcopy(repo.json["owner"]), "description": "", "external_url": "",
                        "html_url": f"{HTML_ROOT}/apps/{app_slug}", "created_at": "2018-07-30T09:30:17Z",
                        "updated_at": "2024-01-01T00:00:00Z", "permissions": {}, "events": []},
                "repository": copy.deepcopy(repo.json),
                "created_at": _iso(),
                "updated_at": _iso(),
                "head_commit": {"id": head_sha, "tree_id": _sha(head_sha, "tree"), "message": "change",
                                "timestamp": _iso(), "author": {"name": "a", "email": "a@example.invalid"},
                                "committer": {"name": "a", "email": "a@example.invalid"}},
                "latest_check_runs_count": 0,
                "check_runs_url": f"{self.url}/repos/{full_name}/check-suites/{suite_id}/check-runs",
                "rerequestable": True,
                "runs_rerequestable": True,
            }
            repo.check_suites.append(suite)
            return copy.deepcopy(suite)

    def add_check_run(
        self,
        full_name: str,
        *,
        head_sha: str,
        name: str = "tests",
        status: str = "completed",
        conclusion: str | None = "success",
        check_suite_id: int | None = None,
        summary: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            repo = self._repo(full_name)
            if check_suite_id is None:
                suites = [s for s in repo.check_suites if s["head_sha"] == head_sha]
                check_suite_id = suites[-1]["id"] if suites else None
            if check_suite_id is None:
                check_suite_id = self.add_check_suite(full_name, head_sha=head_sha, status=status, conclusion=conclusion)["id"]
            for suite in repo.check_suites:
                if suite["id"] == check_suite_id:
                    suite["latest_check_runs_count"] += 1
            run_id = self._new_id()
            run = {
                "id": run_id,
                "head_sha": head_sha,
                "node_id": _node_id("CR", run_id),
                "external_id": "",
                "url": f"{self.url}/repos/{full_name}/check-runs/{run_id}",
                "html_url": f"{HTML_ROOT}/{full_name}/runs/{run_id}",
                "details_url": f"{HTML_ROOT}/{full_name}/runs/{run_id}",
                "status": status,
                "conclusion": conclusion if status == "completed" else None,
                "started_at": _iso(),
                "completed_at": _iso() if status == "completed" else None,
                "output": {"title": name, "summary": summary or conclusion or status, "text": None,
                           "annotations_count": 0,
                           "annotations_url": f"{self.url}/repos/{full_name}/check-runs/{run_id}/annotations"},
                "name": name,
                "check_suite": {"id": check_suite_id},
                "app": None,
                "pull_requests": self._pulls_for_sha(repo, head_sha),
            }
            repo.check_runs.append(run)
            return copy.deepcopy(run)

    def _pulls_for_sha(self, repo: RepoState, sha: str) -> list[dict[str, Any]]:
        found = []
        for pull in repo.pulls.values():
            if pull["head"]["sha"] == sha:
                found.append({
                    "url": pull["url"], "id": pull["id"], "number": pull["number"],
                    "head": {"ref": pull["head"]["ref"], "sha": sha,
                             "repo": {"id": repo.json["id"], "url": repo.json["url"], "name": repo.json["name"]}},
                    "base": {"ref": pull["base"]["ref"], "sha": pull["base"]["sha"],
                             "repo": {"id": repo.json["id"], "url": repo.json["url"], "name": repo.json["name"]}},
                })
        return found

    def add_hook_delivery(
        self,
        guid: str,
        event: str,
        action: str | None,
        status_code: int,
        *,
        installation_id: int | None = None,
        repository_id: int | None = None,
        redelivery: bool = False,
        delivered_at: str | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            delivery = {
                "id": self._new_id(),
                "guid": guid,
                "delivered_at": delivered_at or _iso(),
                "redelivery": redelivery,
                "duration": 0.05,
                "status": "OK" if 200 <= status_code < 300 else ("Invalid HTTP Response: %d" % status_code),
                "status_code": status_code,
                "event": event,
                "action": action,
                "installation_id": installation_id,
                "repository_id": repository_id,
                "throttled_at": None,
            }
            self._deliveries.append(delivery)
            return copy.deepcopy(delivery)

    def send_webhook(self, guid: str, event: str, action: str | None, body: bytes, headers: dict[str, str],
                     *, installation_id: int | None = None, redelivery: bool = False) -> int:
        """POST one signed delivery to `webhook_url` as GitHub does, and log the attempt in the App's
        delivery log with its answer (0 when nothing answered: Shepherd was down). Kept for redelivery."""
        status = 0
        if self.webhook_url is not None:
            request = urllib.request.Request(self.webhook_url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback only
                    status = answer.status
            except urllib.error.HTTPError as refused:
                status = refused.code
            except OSError:
                status = 0
        record = self.add_hook_delivery(guid, event, action, status, installation_id=installation_id,
                                        redelivery=redelivery)
        with self._lock:
            self._delivery_bodies[guid] = (body, dict(headers))
        return record["status_code"]

    def _send_again(self, guid: str, event: str, action: str | None, installation_id: int | None) -> None:
        body, headers = self._delivery_bodies[guid]
        self.send_webhook(guid, event, action, body, headers, installation_id=installation_id, redelivery=True)

    def add_manifest_code(self, code: str) -> None:
        with self._lock:
            self._manifest_codes.add(code)

    def inject(
        self,
        operation_id: str,
        *,
        status: int = 502,
        json: Any = None,  # noqa: A002 - mirrors aiohttp's keyword
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` valid, authorised requests to `operation_id` with this instead."""
        if operation_id not in self.spec.operations:
            raise KeyError(operation_id)
        with self._lock:
            self._injections.append(Injection(operation_id, status, json, dict(headers or {}), times))

    def expire_token(self, token: str) -> None:
        with self._lock:
            self._tokens[token].expires_at = _now() - dt.timedelta(seconds=1)

    def mint_token(
        self,
        installation_id: int,
        *,
        repositories: list[str] | None = None,
        permissions: dict[str, str] | None = None,
    ) -> str:
        """Mint an installation token directly (for tests that don't exercise the app flow)."""
        with self._lock:
            return self._mint(installation_id, repositories, permissions).token

    def _mint(
        self, installation_id: int, repositories: list[str] | None, permissions: dict[str, str] | None
    ) -> Token:
        token = Token(
            token="ghs_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36)),
            installation_id=installation_id,
            repositories=list(repositories if repositories is not None else self._installation_repos[installation_id]),
            permissions=dict(permissions or self._installations[installation_id]["permissions"]),
            expires_at=_now() + TOKEN_LIFETIME,
        )
        self._tokens[token.token] = token
        return token

    # ------------------------------------------------------------------ inspection

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, operation_id: str) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.operation_id == operation_id]

    def writes(self) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.method not in ("GET", "HEAD", "OPTIONS")]

    def tokens(self) -> list[Token]:
        with self._lock:
            return [copy.deepcopy(t) for t in self._tokens.values()]

    def comments(self, full_name: str, issue_number: int) -> list[dict[str, Any]]:
        with self._lock:
            state = self._repo(full_name)
            url = self._issue(state, issue_number)["url"]
            return [copy.deepcopy(c) for c in state.comments.values() if c["issue_url"] == url]

    def labels(self, full_name: str, issue_number: int) -> list[str]:
        with self._lock:
            return [label["name"] for label in self._issue(self._repo(full_name), issue_number)["labels"]]

    def repo_labels(self, full_name: str) -> list[str]:
        with self._lock:
            return [label["name"] for label in self._repo(full_name).labels.values()]

    def reactions(self, full_name: str, issue_number: int | None = None, comment_id: int | None = None) -> list[str]:
        with self._lock:
            state = self._repo(full_name)
            return [
                r["content"]
                for r in state.reactions
                if (issue_number is None or r["issue_number"] == issue_number)
                and (comment_id is None or r["comment_id"] == comment_id)
                and (comment_id is not None or issue_number is None or r["comment_id"] is None)
            ]

    def issue(self, full_name: str, number: int) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._issue(self._repo(full_name), number))

    def issues_titled(self, full_name: str, title: str) -> list[dict[str, Any]]:
        """Every issue of the repository with this title, oldest first (the dashboard issue is found so)."""
        with self._lock:
            state = self._repo(full_name)
            return [copy.deepcopy(state.issues[n]) for n in sorted(state.issues) if state.issues[n]["title"] == title]

    def pull(self, full_name: str, number: int) -> dict[str, Any]:
        with self._lock:
            return self._pull_view(self._repo(full_name), number)

    def pulls(self, full_name: str) -> list[dict[str, Any]]:
        with self._lock:
            state = self._repo(full_name)
            return [self._pull_view(state, n) for n in sorted(state.pulls)]

    def review_requests(self, full_name: str, number: int) -> list[str]:
        with self._lock:
            return [u["login"] for u in self._pull(self._repo(full_name), number)["requested_reviewers"]]

    @property
    def redeliveries(self) -> list[int]:
        with self._lock:
            return list(self._redeliveries)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[str]:
        """Return and forget the violations so far (for tests that provoke them on purpose)."""
        with self._lock:
            taken, self._violations = self._violations, []
            return taken

    def assert_clean(self) -> None:
        violations = self.violations
        if violations:
            raise AssertionError(
                MSG_VIOLATIONS.format(count=len(violations), lines="\n".join(f"  - {v}" for v in violations))
            )

    def is_token_valid(self, token: str, full_name: str, permission: str = "contents", level: str = "write") -> bool:
        with self._lock:
            record = self._tokens.get(token)
            if record is None or record.expires_at <= _now():
                return False
            installation = self._installations.get(record.installation_id)
            if installation is None or installation["suspended_at"]:
                return False
            if full_name not in record.repositories:
                return False
            granted = record.permissions.get(permission)
            return granted is not None and LEVELS.get(granted, 0) >= LEVELS.get(level, 99)

    # ------------------------------------------------------------------ request pipeline

    def hold(self) -> None:
        """Make every request wait, unanswered, until `release()`: GitHub being slow, for as long as a test likes."""
        with self._lock:
            self._held_open = threading.Event()
            self._held_count = 0

    def release(self) -> None:
        with self._lock:
            gate, self._held_open = self._held_open, None
        if gate is not None:
            gate.set()

    def wait_until_held(self, count: int = 1, timeout: float = 30.0) -> None:
        """Block until at least `count` requests are waiting on `hold()`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._held_count >= count:
                    return
            time.sleep(0.02)
        raise AssertionError(f"fewer than {count} requests reached the held fake GitHub")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        arrived = self.clock()
        with self._lock:
            gate = self._held_open
            if gate is not None:
                self._held_count += 1
        if gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait)
        call = Call(
            method=request.method,
            path=request.raw_path.split("?", 1)[0],
            operation_id=None,
            params={},
            query=dict(request.query),
            headers=dict(request.headers),
            body=None,
            at=arrived,
        )
        status, body, headers = self._answer(request.method, request.raw_path, call, raw)
        call.status = status
        with self._lock:
            self._calls.append(call)
        # Injected headers win, so a test can script a primary rate-limit answer (remaining 0).
        answer_headers = CIMultiDict(self._rate_headers())
        for name, value in headers.items():
            answer_headers[name] = value
        headers = answer_headers
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _rate_headers(self) -> dict[str, str]:
        with self._lock:
            used = len(self._calls)
        return {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": str(max(RATE_LIMIT - used, 0)),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
            "x-github-api-version-selected": "2022-11-28",
        }

    def _violate(self, text: str) -> None:
        log.warning("FakeGitHub violation: %s", text)
        with self._lock:
            self._violations.append(text)

    def _answer(self, method: str, raw_path: str, call: Call, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        path = call.path
        where = {"method": method, "path": path}
        if path.rstrip("/") == "/graphql":
            self._violate(VIOLATION_GRAPHQL.format(**where))
            return 403, Reply(403, MSG_NO_GRAPHQL).body(), {}
        try:
            op, params = self.spec.route(method, raw_path)
        except RouteNotFound:
            self._violate(VIOLATION_UNKNOWN_PATH.format(**where))
            return 404, _not_found().body(), {}
        call.operation_id = op.operation_id
        call.params = params
        where["operation_id"] = op.operation_id
        errors, data = self.spec.validate_request(op, call.query, raw)
        call.body = data
        if op.operation_id in FORBIDDEN_OPERATIONS:
            self._violate(VIOLATION_MERGE.format(**where))
            return 403, Reply(403, MSG_NEVER_MERGE).body(), {}
        if errors:
            self._violate(VIOLATION_INVALID.format(errors="; ".join(errors), **where))
            return 422, Reply(422, MSG_VALIDATION_FAILED, errors=[{"message": e} for e in errors]).body(), {}
        try:
            actor = self._authenticate(op, params, call.headers)
            if actor.token is not None:
                call.installation_id = actor.token.installation_id
            self._authorise(op, method, actor)
        except Reply as refusal:
            self._violate(refusal.violation or VIOLATION_AUTH.format(reason=refusal.message, **where))
            return refusal.status, refusal.body(), refusal.headers
        write = method not in ("GET", "HEAD", "OPTIONS")
        if write and call.installation_id is not None and self.enforce_retry_after:
            with self._lock:
                until = self._retry_after_until.get(call.installation_id, float("-inf"))
            if call.at < until:
                self._violate(VIOLATION_RETRY_AFTER.format(installation=call.installation_id,
                                                          early=until - call.at, **where))
        injected = self._take_injection(op.operation_id)
        if injected is not None:
            body = injected.json if injected.json is not None else Reply(injected.status, MSG_SERVER_ERROR).body()
            self._remember_retry_after(call, injected.status, injected.headers)
            return injected.status, body, dict(injected.headers)
        fault = self.fault_for(call) if (self.fault_for is not None and write
                                         and call.installation_id is not None) else None
        if fault is not None and fault.kind == Fault.LIMIT:
            headers = {"Retry-After": str(fault.retry_after)}
            self._remember_retry_after(call, 403, headers)
            return 403, Reply(403, MSG_SECONDARY_LIMIT).body(), headers
        if fault is not None and fault.kind == Fault.BEFORE:
            return 502, Reply(502, MSG_SERVER_ERROR).body(), {}
        status, body, headers = self._apply(op, method, path, params, call, data, actor, where)
        if fault is not None and fault.kind == Fault.AFTER and status < 400:
            return 502, Reply(502, MSG_SERVER_ERROR).body(), {}  # applied, but the answer is lost
        return status, body, headers

    def _remember_retry_after(self, call: Call, status: int, headers: dict[str, str]) -> None:
        retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
        if status in (403, 429) and retry_after is not None and call.installation_id is not None:
            with self._lock:
                until = call.at + float(retry_after)
                previous = self._retry_after_until.get(call.installation_id, float("-inf"))
                self._retry_after_until[call.installation_id] = max(previous, until)
                self._retry_after_announced[call.installation_id] = call.at

    def forget_retry_after_announced_since(self, since: float) -> None:
        """Drop the Retry-After windows announced at or after `since` (the fake's clock): their answer may
        have died with a client that was killed before it could read or keep it, so nobody could honour them."""
        with self._lock:
            for installation, announced in list(self._retry_after_announced.items()):
                if announced >= since:
                    self._retry_after_until.pop(installation, None)
                    del self._retry_after_announced[installation]

    def _apply(self, op: Operation, method: str, path: str, params: dict[str, str], call: Call, data: Any,
               actor: Actor, where: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        handler_name = _HANDLERS.get(op.operation_id)
        if handler_name is None:
            self._violate(VIOLATION_UNEXPECTED.format(**where))
            return 501, Reply(501, VIOLATION_UNEXPECTED.format(**where)).body(), {}
        req = Request(method=method, path=path, params=params, query=call.query, body=data, actor=actor)
        try:
            with self._lock:
                if "owner" in params and "repo" in params:
                    self._repo(req.repo_name())
                result = getattr(self, handler_name)(req)
        except Reply as reply:
            if reply.violation:
                self._violate(reply.violation)
            return reply.status, reply.body(), reply.headers
        except Exception as error:  # noqa: BLE001 - a bug in the fake must fail the test, not hang it
            log.exception("FakeGitHub crashed on %s %s", method, path)
            self._violate(VIOLATION_CRASH.format(error=error, **where))
            return 500, Reply(500, MSG_SERVER_ERROR).body(), {}
        if isinstance(result, tuple):
            status, body, *rest = result
            return status, body, (rest[0] if rest else {})
        return 200, result, {}

    def _take_injection(self, operation_id: str) -> Injection | None:
        with self._lock:
            for injection in self._injections:
                if injection.operation_id == operation_id and injection.times > 0:
                    injection.times -= 1
                    if injection.times == 0:
                        self._injections.remove(injection)
                    return injection
        return None

    def _credentials(self, headers: dict[str, str]) -> str | None:
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if value is None:
            return None
        scheme, _, credential = value.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not credential.strip():
            raise Reply(401, MSG_BAD_CREDENTIALS)
        return credential.strip()

    def _authenticate(self, op: Operation, params: dict[str, str], headers: dict[str, str]) -> Actor:
        template = op.template
        if template.startswith("/app-manifests/"):
            return Actor("anonymous")
        credential = self._credentials(headers)
        if template == "/app" or template.startswith("/app/") or op.operation_id in JWT_OPERATIONS:
            if credential is None:
                raise Reply(401, MSG_JWT_REQUIRED)
            self._verify_jwt(credential)
            return Actor("app")
        if credential is None:
            if op.operation_id == "users/get-by-username":
                return Actor("anonymous")
            raise Reply(401, MSG_REQUIRES_AUTH)
        with self._lock:
            token = self._tokens.get(credential)
            if token is None or token.expires_at <= _now():
                raise Reply(401, MSG_BAD_CREDENTIALS)
            installation = self._installations.get(token.installation_id)
            if installation is None:
                raise Reply(401, MSG_BAD_CREDENTIALS)
            if installation["suspended_at"]:
                raise Reply(403, MSG_SUSPENDED)
            if "owner" in params and "repo" in params:
                full_name = f"{params['owner']}/{params['repo']}"
                if full_name not in token.repositories:
                    # GitHub hides repositories a token cannot see.
                    raise Reply(404, MSG_NOT_FOUND)
            return Actor("installation", copy.deepcopy(token))

    def _verify_jwt(self, credential: str) -> None:
        try:
            claims = jwt.decode(
                credential,
                self.public_key_pem,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"], "verify_iat": False},
            )
        except jwt.PyJWTError as error:
            raise Reply(401, MSG_BAD_JWT, violation=None) from error
        now = time.time()
        if str(claims["iss"]) != str(self.app_id):
            raise Reply(401, MSG_JWT_ISSUER)
        if not isinstance(claims["iat"], (int, float)) or claims["iat"] > now + JWT_CLOCK_SLACK:
            raise Reply(401, MSG_JWT_IAT)
        if claims["exp"] - claims["iat"] > JWT_MAX_LIFETIME:
            raise Reply(401, MSG_JWT_EXPIRY)

    def _authorise(self, op: Operation, method: str, actor: Actor) -> None:
        """Check the token's permission for the operation's family, as GitHub's fine-grained rules do."""
        if actor.kind != "installation" or actor.token is None:
            return
        family = op.operation_id.split("/", 1)[0]
        needed = {
            "issues": ("issues", "pull_requests"),
            "reactions": ("issues", "pull_requests"),
            "pulls": ("pull_requests",),
            "checks": ("checks",),
        }.get(family)
        if op.operation_id in ("repos/get-content", "git/get-ref") or family == "git":
            needed = ("contents",)
        if needed is None:
            return
        level = "read" if method in ("GET", "HEAD") else "write"
        granted = actor.token.permissions
        if not any(LEVELS.get(granted.get(p, ""), 0) >= LEVELS[level] for p in needed):
            raise Reply(403, MSG_NOT_ACCESSIBLE, violation=VIOLATION_PERMISSION.format(
                permission="|".join(needed), level=level, method=method, path=op.template, operation_id=op.operation_id))

    # ------------------------------------------------------------------ pagination

    def _paginate(self, req: Request, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        try:
            per_page = min(max(int(req.query.get("per_page", DEFAULT_PER_PAGE)), 1), MAX_PER_PAGE)
            page = max(int(req.query.get("page", 1)), 1)
        except ValueError:
            raise _invalid("Pagination", "invalid", "per_page") from None
        last = max((len(items) + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(number: int, rel: str) -> str:
            query = dict(req.query, page=str(number), per_page=str(per_page))
            return f'<{self.url}{req.path}?{urlencode(query)}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        return chunk, ({"Link": ", ".join(links)} if links else {})

    def _page(self, req: Request, items: list[Any]) -> tuple[int, list[Any], dict[str, str]]:
        chunk, headers = self._paginate(req, items)
        return 200, copy.deepcopy(chunk), headers

    # ------------------------------------------------------------------ apps

    @operation("apps/get-authenticated")
    def _get_app(self, req: Request) -> Any:
        return self.app_json()

    @operation("apps/list-installations")
    def _list_installations(self, req: Request) -> Any:
        return self._page(req, [self._installations[i] for i in sorted(self._installations)])

    @operation("apps/get-installation")
    def _get_installation(self, req: Request) -> Any:
        installation = self._installations.get(req.number("installation_id"))
        if installation is None:
            raise _not_found()
        return copy.deepcopy(installation)

    @operation("apps/get-repo-installation")
    def _get_repo_installation(self, req: Request) -> Any:
        full_name = req.repo_name()
        for installation_id, repos in sorted(self._installation_repos.items()):
            if full_name in repos:
                return copy.deepcopy(self._installations[installation_id])
        raise _not_found()

    @operation("apps/list-repos-accessible-to-installation")
    def _list_installation_repos(self, req: Request) -> Any:
        token = req.actor.token
        assert token is not None  # _authenticate answered 401 to anyone without an installation token
        names = [n for n in self._installation_repos.get(token.installation_id, []) if n in token.repositories]
        chunk, headers = self._paginate(req, [self._repos[n].json for n in names])
        body = {"total_count": len(names), "repository_selection": "selected", "repositories": copy.deepcopy(chunk)}
        return 200, body, headers

    @operation("apps/create-installation-access-token")
    def _create_token(self, req: Request) -> Any:
        installation_id = req.number("installation_id")
        installation = self._installations.get(installation_id)
        if installation is None:
            raise _not_found()
        if installation["suspended_at"]:
            raise Reply(403, MSG_SUSPENDED)
        body = req.body or {}
        allowed = self._installation_repos[installation_id]
        repositories: list[str] | None = None
        if "repositories" in body or "repository_ids" in body:
            repositories = []
            owner = installation["account"]["login"]
            for name in body.get("repositories", []):
                full_name = name if "/" in name else f"{owner}/{name}"
                if full_name not in allowed:
                    raise _invalid("Installation", "invalid", "repositories",
                                   f"There is at least one repository that does not exist or is not accessible to the parent installation: {name}")
                repositories.append(full_name)
            by_id = {self._repos[n].json["id"]: n for n in allowed}
            for repo_id in body.get("repository_ids", []):
                if repo_id not in by_id:
                    raise _invalid("Installation", "invalid", "repository_ids")
                repositories.append(by_id[repo_id])
        granted = installation["permissions"]
        permissions = None
        if body.get("permissions"):
            permissions = {}
            for name, level in body["permissions"].items():
                if LEVELS.get(granted.get(name, ""), 0) < LEVELS.get(level, 99):
                    raise _invalid("Installation", "invalid", "permissions",
                                   f"The permissions requested are not granted to this installation: {name}")
                permissions[name] = level
        token = self._mint(installation_id, repositories, permissions)
        answer: dict[str, Any] = {
            "token": token.token,
            "expires_at": _iso(token.expires_at),
            "permissions": dict(token.permissions),
            "repository_selection": "selected",
        }
        if repositories is not None:
            answer["repositories"] = [copy.deepcopy(self._repos[n].json) for n in repositories]
        return 201, answer

    @operation("apps/list-webhook-deliveries")
    def _list_deliveries(self, req: Request) -> Any:
        deliveries = list(reversed(self._deliveries))
        if req.query.get("status") == "success":
            deliveries = [d for d in deliveries if d["status"] == "OK"]
        elif req.query.get("status") == "failure":
            deliveries = [d for d in deliveries if d["status"] != "OK"]
        per_page = min(max(int(req.query.get("per_page", DEFAULT_PER_PAGE)), 1), MAX_PER_PAGE)
        start = 0
        if "cursor" in req.query:
            start = int(req.query["cursor"])
        chunk = deliveries[start : start + per_page]
        headers = {}
        if start + per_page < len(deliveries):
            query = dict(req.query, cursor=str(start + per_page), per_page=str(per_page))
            headers["Link"] = f'<{self.url}{req.path}?{urlencode(query)}>; rel="next"'
        return 200, copy.deepcopy(chunk), headers

    @operation("apps/redeliver-webhook-delivery")
    def _redeliver(self, req: Request) -> Any:
        delivery_id = req.number("delivery_id")
        original = next((d for d in self._deliveries if d["id"] == delivery_id), None)
        if original is None:
            raise _not_found()
        self._redeliveries.append(delivery_id)
        if self.webhook_url is not None and original["guid"] in self._delivery_bodies:
            # GitHub sends the redelivery on its own time, after answering this request.
            threading.Thread(
                target=self._send_again, name="fake-github-redelivery", daemon=True,
                args=(original["guid"], original["event"], original["action"], original["installation_id"]),
            ).start()
            return 202, {}
        self.add_hook_delivery(
            original["guid"], original["event"], original["action"], self.redelivery_status_code,
            installation_id=original["installation_id"], repository_id=original["repository_id"], redelivery=True,
        )
        return 202, {}

    @operation("apps/create-from-manifest")
    def _convert_manifest(self, req: Request) -> Any:
        code = req.params["code"]
        if code not in self._manifest_codes:
            raise _not_found()
        self._manifest_codes.discard(code)
        answer = self.app_json()
        answer.update(
            pem=self.private_key_pem,
            webhook_secret=self.webhook_secret,
            client_id=f"Iv1.{self.app_id:016x}",
            client_secret=secrets.token_hex(20),
        )
        return 201, answer

    # ------------------------------------------------------------------ users and repos

    @operation("users/get-by-username")
    def _get_user(self, req: Request) -> Any:
        login = req.params["username"]
        user = self._users.get(login)
        if user is None:
            raise _not_found()
        return copy.deepcopy(user)

    @operation("repos/get")
    def _get_repo(self, req: Request) -> Any:
        return copy.deepcopy(self._repo(req.repo_name()).json)

    def _resolve_ref(self, state: RepoState, ref: str | None) -> str | None:
        """Map a ref given to the API onto the name files were stored under (None: the default branch)."""
        if ref is None:
            return None
        name = ref.removeprefix("refs/").removeprefix("heads/")
        if name == state.json["default_branch"]:
            return None
        return ref

    @operation("repos/get-content")
    def _get_content(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        path = req.params["path"].strip("/")
        ref = req.query.get("ref")
        key_ref = self._resolve_ref(state, ref)
        text = state.files.get((path, key_ref))
        if text is None and ref is not None:
            text = state.files.get((path, ref))
        if text is None and state.file_source is not None:
            text = state.file_source(path, ref)
        if text is None:
            raise _not_found()
        data = text.encode()
        full_name = req.repo_name()
        branch = ref or state.json["default_branch"]
        api = f"{self.url}/repos/{full_name}/contents/{path}?ref={branch}"
        html = f"{HTML_ROOT}/{full_name}/blob/{branch}/{path}"
        git = f"{self.url}/repos/{full_name}/git/blobs/{_blob_sha(data)}"
        encoded = base64.b64encode(data).decode()
        return {
            "type": "file",
            "encoding": "base64",
            "size": len(data),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "content": "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)) + "\n",
            "sha": _blob_sha(data),
            "url": api,
            "git_url": git,
            "html_url": html,
            "download_url": f"https://raw.githubusercontent.com/{full_name}/{branch}/{path}",
            "_links": {"self": api, "git": git, "html": html},
        }

    @operation("repos/get-collaborator-permission-level")
    def _get_permission(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        login = req.params["username"]
        if login not in self._users:
            raise _not_found()
        default = "none" if state.json["private"] else "read"
        role = state.permissions.get(login, default)
        if login == state.json["owner"]["login"]:
            role = "admin"
        legacy = LEGACY_ROLE[role]
        user = copy.deepcopy(self._users[login])
        user["permissions"] = {
            "admin": role == "admin",
            "maintain": role in ("admin", "maintain"),
            "push": role in ("admin", "maintain", "write"),
            "triage": role in ("admin", "maintain", "write", "triage"),
            "pull": role != "none",
        }
        user["role_name"] = role
        return {"permission": legacy, "role_name": role, "user": user}

    @operation("git/get-ref")
    def _get_ref(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        ref = req.params["ref"].removeprefix("refs/")
        sha = state.refs.get(ref)
        if sha is None:
            raise _not_found()
        full_name = req.repo_name()
        return {
            "ref": f"refs/{ref}",
            "node_id": _node_id("REF", int(sha[:6], 16)),
            "url": f"{self.url}/repos/{full_name}/git/refs/{ref}",
            "object": {"type": "commit", "sha": sha, "url": f"{self.url}/repos/{full_name}/git/commits/{sha}"},
        }

    # ------------------------------------------------------------------ issues

    @operation("issues/get")
    def _get_issue(self, req: Request) -> Any:
        return copy.deepcopy(self._issue(self._repo(req.repo_name()), req.number("issue_number")))

    @operation("issues/list-for-repo")
    def _list_issues(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        wanted_state = req.query.get("state", "open")
        wanted_labels = [n.strip().lower() for n in req.query.get("labels", "").split(",") if n.strip()]
        creator = req.query.get("creator")
        found = []
        for number in sorted(state.issues, reverse=req.query.get("direction", "desc") == "desc"):
            issue = state.issues[number]
            if wanted_state != "all" and issue["state"] != wanted_state:
                continue
            names = {label["name"].lower() for label in issue["labels"]}
            if not all(name in names for name in wanted_labels):
                continue
            if creator and issue["user"]["login"] != creator:
                continue
            found.append(issue)
        return self._page(req, found)

    @operation("issues/create")
    def _create_issue_op(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        login, app = self._actor_login(req.actor, "alice")
        labels = [label if isinstance(label, str) else label.get("name", "") for label in req.body.get("labels", [])]
        issue = self._create_issue(state, str(req.body["title"]), req.body.get("body"), login, labels, app)
        return 201, copy.deepcopy(issue)

    @operation("issues/update")
    def _update_issue(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        issue = self._issue(state, req.number("issue_number"))
        body = req.body or {}
        now = _iso()
        for key in ("title", "body"):
            if key in body:
                issue[key] = body[key] if key == "body" else str(body[key])
        if "state" in body and body["state"] != issue["state"]:
            issue["state"] = body["state"]
            issue["closed_at"] = now if body["state"] == "closed" else None
            issue["state_reason"] = body.get("state_reason") or ("completed" if body["state"] == "closed" else "reopened")
            if req.params["issue_number"] and int(req.params["issue_number"]) in state.pulls:
                state.pulls[issue["number"]].update(state=body["state"], closed_at=issue["closed_at"])
        if "labels" in body:
            names = [label if isinstance(label, str) else label.get("name", "") for label in body["labels"]]
            issue["labels"] = [copy.deepcopy(self._ensure_label(state, name)) for name in names]
        if "assignees" in body:
            issue["assignees"] = [self._user(login) for login in body["assignees"]]
            issue["assignee"] = issue["assignees"][0] if issue["assignees"] else None
        issue["updated_at"] = now
        return copy.deepcopy(issue)

    @operation("issues/list-comments")
    def _list_comments(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        url = self._issue(state, req.number("issue_number"))["url"]
        since = req.query.get("since")
        found = [c for c in state.comments.values() if c["issue_url"] == url and (since is None or c["updated_at"] >= since)]
        return self._page(req, found)

    def _comment(self, state: RepoState, comment_id: int) -> dict[str, Any]:
        try:
            return state.comments[comment_id]
        except KeyError:
            raise _not_found() from None

    @operation("issues/get-comment")
    def _get_comment(self, req: Request) -> Any:
        return copy.deepcopy(self._comment(self._repo(req.repo_name()), req.number("comment_id")))

    @operation("issues/create-comment")
    def _create_comment_op(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        issue = self._issue(state, req.number("issue_number"))
        login, app = self._actor_login(req.actor, "alice")
        return 201, copy.deepcopy(self._create_comment(state, issue, req.body["body"], login, app))

    @operation("issues/update-comment")
    def _update_comment(self, req: Request) -> Any:
        comment = self._comment(self._repo(req.repo_name()), req.number("comment_id"))
        comment["body"] = req.body["body"]
        comment["updated_at"] = _iso()
        return copy.deepcopy(comment)

    @operation("issues/list-labels-on-issue")
    def _list_issue_labels(self, req: Request) -> Any:
        issue = self._issue(self._repo(req.repo_name()), req.number("issue_number"))
        return self._page(req, issue["labels"])

    @operation("issues/add-labels")
    def _add_labels(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        issue = self._issue(state, req.number("issue_number"))
        names = [label if isinstance(label, str) else label["name"] for label in (req.body or {}).get("labels", [])]
        present = {label["name"].lower() for label in issue["labels"]}
        for name in names:
            if name.lower() not in present:
                issue["labels"].append(copy.deepcopy(self._ensure_label(state, name)))
                present.add(name.lower())
                self._record_issue_event(state, req.number("issue_number"), "labeled", self.bot_login,
                                         issue["labels"][-1])
        issue["updated_at"] = _iso()
        return copy.deepcopy(issue["labels"])

    @operation("issues/list-events")
    def _list_issue_events(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        number = req.number("issue_number")
        self._issue(state, number)
        return self._page(req, state.issue_events.get(number, []))

    @operation("issues/remove-label")
    def _remove_label(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        issue = self._issue(state, req.number("issue_number"))
        name = req.params["name"].lower()
        kept = [label for label in issue["labels"] if label["name"].lower() != name]
        if len(kept) == len(issue["labels"]):
            raise Reply(404, MSG_LABEL_MISSING)
        for entry in issue["labels"]:
            if entry not in kept:
                self._record_issue_event(state, req.number("issue_number"), "unlabeled", self.bot_login, entry)
        issue["labels"] = kept
        issue["updated_at"] = _iso()
        return copy.deepcopy(kept)

    @operation("issues/create-label")
    def _create_label(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        name = req.body["name"]
        if any(label["name"].lower() == name.lower() for label in state.labels.values()):
            raise _invalid("Label", "already_exists", "name")
        label = self._ensure_label(state, name, color=req.body.get("color", "ededed").lstrip("#"),
                                   description=req.body.get("description"))
        return 201, copy.deepcopy(label)

    @operation("issues/get-label")
    def _get_label(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        name = req.params["name"].lower()
        for label in state.labels.values():
            if label["name"].lower() == name:
                return copy.deepcopy(label)
        raise _not_found()

    # ------------------------------------------------------------------ reactions

    def _react(self, req: Request, issue_number: int, comment_id: int | None) -> Any:
        state = self._repo(req.repo_name())
        login, _app = self._actor_login(req.actor, "alice")
        content = req.body["content"]
        for reaction in state.reactions:
            if (reaction["issue_number"], reaction["comment_id"], reaction["content"], reaction["user"]["login"]) == (
                issue_number, comment_id, content, login
            ):
                return 200, self._reaction_json(reaction)
        reaction_id = self._new_id()
        reaction = {
            "id": reaction_id,
            "node_id": _node_id("REA", reaction_id),
            "user": self._user(login),
            "content": content,
            "created_at": _iso(),
            "issue_number": issue_number,
            "comment_id": comment_id,
        }
        state.reactions.append(reaction)
        target = state.comments[comment_id] if comment_id is not None else state.issues[issue_number]
        target["reactions"][content] += 1
        target["reactions"]["total_count"] += 1
        return 201, self._reaction_json(reaction)

    @staticmethod
    def _reaction_json(reaction: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in reaction.items() if k not in ("issue_number", "comment_id")}

    @operation("reactions/create-for-issue")
    def _react_issue(self, req: Request) -> Any:
        number = req.number("issue_number")
        self._issue(self._repo(req.repo_name()), number)
        return self._react(req, number, None)

    @operation("reactions/create-for-issue-comment")
    def _react_comment(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        comment = self._comment(state, req.number("comment_id"))
        number = int(comment["issue_url"].rsplit("/", 1)[-1])
        return self._react(req, number, comment["id"])

    # ------------------------------------------------------------------ pulls

    @operation("pulls/list")
    def _list_pulls(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        wanted_state = req.query.get("state", "open")
        head = req.query.get("head")
        base = req.query.get("base")
        found = []
        for number in sorted(state.pulls, reverse=req.query.get("direction", "desc") == "desc"):
            pull = self._pull_view(state, number)
            if wanted_state != "all" and pull["state"] != wanted_state:
                continue
            if head and pull["head"]["label"] != head and (":" in head or pull["head"]["ref"] != head):
                continue
            if base and pull["base"]["ref"] != base:
                continue
            found.append(pull)
        return self._page(req, found)

    @operation("pulls/get")
    def _get_pull(self, req: Request) -> Any:
        return self._pull_view(self._repo(req.repo_name()), req.number("pull_number"))

    @operation("pulls/create")
    def _create_pull_op(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        body = req.body
        if not body.get("title") and body.get("issue") is None:
            raise _invalid("PullRequest", "missing_field", "title")
        head = body["head"]
        label = head if ":" in head else f"{state.json['owner']['login']}:{head}"
        branch = label.split(":", 1)[1]
        for pull in state.pulls.values():
            if pull["state"] == "open" and pull["head"]["label"] == label:
                raise _invalid("PullRequest", "custom", "head", f"A pull request already exists for {label}.")
        if f"heads/{body['base']}" not in state.refs:
            raise _invalid("PullRequest", "invalid", "base")
        if branch == body["base"]:
            raise _invalid("PullRequest", "custom", "head", f"No commits between {body['base']} and {branch}")
        login, app = self._actor_login(req.actor, "alice")
        pull = self._create_pull(state, label, body["base"], body.get("title") or "", body.get("body"), login, app,
                                 bool(body.get("draft", False)))
        pull["maintainer_can_modify"] = bool(body.get("maintainer_can_modify", False))
        return 201, self._pull_view(state, pull["number"])

    @operation("pulls/update")
    def _update_pull(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        number = req.number("pull_number")
        pull = self._pull(state, number)
        issue = state.issues[number]
        body = req.body or {}
        now = _iso()
        for key in ("title", "body"):
            if key in body:
                pull[key] = issue[key] = body[key]
        if "state" in body and body["state"] != pull["state"]:
            if body["state"] == "open" and pull["merged"]:
                raise _invalid("PullRequest", "custom", "state", "state cannot be changed. The pull request has been merged.")
            pull["state"] = issue["state"] = body["state"]
            pull["closed_at"] = issue["closed_at"] = now if body["state"] == "closed" else None
        if "base" in body:
            pull["base"] = self._branch_json(state, body["base"], state.refs.get(f"heads/{body['base']}", _sha(body["base"])))
        if "maintainer_can_modify" in body:
            pull["maintainer_can_modify"] = body["maintainer_can_modify"]
        pull["updated_at"] = issue["updated_at"] = now
        return self._pull_view(state, number)

    @operation("pulls/request-reviewers")
    def _request_reviewers(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        number = req.number("pull_number")
        pull = self._pull(state, number)
        for login in req.body.get("reviewers", []):
            if login not in self._users or state.permissions.get(login, "none") == "none":
                raise _invalid("PullRequest", "custom", "reviewers",
                               "Reviews may only be requested from collaborators. One or more of the users or teams you specified is not a collaborator of the repository.")
            if login not in [u["login"] for u in pull["requested_reviewers"]]:
                pull["requested_reviewers"].append(self._user(login))
        return 201, self._pull_view(state, number)

    @operation("pulls/list-reviews")
    def _list_reviews(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        number = req.number("pull_number")
        self._pull(state, number)
        return self._page(req, state.reviews[number])

    @operation("pulls/list-review-comments")
    def _list_review_comments(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        number = req.number("pull_number")
        self._pull(state, number)
        return self._page(req, state.review_comments[number])

    # ------------------------------------------------------------------ checks

    def _sha_for(self, state: RepoState, ref: str) -> str:
        name = ref.removeprefix("refs/")
        return state.refs.get(name) or state.refs.get(f"heads/{name}") or ref

    @operation("checks/list-for-ref")
    def _list_check_runs(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        sha = self._sha_for(state, req.params["ref"])
        runs = [r for r in state.check_runs if r["head_sha"] == sha]
        if "check_name" in req.query:
            runs = [r for r in runs if r["name"] == req.query["check_name"]]
        if "status" in req.query:
            runs = [r for r in runs if r["status"] == req.query["status"]]
        if req.query.get("filter", "latest") == "latest":
            latest: dict[str, dict[str, Any]] = {}
            for run in runs:
                latest[run["name"]] = run
            runs = list(latest.values())
        chunk, headers = self._paginate(req, runs)
        return 200, {"total_count": len(runs), "check_runs": copy.deepcopy(chunk)}, headers

    @operation("checks/list-suites-for-ref")
    def _list_check_suites(self, req: Request) -> Any:
        state = self._repo(req.repo_name())
        sha = self._sha_for(state, req.params["ref"])
        suites = [s for s in state.check_suites if s["head_sha"] == sha]
        if "check_name" in req.query:
            names = {r["check_suite"]["id"] for r in state.check_runs if r["name"] == req.query["check_name"]}
            suites = [s for s in suites if s["id"] in names]
        chunk, headers = self._paginate(req, suites)
        return 200, {"total_count": len(suites), "check_suites": copy.deepcopy(chunk)}, headers
