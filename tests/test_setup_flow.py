"""Setup mode end to end against the fake GitHub: one-time URL, manifest form, state check, code exchange,
`.env` written 0600, and GitHub mode (webhooks accepted) without a restart."""

from __future__ import annotations

import json
import logging
import re
import stat
from html.parser import HTMLParser

import pytest

from bot.app import SERVICES, create_app
from bot.ingest.consumer import RetryPolicy
from bot.github.manifest import build_manifest, registration_url, required_permissions
from bot.settings import load_settings
from bot.github.setup_flow import write_env
from tests.fakes import payloads

PUBLIC_URL = "https://shepherd.example.com"
GITHUB_WEB = "https://github.example"


class Forms(HTMLParser):
    """The forms of a page: action, method and their inputs' values, as a browser would submit them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action"), "method": attrs.get("method"), "inputs": {}})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"][attrs.get("name")] = attrs.get("value") or ""
        elif tag == "a":
            self.links.append(attrs.get("href"))


@pytest.fixture
def setup_settings(fake_github, tmp_path):
    return load_settings(
        {
            "GITHUB_API_URL": fake_github.url,
            "GITHUB_URL": GITHUB_WEB,
            "SHEPHERD_PUBLIC_URL": PUBLIC_URL,
            "SHEPHERD_DATA_DIR": str(tmp_path / "data"),
            "SHEPHERD_WRITE_SPACING_SECONDS": "0",
        },
        env_file=None,
    )


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# operator's own settings\nPORT=3000\nGITHUB_APP_ID=\nSHEPHERD_AGENT=claude\n")
    path.chmod(0o644)
    return path


@pytest.fixture
async def setup_client(aiohttp_client, setup_settings, env_file, caplog):
    caplog.set_level(logging.INFO)
    app = create_app(setup_settings, env_file=env_file, retry=RetryPolicy(max_attempts=2, first_delay=0.01))
    return await aiohttp_client(app)


def _logged_setup_url(caplog) -> str:
    for record in [*caplog.get_records("setup"), *caplog.records]:
        match = re.search(r"(https?://\S+/setup\?code=\S+)", record.getMessage())
        if match:
            return match.group(1)
    raise AssertionError("no setup URL in the log")


async def _start(client, code: str, org: str = "", host: str | None = None) -> dict:
    headers = {"Host": host} if host else {}
    response = await client.post("/setup/start", data={"code": code, "org": org, "name": ""}, headers=headers)
    assert response.status == 200, await response.text()
    [form] = Forms(await response.text()).forms
    return form


def _state_of(form: dict) -> str:
    return re.search(r"[?&]state=([^&]+)", form["action"]).group(1)


async def test_setup_url_is_logged_and_only_that_code_opens_the_page(setup_client, caplog):
    url = _logged_setup_url(caplog)
    assert url.startswith(PUBLIC_URL + "/setup?code=")
    code = url.split("code=", 1)[1]

    page = await setup_client.get(f"/setup?code={code}")
    assert page.status == 200
    [form] = Forms(await page.text()).forms
    assert form["action"] == "/setup/start" and form["inputs"]["code"] == code
    assert "org" in form["inputs"]

    for wrong in ("/setup", "/setup?code=", f"/setup?code={code}x"):
        refused = await setup_client.get(wrong)
        assert refused.status == 404
        assert "not valid" in await refused.text()
    refused = await setup_client.post("/setup/start", data={"code": "guess", "org": ""})
    assert refused.status == 404


async def test_manifest_form_posts_app_yml_with_public_urls_not_the_host_header(setup_client):
    code = setup_client.server.app[SERVICES].setup.code
    form = await _start(setup_client, code, host="evil.example")
    assert form["method"] == "post"
    state = _state_of(form)
    assert form["action"] == registration_url(GITHUB_WEB, state)
    assert form["action"].startswith(f"{GITHUB_WEB}/settings/apps/new?state=")
    manifest = json.loads(form["inputs"]["manifest"])
    assert manifest["url"] == PUBLIC_URL
    assert manifest["hook_attributes"] == {"url": f"{PUBLIC_URL}/webhook", "active": True}
    assert manifest["redirect_url"] == f"{PUBLIC_URL}/setup/callback"
    assert "evil.example" not in form["inputs"]["manifest"]
    assert manifest["default_permissions"] == {
        "metadata": "read",
        "issues": "write",
        "pull_requests": "write",
        "contents": "write",
        "checks": "read",
        "statuses": "read",
    }
    assert "workflows" not in manifest["default_permissions"]
    assert set(manifest["default_events"]) == {
        "issues", "issue_comment", "pull_request", "pull_request_review",
        "pull_request_review_comment", "check_suite", "check_run",
    }

    org_form = await _start(setup_client, code, org="octo-org")
    assert org_form["action"].startswith(f"{GITHUB_WEB}/organizations/octo-org/settings/apps/new?state=")
    assert _state_of(org_form) != state

    bad_org = await setup_client.post("/setup/start", data={"code": code, "org": "not an org/../x"})
    assert bad_org.status == 400


async def test_callback_checks_state_then_code_and_switches_to_github_mode(
    setup_client, fake_github, env_file
):
    services = setup_client.server.app[SERVICES]
    code = services.setup.code
    before = env_file.read_text()
    fake_github.add_installation(7, account="octo-org", repositories=["octo-org/widgets"])
    fake_github.add_manifest_code("manifest-code-1")

    # Webhooks wait for the App.
    body, headers = payloads.fake_delivery(fake_github, "ping", payloads.ping(fake_github))
    assert (await setup_client.post("/webhook", data=body, headers=headers)).status == 503

    # A state this server never minted, or none at all: refused, nothing exchanged or written.
    for query in ("code=manifest-code-1&state=forged", "code=manifest-code-1"):
        response = await setup_client.get(f"/setup/callback?{query}")
        assert response.status == 400
        assert "Start again" in await response.text()
    assert fake_github.calls_to("apps/create-from-manifest") == []
    assert env_file.read_text() == before

    # A good state but no code: refused, and that state is used up.
    state = _state_of(await _start(setup_client, code))
    response = await setup_client.get(f"/setup/callback?state={state}")
    assert response.status == 400 and "no code" in await response.text()
    assert (await setup_client.get(f"/setup/callback?code=manifest-code-1&state={state}")).status == 400
    assert fake_github.calls_to("apps/create-from-manifest") == []

    # The real thing.
    state = _state_of(await _start(setup_client, code, org="octo-org"))
    response = await setup_client.get(f"/setup/callback?code=manifest-code-1&state={state}")
    assert response.status == 200, await response.text()
    page = Forms(await response.text())
    app_json = fake_github.app_json()
    assert f"{app_json['html_url']}/installations/new" in page.links
    # The dashboard link opens the dashboard, not a refusal: it carries the token.
    assert f"{PUBLIC_URL}/?token={services.dashboard_token}" in page.links
    dashboard = await setup_client.get(f"/?token={services.dashboard_token}")
    assert dashboard.status == 200
    assert len(fake_github.calls_to("apps/create-from-manifest")) == 1

    # .env: 0600, the operator's lines kept, credentials readable by the settings loader.
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    assert "# operator's own settings\nPORT=3000\n" in text and "SHEPHERD_AGENT=claude" in text
    assert text.count("GITHUB_APP_ID=") == 1
    reloaded = load_settings({"SHEPHERD_DATA_DIR": str(services.settings.data_dir)}, env_file=env_file)
    assert reloaded.mode == "github"
    assert reloaded.app_id == fake_github.app_id
    assert reloaded.private_key.get_secret_value().strip() == fake_github.private_key_pem.strip()
    assert reloaded.webhook_secret.get_secret_value() == fake_github.webhook_secret

    # GitHub mode, same process: health says so, and a signed delivery is stored (202).
    health = await (await setup_client.get("/healthz")).json()
    assert health["mode"] == "github"
    issue = fake_github.add_issue("octo-org/widgets", title="Add export", body="CSV", user="alice")
    labeled = payloads.issue_labeled(fake_github, "octo-org/widgets", issue["number"], "agent:go")
    body, headers = payloads.fake_delivery(fake_github, "issues", labeled)
    response = await setup_client.post("/webhook", data=body, headers=headers)
    assert response.status == 202
    assert [d.id for d in services.store.deliveries()] == [headers["X-GitHub-Delivery"]]

    # The setup URL is spent.
    assert (await setup_client.get(f"/setup?code={code}")).status == 410
    assert (await setup_client.get(f"/setup/callback?code=x&state={state}")).status == 410


async def test_a_code_github_refuses_leaves_setup_mode_and_env_alone(setup_client, fake_github, env_file):
    services = setup_client.server.app[SERVICES]
    before = env_file.read_text()
    state = _state_of(await _start(setup_client, services.setup.code))
    response = await setup_client.get(f"/setup/callback?code=expired&state={state}")
    assert response.status == 502
    assert "refused the registration code (404)" in await response.text()
    assert env_file.read_text() == before
    assert services.setup is not None and services.settings.mode == "setup"
    assert (await setup_client.get(f"/setup?code={services.setup.code}")).status == 200


def test_write_env_creates_a_private_file_and_replaces_old_credentials(tmp_path):
    path = tmp_path / ".env"
    path.write_text("GITHUB_PRIVATE_KEY_PATH=/old/key.pem\nexport GITHUB_WEBHOOK_SECRET=old\nOTHER=1\n")
    write_env(path, {"GITHUB_APP_ID": "42", "GITHUB_WEBHOOK_SECRET": "s$cret"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "OTHER=1\nGITHUB_APP_ID='42'\nGITHUB_WEBHOOK_SECRET='s$cret'\n"
    fresh = tmp_path / "new" / ".env"
    fresh.parent.mkdir()
    write_env(fresh, {"GITHUB_APP_ID": "1"})
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_manifest_urls_follow_the_public_url_and_permissions_are_underscored():
    manifest = build_manifest("http://127.0.0.1:3000/", name="My Shepherd")
    assert manifest["name"] == "My Shepherd"
    assert manifest["hook_attributes"]["url"] == "http://127.0.0.1:3000/webhook"
    assert manifest["redirect_url"] == "http://127.0.0.1:3000/setup/callback"
    assert all("-" not in name for name in required_permissions())
    assert build_manifest("https://a.example")["url"] == "https://a.example"


# -- a public URL GitHub can reach (issue 16) ---------------------------------------------------------


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1:3000", "loopback"),
    ("http://localhost:3000", "loopback"),
    ("http://[::1]:3000", "loopback"),
    ("http://192.168.1.20:3000", "private"),
    ("http://10.0.0.5", "private"),
    ("http://172.20.1.1", "private"),
    ("http://build-box.local:3000", "private"),
    ("http://shepherd:3000", "private"),
    ("https://shepherd.example.com", None),
    ("https://fuzzy-cat-42.trycloudflare.com", None),  # a relay (tunnel) is a public URL
    ("https://1a2b-203-0-113-7.ngrok-free.app", None),
])
def test_public_urls_github_cannot_reach_are_named(url, problem):
    from bot.github.reachability import unreachable_reason

    reason = unreachable_reason(url)
    assert (reason is None) == (problem is None)
    if problem:
        assert problem in reason


async def test_the_setup_page_and_the_log_warn_when_github_cannot_reach_the_public_url(
    aiohttp_client, fake_github, tmp_path, env_file, caplog
):
    caplog.set_level(logging.INFO)
    settings = load_settings(  # SHEPHERD_PUBLIC_URL unset: the loopback default
        {"GITHUB_API_URL": fake_github.url, "SHEPHERD_DATA_DIR": str(tmp_path / "data")}, env_file=None
    )
    client = await aiohttp_client(create_app(settings, env_file=env_file))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("SHEPHERD_PUBLIC_URL" in w and "GitHub cannot reach" in w and "docs/setup.md" in w for w in warnings)

    code = client.server.app[SERVICES].setup.code
    page = await (await client.get(f"/setup?code={code}")).text()
    assert 'class="warning"' in page
    assert "GitHub cannot reach http://127.0.0.1:3000 (a loopback address)" in page
    assert "SHEPHERD_PUBLIC_URL" in page
    assert "docs/setup.md" in page


async def test_a_reachable_public_url_gets_no_warning(setup_client, caplog):
    code = setup_client.server.app[SERVICES].setup.code
    page = await (await setup_client.get(f"/setup?code={code}")).text()
    assert 'class="warning"' not in page
    assert not [r for r in caplog.records if "GitHub cannot reach" in r.getMessage()]


async def test_an_env_file_that_cannot_be_written_stops_before_github(
    aiohttp_client, setup_settings, tmp_path, fake_github
):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    client = await aiohttp_client(create_app(setup_settings, env_file=blocked / ".env"))
    code = client.server.app[SERVICES].setup.code
    response = await client.post("/setup/start", data={"code": code, "org": "", "name": ""})
    assert response.status == 500
    text = await response.text()
    assert str(blocked / ".env") in text and "cannot write" in text
    assert Forms(text).forms == []  # no form that goes on to GitHub
    assert fake_github.calls_to("apps/create-from-manifest") == []


async def test_when_env_cannot_be_written_after_github_created_the_app_the_credentials_are_shown_once(
    setup_client, fake_github, env_file
):
    services = setup_client.server.app[SERVICES]
    code = services.setup.code
    fake_github.add_manifest_code("manifest-code-2")
    state = _state_of(await _start(setup_client, code))
    env_file.unlink()
    env_file.mkdir()  # the file became unwritable between the check and GitHub's answer

    response = await setup_client.get(f"/setup/callback?code=manifest-code-2&state={state}")
    assert response.status == 200
    text = await response.text()
    assert "could not write" in text
    assert f"GITHUB_APP_ID={fake_github.app_id}" in text
    assert fake_github.webhook_secret in text
    assert fake_github.private_key_pem.strip().splitlines()[1] in text
    assert response.headers["Cache-Control"] == "no-store"

    # GitHub mode in memory: deliveries are taken now, and no retry can register a second App.
    assert services.settings.mode == "github"
    assert (await (await setup_client.get("/healthz")).json())["mode"] == "github"
    again = await setup_client.get(f"/setup/callback?code=manifest-code-2&state={state}")
    assert again.status == 410
    assert (await setup_client.get(f"/setup?code={code}")).status == 410
    assert len(fake_github.calls_to("apps/create-from-manifest")) == 1
