"""The allow-list of GitHub REST operations Shepherd may send; everything else is refused before I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

#: Shepherd never merges, and a message that says so is clearer than "not allowed".
REFUSED_MERGE = "Shepherd never merges or updates pull request branches"
REFUSED_GRAPHQL = "Shepherd does not use GraphQL (it can merge, e.g. enablePullRequestAutoMerge)"
REFUSED_CONTENTS_WRITE = "Shepherd never writes repository contents through the API; it pushes agent/ branches"
REFUSED_REF_OUTSIDE_AGENT = "Shepherd writes only refs under refs/heads/agent/"
REFUSED_NOT_LISTED = "not in Shepherd's allow-list of GitHub operations (bot/github/operations.py)"
REFUSED_DOT_SEGMENT = "a path with '.' or '..' segments could be rewritten into another operation"

AGENT_REF_PREFIXES = ("refs/heads/agent/", "heads/agent/")

Guard = Callable[[Mapping[str, str], Any], str | None]
"""Takes the URL's parameters and the decoded JSON body; returns a refusal reason or None."""


class OperationRefused(Exception):
    """A request Shepherd must not send; raised before any network I/O."""

    def __init__(self, method: str, path: str, reason: str) -> None:
        self.method = method
        self.path = path
        self.reason = reason
        super().__init__(f"{method} {path} refused: {reason}")


@dataclass(frozen=True)
class Operation:
    """One REST operation: GitHub's method, path template and operationId."""

    method: str
    template: str
    operation_id: str
    write: bool
    guard: Guard | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_template(self.template))


def compile_template(template: str) -> re.Pattern[str]:
    """A regex for a GitHub path template; `{ref}` and `{path}` may span slashes when unencoded."""
    regex = ""
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        regex += re.escape(literal)
        if name:
            span = ".+" if name in ("ref", "path") else "[^/]+"
            regex += f"(?P<{name}>{span})"
    return re.compile(f"^{regex}$")


def _is_agent_ref(ref: Any) -> bool:
    return isinstance(ref, str) and ref.startswith(AGENT_REF_PREFIXES) and ".." not in ref


def guard_agent_ref_in_url(params: Mapping[str, str], body: Any) -> str | None:
    return None if _is_agent_ref(params.get("ref")) else REFUSED_REF_OUTSIDE_AGENT


def guard_agent_ref_in_body(params: Mapping[str, str], body: Any) -> str | None:
    ref = body.get("ref") if isinstance(body, Mapping) else None
    return None if _is_agent_ref(ref) else REFUSED_REF_OUTSIDE_AGENT


def _op(method: str, template: str, operation_id: str, guard: Guard | None = None) -> Operation:
    return Operation(method, template, operation_id, write=method != "GET", guard=guard)


R = "/repos/{owner}/{repo}"

# fmt: off
ALLOWED: tuple[Operation, ...] = (
    # The App itself (JWT) and its installations.
    _op("GET",    "/app",                                                 "apps/get-authenticated"),
    _op("GET",    "/app/installations",                                   "apps/list-installations"),
    _op("GET",    "/app/installations/{installation_id}",                 "apps/get-installation"),
    _op("POST",   "/app/installations/{installation_id}/access_tokens",   "apps/create-installation-access-token"),
    _op("GET",    f"{R}/installation",                                    "apps/get-repo-installation"),
    _op("GET",    "/installation/repositories",                           "apps/list-repos-accessible-to-installation"),
    _op("GET",    "/app/hook/deliveries",                                 "apps/list-webhook-deliveries"),
    _op("POST",   "/app/hook/deliveries/{delivery_id}/attempts",          "apps/redeliver-webhook-delivery"),
    _op("POST",   "/app-manifests/{code}/conversions",                    "apps/create-from-manifest"),
    # People and repositories.
    _op("GET",    "/users/{username}",                                    "users/get-by-username"),
    _op("GET",    f"{R}",                                                 "repos/get"),
    _op("GET",    f"{R}/contents/{{path}}",                               "repos/get-content"),
    _op("GET",    f"{R}/collaborators/{{username}}/permission",           "repos/get-collaborator-permission-level"),
    # Issues, comments, labels, reactions.
    _op("GET",    f"{R}/issues",                                          "issues/list-for-repo"),
    _op("POST",   f"{R}/issues",                                          "issues/create"),
    _op("GET",    f"{R}/issues/{{issue_number}}",                         "issues/get"),
    _op("PATCH",  f"{R}/issues/{{issue_number}}",                         "issues/update"),
    _op("GET",    f"{R}/issues/{{issue_number}}/comments",                "issues/list-comments"),
    _op("GET",    f"{R}/issues/{{issue_number}}/events",                  "issues/list-events"),
    _op("POST",   f"{R}/issues/{{issue_number}}/comments",                "issues/create-comment"),
    _op("GET",    f"{R}/issues/comments/{{comment_id}}",                  "issues/get-comment"),
    _op("PATCH",  f"{R}/issues/comments/{{comment_id}}",                  "issues/update-comment"),
    _op("GET",    f"{R}/issues/{{issue_number}}/labels",                  "issues/list-labels-on-issue"),
    _op("POST",   f"{R}/issues/{{issue_number}}/labels",                  "issues/add-labels"),
    _op("DELETE", f"{R}/issues/{{issue_number}}/labels/{{name}}",         "issues/remove-label"),
    _op("POST",   f"{R}/labels",                                          "issues/create-label"),
    _op("GET",    f"{R}/labels/{{name}}",                                 "issues/get-label"),
    _op("POST",   f"{R}/issues/{{issue_number}}/reactions",               "reactions/create-for-issue"),
    _op("POST",   f"{R}/issues/comments/{{comment_id}}/reactions",        "reactions/create-for-issue-comment"),
    # Pull requests (never merged: see REFUSED).
    _op("GET",    f"{R}/pulls",                                           "pulls/list"),
    _op("POST",   f"{R}/pulls",                                           "pulls/create"),
    _op("GET",    f"{R}/pulls/{{pull_number}}",                           "pulls/get"),
    _op("PATCH",  f"{R}/pulls/{{pull_number}}",                           "pulls/update"),
    _op("POST",   f"{R}/pulls/{{pull_number}}/requested_reviewers",       "pulls/request-reviewers"),
    _op("GET",    f"{R}/pulls/{{pull_number}}/reviews",                   "pulls/list-reviews"),
    _op("GET",    f"{R}/pulls/{{pull_number}}/comments",                  "pulls/list-review-comments"),
    _op("GET",    f"{R}/pulls/{{pull_number}}/reviews/{{review_id}}/comments", "pulls/list-comments-for-review"),
    # Checks and git refs (writes only under agent/).
    _op("GET",    f"{R}/commits/{{ref}}/check-runs",                      "checks/list-for-ref"),
    _op("GET",    f"{R}/commits/{{ref}}/check-suites",                    "checks/list-suites-for-ref"),
    _op("GET",    f"{R}/git/ref/{{ref}}",                                 "git/get-ref"),
    _op("POST",   f"{R}/git/refs",                                        "git/create-ref", guard_agent_ref_in_body),
    _op("PATCH",  f"{R}/git/refs/{{ref}}",                                "git/update-ref", guard_agent_ref_in_url),
    _op("DELETE", f"{R}/git/refs/{{ref}}",                                "git/delete-ref", guard_agent_ref_in_url),
)

