"""`POST /webhook`: checks a GitHub delivery in SPEC §5's order and stores it durably before the 202.

Nothing here calls GitHub or runs git: GitHub waits at most 10 s for the answer, so the request only
validates, stores and hands the delivery to the consumer.

The body is checked with simdjson, a validating parser that builds Python objects only for what is read:
the request needs four fields, not the whole payload (building it cost more than storing it). The
consumer parses the body in full when the delivery's turn comes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import simdjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from gidgethub import ValidationFailure
from gidgethub.sansio import validate_event

from bot.ingest.writer import DeliveryWriter
from bot.core.payload import load_payload
from bot.metrics import Metrics

log = logging.getLogger(__name__)

# GitHub does not deliver payloads over 25 MB; anything larger is not from GitHub.
MAX_BODY_BYTES = 25 * 1024 * 1024

# A body must arrive within this time, and only so many large ones are read at once: a stranger who
# opens many connections and sends 24 MB bodies slowly must not grow the server's memory without end.
BODY_TIMEOUT_SECONDS = 30.0
LARGE_BODY_BYTES = 1024 * 1024  # a typical delivery is under 100 KB; unknown lengths count as large
MAX_LARGE_BODIES = 4

MISSING_HEADERS = "missing X-GitHub-Event or X-GitHub-Delivery header"
BAD_HEADERS = "X-GitHub-Event and X-GitHub-Delivery must be short printable ASCII"
BODY_TOO_SLOW = "the body did not arrive in time"
TOO_BUSY = "too many large deliveries at once; GitHub can redeliver this one"
BAD_SIGNATURE = "missing or invalid X-Hub-Signature-256"
NOT_JSON = "content type must be application/json"
MALFORMED_JSON = "body is not a JSON object"
TOO_LARGE = "body larger than 25 MB"
ACCEPTED = "accepted"
ALREADY_SEEN = "already received"
PONG = "pong"


# Only GitHub's SHA-256 signature counts: not the legacy SHA-1 header, not `sha1=` in this one (which
# gidgethub would check as SHA-1), and nothing that is not exactly 64 hex digits (a non-ASCII value
# would make the constant-time comparison raise).
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}", re.ASCII)
# simdjson's own words for valid JSON it cannot hold: a number past 64 bits, nesting past its depth.
_UNREPRESENTABLE = ("BIGINT_ERROR", "DEPTH_ERROR", "NUMBER_ERROR")
# GitHub's event names and delivery GUIDs are short printable ASCII; anything else is not GitHub's and
# could not even be stored (a header's non-UTF-8 byte arrives as a lone surrogate).
_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,100}", re.ASCII)

# A JSON object or array, parsed in full (dict, list) or lazily (simdjson's proxies).
_OBJECT = (dict, simdjson.Object)
_ARRAY = (list, simdjson.Array)


def _field(container: Any, key: str) -> Any:
    return container.get(key) if isinstance(container, _OBJECT) else None


def ordering_key(event: str, payload: Any) -> str:
    """The key under which deliveries must be handled in order: one issue (or PR) of one repository.

    Events about one check suite or run are keyed by their pull request when they name one, so a CI
    round is ordered with the rest of the PR's events; installation events are keyed by installation.
    `payload` is a parsed JSON object, a dict or a simdjson proxy.
    """
    repo = _field(_field(payload, "repository"), "full_name")
    repo = repo if isinstance(repo, str) else ""
    for key in ("issue", "pull_request"):
        number = _field(_field(payload, key), "number")
        if number is not None:
            return f"{repo}#{number}"
    for key in ("check_suite", "check_run"):
        item = _field(payload, key)
        if isinstance(item, _OBJECT):
            pulls = item.get("pull_requests") or _field(item.get("check_suite"), "pull_requests")
            number = _field(pulls[0], "number") if isinstance(pulls, _ARRAY) and len(pulls) else None
            if number is not None:
                return f"{repo}#{number}"
            return f"{repo}@{item.get('head_sha') or ''}"
    installation = _field(payload, "installation")
    if event.startswith("installation") and isinstance(installation, _OBJECT):
        return f"installation:{installation.get('id')}"
    return repo or event


class Facts(NamedTuple):
    """What the request path reads from a delivery's body."""

    installation_id: int | None
    action: str | None
    ordering_key: str


class QuietBadRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a header with a control character, a broken
    request line) with 400 by itself, then logs the parser's traceback at ERROR: a stranger's
    garbage would fill the operator's log with stack traces. Here it becomes one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BadHttpMessage):
            record.msg, record.args, record.levelno, record.levelname = (
                "refused a request that is not valid HTTP (400): %s", (str(error).splitlines()[0],),
                logging.WARNING, "WARNING",
            )
            record.exc_info, record.exc_text = None, None
        return True


class TooBusy(Exception):
    """As many large bodies as allowed are already being read."""


