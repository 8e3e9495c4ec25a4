"""`POST /webhook`: SPEC §5's answer codes in order, durable storage, deduplication, dispatch of real payloads."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest

from bot.ingest import webhook as ingress
from bot.app import SERVICES, create_app
from bot.ingest.consumer import RetryPolicy
from bot.store.database import DONE
from tests.fakes import payloads

SUBSCRIBED = payloads.SUBSCRIBED_EVENTS


@pytest.fixture
async def shepherd(aiohttp_client, shepherd_settings):
    app = create_app(shepherd_settings, retry=RetryPolicy(max_attempts=2, first_delay=0.01))
    client = await aiohttp_client(app)
    return client


def _stored(client) -> list:
    return client.server.app[SERVICES].store.deliveries()


def _labeled(fake_github):
    fake_github.add_installation(7, account="octo-org", repositories=["octo-org/widgets"])
    fake_github.add_repo("octo-org/widgets")
    issue = fake_github.add_issue("octo-org/widgets", title="Add export", body="CSV please", user="alice")
    return payloads.issue_labeled(fake_github, "octo-org/widgets", issue["number"], "agent:go")


async def _post(client, body: bytes, headers: dict[str, str]):
    response = await client.post("/webhook", data=body, headers=headers)
    return response.status, await response.json()


@pytest.mark.parametrize(
    "case, status",
    [
        ("no event header", 400),
        ("no delivery header", 400),
        ("no signature", 401),
        ("wrong signature", 401),
        ("signed with another secret", 401),
        ("form content type", 415),
        ("malformed json", 400),
        ("json that is not an object", 400),
        ("a json string", 400),
        ("an empty body", 400),
        ("an object followed by more", 400),
        ("a string that is not utf-8", 400),
        ("nesting deeper than any payload", 400),
        ("a sha1 signature in the sha256 header", 401),
        ("only the legacy sha1 header", 401),
        ("a signature header that is not ascii", 401),
    ],
)
async def test_rejected_deliveries_get_their_code_and_nothing_is_stored(
    shepherd, fake_github, case, status
):
    body, headers = payloads.fake_delivery(fake_github, "issues", _labeled(fake_github))
    secret = fake_github.webhook_secret
    if case == "no event header":
        del headers["X-GitHub-Event"]
    elif case == "no delivery header":
        del headers["X-GitHub-Delivery"]
    elif case == "no signature":
        del headers["X-Hub-Signature-256"]
    elif case == "wrong signature":
        headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    elif case == "signed with another secret":
        headers["X-Hub-Signature-256"] = payloads.sign(body, "not-the-secret")
    elif case == "form content type":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif case == "malformed json":
        body = body[:-3]
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "json that is not an object":
        body = b"[1, 2, 3]"
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "a json string":
        body = b'"agent:go"'
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "an empty body":
        body = b""
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "an object followed by more":
        body = body + b' {"action": "deleted"}'
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "a string that is not utf-8":
        body = body.replace(b'"Add export"', b'"Add \xff export"')
        assert b"\xff" in body
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "nesting deeper than any payload":
        body = b'{"action": "labeled", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        headers["X-Hub-Signature-256"] = payloads.sign(body, secret)
    elif case == "a sha1 signature in the sha256 header":
        headers["X-Hub-Signature-256"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    elif case == "only the legacy sha1 header":
        del headers["X-Hub-Signature-256"]
        headers["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    elif case == "a signature header that is not ascii":
        headers["X-Hub-Signature-256"] = "sha256=" + "é" * 64
    got, answer = await _post(shepherd, body, headers)
    assert got == status, answer
    assert answer["message"]
    assert _stored(shepherd) == []


async def test_a_valid_payload_with_a_number_beyond_64_bits_is_stored_and_handled(shepherd, fake_github):
    payload = _labeled(fake_github)
    payload["issue"]["huge"] = 2**70  # valid JSON; a 64-bit parser cannot hold it
    body, headers = payloads.fake_delivery(fake_github, "issues", payload)
    assert str(2**70).encode() in body
    got, answer = await _post(shepherd, body, headers)
    assert got == 202, answer
    [stored] = _stored(shepherd)
    assert stored.payload()["issue"]["huge"] == 2**70


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
async def test_a_json_content_type_with_parameters_or_other_case_is_accepted(shepherd, fake_github, content_type):
    """GitHub sends exactly `application/json`; other spellings of the same type are still JSON."""
    body, headers = payloads.fake_delivery(fake_github, "issues", _labeled(fake_github))
    headers["Content-Type"] = content_type
    got, answer = await _post(shepherd, body, headers)
    assert (got, answer["message"]) == (202, "accepted")
    assert [delivery.id for delivery in _stored(shepherd)] == [headers["X-GitHub-Delivery"]]


async def test_checks_run_in_spec_order(shepherd, fake_github):
    """A delivery wrong in several ways gets the code of the first failing check."""
    body = b"not json"
    # No event header and no signature: the header check (400) comes before the signature (401).
    status, _ = await _post(shepherd, body, {"X-GitHub-Delivery": "x", "Content-Type": "text/plain"})
    assert status == 400
    # Bad signature and wrong content type: 401 before 415.
    status, _ = await _post(
        shepherd, body, {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "x", "Content-Type": "text/plain"}
    )
    assert status == 401
    # Good signature, wrong content type and malformed body: 415 before 400.
    headers = payloads.signed_headers("issues", body, fake_github.webhook_secret, "x")
    headers["Content-Type"] = "text/plain"
    status, _ = await _post(shepherd, body, headers)
    assert status == 415
    assert _stored(shepherd) == []


async def test_ping_is_answered_200_and_not_stored(shepherd, fake_github):
    body, headers = payloads.fake_delivery(fake_github, "ping", payloads.ping(fake_github))
    status, answer = await _post(shepherd, body, headers)
    assert (status, answer["message"]) == (200, "pong")
    assert _stored(shepherd) == []


async def test_a_delivery_is_stored_before_202_and_a_redelivery_gets_200_and_runs_once(
    shepherd, fake_github
):
    fake_github.add_installation(9, account="octo-org", repositories=["octo-org/widgets"])
    fake_github.add_repo("octo-org/widgets")
    payload = payloads.installation_event(fake_github, "created", 9)
    body, headers = payloads.fake_delivery(fake_github, "installation", payload, "delivery-1")

    status, _ = await _post(shepherd, body, headers)
    assert status == 202
    stored = _stored(shepherd)
    assert [(d.id, d.event, d.action, d.installation_id) for d in stored] == [
        ("delivery-1", "installation", "created", 9)
    ]
    assert json.loads(stored[0].body) == payload

    status, answer = await _post(shepherd, body, headers)  # GitHub's redelivery keeps the guid
    assert (status, answer["message"]) == (200, "already received")
    services = shepherd.server.app[SERVICES]
    await services.consumer.drain()
    assert [d.status for d in _stored(shepherd)] == [DONE]
    runs = services.store.handler_runs("delivery-1")
    assert runs == {
        "handlers.installation.record_installation": ("ok", 1, None),
        "handlers.installation.label_installed_repositories": ("ok", 1, None),
    }
    assert {"agent:go", "agent:plan"} <= set(fake_github.repo_labels("octo-org/widgets"))
    assert services.store.installation_state(9) == "active"


async def test_a_26_mb_body_gets_413_and_the_server_stays_healthy(shepherd, fake_github):
    huge = b"{" + b" " * (26 * 1024 * 1024) + b"}"
    headers = payloads.signed_headers("issues", huge, fake_github.webhook_secret, "huge")
    status, _ = await _post(shepherd, huge, headers)
    assert status == 413
    assert _stored(shepherd) == []

    health = await shepherd.get("/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    body, headers = payloads.fake_delivery(fake_github, "issues", _labeled(fake_github), "after")
    status, _ = await _post(shepherd, body, headers)
    assert status == 202
    assert [d.id for d in _stored(shepherd)] == ["after"]


async def test_every_subscribed_event_from_the_real_examples_is_stored_and_dispatched(
    shepherd, fake_github
):
    fake_github.add_installation(7, account="octo-org", repositories=["octo-org/widgets"])
    fake_github.add_repo("octo-org/widgets")
    for number in range(1, 4):  # the issues and PRs the examples talk about
        fake_github.add_issue("octo-org/widgets", title=f"Example {number}", body="", user="octocat")
    sent: list[str] = []
    for event in SUBSCRIBED:
        examples = payloads.all_examples(event)
        assert examples, f"the corpus has no example of {event}"
        for index, example in enumerate(examples):
            delivery_id = f"{event}-{index}"
            example = payloads.adapt_example(fake_github, example, "octo-org/widgets")
            body, headers = payloads.fake_delivery(fake_github, event, example, delivery_id)
            status, answer = await _post(shepherd, body, headers)
            assert status == 202, (delivery_id, answer)
            sent.append(delivery_id)
    services = shepherd.server.app[SERVICES]
    await services.consumer.drain()
    stored = {d.id: d for d in _stored(shepherd)}
    assert sorted(stored) == sorted(sent)
    assert {d.event for d in stored.values()} == set(SUBSCRIBED)
    # Dispatched means every selected handler ran and the delivery finished, not left pending.
    assert {d.id: d.status for d in stored.values()} == {d: DONE for d in sent}
    ran = {
        name for delivery_id in sent for name in services.store.handler_runs(delivery_id)
    }
    assert {"handlers.triggers.start_session", "handlers.comments.handle_comment",
            "handlers.installation.record_installation"} <= ran


async def test_the_request_path_never_calls_github(shepherd, fake_github):
    """Even with GitHub unreachable, deliveries are accepted: the answer never waits on GitHub."""
    body, headers = payloads.fake_delivery(fake_github, "issues", _labeled(fake_github), "offline")
    calls_before = len(fake_github.calls)
    fake_github.stop()
    status, _ = await _post(shepherd, body, headers)
    assert status == 202
    assert len(fake_github.calls) == calls_before
    assert [d.id for d in _stored(shepherd)] == ["offline"]


async def test_setup_mode_refuses_deliveries(aiohttp_client, tmp_path):
    from bot.settings import load_settings

    settings = load_settings({"SHEPHERD_DATA_DIR": str(tmp_path)}, env_file=None)
    client = await aiohttp_client(create_app(settings))
    response = await client.post("/webhook", data=b"{}", headers={"X-GitHub-Event": "ping"})
    assert response.status == 503
    assert (await (await client.get("/healthz")).json())["mode"] == "setup"


async def _open_body(port: int, length: int, sent: bytes = b"x" * 100):
    """A delivery whose headers promise `length` bytes, of which only `sent` arrive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: issues\r\nX-GitHub-Delivery: slow-{length}-{id(reader)}\r\n"
        f"X-Hub-Signature-256: sha256={'0' * 64}\r\nContent-Length: {length}\r\n\r\n"
    )
    writer.write(head.encode() + sent)
    await writer.drain()
    return reader, writer


