"""A delivery's JSON body, and GitHub's timestamps, as Python objects: any valid JSON GitHub could send, never a crash."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import orjson


def load_payload(body: bytes) -> Any:
    """The parsed body, or None when it is not JSON or cannot be held.

    orjson first (fast), then the standard library for what orjson refuses although it is valid JSON
    (numbers past 64 bits); nesting deeper than Python's recursion allows gives None, not a crash.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def parse_time(value: object) -> datetime | None:
    """GitHub's ISO-8601 time (`2024-01-01T00:00:00Z`) as an aware UTC datetime; None when missing or malformed.

    The one reader of GitHub's timestamps: comments, hook deliveries and installation tokens.
    """
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # GitHub always names the zone; a time without one cannot be placed
    return moment.astimezone(timezone.utc)


# What the handlers of each event read from every delivery of it. A delivery without one of these is not
# GitHub's shape (GitHub always sends them); it is dropped with one line instead of failing each handler.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "issues": ("issue.number", "repository.name", "repository.full_name", "repository.owner.login"),
    "issue_comment": ("issue.number", "comment.id", "repository.name", "repository.full_name",
                      "repository.owner.login"),
    "pull_request": ("pull_request.number", "repository.name", "repository.full_name", "repository.owner.login"),
    "pull_request_review": ("review.id", "pull_request.number", "repository.name", "repository.full_name",
                            "repository.owner.login"),
    "pull_request_review_comment": ("comment.id", "pull_request.number", "repository.name",
                                    "repository.full_name", "repository.owner.login"),
    "check_suite": ("check_suite", "repository.name", "repository.full_name", "repository.owner.login"),
    "check_run": ("check_run", "repository.name", "repository.full_name", "repository.owner.login"),
}


def missing_fields(event: str, data: object) -> list[str]:
    """The fields of `REQUIRED_FIELDS[event]` that `data` lacks (or holds as null, or under a non-object)."""
    missing = []
    for path in REQUIRED_FIELDS.get(event, ()):
        value: object = data
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            missing.append(path)
    return missing
