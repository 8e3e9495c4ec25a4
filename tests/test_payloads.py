"""Tests of the webhook payload builders: real examples, adapted to the fake, valid per GitHub's schemas, signed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import referencing
import referencing.jsonschema
from gidgethub import sansio
from jsonschema import Draft202012Validator

from tests.fakes import payloads
from tests.fakes.github import FakeGitHub

pytest_plugins = ["tests.fakes.plugin"]

REPO = "octo-org/widgets"
INSTALLATION = 31
SCHEMA_URI = "urn:github-webhooks"


@pytest.fixture(scope="module")
def webhook_registry() -> referencing.Registry:
    with payloads.WEBHOOK_SCHEMAS_PATH.open(encoding="utf-8") as handle:
        document = json.load(handle)
    resource = referencing.Resource.from_contents(document, default_specification=referencing.jsonschema.DRAFT202012)
    return referencing.Registry().with_resource(SCHEMA_URI, resource)


def schema_errors(registry: referencing.Registry, event: str, payload: dict[str, Any], *, lenient: bool = False) -> list[str]:
    key = event.replace("_", "-") + ("-" + payload["action"].replace("_", "-") if "action" in payload else "")
    validator = Draft202012Validator({"$ref": f"{SCHEMA_URI}#/components/schemas/webhook-{key}"}, registry=registry)
    return [
        f"{error.json_path}: {error.message[:200]}"
        for error in validator.iter_errors(payload)
        if not (lenient and is_drift(error))
    ]


def is_drift(error: Any) -> bool:
    """Whether an error only reflects the examples' age: fields made required later, int timestamps."""
    if error.validator == "required":
        return True
    if error.validator == "type" and isinstance(error.instance, int) and list(error.path)[-1:] in (
        ["created_at"], ["updated_at"]
    ):
        return True
    if error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[Any, list[Any]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        return any(all(is_drift(sub) for sub in subs) for subs in branches.values())
    return False


@pytest.fixture
def fake(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_installation(INSTALLATION, account="octo-org", repositories=[REPO])
    fake_github.set_permission(REPO, "alice", "write")
    return fake_github


# ---------------------------------------------------------------- signing


def test_sign_matches_githubs_documented_vector() -> None:
    assert payloads.sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_signed_headers_are_accepted_by_gidgethub(fake: FakeGitHub) -> None:
    fake.add_issue(REPO, labels=[])
    payload = payloads.issue_labeled(fake, REPO, 1, "agent:go")
    body, headers = payloads.fake_delivery(fake, "issues", payload, delivery_id="abc-123")
    assert headers["X-GitHub-Event"] == "issues"
    assert headers["X-GitHub-Hook-Installation-Target-Type"] == "integration"
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    headers = {k.lower(): v for k, v in headers.items()}  # gidgethub expects a case-insensitive mapping
    event = sansio.Event.from_http(headers, body, secret=fake.webhook_secret)
    assert (event.event, event.delivery_id, event.data["label"]["name"]) == ("issues", "abc-123", "agent:go")
    with pytest.raises(Exception):
        sansio.Event.from_http(headers, body, secret="wrong secret")


def test_default_delivery_ids_are_unique() -> None:
    first = payloads.signed_headers("ping", b"{}", "s")["X-GitHub-Delivery"]
    second = payloads.signed_headers("ping", b"{}", "s")["X-GitHub-Delivery"]
    assert first != second


# ---------------------------------------------------------------- the corpus


def test_example_returns_deep_copies() -> None:
    first = payloads.example("issues", "labeled")
    first["issue"]["title"] = "changed"
    assert payloads.example("issues", "labeled")["issue"]["title"] != "changed"
    assert payloads.example("issues", "labeled", 1)["action"] == "labeled"
    with pytest.raises(LookupError):
        payloads.example("issues", "no-such-action")


def test_every_subscribed_example_passes_the_schema_leniently(webhook_registry) -> None:
    failures = {}
    count = 0
    for event in payloads.SUBSCRIBED_EVENTS:
        found = payloads.all_examples(event)
        assert found, event
        for index, sample in enumerate(found):
            count += 1
            errors = schema_errors(webhook_registry, event, sample, lenient=True)
            if errors:
                failures[f"{event}[{index}]"] = errors
    assert count > 90
    assert failures == {}


# ---------------------------------------------------------------- builders


def test_issue_labeled_reflects_the_fake(fake: FakeGitHub, webhook_registry) -> None:
    issue = fake.add_issue(REPO, title="Make it faster", body="details")
    payload = payloads.issue_labeled(fake, REPO, issue["number"], "agent:go", sender="alice")
    assert payload["action"] == "labeled"
    assert payload["issue"]["title"] == "Make it faster"
    assert payload["issue"]["id"] == issue["id"]
    assert [label["name"] for label in payload["issue"]["labels"]] == ["agent:go"]
    assert fake.labels(REPO, 1) == ["agent:go"]
    assert payload["label"]["name"] == "agent:go"
    assert payload["repository"]["full_name"] == REPO
    assert payload["repository"]["clone_url"] == fake.repo(REPO)["clone_url"]
    assert payload["installation"]["id"] == INSTALLATION
    assert payload["sender"]["login"] == "alice"
    assert payload["organization"]["login"] == "octo-org"
    assert "Codertocat" not in json.dumps(payload)
    assert "api.github.com" not in json.dumps(payload)
    assert schema_errors(webhook_registry, "issues", payload) == []


def test_issue_state_builders(fake: FakeGitHub, webhook_registry) -> None:
    fake.add_issue(REPO, labels=["agent:go"])
    unlabeled = payloads.issue_unlabeled(fake, REPO, 1, "agent:go")
    assert fake.labels(REPO, 1) == [] and unlabeled["issue"]["labels"] == []
    closed = payloads.issue_closed(fake, REPO, 1)
    assert (closed["action"], closed["issue"]["state"]) == ("closed", "closed")
    assert fake.issue(REPO, 1)["state"] == "closed"
    reopened = payloads.issue_reopened(fake, REPO, 1)
    assert reopened["issue"]["state"] == "open"
    edited = payloads.issue_edited(fake, REPO, 1, title="New title")
    assert edited["changes"] == {"title": {"from": "Something to do"}}
    assert edited["issue"]["title"] == "New title"
    for payload in (unlabeled, closed, reopened, edited):
        assert schema_errors(webhook_registry, "issues", payload) == [], payload["action"]


def test_comment_on_issue_and_on_pull_request(fake: FakeGitHub, webhook_registry) -> None:
    fake.add_issue(REPO)
    comment = fake.add_comment(REPO, 1, "/agent stop", user="alice")
    payload = payloads.issue_comment_created(fake, REPO, 1, comment)
    assert payload["comment"]["body"] == "/agent stop"
    assert payload["comment"]["id"] == comment["id"]
    assert payload["sender"]["login"] == "alice"
    assert "pull_request" not in payload["issue"]
    assert schema_errors(webhook_registry, "issue_comment", payload) == []

    pull = fake.add_pull(REPO, head="agent/issue-1")
    on_pr = payloads.issue_comment_created(fake, REPO, pull["number"], fake.add_comment(REPO, pull["number"], "hi"))
    assert on_pr["issue"]["pull_request"]["html_url"] == pull["html_url"]
    assert schema_errors(webhook_registry, "issue_comment", on_pr) == []

    edited = payloads.issue_comment_edited(fake, REPO, 1, comment["id"], "/agent go")
    assert edited["changes"] == {"body": {"from": "/agent stop"}}
    assert fake.comments(REPO, 1)[0]["body"] == "/agent go"
    assert schema_errors(webhook_registry, "issue_comment", edited) == []


def test_bot_comment_payload_looks_like_the_apps_own(fake: FakeGitHub, webhook_registry) -> None:
    fake.add_issue(REPO)
    comment = fake.add_comment(REPO, 1, "status", user=fake.bot_login)
    payload = payloads.issue_comment_created(fake, REPO, 1, comment)
    assert payload["sender"]["type"] == "Bot"
    assert payload["sender"]["login"] == "shepherd-test[bot]"
    assert payload["comment"]["performed_via_github_app"]["id"] == fake.app_id
    assert schema_errors(webhook_registry, "issue_comment", payload) == []


def test_pull_request_builders(fake: FakeGitHub, webhook_registry) -> None:
    fake.add_pull(REPO, head="agent/issue-1", user=fake.bot_login)
    fake.add_pull(REPO, head="agent/issue-2", user=fake.bot_login)
    merged = payloads.pull_request_closed(fake, REPO, 1, merged=True, sender="alice")
    assert merged["pull_request"]["merged"] is True
    assert merged["pull_request"]["merged_by"]["login"] == "alice"
    assert fake.pull(REPO, 1)["merged"] is True
    closed = payloads.pull_request_closed(fake, REPO, 2)
    assert (closed["pull_request"]["state"], closed["pull_request"]["merged"]) == ("closed", False)
    for payload in (merged, closed):
        assert payload["pull_request"]["head"]["repo"]["full_name"] == REPO
        assert schema_errors(webhook_registry, "pull_request", payload) == []

    fake.add_pull(REPO, head="agent/issue-3")
    opened = payloads.pull_request_opened(fake, REPO, 3)
    assert schema_errors(webhook_registry, "pull_request", opened) == []
    review = payloads.pull_request_review_submitted(fake, REPO, 3, state="changes_requested", body="Rename it")
    assert (review["review"]["state"], review["review"]["body"]) == ("changes_requested", "Rename it")
    assert schema_errors(webhook_registry, "pull_request_review", review) == []
    comment = payloads.pull_request_review_comment_created(fake, REPO, 3, "nit: typo", path="bot/app.py")
    assert comment["comment"]["path"] == "bot/app.py"
    assert schema_errors(webhook_registry, "pull_request_review_comment", comment) == []


def test_check_builders(fake: FakeGitHub, webhook_registry) -> None:
    pull = fake.add_pull(REPO, head="agent/issue-1", head_sha="a" * 40)
    suite = payloads.check_suite_completed(fake, REPO, head_sha="a" * 40, conclusion="failure")
    assert suite["check_suite"]["conclusion"] == "failure"
    assert [p["number"] for p in suite["check_suite"]["pull_requests"]] == [pull["number"]]
    assert schema_errors(webhook_registry, "check_suite", suite) == []
    run = payloads.check_run_completed(fake, REPO, head_sha="a" * 40, conclusion="failure", name="lint")
    assert (run["check_run"]["name"], run["check_run"]["conclusion"]) == ("lint", "failure")
    assert schema_errors(webhook_registry, "check_run", run) == []


def test_installation_builders(fake: FakeGitHub, webhook_registry) -> None:
    created = payloads.installation_event(fake, "created", INSTALLATION)
    assert created["installation"]["id"] == INSTALLATION
    assert [r["full_name"] for r in created["repositories"]] == [REPO]
    assert schema_errors(webhook_registry, "installation", created) == []

    fake.add_repo("octo-org/gadgets")
    added = payloads.installation_repositories_event(fake, "added", INSTALLATION, ["octo-org/gadgets"])
    assert [r["full_name"] for r in added["repositories_added"]] == ["octo-org/gadgets"]
    assert fake.is_token_valid(fake.mint_token(INSTALLATION), "octo-org/gadgets")
    assert schema_errors(webhook_registry, "installation_repositories", added) == []
    removed = payloads.installation_repositories_event(fake, "removed", INSTALLATION, ["octo-org/gadgets"])
    assert [r["full_name"] for r in removed["repositories_removed"]] == ["octo-org/gadgets"]
    assert not fake.is_token_valid(fake.mint_token(INSTALLATION), "octo-org/gadgets")

    suspended = payloads.installation_event("suspend", INSTALLATION, fake=fake)
    assert suspended["installation"]["suspended_at"] is not None
    token = fake.mint_token(INSTALLATION)
    assert not fake.is_token_valid(token, REPO)
    payloads.installation_event(fake, "unsuspend", INSTALLATION)
    assert fake.is_token_valid(token, REPO)
    deleted = payloads.installation_event(fake, "deleted", INSTALLATION)
    assert deleted["action"] == "deleted"
    assert not fake.is_token_valid(token, REPO)
    for payload in (suspended, deleted):
        assert schema_errors(webhook_registry, "installation", payload) == []


def test_ping(fake: FakeGitHub, webhook_registry) -> None:
    payload = payloads.ping(fake)
    assert payload["hook"]["app_id"] == fake.app_id
    assert payload["hook"]["type"] == "App"
    assert schema_errors(webhook_registry, "ping", payload) == []
