"""A delivery's JSON body as Python objects: any valid JSON GitHub could send, never a crash."""

from __future__ import annotations

import json
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
