"""The one door to GitHub, driven against the shared strict fake: refusals, retries, tokens, pacing."""

from __future__ import annotations

pytest_plugins = ["tests.fakes.plugin"]

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import gidgethub
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.github.auth import InstallationToken, TokenCache, make_jwt
from bot.github.client import GitHubApp, GitHubClient, GitHubRetry
from bot.metrics import Metrics
from bot.github.operations import REFUSED_GRAPHQL, REFUSED_MERGE, REFUSED_NOT_LISTED, OperationRefused
from bot.github.pacing import Priority, WriteBudget, WriteGate

INSTALLATION = 17
REPO = "octo-org/widgets"
OWNER, NAME = REPO.split("/")


class Sleeps:
    """An injected sleep that records every requested delay and moves a fake monotonic clock."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def fake(fake_github: Any) -> Any:
    fake_github.add_installation(INSTALLATION, account=OWNER, repositories=[REPO, "octo-org/other"])
    fake_github.add_issue(REPO, title="Add export", body="Please", user="alice")
    return fake_github


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def make_app(fake: Any, session: aiohttp.ClientSession, metrics: Metrics, sleeps: Sleeps, **kwargs: Any) -> GitHubApp:
    return GitHubApp(
        session,
        app_id=fake.app_id,
        private_key=fake.private_key_pem,
        api_url=fake.url,
        metrics=metrics,
        write_spacing=kwargs.pop("write_spacing", 0.0),
        sleep=sleeps.sleep,
        clock=sleeps.clock,
        **kwargs,
    )


@pytest.fixture
async def app(fake: Any, session: aiohttp.ClientSession, metrics: Metrics, sleeps: Sleeps) -> AsyncIterator[GitHubApp]:
    github = make_app(fake, session, metrics, sleeps)
    yield github
    await github.close()


def requests(metrics: Metrics, method: str, status: int | str) -> float:
    value = metrics.registry.get_sample_value(
        "shepherd_github_requests_total", {"method": method, "status": str(status)}
    )
    return value or 0.0


# ---------------------------------------------------------------- refused before the network


async def test_a_merge_is_refused_and_never_reaches_github(app: GitHubApp, fake: Any) -> None:
    gh = app.installation(INSTALLATION)
    with pytest.raises(OperationRefused) as refused:
        await gh.put(
            "/repos/{owner}/{repo}/pulls/{pull_number}/merge",
            {"owner": OWNER, "repo": NAME, "pull_number": 1},
            data={"merge_method": "squash"},
        )
    assert refused.value.reason == REFUSED_MERGE
    with pytest.raises(OperationRefused):
        await gh.post("/repos/{owner}/{repo}/merges", {"owner": OWNER, "repo": NAME}, data={"base": "main", "head": "agent/x"})
    assert fake.calls == []  # not even a token was minted for it


async def test_graphql_mutations_are_refused_and_never_reach_github(app: GitHubApp, fake: Any) -> None:
    mutation = 'mutation { enablePullRequestAutoMerge(input: {pullRequestId: "PR_1"}) { clientMutationId } }'
    with pytest.raises(OperationRefused) as refused:
        await app.installation(INSTALLATION).graphql(mutation)
    assert refused.value.reason == REFUSED_GRAPHQL
    with pytest.raises(OperationRefused):
        await app.installation(INSTALLATION).post("/graphql", data={"query": mutation})
    with pytest.raises(OperationRefused):
        await app._app_client.graphql(mutation)  # the App-level client refuses as well
    assert fake.calls == []


async def test_an_operation_outside_the_allow_list_never_reaches_github(app: GitHubApp, fake: Any) -> None:
    gh = app.installation(INSTALLATION)
    with pytest.raises(OperationRefused) as refused:
        await gh.delete("/repos/{owner}/{repo}", {"owner": OWNER, "repo": NAME})
    assert refused.value.reason == REFUSED_NOT_LISTED
    assert f"DELETE /repos/{REPO}" in str(refused.value)
    with pytest.raises(OperationRefused):
        await gh.put(
            "/repos/{owner}/{repo}/contents/{path}",
            {"owner": OWNER, "repo": NAME, "path": "README.md"},
            data={"message": "x", "content": ""},
        )
    with pytest.raises(OperationRefused):
        await gh.patch(
            "/repos/{owner}/{repo}/git/refs/{ref}",
            {"owner": OWNER, "repo": NAME, "ref": "heads/main"},
            data={"sha": "0" * 40, "force": True},
        )
    assert fake.calls == []


# ---------------------------------------------------------------- retries


async def test_a_429_with_retry_after_is_waited_out_then_retried(app: GitHubApp, fake: Any, sleeps: Sleeps, metrics: Metrics) -> None:
    fake.inject("issues/create-comment", status=429, headers={"Retry-After": "1"}, json={"message": "slow down"})
    comment = await app.installation(INSTALLATION).post(
        "/repos/{owner}/{repo}/issues/{issue_number}/comments",
        {"owner": OWNER, "repo": NAME, "issue_number": 1},
        data={"body": "Shepherd is on it."},
    )
    assert sleeps.delays == [1.0]
    assert [c.status for c in fake.calls_to("issues/create-comment")] == [429, 201]
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["Shepherd is on it."]
    assert comment["body"] == "Shepherd is on it."
    assert requests(metrics, "POST", 429) == 1
    assert requests(metrics, "POST", 201) == 2  # the token mint and the comment


async def test_a_502_is_retried_with_backoff(app: GitHubApp, fake: Any, sleeps: Sleeps, metrics: Metrics) -> None:
    fake.inject("issues/get", status=502, times=2)
    issue = await app.installation(INSTALLATION).getitem(
        "/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}
    )
    assert issue["title"] == "Add export"
    assert sleeps.delays == [1.0, 2.0]
    assert [c.status for c in fake.calls_to("issues/get")] == [502, 502, 200]
    assert requests(metrics, "GET", 502) == 2


async def test_a_comment_whose_502_came_after_github_made_it_is_not_posted_again(app: GitHubApp, fake: Any) -> None:
    """Found by the chaos test: a 502 can come after GitHub created the comment, so the client does not repeat
    the create (that made a second question comment); its caller looks for its marked comment and repeats."""
    from tests.fakes.github import Fault

    faults = [Fault(Fault.AFTER)]
    fake.fault_for = lambda call: faults.pop() if faults and call.operation_id == "issues/create-comment" else None
    with pytest.raises(gidgethub.GitHubException):
        await app.installation(INSTALLATION).post(
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            {"owner": OWNER, "repo": NAME, "issue_number": 1},
            data={"body": "Which colour?"},
        )
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["Which colour?"]


class ScriptedClient(GitHubClient):
    """The real client with only the HTTP exchange replaced by scripted answers (gidgethub's own test style)."""

    def __init__(self, answers: list[Any], **kwargs: Any) -> None:
        super().__init__(None, metrics=kwargs.pop("metrics", Metrics()), **kwargs)  # type: ignore[arg-type]
        self.answers = answers
        self.sent: list[tuple[str, str]] = []

    async def _send(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sent.append((method, url))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


JSON = {"content-type": "application/json"}


async def test_a_403_with_no_remaining_rate_limit_waits_until_the_reset(sleeps: Sleeps) -> None:
    now = 1_700_000_000.0
    limited = {**JSON, "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 30)}
    client = ScriptedClient(
        [(403, limited, b'{"message": "API rate limit exceeded"}'), (200, {**JSON, "x-ratelimit-remaining": "4999"}, b'{"number": 1}')],
        sleep=sleeps.sleep,
        wall_clock=lambda: now,
    )
    issue = await client.getitem("/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}, oauth_token="t")
    assert issue == {"number": 1}
    assert sleeps.delays == [31.0]  # until the reset, plus one second for its whole-second resolution
    assert client.sent == [("GET", "https://api.github.com/repos/octo-org/widgets/issues/1")] * 2


async def test_a_secondary_limit_without_hints_waits_a_minute(sleeps: Sleeps) -> None:
    client = ScriptedClient(
        [(403, JSON, b'{"message": "You have exceeded a secondary rate limit."}'), (201, JSON, b'{"id": 5}')],
        sleep=sleeps.sleep,
    )
    created = await client.post("/repos/a/b/issues/1/comments", data={"body": "x"}, oauth_token="t")
    assert created == {"id": 5}
    assert sleeps.delays == [60.0]


async def test_a_refused_request_never_reaches_the_http_layer(sleeps: Sleeps) -> None:
    client = ScriptedClient([], sleep=sleeps.sleep)
    with pytest.raises(OperationRefused):
        await client.put("/repos/a/b/pulls/1/merge", data={}, oauth_token="t")
    with pytest.raises(OperationRefused):
        await client.graphql("mutation { mergePullRequest(input: {}) { clientMutationId } }")
    assert client.sent == []


async def test_urls_are_relative_to_a_ghes_api_url(sleeps: Sleeps) -> None:
    ghes = "https://ghe.example.test/api/v3"
    client = ScriptedClient([(200, JSON, b'{"full_name": "a/b"}')], sleep=sleeps.sleep, base_url=ghes)
    assert await client.getitem("/repos/{owner}/{repo}", {"owner": "a", "repo": "b"}, oauth_token="t") == {"full_name": "a/b"}
    with pytest.raises(OperationRefused):
        await client.put("/repos/a/b/pulls/1/merge", data={}, oauth_token="t")
    assert client.sent == [("GET", f"{ghes}/repos/a/b")]


async def test_a_lost_connection_is_retried_for_reads_only(sleeps: Sleeps) -> None:
    lost = aiohttp.ClientConnectionError("connection reset")
    client = ScriptedClient([lost, (200, JSON, b'{"number": 1}'), lost], sleep=sleeps.sleep)
    assert await client.getitem("/repos/a/b/issues/1", oauth_token="t") == {"number": 1}
    assert sleeps.delays == [1.0]
    # A comment may have been created before the connection broke: repeating it could post it twice.
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post("/repos/a/b/issues/1/comments", data={"body": "x"}, oauth_token="t")
    assert len(client.sent) == 3 and sleeps.delays == [1.0]


async def test_the_write_priority_reaches_the_installation_s_gate(sleeps: Sleeps) -> None:
    gate = WriteGate(WriteBudget(min_spacing=1.0), clock=sleeps.clock, sleep=sleeps.sleep)
    created = (201, JSON, b"{}")
    client = ScriptedClient([created] * 3, sleep=sleeps.sleep, installation_id=INSTALLATION, gate=gate)
    await client.post("/repos/a/b/issues/1/comments", data={"body": "first"}, oauth_token="t")
    edit = asyncio.create_task(
        client.patch("/repos/a/b/issues/comments/9", data={"body": "status"}, oauth_token="t", priority=Priority.LOW)
    )
    question = asyncio.create_task(
        client.post("/repos/a/b/issues/1/comments", data={"body": "?"}, oauth_token="t", priority=Priority.URGENT)
    )
    await asyncio.gather(edit, question)
    assert [method for method, _ in client.sent] == ["POST", "POST", "PATCH"]
    assert sleeps.delays == [1.0, 1.0]


async def test_the_fake_can_answer_a_primary_rate_limit_403(app: GitHubApp, fake: Any, sleeps: Sleeps) -> None:
    reset = int(time.time()) + 30
    fake.inject(
        "issues/get",
        status=403,
        json={"message": "API rate limit exceeded for installation ID 17."},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )
    await app.installation(INSTALLATION).getitem(
        "/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}
    )
    assert len(sleeps.delays) == 1 and 28.0 <= sleeps.delays[0] <= 31.0


async def test_a_permission_403_is_not_retried(app: GitHubApp, fake: Any, sleeps: Sleeps) -> None:
    fake.inject("issues/get", status=403, json={"message": "Resource not accessible by integration"})
    with pytest.raises(gidgethub.BadRequest) as failed:
        await app.installation(INSTALLATION).getitem(
            "/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}
        )
    assert failed.value.status_code == 403
    assert sleeps.delays == []
    assert len(fake.calls_to("issues/get")) == 1


async def test_retries_stop_after_the_configured_attempts(fake: Any, session: aiohttp.ClientSession, metrics: Metrics, sleeps: Sleeps) -> None:
    github = make_app(fake, session, metrics, sleeps, retry=GitHubRetry(attempts=3, backoff=0.5))
    fake.inject("issues/get", status=503, times=5)
    with pytest.raises(gidgethub.GitHubBroken):
        await github.installation(INSTALLATION).getitem(
            "/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}
        )
    assert len(fake.calls_to("issues/get")) == 3
    assert sleeps.delays == [0.5, 1.0]
    assert fake.take_violations() == []


async def test_a_wait_longer_than_the_cap_is_not_attempted(fake: Any, session: aiohttp.ClientSession, metrics: Metrics, sleeps: Sleeps) -> None:
    github = make_app(fake, session, metrics, sleeps, retry=GitHubRetry(max_wait=10.0))
    fake.inject("issues/create-comment", status=429, headers={"Retry-After": "3600"}, json={"message": "slow down"})
    with pytest.raises(gidgethub.BadRequest) as failed:
        await github.installation(INSTALLATION).post(
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            {"owner": OWNER, "repo": NAME, "issue_number": 1},
            data={"body": "hello"},
        )
    assert failed.value.status_code == 429
    assert sleeps.delays == []
    assert fake.comments(REPO, 1) == []


# ---------------------------------------------------------------- tokens


async def test_the_installation_token_is_minted_once_and_again_after_forget(app: GitHubApp, fake: Any) -> None:
    gh = app.installation(INSTALLATION)
    url, url_vars = "/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}
    for _ in range(3):
        await gh.getitem(url, url_vars)
    assert len(fake.calls_to("apps/create-installation-access-token")) == 1
    used = {c.headers["Authorization"] for c in fake.calls_to("issues/get")}
    assert len(used) == 1 and used.pop().startswith("token ghs_")

    app.forget_installation(INSTALLATION)
    await gh.getitem(url, url_vars)
    assert len(fake.calls_to("apps/create-installation-access-token")) == 2
    assert len({c.headers["Authorization"] for c in fake.calls_to("issues/get")}) == 2


async def test_a_401_re_mints_the_token_once(app: GitHubApp, fake: Any) -> None:
    gh = app.installation(INSTALLATION)
    url, url_vars = "/repos/{owner}/{repo}/issues/{issue_number}", {"owner": OWNER, "repo": NAME, "issue_number": 1}
    await gh.getitem(url, url_vars)
    fake.expire_token(fake.tokens()[-1].token)
    issue = await gh.getitem(url, url_vars)
    assert issue["number"] == 1
    assert [c.status for c in fake.calls_to("issues/get")] == [200, 401, 200]
    assert len(fake.calls_to("apps/create-installation-access-token")) == 2
    refused = fake.take_violations()  # the strict fake reports the expired token it refused
    assert len(refused) == 1 and "Bad credentials" in refused[0]


async def test_a_push_token_is_scoped_to_one_repository_and_never_reused(app: GitHubApp, fake: Any) -> None:
    first = await app.mint_push_token(INSTALLATION, OWNER, NAME)
    second = await app.mint_push_token(INSTALLATION, OWNER, NAME)
    assert first != second
    minted = fake.calls_to("apps/create-installation-access-token")
    assert [c.body for c in minted] == [
        {"repositories": [NAME], "permissions": {"contents": "write", "pull_requests": "write"}}
    ] * 2
    record = next(t for t in fake.tokens() if t.token == first)
    assert record.repositories == [REPO]
    assert record.permissions == {"contents": "write", "pull_requests": "write"}
    assert fake.is_token_valid(first, REPO, "contents", "write")
    assert not fake.is_token_valid(first, "octo-org/other", "contents", "read")
    assert not fake.is_token_valid(first, REPO, "issues", "write")


async def test_app_calls_carry_a_jwt_the_strict_fake_accepts(app: GitHubApp, fake: Any) -> None:
    me = await app.get_app()
    assert me["slug"] == fake.app_slug
    installations = await app.list_installations()
    assert [i["id"] for i in installations] == [INSTALLATION]
    assert all(c.headers["Authorization"].startswith("bearer ") for c in fake.calls)


async def test_bot_identity_is_the_app_s_bot_user_and_cached(app: GitHubApp, fake: Any) -> None:
    login, email = await app.bot_identity()
    assert login == f"{fake.app_slug}[bot]"
    assert email == f"{fake.bot_id}+{fake.app_slug}[bot]@users.noreply.github.com"
    calls = len(fake.calls)
    assert await app.bot_identity() == (login, email)
    assert len(fake.calls) == calls


async def test_failed_deliveries_are_listed_and_redelivered(app: GitHubApp, fake: Any) -> None:
    fake.add_hook_delivery("guid-ok", "issues", "labeled", 202)
    failed = fake.add_hook_delivery("guid-bad", "issues", "labeled", 502)
    records = [r async for r in app.list_hook_deliveries(per_page=1)]
    assert [r["guid"] for r in records] == ["guid-bad", "guid-ok"]  # two pages, newest first
    await app.redeliver(failed["id"])
    assert fake.redeliveries == [failed["id"]]


# ---------------------------------------------------------------- pacing and metrics


async def test_writes_of_an_installation_are_spaced_and_reads_are_not(
    fake: Any, session: aiohttp.ClientSession, metrics: Metrics, sleeps: Sleeps
) -> None:
    github = make_app(fake, session, metrics, sleeps, write_spacing=1.0)
    gh = github.installation(INSTALLATION)
    url_vars = {"owner": OWNER, "repo": NAME, "issue_number": 1}
    await gh.getitem("/repos/{owner}/{repo}/issues/{issue_number}", url_vars)
    await gh.getitem("/repos/{owner}/{repo}/issues/{issue_number}", url_vars)
    assert sleeps.delays == []
    for text in ("one", "two", "three"):
        await gh.post("/repos/{owner}/{repo}/issues/{issue_number}/comments", url_vars, data={"body": text}, priority=Priority.URGENT)
    assert sleeps.delays == [1.0, 1.0]
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["one", "two", "three"]
    await github.close()


async def test_requests_and_the_rate_limit_are_measured(app: GitHubApp, fake: Any, metrics: Metrics) -> None:
    await app.installation(INSTALLATION).getitem("/repos/{owner}/{repo}", {"owner": OWNER, "repo": NAME})
    assert requests(metrics, "GET", 200) == 1
    assert requests(metrics, "POST", 201) == 1  # the token mint
    remaining = metrics.registry.get_sample_value(
        "shepherd_github_rate_limit_remaining", {"installation": str(INSTALLATION)}
    )
    # The fake counts every call it answered against its 5000.
    assert remaining == 5000 - len(fake.calls)
    assert b"shepherd_github_requests_total" in metrics.render()


# ---------------------------------------------------------------- credentials without a server


def test_the_app_jwt_is_backdated_and_short_lived() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = make_jwt(123, pem, now=1_700_000_000.7)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False})
    assert claims == {"iat": 1_700_000_000 - 60, "exp": 1_700_000_000 + 540, "iss": "123"}


def _token(name: str, expires_at: float) -> InstallationToken:
    return InstallationToken(token=name, expires_at=expires_at)


async def test_concurrent_requests_for_a_token_mint_once() -> None:
    minted: list[int] = []

    async def mint(installation_id: int) -> InstallationToken:
        minted.append(installation_id)
        name = f"t{len(minted)}"
        await asyncio.sleep(0)  # let the other callers pile up behind the lock
        return _token(name, 10_000.0)

    cache = TokenCache(mint, clock=lambda: 0.0)
    tokens = await asyncio.gather(*(cache.token(1) for _ in range(5)), cache.token(2))
    assert tokens == ["t1"] * 5 + ["t2"]
    assert minted == [1, 2]


async def test_a_token_near_its_expiry_or_past_the_ttl_is_re_minted() -> None:
    now = [0.0]
    lives = iter([10 * 60.0, 3600.0, 3600.0])
    minted: list[str] = []

    async def mint(installation_id: int) -> InstallationToken:
        minted.append(f"t{len(minted) + 1}")
        return _token(minted[-1], now[0] + next(lives))

    cache = TokenCache(mint, clock=lambda: now[0])
    assert await cache.token(1) == "t1"
    now[0] = 4 * 60.0  # 6 minutes of life left: still good
    assert await cache.token(1) == "t1"
    now[0] = 5 * 60.0 + 1  # under 5 minutes left
    assert await cache.token(1) == "t2"
    now[0] += 50 * 60.0  # the TTL ends before GitHub's hour does
    assert await cache.token(1) == "t3"


def test_token_repr_never_shows_the_secret() -> None:
    token = InstallationToken.from_response(
        {"token": "ghs_secret", "expires_at": (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    )
    assert "ghs_secret" not in repr(token)


# ---------------------------------------------------------------- rate limits pause the installation

OTHER_INSTALLATION = 23
OTHER_REPO = "acme/gadgets"
def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


SECONDARY_LIMIT = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}


def pauses(metrics: Metrics, installation: int, limit: str = "secondary") -> float:
    value = metrics.registry.get_sample_value(
        "shepherd_github_pauses_total", {"installation": str(installation), "limit": limit}
    )
    return value or 0.0


async def test_a_secondary_limit_on_one_write_holds_every_write_of_that_installation_only(
    fake: Any, session: aiohttp.ClientSession, metrics: Metrics
) -> None:
    """GitHub's 403 + Retry-After: 3 on one comment: no write of that installation reaches GitHub for 3 s.

    The real clock runs here (the window is GitHub's); the fake records when each request arrived.
    """
    fake.add_installation(OTHER_INSTALLATION, account="acme", repositories=[OTHER_REPO])
    fake.add_issue(OTHER_REPO, title="Fix export", body="Please", user="bob")
    github = GitHubApp(
        session, app_id=fake.app_id, private_key=fake.private_key_pem, api_url=fake.url, metrics=metrics,
        write_spacing=0.1,
    )
    gh, other = github.installation(INSTALLATION), github.installation(OTHER_INSTALLATION)
    mine = {"owner": OWNER, "repo": NAME, "issue_number": 1}
    theirs = {"owner": "acme", "repo": "gadgets", "issue_number": 1}
    comments = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
    reactions = "/repos/{owner}/{repo}/issues/{issue_number}/reactions"
    await gh.getitem("/repos/{owner}/{repo}/issues/{issue_number}", mine)  # tokens minted beforehand
    await other.getitem("/repos/{owner}/{repo}/issues/{issue_number}", theirs)
    fake.inject("issues/create-comment", status=403, headers={"Retry-After": "3"}, json=SECONDARY_LIMIT)

    limited_write = asyncio.create_task(gh.post(comments, mine, data={"body": "Shepherd is on it."}))
    while not fake.calls_to("issues/create-comment"):  # the 403 has been answered
        await asyncio.sleep(0.01)
    for _ in range(200):  # and has come back to Shepherd (bounded: old code never pauses)
        if pauses(metrics, INSTALLATION) or limited_write.done():
            break
        await asyncio.sleep(0.01)
    paused = metrics.registry.get_sample_value("shepherd_github_pause_seconds", {"installation": str(INSTALLATION)})
    await asyncio.gather(
        limited_write,
        gh.post(reactions, mine, data={"content": "eyes"}),
        gh.post(comments, mine, data={"body": "A question"}, priority=Priority.URGENT),
        other.post(reactions, theirs, data={"content": "eyes"}),
        other.post(comments, theirs, data={"body": "Shepherd is on it."}),
    )

    limited = fake.calls_to("issues/create-comment")[0]
    assert limited.status == 403 and limited.installation_id == INSTALLATION
    window_end = limited.at + 3.0
    after = [c for c in fake.writes() if c.at > limited.at]
    held = [c for c in after if c.installation_id == INSTALLATION]
    went = [c for c in after if c.installation_id == OTHER_INSTALLATION]
    assert len(held) == 3 and all(c.at >= window_end for c in held), [(c.operation_id, c.at - limited.at) for c in held]
    # The other installation was not held: both its writes went before the paused one resumed.
    assert len(went) == 2 and max(c.at for c in went) < min(c.at for c in held)
    # Once the pause ends, the question goes first, then the waiting writes in their order.
    assert [c.body for c in held if c.operation_id == "issues/create-comment"][0] == {"body": "A question"}
    assert sorted(c["body"] for c in fake.comments(REPO, 1)) == ["A question", "Shepherd is on it."]
    # /metrics showed the pause while it lasted, for this installation only.
    assert paused is not None and 0 < paused <= 3
    assert metrics.registry.get_sample_value(
        "shepherd_github_pause_seconds", {"installation": str(OTHER_INSTALLATION)}) == 0.0
    assert pauses(metrics, INSTALLATION) == 1 and pauses(metrics, OTHER_INSTALLATION) == 0
    assert b"shepherd_github_pause_seconds" in metrics.render()
    await github.close()


async def test_a_primary_limit_on_a_successful_answer_holds_the_next_write_until_the_reset(sleeps: Sleeps) -> None:
    now = 1_700_000_000.0
    gate = WriteGate(WriteBudget(min_spacing=0.0), clock=sleeps.clock, sleep=sleeps.sleep)
    last = {**JSON, "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 30)}
    client = ScriptedClient([(201, last, b"{}"), (201, JSON, b"{}"), (200, JSON, b"{}")], sleep=sleeps.sleep,
                            installation_id=INSTALLATION, gate=gate, wall_clock=lambda: now)
    await client.post("/repos/a/b/issues/1/comments", data={"body": "first"}, oauth_token="t")
    assert sleeps.delays == []
    await client.post("/repos/a/b/issues/1/comments", data={"body": "second"}, oauth_token="t")
    assert sleeps.delays == [31.0]  # until the reset, plus its whole-second resolution
    await client.getitem("/repos/a/b/issues/1", oauth_token="t")  # the pause is over: reads go at once
    assert sleeps.delays == [31.0] and len(client.sent) == 3


async def test_a_secondary_limit_without_retry_after_holds_the_installation_a_minute(sleeps: Sleeps) -> None:
    """GitHub documents a wait of at least a minute when it names none; the next write waits, even
    when the limited one was given up."""
    gate = WriteGate(WriteBudget(min_spacing=0.0), clock=sleeps.clock, sleep=sleeps.sleep)
    client = ScriptedClient(
        [(403, JSON, json_bytes(SECONDARY_LIMIT)), (201, JSON, b"{}")],
        sleep=sleeps.sleep, installation_id=INSTALLATION, gate=gate, retry=GitHubRetry(attempts=1),
    )
    with pytest.raises(gidgethub.BadRequest):
        await client.post("/repos/a/b/issues/1/comments", data={"body": "x"}, oauth_token="t")
    assert gate.paused_for() == 60.0
    await client.post("/repos/a/b/issues/1/reactions", data={"content": "eyes"}, oauth_token="t")
    assert sleeps.delays == [60.0]


async def test_a_write_waits_for_the_answer_of_the_one_in_flight_and_its_limit(sleeps: Sleeps) -> None:
    """Writes of an installation go one at a time: one sent while another's 403 was on its way back
    would land inside the window GitHub is about to announce."""
    gate = WriteGate(WriteBudget(min_spacing=0.0), clock=sleeps.clock, sleep=sleeps.sleep)
    answer = asyncio.Event()
    sent_at: list[tuple[str, float]] = []

    class SlowAnswer(ScriptedClient):
        async def _send(self, method: str, url: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
            sent_at.append((url.rsplit("/", 1)[-1], sleeps.now))
            if len(sent_at) == 1:
                await answer.wait()
            return await super()._send(method, url, headers, body)

    limited = (403, {**JSON, "Retry-After": "5"}, json_bytes(SECONDARY_LIMIT))
    client = SlowAnswer([limited, (201, JSON, b"{}"), (201, JSON, b"{}")], sleep=sleeps.sleep,
                        installation_id=INSTALLATION, gate=gate, retry=GitHubRetry(attempts=1))
    first = asyncio.create_task(client.post("/repos/a/b/issues/1/comments", data={"body": "x"}, oauth_token="t"))
    for _ in range(5):
        await asyncio.sleep(0)
    second = asyncio.create_task(client.post("/repos/a/b/issues/1/reactions", data={"content": "eyes"}, oauth_token="t"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert [name for name, _ in sent_at] == ["comments"]  # the reaction waits for the comment's answer
    answer.set()
    with pytest.raises(gidgethub.BadRequest):
        await first
    await second
    assert sent_at == [("comments", 0.0), ("reactions", 5.0)]


async def test_a_pause_outlives_a_restart(fake: Any, session: aiohttp.ClientSession, metrics: Metrics, sleeps: Sleeps,
                                          tmp_path: Any) -> None:
    """Killed inside a Retry-After window, the next process must honour what GitHub asked of the last."""
    from bot.store.database import Store
    from bot.store.pauses import WritePauses

    store = Store.open(tmp_path / "shepherd.db")
    frozen = time.time()
    wall = lambda: frozen  # noqa: E731 - the restart happens at the same wall-clock moment
    url, url_vars = "/repos/{owner}/{repo}/issues/{issue_number}/comments", {"owner": OWNER, "repo": NAME, "issue_number": 1}
    before = make_app(fake, session, metrics, sleeps, pauses=WritePauses(store.db), wall_clock=wall,
                      retry=GitHubRetry(attempts=1))
    fake.inject("issues/create-comment", status=403, headers={"Retry-After": "30"}, json=SECONDARY_LIMIT)
    with pytest.raises(gidgethub.BadRequest):
        await before.installation(INSTALLATION).post(url, url_vars, data={"body": "first"})
    await before.close()  # the process dies

    after = make_app(fake, session, Metrics(), sleeps, pauses=WritePauses(store.db), wall_clock=wall)
    await after.installation(INSTALLATION).post(url, url_vars, data={"body": "after the restart"})
    assert sleeps.delays == [30.0]
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["after the restart"]
    await after.close()
    store.close()