class FactReader:
    """Validates a body as a JSON object and reads its `Facts`, building no more Python objects than those.

    One simdjson parser is reused (allocating one costs several times a parse); its lazy proxies never
    outlive `read`, which the parser requires before it parses the next body."""

    def __init__(self) -> None:
        self._parser = simdjson.Parser()

    def read(self, event: str, body: bytes) -> Facts | None:
        """The facts, or None when the body is not a JSON object (malformed, not UTF-8, an array...)."""
        try:
            return self._facts(event, self._parser.parse(body))
        except RuntimeError as error:
            if str(error).startswith(_UNREPRESENTABLE):
                # Valid JSON simdjson cannot hold: the full parser decides (a number past 64 bits
                # is fine; nesting deeper than Python can hold is not a payload).
                return self._facts(event, load_payload(body))
            # The parser still had a live proxy: never expected, but never fatal.
            self._parser = simdjson.Parser()
            return self.read(event, body)
        except ValueError:  # simdjson's errors, UnicodeDecodeError included
            return None

    @staticmethod
    def _facts(event: str, document: Any) -> Facts | None:
        if not isinstance(document, _OBJECT):
            return None
        installation_id = _field(document.get("installation"), "id")
        action = document.get("action")
        return Facts(
            installation_id if isinstance(installation_id, int) else None,
            action if isinstance(action, str) else None,
            ordering_key(event, document),
        )


_BODIES = {
    text: orjson.dumps({"message": text})
    for text in (
        MISSING_HEADERS, BAD_HEADERS, BAD_SIGNATURE, NOT_JSON, MALFORMED_JSON, TOO_LARGE, ACCEPTED, ALREADY_SEEN, PONG,
        BODY_TOO_SLOW, TOO_BUSY,
    )
}


def make_webhook_handler(
    *,
    secret: str,
    writer: DeliveryWriter,
    metrics: Metrics,
    on_stored: Callable[..., None],
    body_timeout: float | None = None,
    max_large_bodies: int | None = None,
) -> Callable[[web.Request], Any]:
    """Build the aiohttp handler for `POST /webhook`; deliveries are stored through `writer`.

    `on_stored(delivery_id, ordering_key, event=, action=, installation_id=, body=)` runs once a new
    delivery is committed."""
    facts_of = FactReader().read
    counters: dict[int, Any] = {}  # answer code -> its labelled counter, looked up once
    body_timeout = BODY_TIMEOUT_SECONDS if body_timeout is None else body_timeout
    max_large_bodies = MAX_LARGE_BODIES if max_large_bodies is None else max_large_bodies
    large_bodies = asyncio.Semaphore(max_large_bodies)

    async def read_body(request: web.Request) -> bytes:
        """The body within `body_timeout`; a large one only while fewer than the limit are read."""
        length = request.content_length
        if length is not None and length <= LARGE_BODY_BYTES:
            return await asyncio.wait_for(request.read(), body_timeout)
        if large_bodies.locked():
            raise TooBusy
        async with large_bodies:
            return await asyncio.wait_for(request.read(), body_timeout)

    def answer(status: int, text: str) -> web.Response:
        counter = counters.get(status)
        if counter is None:
            counter = counters[status] = metrics.deliveries.labels(str(status))
        counter.inc()
        return web.Response(body=_BODIES[text], status=status, content_type="application/json")

    async def receive_webhook(request: web.Request) -> web.Response:
        # 413 first: decided from the declared length, before reading a byte of the body.
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return answer(413, TOO_LARGE)
        event = request.headers.get("X-GitHub-Event")
        delivery_id = request.headers.get("X-GitHub-Delivery")
        try:
            body = await read_body(request)
        except web.HTTPRequestEntityTooLarge:
            return answer(413, TOO_LARGE)
        except asyncio.TimeoutError:
            log.warning("delivery %s refused: its body did not arrive within %.0f s", delivery_id, body_timeout)
            return answer(408, BODY_TOO_SLOW)
        except TooBusy:
            log.warning("delivery %s refused: %d large bodies already being read", delivery_id, max_large_bodies)
            return answer(503, TOO_BUSY)
        if len(body) > MAX_BODY_BYTES:
            return answer(413, TOO_LARGE)
        if not event or not delivery_id:
            return answer(400, MISSING_HEADERS)
        if not _HEADER_VALUE.fullmatch(event) or not _HEADER_VALUE.fullmatch(delivery_id):
            return answer(400, BAD_HEADERS)
        signature = request.headers.get("X-Hub-Signature-256", "")
        try:
            if not _SIGNATURE.fullmatch(signature):
                raise ValidationFailure("no SHA-256 signature")
            validate_event(body, signature=signature, secret=secret)
        except ValidationFailure:
            log.warning("delivery %s refused: bad signature", delivery_id)
            return answer(401, BAD_SIGNATURE)
        # GitHub sends exactly this header; anything else (parameters, other case) is parsed in full.
        if request.headers.get("Content-Type") != "application/json" and request.content_type != "application/json":
            return answer(415, NOT_JSON)
        facts = facts_of(event, body)
        if facts is None:
            return answer(400, MALFORMED_JSON)
        if event == "ping":
            return answer(200, PONG)
        row = {
            "delivery_id": delivery_id,
            "event": event,
            "action": facts.action,
            "installation_id": facts.installation_id,
            "ordering_key": facts.ordering_key,
            "body": body,
        }
        stored = await writer.add(row, on_new=lambda: on_stored(
            delivery_id, facts.ordering_key, event=event, action=facts.action,
            installation_id=facts.installation_id, body=body,
        ))
        if not stored:
            log.debug("delivery %s already received; not processed again", delivery_id)
            return answer(200, ALREADY_SEEN)
        return answer(202, ACCEPTED)

    return receive_webhook
