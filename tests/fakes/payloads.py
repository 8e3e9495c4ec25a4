"""Real webhook payloads from @octokit/webhooks-examples, adapted to a FakeGitHub's state and signed."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import json
import threading
import uuid
from typing import Any

from tests.fakes.github import FakeGitHub
from tests.fakes.openapi import VENDOR_DIR

EXAMPLES_PATH = VENDOR_DIR / "@octokit" / "webhooks-examples" / "api.github.com" / "index.json"
WEBHOOK_SCHEMAS_PATH = VENDOR_DIR / "@octokit" / "openapi-webhooks" / "generated" / "api.github.com.json"

SUBSCRIBED_EVENTS = (
    "issues",
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "check_suite",
    "check_run",
    "installation",
    "installation_repositories",
)

HOOKSHOT_USER_AGENT = "GitHub-Hookshot/a1b2c3d"
HOOK_ID = "463528194"
# The examples were recorded on these sample repositories; their names are rewritten to the fake's.
SAMPLE_REPOSITORIES = ("Codertocat/Hello-World", "Octocoders/Hello-World")
SAMPLE_API = "https://api.github.com"

MSG_NO_EXAMPLE = "no example for {event}.{action} (index {index}) in @octokit/webhooks-examples"

_examples: dict[str, list[dict[str, Any]]] | None = None
_lock = threading.Lock()


def _load() -> dict[str, list[dict[str, Any]]]:
    global _examples
    with _lock:
        if _examples is None:
            with EXAMPLES_PATH.open(encoding="utf-8") as handle:
                _examples = {entry["name"]: entry["examples"] for entry in json.load(handle)}
        return _examples


def events() -> list[str]:
    """Every event name the corpus has examples for."""
    return sorted(_load())


def examples(event: str, action: str | None = None) -> list[dict[str, Any]]:
    """Deep copies of every real example of `event` (of `action`, if given)."""
    found = _load().get(event, [])
    return [copy.deepcopy(e) for e in found if action is None or e.get("action") == action]


def example(event: str, action: str | None = None, index: int = 0) -> dict[str, Any]:
    """A deep copy of one real example payload."""
    found = examples(event, action)
    if not -len(found) <= index < len(found):
        raise LookupError(MSG_NO_EXAMPLE.format(event=event, action=action, index=index))
    return found[index]


def all_examples(event: str) -> list[dict[str, Any]]:
    """Every example of one subscribed event, for "handlers survive every real payload" tests."""
    return examples(event)


def with_installation(example_payload: dict[str, Any]) -> bool:
    return "installation" in example_payload


# ---------------------------------------------------------------------------- signing


def sign(body: bytes, secret: str) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    """Serialise a payload the way it goes on the wire."""
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_headers(
    event: str,
    body: bytes,
    secret: str,
    delivery_id: str | None = None,
    *,
    hook_id: str = HOOK_ID,
    target_id: int | str = 4242,
) -> dict[str, str]:
    """Headers of a real App webhook delivery of `body`."""
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body, secret),
        "Content-Type": "application/json",
        "User-Agent": HOOKSHOT_USER_AGENT,
        "X-GitHub-Hook-ID": hook_id,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": str(target_id),
    }


def delivery(
    event: str, payload: dict[str, Any], secret: str, delivery_id: str | None = None, *, target_id: int | str = 4242
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) ready to POST to the webhook endpoint."""
    body = encode(payload)
    return body, signed_headers(event, body, secret, delivery_id, target_id=target_id)


def fake_delivery(fake: FakeGitHub, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """(body, headers) signed with the fake app's webhook secret."""
    return delivery(event, payload, fake.webhook_secret, delivery_id, target_id=fake.app_id)


def send(fake: FakeGitHub, event: str, payload: dict[str, Any]) -> int:
    """GitHub sends `payload` to the fake's `webhook_url` under a new delivery id and logs the attempt
    in the App's delivery log (status 0 when Shepherd is down); returns the answer's status."""
    body, headers = fake_delivery(fake, event, payload)
    installation = (payload.get("installation") or {}).get("id")
    return fake.send_webhook(headers["X-GitHub-Delivery"], event, payload.get("action"), body, headers,
                             installation_id=installation)


# ---------------------------------------------------------------------------- adapting


def _rewrite(node: Any, full_name: str, api_root: str) -> Any:
    """Point the sample repository's names and URLs at the fake's repository."""
    if isinstance(node, dict):
        return {k: _rewrite(v, full_name, api_root) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, full_name, api_root) for v in node]
    if isinstance(node, str):
        for sample in SAMPLE_REPOSITORIES:
            node = node.replace(sample, full_name)
        return node.replace(SAMPLE_API, api_root)
    return node


