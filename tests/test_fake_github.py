"""Tests of the shared FakeGitHub: strictness, auth, state, and real clients against it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import gidgethub
import jwt
import pytest
from gidgethub import apps
from gidgethub.aiohttp import GitHubAPI

from tests.fakes.github import FakeGitHub
from tests.fakes.openapi import RouteNotFound

pytest_plugins = ["tests.fakes.plugin"]

REPO = "octo-org/widgets"
OTHER = "octo-org/gadgets"
INSTALLATION = 77


@pytest.fixture
def fake(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_installation(INSTALLATION, account="octo-org", repositories=[REPO, OTHER])
    fake_github.add_user("alice")
    fake_github.set_permission(REPO, "alice", "maintain")
    return fake_github


@pytest.fixture
async def gh():
    async with aiohttp.ClientSession() as session:
        yield session


def api(session: aiohttp.ClientSession, fake: FakeGitHub) -> GitHubAPI:
    return GitHubAPI(session, "shepherd-tests", base_url=fake.url)


async def mint(gh_api: GitHubAPI, fake: FakeGitHub, installation: int = INSTALLATION) -> str:
    answer = await apps.get_installation_access_token(
        gh_api, installation_id=str(installation), app_id=str(fake.app_id), private_key=fake.private_key_pem
    )
    return answer["token"]


def app_jwt(fake: FakeGitHub, **claims: object) -> str:
    now = int(time.time())
    payload = {"iat": now - 60, "exp": now + 300, "iss": str(fake.app_id), **claims}
    return jwt.encode(payload, fake.private_key_pem, algorithm="RS256")


async def raw(session: aiohttp.ClientSession, fake: FakeGitHub, method: str, path: str, *, token: str | None = None,
              scheme: str = "token", json: object = None) -> tuple[int, object, dict[str, str]]:
    headers = {"Accept": "application/vnd.github+json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    async with session.request(method, fake.url + path, headers=headers, json=json) as response:
        body = await response.json(content_type=None) if response.content_length != 0 else None
        return response.status, body, response.headers.copy()  # case-insensitive, as HTTP headers are


# ---------------------------------------------------------------- real clients


async def test_gidgethub_mints_token_comments_and_labels(fake: FakeGitHub, gh) -> None:
    issue = fake.add_issue(REPO, title="Add a widget", labels=["agent:go"])
    client = api(gh, fake)
    token = await mint(client, fake)
    assert token.startswith("ghs_") and len(token) == 40
    assert fake.is_token_valid(token, REPO)

    comment = await client.post(
        "/repos/{owner}/{repo}/issues/{number}/comments",
        {"owner": "octo-org", "repo": "widgets", "number": issue["number"]},
        data={"body": "On it."},
        oauth_token=token,
    )
    await client.post(
        "/repos/octo-org/widgets/issues/1/labels", data={"labels": ["agent:working"]}, oauth_token=token
    )
    await client.delete(
        "/repos/octo-org/widgets/issues/1/labels/{name}", {"name": "agent:go"}, oauth_token=token
    )

    assert [c["body"] for c in fake.comments(REPO, 1)] == ["On it."]
    assert comment["user"]["login"] == fake.bot_login == "shepherd-test[bot]"
    assert comment["user"]["type"] == "Bot"
    assert comment["performed_via_github_app"]["slug"] == fake.app_slug
    assert fake.labels(REPO, 1) == ["agent:working"]
    assert [c.operation_id for c in fake.writes()] == [
        "apps/create-installation-access-token",
        "issues/create-comment",
        "issues/add-labels",
        "issues/remove-label",
    ]
    assert fake.calls_to("issues/remove-label")[0].params["name"] == "agent:go"


async def test_pygithub_sync_client_works_against_the_fake(fake: FakeGitHub) -> None:
    import github

    fake.add_issue(REPO, title="Sync", labels=["bug"])
    fake.set_file(REPO, ".github/shepherd.yml", "agent: claude\n")

    def drive() -> tuple[str, list[str], str, str]:
        auth = github.Auth.AppAuth(fake.app_id, fake.private_key_pem)
        integration = github.GithubIntegration(auth=auth, base_url=fake.url)
        token = integration.get_access_token(INSTALLATION).token
        # PyGithub paces writes by default (1 s apart); loopback needs no pacing.
        client = github.Github(auth=github.Auth.Token(token), base_url=fake.url,
                               seconds_between_requests=0, seconds_between_writes=0)
        repo = client.get_repo(REPO)
        issue = repo.get_issue(1)
        issue.create_comment("from PyGithub")
        # PyGithub's add_to_labels posts a bare array, which GitHub's schema does not allow
        # (the fake refuses it; see test_schema_violation_is_refused), so labels go through edit().
        issue.edit(labels=["bug", "agent:go"])
        issue.remove_from_labels("bug")
        config = repo.get_contents(".github/shepherd.yml").decoded_content.decode()
        permission = repo.get_collaborator_permission("alice")
        client.close()
        return token, [label.name for label in issue.get_labels()], config, permission

    token, labels, config, permission = await asyncio.to_thread(drive)
    assert fake.is_token_valid(token, REPO)
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["from PyGithub"]
    assert fake.labels(REPO, 1) == labels == ["agent:go"]
    assert config == "agent: claude\n"
    assert permission == "write"  # maintain is reported as the legacy "write"


async def test_getiter_follows_link_pagination(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO)
    for index in range(7):
        fake.add_comment(REPO, 1, f"comment {index}")
    client = api(gh, fake)
    token = await mint(client, fake)
    bodies = [c["body"] async for c in client.getiter(
        "/repos/octo-org/widgets/issues/1/comments?per_page=3", oauth_token=token)]
    assert bodies == [f"comment {i}" for i in range(7)]
    pages = fake.calls_to("issues/list-comments")
    assert [c.query.get("page") for c in pages] == [None, "2", "3"]


# ---------------------------------------------------------------- strictness


async def test_undeclared_body_key_is_refused(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO)
    token = fake.mint_token(INSTALLATION)
    status, body, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/comments",
                                token=token, json={"body": "x", "bodyy": "typo"})
    assert status == 422
    assert "bodyy" in str(body)
    assert fake.comments(REPO, 1) == []
    (violation,) = fake.take_violations()
    assert "undeclared body key 'bodyy'" in violation


async def test_schema_violation_is_refused(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO)
    token = fake.mint_token(INSTALLATION)
    status, _, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/labels", token=token, json=["bare"])
    assert status == 422
    assert fake.labels(REPO, 1) == []
    assert "not valid under any of the given schemas" in fake.take_violations()[0]


async def test_unknown_path_is_404_and_a_violation(fake: FakeGitHub, gh) -> None:
    token = fake.mint_token(INSTALLATION)
    status, _, _ = await raw(gh, fake, "GET", "/repos/octo-org/widgets/no-such-thing", token=token)
    assert status == 404
    assert fake.take_violations() == ["unknown path: GET /repos/octo-org/widgets/no-such-thing"]


async def test_unimplemented_operation_is_501(fake: FakeGitHub, gh) -> None:
    token = fake.mint_token(INSTALLATION)
    status, _, _ = await raw(gh, fake, "GET", "/repos/octo-org/widgets/releases", token=token)
    assert status == 501
    (violation,) = fake.take_violations()
    assert "unexpected request" in violation and "repos/list-releases" in violation


async def test_merge_and_graphql_are_violations(fake: FakeGitHub, gh) -> None:
    fake.add_pull(REPO, head="agent/issue-1")
    token = fake.mint_token(INSTALLATION)
    status, _, _ = await raw(gh, fake, "PUT", "/repos/octo-org/widgets/pulls/1/merge", token=token, json={})
    assert status == 403
    status, _, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/merges", token=token,
                             json={"base": "main", "head": "agent/issue-1"})
    assert status == 403
    status, _, _ = await raw(gh, fake, "POST", "/graphql", token=token, json={"query": "mutation {}"})
    assert status == 403
    violations = fake.take_violations()
    assert len(violations) == 3
    assert all("never merge" in v for v in violations)
    assert fake.pull(REPO, 1)["merged"] is False


def test_assert_clean_lists_every_violation() -> None:
    fake = FakeGitHub()
    fake._violate("first")
    fake._violate("second")
    with pytest.raises(AssertionError) as raised:
        fake.assert_clean()
    assert "first" in str(raised.value) and "second" in str(raised.value)


# ---------------------------------------------------------------- auth


async def test_bad_jwts_are_refused(fake: FakeGitHub, gh) -> None:
    other_key = FakeGitHub(spec=fake.spec).private_key_pem
    now = int(time.time())
    bad = [
        jwt.encode({"iat": now - 60, "exp": now + 300, "iss": str(fake.app_id)}, other_key, algorithm="RS256"),
        app_jwt(fake, iss="999"),
        app_jwt(fake, iat=now + 600, exp=now + 900),
        app_jwt(fake, iat=now - 60, exp=now + 1200),
        app_jwt(fake, iat=now - 900, exp=now - 400),
        fake.mint_token(INSTALLATION),
    ]
    for token in bad:
        status, _, _ = await raw(gh, fake, "GET", "/app", token=token, scheme="Bearer")
        assert status == 401, token
    assert len(fake.take_violations()) == len(bad)
    status, body, _ = await raw(gh, fake, "GET", "/app", token=app_jwt(fake), scheme="Bearer")
    assert status == 200 and body["slug"] == "shepherd-test"


async def test_tokens_are_scoped_to_repositories_and_expire(fake: FakeGitHub, gh) -> None:
    fake.add_issue(OTHER)
    client = api(gh, fake)
    answer = await client.post(
        "/app/installations/{id}/access_tokens", {"id": INSTALLATION},
        data={"repositories": ["widgets"], "permissions": {"contents": "write", "issues": "read"}},
        jwt=app_jwt(fake),
    )
    token = answer["token"]
    assert [r["full_name"] for r in answer["repositories"]] == [REPO]
    assert fake.is_token_valid(token, REPO, "contents", "write")
    assert not fake.is_token_valid(token, OTHER, "contents", "read")
    assert not fake.is_token_valid(token, REPO, "issues", "write")

    status, _, _ = await raw(gh, fake, "GET", "/repos/octo-org/gadgets/issues/1", token=token)
    assert status == 404
    fake.add_issue(REPO)
    status, _, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/comments", token=token,
                             json={"body": "needs issues:write"})
    assert status == 403
    status, _, _ = await raw(gh, fake, "GET", "/repos/octo-org/widgets/issues/1", token=token)
    assert status == 200
    fake.expire_token(token)
    assert not fake.is_token_valid(token, REPO)
    status, _, _ = await raw(gh, fake, "GET", "/repos/octo-org/widgets/issues/1", token=token)
    assert status == 401
    status, _, _ = await raw(gh, fake, "GET", "/repos/octo-org/widgets/issues/1", token="ghs_made_up")
    assert status == 401
    assert len(fake.take_violations()) == 4


async def test_token_cannot_widen_the_installation(fake: FakeGitHub, gh) -> None:
    fake.add_repo("octo-org/secret")
    status, _, _ = await raw(gh, fake, "POST", f"/app/installations/{INSTALLATION}/access_tokens",
                             token=app_jwt(fake), scheme="Bearer", json={"repositories": ["secret"]})
    assert status == 422
    status, _, _ = await raw(gh, fake, "POST", f"/app/installations/{INSTALLATION}/access_tokens",
                             token=app_jwt(fake), scheme="Bearer", json={"permissions": {"administration": "write"}})
    assert status == 422
    status, _, _ = await raw(gh, fake, "POST", "/app/installations/999/access_tokens",
                             token=app_jwt(fake), scheme="Bearer")
    assert status == 404
    assert fake.tokens() == []


# ---------------------------------------------------------------- routing


def test_routing_decodes_parameters_after_matching(github_openapi) -> None:
    op, params = github_openapi.route("DELETE", "/repos/o/r/issues/3/labels/agent%3Ago")
    assert (op.operation_id, params["name"]) == ("issues/remove-label", "agent:go")
    op, params = github_openapi.route("GET", "/repos/o/r/git/ref/heads%2Fagent%2Fissue-1")
    assert (op.operation_id, params["ref"]) == ("git/get-ref", "heads/agent/issue-1")
    op, params = github_openapi.route("GET", "/repos/o/r/contents/.github/shepherd.yml?ref=main")
    assert (op.operation_id, params["path"]) == ("repos/get-content", ".github/shepherd.yml")
    op, _ = github_openapi.route("GET", "/repos/o/r/pulls/comments")
    assert op.operation_id == "pulls/list-review-comments-for-repo"
    with pytest.raises(RouteNotFound):
        github_openapi.route("GET", "/nope")


def test_every_operation_routes_back_to_itself(github_openapi) -> None:
    import re

    misrouted = []
    for operation_id, op in github_openapi.operations.items():
        path = re.sub(r"\{([^}]+)\}", lambda m: "v" + m.group(1).replace("_", ""), op.template)
        if github_openapi.route(op.method, path)[0].operation_id != operation_id:
            misrouted.append(operation_id)
    assert misrouted == []


# ---------------------------------------------------------------- operations and their errors


async def test_labels_reactions_and_their_errors(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO)
    token = fake.mint_token(INSTALLATION)
    client = api(gh, fake)
    label = await client.post("/repos/octo-org/widgets/labels", data={"name": "agent:go", "color": "0e8a16"},
                              oauth_token=token)
    assert label["name"] == "agent:go"
    assert fake.repo_labels(REPO) == ["agent:go"]
    with pytest.raises(gidgethub.BadRequest) as duplicate:
        await client.post("/repos/octo-org/widgets/labels", data={"name": "AGENT:GO"}, oauth_token=token)
    assert duplicate.value.status_code == 422
    with pytest.raises(gidgethub.BadRequest) as missing:
        await client.delete("/repos/octo-org/widgets/issues/1/labels/{name}", {"name": "agent:go"}, oauth_token=token)
    assert missing.value.status_code == 404
    assert (await client.getitem("/repos/octo-org/widgets/labels/agent%3Ago", oauth_token=token))["color"] == "0e8a16"

    status, _, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/reactions", token=token,
                             json={"content": "eyes"})
    assert status == 201
    status, _, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/reactions", token=token,
                             json={"content": "eyes"})
    assert status == 200
    comment = fake.add_comment(REPO, 1, "/agent go")
    status, body, _ = await raw(gh, fake, "POST", f"/repos/octo-org/widgets/issues/comments/{comment['id']}/reactions",
                                token=token, json={"content": "+1"})
    assert status == 201 and body["user"]["login"] == fake.bot_login
    assert fake.reactions(REPO, issue_number=1) == ["eyes"]
    assert fake.reactions(REPO, comment_id=comment["id"]) == ["+1"]
    assert fake.issue(REPO, 1)["reactions"]["eyes"] == 1


async def test_issue_listing_filters_and_updates(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO, title="one", labels=["agent:go"])
    fake.add_issue(REPO, title="two")
    fake.add_issue(REPO, title="three", labels=["agent:go"], state="closed")
    token = fake.mint_token(INSTALLATION)
    client = api(gh, fake)
    found = [i["title"] async for i in client.getiter("/repos/octo-org/widgets/issues?labels=agent:go",
                                                       oauth_token=token)]
    assert found == ["one"]
    found = [i["title"] async for i in client.getiter("/repos/octo-org/widgets/issues?state=all&labels=agent:go",
                                                       oauth_token=token)]
    assert sorted(found) == ["one", "three"]
    await client.patch("/repos/octo-org/widgets/issues/2", data={"state": "closed", "state_reason": "not_planned"},
                       oauth_token=token)
    assert fake.issue(REPO, 2)["state"] == "closed"
    created = await client.post("/repos/octo-org/widgets/issues", data={"title": "from the bot"}, oauth_token=token)
    assert created["user"]["login"] == fake.bot_login and created["number"] == 4
    comment = await client.post("/repos/octo-org/widgets/issues/4/comments", data={"body": "a"}, oauth_token=token)
    await client.patch(f"/repos/octo-org/widgets/issues/comments/{comment['id']}", data={"body": "b"},
                       oauth_token=token)
    assert [c["body"] for c in fake.comments(REPO, 4)] == ["b"]
    with pytest.raises(gidgethub.BadRequest) as missing:
        await client.getitem("/repos/octo-org/widgets/issues/99", oauth_token=token)
    assert missing.value.status_code == 404


async def test_pulls_lifecycle_without_merging(fake: FakeGitHub, gh) -> None:
    fake.set_permission(REPO, "bob", "write")
    token = fake.mint_token(INSTALLATION)
    client = api(gh, fake)
    pull = await client.post("/repos/octo-org/widgets/pulls", oauth_token=token,
                             data={"title": "Fix #1", "head": "agent/issue-1", "base": "main", "body": "b", "draft": True})
    assert (pull["number"], pull["draft"], pull["user"]["login"]) == (1, True, fake.bot_login)
    with pytest.raises(gidgethub.BadRequest) as again:
        await client.post("/repos/octo-org/widgets/pulls", oauth_token=token,
                          data={"title": "Fix #1", "head": "octo-org:agent/issue-1", "base": "main"})
    assert again.value.status_code == 422
    listed = [p["number"] async for p in client.getiter(
        "/repos/octo-org/widgets/pulls?head=octo-org:agent/issue-1&state=open", oauth_token=token)]
    assert listed == [1]
    await client.patch("/repos/octo-org/widgets/pulls/1", data={"title": "Fix #1 (v2)"}, oauth_token=token)
    await client.post("/repos/octo-org/widgets/pulls/1/requested_reviewers", data={"reviewers": ["bob"]},
                      oauth_token=token)
    assert fake.review_requests(REPO, 1) == ["bob"]
    fake.add_review(REPO, 1, user="bob", state="CHANGES_REQUESTED", body="rename")
    fake.add_review_comment(REPO, 1, "typo here", user="bob")
    reviews = await client.getitem("/repos/octo-org/widgets/pulls/1/reviews", oauth_token=token)
    comments = await client.getitem("/repos/octo-org/widgets/pulls/1/comments", oauth_token=token)
    assert [r["state"] for r in reviews] == ["CHANGES_REQUESTED"]
    assert [c["body"] for c in comments] == ["typo here"]
    fake.merge_pull(REPO, 1, by="alice")
    merged = await client.getitem("/repos/octo-org/widgets/pulls/1", oauth_token=token)
    assert (merged["merged"], merged["merged_by"]["login"], merged["title"]) == (True, "alice", "Fix #1 (v2)")
    assert fake.pulls(REPO)[0]["state"] == "closed"


async def test_checks_refs_contents_permissions(fake: FakeGitHub, gh) -> None:
    fake.set_ref(REPO, "heads/agent/issue-1", "b" * 40)
    fake.add_check_run(REPO, head_sha="b" * 40, name="tests", conclusion="failure")
    fake.set_file_source(REPO, lambda path, ref: "from git\n" if (path, ref) == ("README.md", "agent/issue-1") else None)
    fake.set_file(REPO, ".github/shepherd.yml", "max_sessions: 2\n")
    token = fake.mint_token(INSTALLATION)
    client = api(gh, fake)
    ref = await client.getitem("/repos/octo-org/widgets/git/ref/{ref}", {"ref": "heads/agent/issue-1"},
                               oauth_token=token)
    assert ref["object"]["sha"] == "b" * 40
    runs = await client.getitem("/repos/octo-org/widgets/commits/{ref}/check-runs", {"ref": "agent/issue-1"},
                                oauth_token=token)
    assert [(r["name"], r["conclusion"]) for r in runs["check_runs"]] == [("tests", "failure")]
    suites = await client.getitem(f"/repos/octo-org/widgets/commits/{'b' * 40}/check-suites", oauth_token=token)
    assert suites["total_count"] == 1
    import base64

    content = await client.getitem("/repos/octo-org/widgets/contents/.github/shepherd.yml", oauth_token=token)
    assert base64.b64decode(content["content"]).decode() == "max_sessions: 2\n"
    content = await client.getitem("/repos/octo-org/widgets/contents/README.md?ref=agent/issue-1", oauth_token=token)
    assert base64.b64decode(content["content"]).decode() == "from git\n"
    with pytest.raises(gidgethub.BadRequest) as absent:
        await client.getitem("/repos/octo-org/widgets/contents/nope.txt", oauth_token=token)
    assert absent.value.status_code == 404
    level = await client.getitem("/repos/octo-org/widgets/collaborators/alice/permission", oauth_token=token)
    assert (level["permission"], level["role_name"]) == ("write", "maintain")
    with pytest.raises(gidgethub.BadRequest) as unknown:
        await client.getitem("/repos/octo-org/widgets/collaborators/nobody/permission", oauth_token=token)
    assert unknown.value.status_code == 404
    bot = await client.getitem("/users/{login}", {"login": fake.bot_login}, oauth_token=token)
    assert (bot["id"], bot["type"]) == (fake.bot_id, "Bot")


async def test_app_endpoints_deliveries_and_manifest(fake: FakeGitHub, gh) -> None:
    client = api(gh, fake)
    token = app_jwt(fake)
    assert [i["id"] async for i in client.getiter("/app/installations", jwt=token)] == [INSTALLATION]
    assert (await client.getitem("/repos/octo-org/widgets/installation", jwt=token))["id"] == INSTALLATION
    fake.add_hook_delivery("guid-1", "issues", "labeled", 500, installation_id=INSTALLATION)
    fake.add_hook_delivery("guid-2", "issues", "labeled", 200, installation_id=INSTALLATION)
    deliveries = [d async for d in client.getiter("/app/hook/deliveries?per_page=1", jwt=token)]
    assert [d["guid"] for d in deliveries] == ["guid-2", "guid-1"]
    failed = next(d for d in deliveries if d["status"] != "OK")
    await client.post(f"/app/hook/deliveries/{failed['id']}/attempts", data=b"", jwt=token)
    assert fake.redeliveries == [failed["id"]]

    fake.add_manifest_code("code-1")
    status, body, _ = await raw(gh, fake, "POST", "/app-manifests/code-1/conversions")
    assert status == 201
    assert (body["id"], body["slug"], body["pem"]) == (fake.app_id, fake.app_slug, fake.private_key_pem)
    assert body["webhook_secret"] == fake.webhook_secret and body["client_secret"]
    status, _, _ = await raw(gh, fake, "POST", "/app-manifests/code-1/conversions")
    assert status == 404  # a code converts once


async def test_injected_answers_and_rate_limit_headers(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO)
    token = fake.mint_token(INSTALLATION)
    fake.inject("issues/create-comment", status=502, times=2)
    fake.inject("issues/get", status=403, json={"message": "secondary rate limit"}, headers={"Retry-After": "7"})
    for _ in range(2):
        status, _, headers = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/comments",
                                       token=token, json={"body": "x"})
        assert status == 502
        assert headers["x-ratelimit-resource"] == "core"
    status, _, _ = await raw(gh, fake, "POST", "/repos/octo-org/widgets/issues/1/comments", token=token,
                             json={"body": "x"})
    assert status == 201
    status, body, headers = await raw(gh, fake, "GET", "/repos/octo-org/widgets/issues/1", token=token)
    assert (status, body["message"], headers["Retry-After"]) == (403, "secondary rate limit", "7")
    assert int(headers["x-ratelimit-remaining"]) < int(headers["x-ratelimit-limit"])
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["x"]
    assert [c.status for c in fake.calls_to("issues/create-comment")] == [502, 502, 201]


async def test_injected_rate_limit_headers_override_the_fakes_own(fake: FakeGitHub, gh) -> None:
    fake.add_issue(REPO)
    token = fake.mint_token(INSTALLATION)
    fake.inject("issues/get", status=403, json={"message": "API rate limit exceeded"},
                headers={"X-RateLimit-Remaining": "0", "x-ratelimit-reset": "123"})
    status, _, headers = await raw(gh, fake, "GET", "/repos/octo-org/widgets/issues/1", token=token)
    assert (status, headers["x-ratelimit-remaining"], headers["x-ratelimit-reset"]) == (403, "0", "123")
    assert len(headers.getall("x-ratelimit-remaining")) == 1
