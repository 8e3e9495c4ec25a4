"""GitHub's timestamps (`2024-05-01T12:00:00Z`) as aware UTC datetimes; anything else is None, never a crash."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_github_time(value: object) -> datetime | None:
    """An ISO 8601 time as GitHub writes it (a `Z` or an offset), in UTC; None when missing or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