def _overlay(base: dict[str, Any] | None, top: dict[str, Any]) -> dict[str, Any]:
    """The example object with every field the fake knows replaced by the fake's value."""
    merged = dict(base or {})
    merged.update(copy.deepcopy(top))
    return merged


def _installation_for(fake: FakeGitHub, full_name: str) -> dict[str, Any] | None:
    with fake._lock:  # noqa: SLF001 - the payload builders are the fake's companions
        for installation_id, repos in sorted(fake._installation_repos.items()):  # noqa: SLF001
            if full_name in repos:
                installation = fake._installations[installation_id]  # noqa: SLF001
                return {"id": installation["id"], "node_id": f"MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{installation['id']}"}
    return None


def _organization(fake: FakeGitHub, owner: dict[str, Any], sample: dict[str, Any] | None) -> dict[str, Any]:
    login = owner["login"]
    api = f"{fake.url}/orgs/{login}"
    return _overlay(sample, {
        "login": login,
        "id": owner["id"],
        "node_id": owner["node_id"],
        "url": api,
        "repos_url": api + "/repos",
        "events_url": api + "/events",
        "hooks_url": api + "/hooks",
        "issues_url": api + "/issues",
        "members_url": api + "/members{/member}",
        "public_members_url": api + "/public_members{/member}",
        "avatar_url": owner["avatar_url"],
        "description": None,
    })


def _adapt(
    fake: FakeGitHub,
    payload: dict[str, Any],
    full_name: str,
    sender: str | dict[str, Any],
    action: str | None = None,
) -> dict[str, Any]:
    """Common overlay: repository, organization, sender and installation from the fake."""
    payload = _rewrite(payload, full_name, fake.url)
    if action is not None:
        payload["action"] = action
    repo = fake.repo(full_name)
    payload["repository"] = _overlay(payload.get("repository"), repo)
    owner = repo["owner"]
    if owner["type"] == "Organization":
        payload["organization"] = _organization(fake, owner, payload.get("organization"))
    else:
        payload.pop("organization", None)
    payload["sender"] = sender if isinstance(sender, dict) else fake.add_user(sender, type=_user_type(sender))
    installation = _installation_for(fake, full_name)
    if installation is not None:
        payload["installation"] = installation
    else:
        payload.pop("installation", None)
    return payload


def adapt_example(fake: FakeGitHub, payload: dict[str, Any], full_name: str) -> dict[str, Any]:
    """A raw example delivered as GitHub delivers it to an App installed on `full_name` in the fake.

    Installation events keep their own installation; every other event gets the installation of
    `full_name` (App deliveries always carry one) and the repository, owner and sender of the fake."""
    if "installation" in payload and isinstance(payload.get("installation"), dict) and (
        "account" in payload["installation"]
    ):
        return copy.deepcopy(payload)
    sender = (payload.get("sender") or {}).get("login") or "octocat"
    return _adapt(fake, copy.deepcopy(payload), full_name, sender)


def _user_type(login: str) -> str:
    return "Bot" if login.endswith("[bot]") else "User"


def _issue_payload(fake: FakeGitHub, full_name: str, number: int, base: dict[str, Any], action: str,
                   sender: str | dict[str, Any]) -> dict[str, Any]:
    payload = _adapt(fake, base, full_name, sender, action)
    payload["issue"] = _overlay(payload.get("issue"), fake.issue(full_name, number))
    if "pull_request" not in fake.issue(full_name, number):
        payload["issue"].pop("pull_request", None)
    return payload


def _label(fake: FakeGitHub, full_name: str, name: str) -> dict[str, Any]:
    return fake.add_label(full_name, name)


# ---------------------------------------------------------------------------- issues


def issue_opened(fake: FakeGitHub, full_name: str, number: int, *, sender: str | None = None) -> dict[str, Any]:
    issue = fake.issue(full_name, number)
    return _issue_payload(fake, full_name, number, example("issues", "opened"), "opened",
                          sender or issue["user"]["login"])


