"""The one door to GitHub: allow-listed, paced, retrying REST clients for the App and its installations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import gidgethub
import gidgethub.aiohttp
from gidgethub import sansio

from bot.github import operations
from bot.github.auth import InstallationToken, TokenCache, make_jwt, push_token_request
from bot.metrics import Metrics
from bot.github.operations import OperationRefused
from bot.github.pacing import Pacer, Priority, WriteGate, current_priority

log = logging.getLogger(__name__)

UrlVars = Mapping[str, Any] | None

DEFAULT_API_URL = "https://api.github.com"
REQUESTER = "shepherd"
APP_LABEL = "app"  # the rate-limit gauge's label for calls made with the App's JWT
JWT_REUSE_SECONDS = 5 * 60  # a JWT lives 9 min; make a new one well before that
RATE_LIMIT_RESET_MARGIN = 1.0  # x-ratelimit-reset has whole seconds; do not arrive a hair early

# Writes that make a new thing each time they are sent. GitHub can answer 5xx after it made it, so the client
# never repeats one after a 5xx (a second comment would show): its caller looks for what it marked, then repeats.
CREATES_ANEW = frozenset({"issues/create", "issues/create-comment"})
RETRY_NOTE = "GitHub answered %s to %s %s (attempt %s of %s); retrying in %.1f s"
GIVE_UP_WAIT_NOTE = "GitHub asks %s %s to wait %.0f s, longer than the %.0f s cap; not retrying"
GIVE_UP_ATTEMPTS_NOTE = "GitHub answered %s to %s %s %s times; giving up"
PAUSE_NOTE = "installation %s: every write paused for %.1f s (GitHub's %s rate limit)"
LIMIT_PRIMARY = "primary"
LIMIT_SECONDARY = "secondary"


class PauseLog(Protocol):
    """Where pauses outlive the process: installation id -> wall-clock end (bot/store/pauses.py)."""

    def load(self) -> Mapping[int, float]: ...

    def save(self, installation_id: int, until: float) -> None: ...


@dataclass(frozen=True)
class GitHubRetry:
    """How hard the client insists: attempts per request and the longest single wait."""

    attempts: int = 5
    max_wait: float = 120.0
    backoff: float = 1.0  # first wait after a 5xx; doubles each attempt
    secondary_wait: float = 60.0  # GitHub: wait at least a minute after an unexplained limit

    def backoff_for(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_wait))


@contextlib.contextmanager
def write_priority(priority: Priority | None) -> Iterator[None]:
    """Give the writes made inside the block `priority` at their installation's gate."""
    if priority is None:
        yield
        return
    token = current_priority.set(priority)
    try:
        yield
    finally:
        current_priority.reset(token)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # aiohttp's headers ignore case; plain dicts from tests may not
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _is_rate_limited_403(headers: Mapping[str, str], body: bytes) -> bool:
    """A 403 that is a rate limit rather than a missing permission, which no retry would cure."""
    return (
        _header(headers, "retry-after") is not None
        or _header(headers, "x-ratelimit-remaining") == "0"
        or b"rate limit" in body.lower()
    )


