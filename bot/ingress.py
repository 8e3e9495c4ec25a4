"""`POST /webhook`: checks a GitHub delivery in SPEC §5's order and stores it durably before the 202.

Nothing here calls GitHub or runs git: GitHub waits at most 10 s for the answer, so the request only
validates, stores and wakes the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from gidgethub import ValidationFailure
from gidgethub.sansio import validate_event

from bot.metrics import Metrics
from bot.delivery_writer import DeliveryWriter

log = logging.getLogger(__name__)

# GitHub does not deliver payloads over 25 MB; anything larger is not from GitHub.
MAX_BODY_BYTES = 25 * 1024 * 1024

MISSING_HEADERS = "missing X-GitHub-Event or X-GitHub-Delivery header"
BAD_SIGNATURE = "missing or invalid X-Hub-Signature-256"
NOT_JSON = "content type must be application/json"
MALFORMED_JSON = "body is not a JSON object"
TOO_LARGE = "body larger than 25 MB"
ACCEPTED = "accepted"
ALREADY_SEEN = "already received"
PONG = "pong"


def ordering_key(event: str, payload: dict[str, Any]) -> str:
    """The key under which deliveries must be handled in order: one issue (or PR) of one repository.

    Events about one check suite or run are keyed by their pull request when they name one, so a CI
    round is ordered with the rest of the PR's events; installation events are keyed by installation.
    """
    repo = (payload.get("repository") or {}).get("full_name") or ""
    for key in ("issue", "pull_request"):
        item = payload.get(key)
        if isinstance(item, dict) and "number" in item:
            return f"{repo}#{item['number']}"
    for key in ("check_suite", "check_run"):
        item = payload.get(key)
        if isinstance(item, dict):
            pulls = item.get("pull_requests") or (item.get("check_suite") or {}).get(
                "pull_requests"
            ) or []
            if pulls and isinstance(pulls[0], dict) and "number" in pulls[0]:
                return f"{repo}#{pulls[0]['number']}"
            return f"{repo}@{item.get('head_sha', '')}"
    installation = payload.get("installation")
    if event.startswith("installation") and isinstance(installation, dict):
        return f"installation:{installation.get('id')}"
    return repo or event


def _answer(status: int, text: str, metrics: Metrics) -> web.Response:
    metrics.deliveries.labels(str(status)).inc()
    return web.Response(body=_BODIES[text], status=status, content_type="application/json")


_BODIES = {
    text: orjson.dumps({"message": text})
    for text in (
        MISSING_HEADERS, BAD_SIGNATURE, NOT_JSON, MALFORMED_JSON, TOO_LARGE, ACCEPTED, ALREADY_SEEN, PONG
    )
}


def make_webhook_handler(
    *,
    secret: str,
    writer: DeliveryWriter,
    metrics: Metrics,
    on_stored: Callable[..., None],
) -> Callable[[web.Request], Any]:
    """Build the aiohttp handler for `POST /webhook`; deliveries are stored through `writer`."""

    async def receive_webhook(request: web.Request) -> web.Response:
        # 413 first: decided from the declared length, before reading a byte of the body.
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _answer(413, TOO_LARGE, metrics)
        event = request.headers.get("X-GitHub-Event")
        delivery_id = request.headers.get("X-GitHub-Delivery")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, TOO_LARGE, metrics)
        if len(body) > MAX_BODY_BYTES:
            return _answer(413, TOO_LARGE, metrics)
        if not event or not delivery_id:
            return _answer(400, MISSING_HEADERS, metrics)
        signature = request.headers.get("X-Hub-Signature-256", "")
        try:
            if not signature:
                raise ValidationFailure("no signature")
            validate_event(body, signature=signature, secret=secret)
        except ValidationFailure:
            log.warning("delivery %s refused: bad signature", delivery_id)
            return _answer(401, BAD_SIGNATURE, metrics)
        if request.content_type != "application/json":
            return _answer(415, NOT_JSON, metrics)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _answer(400, MALFORMED_JSON, metrics)
        if not isinstance(payload, dict):
            return _answer(400, MALFORMED_JSON, metrics)
        if event == "ping":
            return _answer(200, PONG, metrics)
        installation = payload.get("installation")
        installation_id = installation.get("id") if isinstance(installation, dict) else None
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        key = ordering_key(event, payload)
        stored_installation = installation_id if isinstance(installation_id, int) else None
        stored = await writer.add(
            delivery_id=delivery_id,
            event=event,
            action=action,
            installation_id=stored_installation,
            ordering_key=key,
            body=body,
        )
        if not stored:
            log.debug("delivery %s already received; not processed again", delivery_id)
            return _answer(200, ALREADY_SEEN, metrics)
        log.debug("delivery %s stored: %s.%s", delivery_id, event, action)
        on_stored(
            delivery_id, key, event=event, payload=payload, installation_id=stored_installation
        )
        return _answer(202, ACCEPTED, metrics)

    return receive_webhook
