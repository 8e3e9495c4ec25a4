"""The allow-list: what Shepherd may ask GitHub, and what it refuses before any I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gidgethub import sansio

from bot.github.operations import (
    ALLOWED,
    REFUSED_CONTENTS_WRITE,
    REFUSED_GRAPHQL,
    REFUSED_MERGE,
    REFUSED_NOT_LISTED,
    REFUSED_REF_OUTSIDE_AGENT,
    OperationRefused,
    resolve,
)

OPENAPI = (
    Path(__file__).resolve().parent
    / "vendor/node_modules/@octokit/openapi/generated/api.github.com.json"
)
GHES = "https://ghe.example.test/api/v3"


def expand(template: str, **url_vars: object) -> str:
    """The URL gidgethub would send for this template (same expansion and encoding)."""
    return sansio.format_url(template, url_vars)


def test_every_listed_operation_is_github_s_own_method_template_and_id() -> None:
    spec = json.loads(OPENAPI.read_text())
    for operation in ALLOWED:
        described = spec["paths"][operation.template][operation.method.lower()]
        assert described["operationId"] == operation.operation_id
        assert operation.write == (operation.method != "GET")


@pytest.mark.parametrize(
    ("method", "url", "operation_id"),
    [
        ("GET", expand("/app"), "apps/get-authenticated"),
        ("POST", expand("/app/installations/{id}/access_tokens", id=7), "apps/create-installation-access-token"),
        ("GET", expand("/repos/{o}/{r}/issues/{n}", o="acme", r="web", n=5), "issues/get"),
        ("POST", expand("/repos/{o}/{r}/issues/{n}/comments", o="acme", r="web", n=5), "issues/create-comment"),
        ("PATCH", "/repos/acme/web/issues/comments/99", "issues/update-comment"),
        (
            "DELETE",
            expand("/repos/{o}/{r}/issues/{n}/labels/{name}", o="acme", r="web", n=5, name="agent:needs-input"),
            "issues/remove-label",
        ),
        ("GET", expand("/repos/{o}/{r}/contents/{path}", o="a", r="b", path=".github/shepherd.yml"), "repos/get-content"),
        ("GET", "/repos/a/b/contents/.github/shepherd.yml?ref=main", "repos/get-content"),
        ("GET", expand("/repos/{o}/{r}/git/ref/{ref}", o="a", r="b", ref="heads/agent/issue-1-x"), "git/get-ref"),
        ("GET", expand("/repos/{o}/{r}/commits/{ref}/check-runs", o="a", r="b", ref="agent/x"), "checks/list-for-ref"),
        ("GET", "/repos/a/b/pulls/3/reviews/11/comments", "pulls/list-comments-for-review"),
        ("GET", "https://api.github.com/repositories/1296269/issues?page=2", "issues/list-for-repo"),
        ("GET", f"{GHES}/repos/a/b/pulls?state=open", "pulls/list"),
        ("POST", f"{GHES}/app-manifests/abc/conversions", "apps/create-from-manifest"),
    ],
)
def test_listed_operations_resolve(method: str, url: str, operation_id: str) -> None:
    assert resolve(method, url, base_url=GHES if url.startswith(GHES) else None).operation_id == operation_id


def test_reads_and_writes_are_marked() -> None:
    assert resolve("GET", "/repos/a/b/issues/1/comments").write is False
    assert resolve("POST", "/repos/a/b/issues/1/comments").write is True


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", "/repos/acme/web/pulls/12/merge"),
        ("PUT", "https://api.github.com/repos/acme/web/pulls/12/merge"),
        ("POST", "/repos/acme/web/merges"),
        ("PUT", "/repos/acme/web/pulls/12/update-branch"),
        ("PUT", f"{GHES}/repos/acme/web/pulls/12/merge"),
    ],
)
def test_every_merge_path_is_refused_by_name(method: str, url: str) -> None:
    with pytest.raises(OperationRefused) as refused:
        resolve(method, url)
    assert refused.value.reason == REFUSED_MERGE
    assert method in str(refused.value) and "/repos/acme/web/" in str(refused.value)


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_graphql_is_refused_whatever_the_query(method: str) -> None:
    mutation = {"query": "mutation { enablePullRequestAutoMerge(input: {pullRequestId: \"x\"}) { clientMutationId } }"}
    for url in ("/graphql", "https://api.github.com/graphql", f"{GHES.removesuffix('/v3')}/graphql"):
        with pytest.raises(OperationRefused) as refused:
            resolve(method, url, json.dumps(mutation).encode())
        assert refused.value.reason == REFUSED_GRAPHQL


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_contents_writes_are_refused_even_under_agent(method: str) -> None:
    with pytest.raises(OperationRefused) as refused:
        resolve(method, "/repos/a/b/contents/agent/notes.md")
    assert refused.value.reason == REFUSED_CONTENTS_WRITE


def test_ref_writes_are_allowed_only_under_agent() -> None:
    agent_ref = expand("/repos/{o}/{r}/git/refs/{ref}", o="a", r="b", ref="heads/agent/issue-1-x")
    assert "%2F" in agent_ref  # gidgethub encodes the slashes; the guard must still see the ref
    assert resolve("PATCH", agent_ref).operation_id == "git/update-ref"
    assert resolve("DELETE", agent_ref).operation_id == "git/delete-ref"
    assert resolve("POST", "/repos/a/b/git/refs", {"ref": "refs/heads/agent/issue-1-x", "sha": "0" * 40})

    main_ref = expand("/repos/{o}/{r}/git/refs/{ref}", o="a", r="b", ref="heads/main")
    for method, url, body in [
        ("PATCH", main_ref, {"sha": "0" * 40, "force": True}),
        ("DELETE", main_ref, None),
        ("DELETE", "/repos/a/b/git/refs/heads/release/agent/x", None),
        ("POST", "/repos/a/b/git/refs", json.dumps({"ref": "refs/heads/main", "sha": "0" * 40}).encode()),
        ("POST", "/repos/a/b/git/refs", {"ref": "refs/tags/agent/v1", "sha": "0" * 40}),
        ("POST", "/repos/a/b/git/refs", {"ref": "refs/heads/agent/../main", "sha": "0" * 40}),
        ("POST", "/repos/a/b/git/refs", None),
    ]:
        with pytest.raises(OperationRefused) as refused:
            resolve(method, url, body)
        assert refused.value.reason == REFUSED_REF_OUTSIDE_AGENT, (method, url, body)


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("DELETE", "/repos/a/b"),
        ("PATCH", "/repos/a/b"),
        ("PUT", "/repos/a/b/issues/1/labels"),
        ("DELETE", "/repos/a/b/issues/comments/5"),
        ("POST", "/repos/a/b/pulls/3/reviews"),
        ("DELETE", "/app/installations/7"),
        ("GET", "/user"),
        ("POST", "/repos/a/b/issues/1/comments/extra"),
        ("POST", "/repos/a/b/issues/../labels"),
        ("PATCH", "/repos/a/b/issues/%2E%2E/comments/1"),
    ],
)
def test_anything_else_is_refused(method: str, url: str) -> None:
    with pytest.raises(OperationRefused) as refused:
        resolve(method, url)
    assert refused.value.method == method
    assert refused.value.reason != REFUSED_MERGE
    assert str(refused.value).startswith(f"{method} /")


def test_the_refusal_names_method_and_path() -> None:
    with pytest.raises(OperationRefused) as refused:
        resolve("delete", "https://api.github.com/repos/a/b?x=1")
    assert str(refused.value) == f"DELETE /repos/a/b refused: {REFUSED_NOT_LISTED}"