class GitHubClient(gidgethub.aiohttp.GitHubAPI):
    """gidgethub's aiohttp client whose every request is allow-listed, paced, retried and counted.

    Only the raw HTTP call (`_request`) is replaced, so gidgethub's URL templates, headers and
    error mapping still run: a refused operation never reaches the network, and the status
    gidgethub sees is the last attempt's.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        metrics: Metrics,
        base_url: str = DEFAULT_API_URL,
        installation_id: int | None = None,
        gate: WriteGate | None = None,
        retry: GitHubRetry = GitHubRetry(),
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        requester: str = REQUESTER,
        on_pause: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__(session, requester, base_url=base_url)
        self._on_pause = on_pause
        self.installation_id = installation_id
        self._metrics = metrics
        self._gate = gate
        self._retry = retry
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._label = APP_LABEL if installation_id is None else str(installation_id)

    async def sleep(self, seconds: float) -> None:
        await self._sleep(seconds)

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        operation = operations.resolve(method, url, body, base_url=self.base_url)
        attempts = max(1, self._retry.attempts)
        attempt = 0
        while True:
            attempt += 1
            held = self._gate is not None and operation.write
            if self._gate is not None:
                if operation.write:
                    # One write of an installation in flight at a time (GitHub asks for serial writes),
                    # so a limit in its answer pauses the next one before it leaves.
                    await self._gate.wait(current_priority.get(), hold=True)
                else:
                    await self._gate.wait_out_pause()
            try:
                status, response_headers, response_body = await self._send(method, url, headers, body)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                if held:
                    self._gate.landed()  # type: ignore[union-attr]
                self._metrics.github_requests.labels(method=method, status="error").inc()
                # A write may have landed before the connection broke; only reads are safe to repeat.
                if operation.write or attempt >= attempts:
                    raise
                backoff = self._retry.backoff_for(attempt)
                log.warning(RETRY_NOTE, "no answer", method, operation.template, attempt, attempts, backoff)
                await self._sleep(backoff)
                continue
            except BaseException:
                if held:
                    self._gate.landed()  # type: ignore[union-attr]
                raise
            try:
                self._count(method, status, response_headers)
                limit = self._rate_limit_wait(status, response_headers, response_body, attempt)
                if limit is not None:
                    self._pause_installation(*limit)
            finally:
                if held:
                    self._gate.landed()  # type: ignore[union-attr]
            if status >= 500 and operation.operation_id in CREATES_ANEW:
                return status, response_headers, response_body  # it may have landed: the caller looks first
            delay = self._retry_delay(status, response_headers, response_body, attempt)
            if delay is None:
                return status, response_headers, response_body
            if attempt >= attempts:
                log.warning(GIVE_UP_ATTEMPTS_NOTE, status, method, operation.template, attempt)
                return status, response_headers, response_body
            if delay > self._retry.max_wait:
                log.warning(GIVE_UP_WAIT_NOTE, method, operation.template, delay, self._retry.max_wait)
                return status, response_headers, response_body
            log.warning(RETRY_NOTE, status, method, operation.template, attempt, attempts, delay)
            if limit is not None and self._gate is not None:
                continue  # the paused gate holds the retry, with every other write of the installation
            await self._sleep(delay)

    async def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP exchange, nothing else (tests replace only this, as gidgethub's own do)."""
        return await super()._request(method, url, headers, body)

    def _retry_delay(
        self, status: int, headers: Mapping[str, str], body: bytes, attempt: int
    ) -> float | None:
        """Seconds to wait before repeating a request GitHub may answer differently later, else None."""
        if status < 500 and status != 429 and not (status == 403 and _is_rate_limited_403(headers, body)):
            return None
        limit = self._rate_limit_wait(status, headers, body, attempt)
        if limit is not None:
            return limit[0]
        return self._retry.backoff_for(attempt)

    def _rate_limit_wait(
        self, status: int, headers: Mapping[str, str], body: bytes, attempt: int
    ) -> tuple[float, str] | None:
        """The wait GitHub asks of the whole installation after this answer, and which limit, else None.

        A secondary limit (403 or 429) names its wait in `Retry-After`, or GitHub's documentation
        asks for at least a minute; a primary limit (`x-ratelimit-remaining: 0`, even on an answer
        that succeeded) lasts until `x-ratelimit-reset`.
        """
        limited = status == 429 or (status == 403 and _is_rate_limited_403(headers, body))
        retry_after = _header(headers, "retry-after")
        if limited and retry_after is not None:
            with contextlib.suppress(ValueError):
                return max(0.0, float(retry_after)), LIMIT_SECONDARY
        reset = _header(headers, "x-ratelimit-reset")
        if _header(headers, "x-ratelimit-remaining") == "0" and reset is not None:
            with contextlib.suppress(ValueError):
                return max(0.0, float(reset) - self._wall_clock()) + RATE_LIMIT_RESET_MARGIN, LIMIT_PRIMARY
        if limited:
            wait = min(max(self._retry.secondary_wait, self._retry.backoff_for(attempt)), self._retry.max_wait)
            return wait, LIMIT_SECONDARY
        return None

    def _pause_installation(self, seconds: float, limit: str) -> None:
        """Hold every write of this installation for `seconds` (GitHub's limits are per installation)."""
        if self._gate is None or not self._gate.pause(seconds):
            return
        self._metrics.github_pauses.labels(installation=self._label, limit=limit).inc()
        log.warning(PAUSE_NOTE, self._label, seconds, limit)
        if self._on_pause is not None and self.installation_id is not None:
            self._on_pause(self.installation_id, self._wall_clock() + seconds)

    def _count(self, method: str, status: int, headers: Mapping[str, str]) -> None:
        self._metrics.github_requests.labels(method=method, status=str(status)).inc()
        remaining = _header(headers, "x-ratelimit-remaining")
        if remaining is not None:
            with contextlib.suppress(ValueError):
                self._metrics.github_rate_limit_remaining.labels(installation=self._label).set(float(remaining))

    async def graphql(self, query: str, *, endpoint: str = "", **variables: Any) -> Any:
        """Refused: GraphQL can merge (enablePullRequestAutoMerge), and Shepherd needs none of it."""
        raise OperationRefused("POST", "/graphql", operations.REFUSED_GRAPHQL)

    # Writes take the priority at which they wait at their installation's gate.
    async def post(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> Any:
        with write_priority(priority):
            return await super().post(url, url_vars, **kwargs)

    async def patch(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> Any:
        with write_priority(priority):
            return await super().patch(url, url_vars, **kwargs)

    async def put(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> Any:
        with write_priority(priority):
            return await super().put(url, url_vars, **kwargs)

    async def delete(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> None:
        with write_priority(priority):
            await super().delete(url, url_vars, **kwargs)


_HTTP_METHOD = {
    "getitem": "GET",
    "getstatus": "GET",
    "post": "POST",
    "patch": "PATCH",
    "put": "PUT",
    "delete": "DELETE",
}


def _is_unauthorized(exc: gidgethub.HTTPException) -> bool:
    return int(exc.status_code) == 401


class InstallationClient:
    """gidgethub-style calls as one installation, its token cached and re-minted once after a 401."""

    def __init__(self, client: GitHubClient, tokens: TokenCache, installation_id: int) -> None:
        self.installation_id = installation_id
        self._client = client
        self._tokens = tokens

    @property
    def rate_limit(self) -> Any:
        return self._client.rate_limit

    def _check(self, http_method: str, url: str, url_vars: UrlVars, data: Any = None) -> None:
        """Refuse before even minting a token for a request the client would refuse anyway."""
        full_url = sansio.format_url(url, url_vars, base_url=self._client.base_url)
        operations.resolve(http_method, full_url, data, base_url=self._client.base_url)

    async def _call(self, method: str, url: str, url_vars: UrlVars, **kwargs: Any) -> Any:
        http_method = _HTTP_METHOD[method]
        self._check(http_method, url, url_vars, kwargs.get("data"))
        for attempt in (1, 2):
            token = await self._tokens.token(self.installation_id)
            try:
                return await getattr(self._client, method)(url, url_vars, oauth_token=token, **kwargs)
            except gidgethub.BadRequest as exc:
                if not _is_unauthorized(exc) or attempt == 2:
                    raise
                self._tokens.forget(self.installation_id)

    async def getitem(self, url: str, url_vars: UrlVars = {}, **kwargs: Any) -> Any:
        return await self._call("getitem", url, url_vars, **kwargs)

    async def getstatus(self, url: str, url_vars: UrlVars = {}, **kwargs: Any) -> int:
        status = await self._call("getstatus", url, url_vars, **kwargs)
        if status == 401:
            self._tokens.forget(self.installation_id)
            status = await self._call("getstatus", url, url_vars, **kwargs)
        return int(status)

    async def getiter(self, url: str, url_vars: UrlVars = {}, **kwargs: Any) -> AsyncIterator[Any]:
        self._check("GET", url, url_vars)
        yielded = False
        for attempt in (1, 2):
            token = await self._tokens.token(self.installation_id)
            try:
                async for item in self._client.getiter(url, url_vars, oauth_token=token, **kwargs):
                    yielded = True
                    yield item
                return
            except gidgethub.BadRequest as exc:
                # After the first item, starting over would repeat items the caller already has.
                if not _is_unauthorized(exc) or attempt == 2 or yielded:
                    raise
                self._tokens.forget(self.installation_id)

    async def post(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        data: Any,
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> Any:
        return await self._call("post", url, url_vars, data=data, priority=priority, **kwargs)

    async def patch(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        data: Any,
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> Any:
        return await self._call("patch", url, url_vars, data=data, priority=priority, **kwargs)

    async def put(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        data: Any = b"",
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> Any:
        return await self._call("put", url, url_vars, data=data, priority=priority, **kwargs)

    async def delete(
        self,
        url: str,
        url_vars: UrlVars = {},
        *,
        data: Any = b"",
        priority: Priority | None = None,
        **kwargs: Any,
    ) -> None:
        await self._call("delete", url, url_vars, data=data, priority=priority, **kwargs)

    async def graphql(self, query: str, **variables: Any) -> Any:
        """Refused, as on every client: GraphQL can merge."""
        raise OperationRefused("POST", "/graphql", operations.REFUSED_GRAPHQL)


class GitHubApp:
    """The facade the rest of Shepherd uses: App-level calls with the JWT, installation clients."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        app_id: int | str,
        private_key: str | bytes,
        api_url: str = DEFAULT_API_URL,
        metrics: Metrics,
        write_spacing: float = 1.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        retry: GitHubRetry = GitHubRetry(),
        pauses: PauseLog | None = None,
        pacer: Any = None,
    ) -> None:
        """`pauses` keeps the pauses GitHub announced across restarts (a new process must honour them).

        `pacer` hands out the installations' write gates; by default this process's own (`Pacer`), on the
        Temporal engine one shared by every host and front end (`bot.temporal.permits.TemporalPacer`)."""
        self.app_id = app_id
        self._pauses = pauses
        self._known_pauses = dict(pauses.load()) if pauses is not None else {}
        self.api_url = api_url.rstrip("/")
        self._session = session
        self._private_key = private_key
        self._metrics = metrics
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._retry = retry
        self._pacer = pacer if pacer is not None else Pacer(min_spacing=write_spacing, clock=clock, sleep=sleep)
        self._app_client = self._client(None, gate=None)
        self._installations: dict[int, InstallationClient] = {}
        self.tokens = TokenCache(self._mint_installation_token, clock=wall_clock)
        self._jwt: tuple[str, float] | None = None
        self._app: dict[str, Any] | None = None
        self._identity: tuple[str, str] | None = None

    def _client(self, installation_id: int | None, gate: WriteGate | None) -> GitHubClient:
        return GitHubClient(
            self._session,
            on_pause=self._pauses.save if self._pauses is not None else None,
            metrics=self._metrics,
            base_url=self.api_url,
            installation_id=installation_id,
            gate=gate,
            retry=self._retry,
            sleep=self._sleep,
            wall_clock=self._wall_clock,
        )

    def app_jwt(self) -> str:
        """The App's JWT, reused for a few minutes."""
        now = self._wall_clock()
        if self._jwt is None or now - self._jwt[1] >= JWT_REUSE_SECONDS:
            self._jwt = (make_jwt(self.app_id, self._private_key, now), now)
        return self._jwt[0]

    def installation(self, installation_id: int) -> InstallationClient:
        """The client acting as installation `installation_id`; its writes share one pacing gate."""
        installation_id = int(installation_id)
        client = self._installations.get(installation_id)
        if client is None:
            gate = self._pacer.gate(installation_id)
            left = self._known_pauses.pop(installation_id, 0.0) - self._wall_clock()
            if left > 0:  # announced before a restart, and not over yet
                gate.pause(left)
            self._metrics.github_pause_seconds.labels(installation=str(installation_id)).set_function(
                gate.paused_for
            )
            gh = self._client(installation_id, gate=gate)
            client = InstallationClient(gh, self.tokens, installation_id)
            self._installations[installation_id] = client
        return client

    async def _mint_installation_token(self, installation_id: int) -> InstallationToken:
        data = await self._app_client.post(
            "/app/installations/{installation_id}/access_tokens",
            {"installation_id": installation_id},
            data=b"",
            jwt=self.app_jwt(),
        )
        return InstallationToken.from_response(data)

    async def mint_push_token(self, installation_id: int, owner: str, repo: str) -> str:
        """A fresh token for pushing to `owner/repo` only (contents and pull requests; never cached).

        GitHub names the repositories of an installation token without their owner, which is
        always the installation's account; `owner` keeps call sites unambiguous.
        """
        data = await self._app_client.post(
            "/app/installations/{installation_id}/access_tokens",
            {"installation_id": int(installation_id)},
            data=push_token_request(repo),
            jwt=self.app_jwt(),
        )
        log.info("minted a push token for %s/%s", owner, repo)
        return str(data["token"])

    def forget_installation(self, installation_id: int) -> None:
        """Drop an installation's cached token (uninstalled, suspended, repositories changed)."""
        self.tokens.forget(int(installation_id))

    async def get_app(self) -> dict[str, Any]:
        """`GET /app`: the App's own record (slug, id, permissions, events)."""
        self._app = await self._app_client.getitem("/app", jwt=self.app_jwt())
        return self._app

    async def bot_identity(self, installation_id: int | None = None) -> tuple[str, str]:
        """The bot's git identity, `(<slug>[bot], <id>+<slug>[bot]@users.noreply.github.com)`.

        `GET /users/...` does not accept the App's JWT; it is read with an installation token
        when one is named, else without credentials (the bot user is public).
        """
        if self._identity is None:
            app = self._app or await self.get_app()
            login = f"{app['slug']}[bot]"
            if installation_id is not None:
                user = await self.installation(installation_id).getitem("/users/{username}", {"username": login})
            else:
                user = await self._app_client.getitem("/users/{username}", {"username": login})
            self._identity = (login, f"{user['id']}+{login}@users.noreply.github.com")
        return self._identity

    async def list_installations(self) -> list[dict[str, Any]]:
        return [item async for item in self._app_client.getiter("/app/installations", jwt=self.app_jwt())]

    async def list_hook_deliveries(self, per_page: int = 100) -> AsyncIterator[dict[str, Any]]:
        """The App's webhook deliveries, newest first, page after page."""
        async for record in self._app_client.getiter(
            "/app/hook/deliveries{?per_page}", {"per_page": per_page}, jwt=self.app_jwt()
        ):
            yield record

    async def redeliver(self, delivery_id: int) -> None:
        await self._app_client.post(
            "/app/hook/deliveries/{delivery_id}/attempts",
            {"delivery_id": delivery_id},
            data=b"",
            jwt=self.app_jwt(),
        )

    async def close(self) -> None:
        """Stop the pacing gates' dispatchers; the session belongs to whoever passed it in."""
        await self._pacer.close()