# Named so that the refusal says why; checked before the allow-list.
REFUSED: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("PUT",  compile_template(f"{R}/pulls/{{pull_number}}/merge"),         REFUSED_MERGE),
    ("POST", compile_template(f"{R}/merges"),                              REFUSED_MERGE),
    ("PUT",  compile_template(f"{R}/pulls/{{pull_number}}/update-branch"), REFUSED_MERGE),
    ("*",    re.compile(r"(?:^|/)graphql/?$"),                             REFUSED_GRAPHQL),  # GHES: /api/graphql
    ("PUT",  compile_template(f"{R}/contents/{{path}}"),                   REFUSED_CONTENTS_WRITE),
    ("DELETE", compile_template(f"{R}/contents/{{path}}"),                 REFUSED_CONTENTS_WRITE),
)
# fmt: on

# GitHub's pagination links name repositories by id (`/repositories/123/issues?page=2`).
_REPOSITORY_BY_ID = re.compile(r"^/repositories/\d+(?=/|$)")
_GHES_PREFIX = "/api/v3"


def api_path(url: str, base_url: str | None = None) -> str:
    """The path of `url` relative to the API root, still percent-encoded, without the query."""
    path = urlsplit(url).path or "/"
    for prefix in (urlsplit(base_url).path.rstrip("/") if base_url else "", _GHES_PREFIX):
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix) :] or "/"
            break
    return path


def resolve(method: str, url: str, body: Any = None, *, base_url: str | None = None) -> Operation:
    """The allowed operation `method url` is, or raise `OperationRefused`.

    `body` is the decoded JSON body (or raw bytes) of a write, for guards that look inside it.
    """
    method = method.upper()
    path = api_path(url, base_url)
    if any(unquote(segment) in (".", "..") for segment in path.split("/")):
        raise OperationRefused(method, path, REFUSED_DOT_SEGMENT)
    for refused_method, pattern, reason in REFUSED:
        if refused_method in ("*", method) and pattern.search(path):
            raise OperationRefused(method, path, reason)
    candidates = [path]
    if method == "GET" and _REPOSITORY_BY_ID.match(path):
        candidates.append(_REPOSITORY_BY_ID.sub("/repos/_/_", path))
    for candidate in candidates:
        for operation in ALLOWED:
            if operation.method != method:
                continue
            match = operation.pattern.match(candidate)
            if match is None:
                continue
            if operation.guard is not None:
                params = {k: unquote(v) for k, v in match.groupdict().items()}
                refusal = operation.guard(params, _decode(body))
                if refusal is not None:
                    raise OperationRefused(method, path, refusal)
            return operation
    raise OperationRefused(method, path, REFUSED_NOT_LISTED)


def _decode(body: Any) -> Any:
    if isinstance(body, (bytes, bytearray)):
        try:
            return json.loads(body) if body else None
        except ValueError:
            return None
    return body