async def test_a_body_that_never_ends_gets_408_and_others_are_answered(
    aiohttp_client, shepherd_settings, fake_github, monkeypatch
):
    monkeypatch.setattr(ingress, "BODY_TIMEOUT_SECONDS", 1.0)
    client = await aiohttp_client(create_app(shepherd_settings, retry=RetryPolicy(max_attempts=2, first_delay=0.01)))
    reader, writer = await _open_body(client.port, 5000)
    body, headers = payloads.fake_delivery(fake_github, "issues", _labeled(fake_github))
    assert (await _post(client, body, headers))[0] == 202  # served while the slow one hangs
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    writer.close()
    assert [d.id for d in _stored(client)] == [headers["X-GitHub-Delivery"]]


async def test_large_bodies_are_read_a_few_at_a_time_and_small_ones_still_pass(
    aiohttp_client, shepherd_settings, fake_github, monkeypatch
):
    monkeypatch.setattr(ingress, "MAX_LARGE_BODIES", 2)
    monkeypatch.setattr(ingress, "BODY_TIMEOUT_SECONDS", 5.0)
    client = await aiohttp_client(create_app(shepherd_settings, retry=RetryPolicy(max_attempts=2, first_delay=0.01)))
    slow = [await _open_body(client.port, 24 * 1024 * 1024) for _ in range(2)]
    await asyncio.sleep(0.2)  # both are being read now
    reader, writer = await _open_body(client.port, 24 * 1024 * 1024)
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 503"), status_line  # a third large one waits for no one
    writer.close()
    body, headers = payloads.fake_delivery(fake_github, "issues", _labeled(fake_github))
    assert (await _post(client, body, headers))[0] == 202
    for slow_reader, slow_writer in slow:  # the two large ones end as slow bodies, not as errors
        assert (await asyncio.wait_for(slow_reader.readline(), 15)).startswith(b"HTTP/1.1 408")
        slow_writer.close()