def _touch(fake: FakeGitHub, full_name: str, number: int) -> None:
    """A label change makes the issue newer, as on GitHub: at least a second newer than the last label
    change, so that two label events in one test are told apart the way a person's (seconds apart) are."""
    issue = fake._repos[full_name].issues[number]  # noqa: SLF001
    times: dict[tuple[str, int], dt.datetime] = fake.__dict__.setdefault("_label_event_times", {})
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    last = times.get((full_name, number))
    moment = now if last is None else max(now, last + dt.timedelta(seconds=1))
    times[(full_name, number)] = moment
    issue["updated_at"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def issue_labeled(fake: FakeGitHub, full_name: str, number: int, label: str, sender: str = "alice") -> dict[str, Any]:
    """`issues.labeled`; the label is put on the fake's issue if it is not there yet (as the human did)."""
    fake.label_issue(full_name, number, label, by=sender)
    with fake._lock:  # noqa: SLF001
        # Each call is a new label event (a label already there was taken off and put back meanwhile).
        _touch(fake, full_name, number)
    payload = _issue_payload(fake, full_name, number, example("issues", "labeled"), "labeled", sender)
    payload["label"] = _overlay(payload.get("label"), _label(fake, full_name, label))
    return payload


def issue_unlabeled(fake: FakeGitHub, full_name: str, number: int, label: str, sender: str = "alice") -> dict[str, Any]:
    """`issues.unlabeled`; the label is taken off the fake's issue if it is still there."""
    fake.unlabel_issue(full_name, number, label, by=sender)
    with fake._lock:  # noqa: SLF001
        _touch(fake, full_name, number)
    payload = _issue_payload(fake, full_name, number, example("issues", "unlabeled"), "unlabeled", sender)
    payload["label"] = _overlay(payload.get("label"), _label(fake, full_name, label))
    return payload


def _set_issue_state(fake: FakeGitHub, full_name: str, number: int, state: str, reason: str | None) -> None:
    with fake._lock:  # noqa: SLF001
        repo = fake._repos[full_name]  # noqa: SLF001
        issue = repo.issues[number]
        issue["state"] = state
        issue["state_reason"] = reason
        issue["closed_at"] = issue["updated_at"] if state == "closed" else None
        if number in repo.pulls:
            repo.pulls[number]["state"] = state
            repo.pulls[number]["closed_at"] = issue["closed_at"]


def issue_closed(fake: FakeGitHub, full_name: str, number: int, sender: str = "alice",
                 state_reason: str = "completed") -> dict[str, Any]:
    """`issues.closed` (the corpus has none: derived from the `reopened` example)."""
    _set_issue_state(fake, full_name, number, "closed", state_reason)
    return _issue_payload(fake, full_name, number, example("issues", "reopened"), "closed", sender)


def issue_reopened(fake: FakeGitHub, full_name: str, number: int, sender: str = "alice") -> dict[str, Any]:
    _set_issue_state(fake, full_name, number, "open", "reopened")
    return _issue_payload(fake, full_name, number, example("issues", "reopened"), "reopened", sender)


def issue_edited(fake: FakeGitHub, full_name: str, number: int, *, title: str | None = None,
                 body: str | None = None, sender: str = "alice") -> dict[str, Any]:
    """`issues.edited`; applies the new title/body to the fake and reports the old ones in `changes`."""
    changes: dict[str, Any] = {}
    with fake._lock:  # noqa: SLF001
        issue = fake._repos[full_name].issues[number]  # noqa: SLF001
        if title is not None:
            changes["title"] = {"from": issue["title"]}
            issue["title"] = title
        if body is not None:
            changes["body"] = {"from": issue["body"]}
            issue["body"] = body
    payload = _issue_payload(fake, full_name, number, example("issues", "edited"), "edited", sender)
    payload["changes"] = changes
    return payload


# ---------------------------------------------------------------------------- comments


def issue_comment_created(fake: FakeGitHub, full_name: str, number: int, comment: dict[str, Any],
                          sender: str | None = None) -> dict[str, Any]:
    """`issue_comment.created` for a comment from `fake.add_comment` (on an issue or a PR conversation).

    A bot author (login ending in `[bot]`) becomes a Bot sender with `performed_via_github_app` set,
    which the corpus never shows.
    """
    author = comment["user"]
    payload = _issue_payload(fake, full_name, number, example("issue_comment", "created", 3), "created",
                             sender or author)
    payload["comment"] = _overlay(payload.get("comment"), comment)
    if author["type"] == "Bot" and author["login"] == fake.bot_login and not comment.get("performed_via_github_app"):
        payload["comment"]["performed_via_github_app"] = fake.app_json()
    return payload


def issue_comment_edited(fake: FakeGitHub, full_name: str, number: int, comment_id: int, body: str,
                         sender: str | None = None) -> dict[str, Any]:
    """`issue_comment.edited`: applies the new body to the fake and reports the old one."""
    with fake._lock:  # noqa: SLF001
        stored = fake._repos[full_name].comments[comment_id]  # noqa: SLF001
        old = stored["body"]
        stored["body"] = body
        comment = copy.deepcopy(stored)
    payload = _issue_payload(fake, full_name, number, example("issue_comment", "edited"), "edited",
                             sender or comment["user"])
    payload["comment"] = _overlay(payload.get("comment"), comment)
    payload["changes"] = {"body": {"from": old}}
    return payload


# ---------------------------------------------------------------------------- pull requests


def _pull_payload(fake: FakeGitHub, full_name: str, number: int, base: dict[str, Any], action: str,
                  sender: str | dict[str, Any]) -> dict[str, Any]:
    payload = _adapt(fake, base, full_name, sender, action)
    pull = fake.pull(full_name, number)
    sample = payload.get("pull_request") or {}
    for side in ("head", "base"):
        pull[side]["repo"] = _overlay((sample.get(side) or {}).get("repo"), pull[side]["repo"])
    payload["pull_request"] = _overlay(sample, pull)
    payload["number"] = number
    return payload


def pull_request_opened(fake: FakeGitHub, full_name: str, number: int, sender: str | None = None) -> dict[str, Any]:
    pull = fake.pull(full_name, number)
    return _pull_payload(fake, full_name, number, example("pull_request", "opened", 1), "opened",
                         sender or pull["user"]["login"])


def pull_request_closed(fake: FakeGitHub, full_name: str, number: int, *, merged: bool = False,
                        sender: str = "alice") -> dict[str, Any]:
    """`pull_request.closed`; merges (as `sender`, a human) or closes the fake's PR first if it is open.

    The corpus has no merged example: it is derived from the closed one, as GitHub sends it.
    """
    pull = fake.pull(full_name, number)
    if pull["state"] == "open":
        if merged:
            fake.merge_pull(full_name, number, by=sender)
        else:
            fake.close_pull(full_name, number, by=sender)
    return _pull_payload(fake, full_name, number, example("pull_request", "closed", 0), "closed", sender)


def pull_request_review_submitted(fake: FakeGitHub, full_name: str, number: int, *,
                                  state: str = "changes_requested", body: str | None = "Please change this.",
                                  sender: str = "alice") -> dict[str, Any]:
    """`pull_request_review.submitted`; the review is added to the fake (state approved/changes_requested/commented)."""
    review = fake.add_review(full_name, number, user=sender, state=state, body=body)
    payload = _pull_payload(fake, full_name, number, example("pull_request_review", "submitted", 1), "submitted", sender)
    review["state"] = state.lower()
    review["body"] = body
    payload["review"] = _overlay(payload.get("review"), review)
    return payload


def pull_request_review_comment_created(fake: FakeGitHub, full_name: str, number: int, body: str, *,
                                        sender: str = "alice", path: str = "README.md", line: int = 1,
                                        ) -> dict[str, Any]:
    """`pull_request_review_comment.created`; the comment is added to the fake."""
    comment = fake.add_review_comment(full_name, number, body, user=sender, path=path, line=line)
    payload = _pull_payload(fake, full_name, number,
                            example("pull_request_review_comment", "created", 1), "created", sender)
    payload["comment"] = _overlay(payload.get("comment"), comment)
    return payload


# ---------------------------------------------------------------------------- checks


def check_suite_completed(fake: FakeGitHub, full_name: str, *, head_sha: str, conclusion: str = "failure",
                          head_branch: str | None = None, sender: str = "alice") -> dict[str, Any]:
    """`check_suite.completed`; the suite is added to the fake (the corpus only has successes)."""
    suite = fake.add_check_suite(full_name, head_sha=head_sha, head_branch=head_branch, conclusion=conclusion)
    suite.pop("repository", None)
    payload = _adapt(fake, example("check_suite", "completed", 0), full_name, sender, "completed")
    payload["check_suite"] = _overlay(payload.get("check_suite"), suite)
    return payload


def check_run_completed(fake: FakeGitHub, full_name: str, *, head_sha: str, conclusion: str = "failure",
                        name: str = "tests", sender: str = "alice") -> dict[str, Any]:
    """`check_run.completed`; the run (and a suite for it) is added to the fake."""
    run = fake.add_check_run(full_name, head_sha=head_sha, name=name, conclusion=conclusion)
    payload = _adapt(fake, example("check_run", "completed", 0), full_name, sender, "completed")
    sample = payload.get("check_run") or {}
    suite = next(s for s in fake._repos[full_name].check_suites if s["id"] == run["check_suite"]["id"])  # noqa: SLF001
    suite = copy.deepcopy(suite)
    suite.pop("repository", None)
    run["check_suite"] = _overlay(sample.get("check_suite"), suite)
    run["app"] = copy.deepcopy(suite["app"])
    payload["check_run"] = _overlay(sample, run)
    return payload


# ---------------------------------------------------------------------------- installation


def _repository_summary(repo: dict[str, Any]) -> dict[str, Any]:
    return {k: repo[k] for k in ("id", "node_id", "name", "full_name", "private")}


def installation_event(*args: Any, sender: str = "alice", **kwargs: Any) -> dict[str, Any]:
    """`installation.<action>`: `installation_event(fake, action, installation_id)`.

    Also accepts `installation_event(action, installation_id, fake=fake)`. The fake's state follows
    the event: `deleted` removes the installation, `suspend`/`unsuspend` toggle it.
    """
    fake = kwargs.pop("fake", None)
    if args and isinstance(args[0], FakeGitHub):
        fake, args = args[0], args[1:]
    action, installation_id = (list(args) + [kwargs.pop("action", None), kwargs.pop("installation_id", None)])[:2]
    if fake is None or action is None or installation_id is None:
        raise TypeError("installation_event(fake, action, installation_id)")
    installation = fake.installation(installation_id)
    repositories = fake._installation_repos.get(installation_id, [])  # noqa: SLF001
    payload = example("installation", action)
    payload = _rewrite(payload, repositories[0] if repositories else "octo-org/widgets", fake.url)
    if action == "suspend":
        fake.suspend_installation(installation_id, True)
    elif action == "unsuspend":
        fake.suspend_installation(installation_id, False)
    installation = _overlay(payload.get("installation"), fake.installation(installation_id))
    if action == "suspend":
        installation["suspended_by"] = fake.add_user(sender)
    if action == "deleted":
        fake.remove_installation(installation_id)
    payload["installation"] = installation
    payload["repositories"] = [_repository_summary(fake.repo(name)) for name in repositories]
    payload["sender"] = fake.add_user(sender, type=_user_type(sender))
    if "requester" in payload:
        payload["requester"] = None
    return payload


def installation_repositories_event(fake: FakeGitHub, action: str, installation_id: int,
                                    repositories: list[str], sender: str = "alice") -> dict[str, Any]:
    """`installation_repositories.added/removed`; the fake's installation gains or loses `repositories`."""
    current = list(fake._installation_repos.get(installation_id, []))  # noqa: SLF001
    if action == "added":
        for name in repositories:
            if name not in current:
                current.append(name)
    else:
        current = [name for name in current if name not in repositories]
    removed = [_repository_summary(fake.repo(name)) for name in repositories] if action == "removed" else []
    fake.set_installation_repositories(installation_id, current)
    changed = [_repository_summary(fake.repo(name)) for name in repositories]
    payload = _rewrite(example("installation_repositories", action), repositories[0], fake.url)
    payload["installation"] = _overlay(payload.get("installation"), fake.installation(installation_id))
    payload["repository_selection"] = "selected"
    payload["repositories_added"] = changed if action == "added" else []
    payload["repositories_removed"] = removed
    payload["sender"] = fake.add_user(sender, type=_user_type(sender))
    payload["requester"] = None
    return payload


def ping(fake: FakeGitHub | None = None) -> dict[str, Any]:
    """The `ping` GitHub sends when an App's webhook is set up."""
    payload = example("ping", None, 2)
    payload.pop("repository", None)
    hook = payload["hook"]
    hook["type"] = "App"
    if fake is not None:
        hook["app_id"] = fake.app_id
        payload = _rewrite(payload, "octo-org/widgets", fake.url)
        payload["sender"] = fake.add_user("alice")
    return payload
