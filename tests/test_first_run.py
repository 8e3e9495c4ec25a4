"""The whole first run, as a newcomer following the README does it (issue 16, "Done when").

`scripts/serve` in a fresh copy of the repository, without App credentials (setup mode) and with a
command agent, against the strict fake GitHub (API), its github.com web pages of the manifest flow
(tests/fakes/github_web.py) and a real git remote. The person's side is a headless Chromium:

1. the start-up log names the one-time setup URL and warns that GitHub cannot reach a loopback URL;
2. the setup page shows the same warning, and the webhook URL it would register;
3. the form goes to GitHub's "new App" page (the manifest), "Create GitHub App" sends the browser back
   to Shepherd's callback with a code and the state;
4. Shepherd says it is registered, writes `.env` (0600) with the App's credentials, serves webhooks,
   and its dashboard link opens the dashboard;
5. installing the App (a signed `installation.created`) creates `agent:go` and `agent:plan`;
6. labelling an issue `agent:go` ends in a pull request: 👀, one status comment, the pushed branch,
   the PR body; the dashboard lists the session with its PR.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from dotenv import dotenv_values

from bot.github.labels import LOOKS
from bot.views.dashboard_token import TOKEN_FILE_NAME
from tests.fakes import payloads
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.fakes.github_web import CREATE_BUTTON, GitHubWeb
from tests.fakes.ports import free_port
from tests.runtime_support import INSTALLATION, REPO, prepare_repo
from tests.test_browser import Browser, browser, chromedriver  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
SETUP_URL = re.compile(r"open (http://\S+/setup\?code=\S+) in a browser")
BRANCH = "agent/issue-1-add-a-greeting"

# The operator's own agent: a command, so no model is needed. It works in the issue's worktree.
AGENT = """set -e
echo hello > hello.txt
git add hello.txt
git commit -q -m "Add hello"
shepherd done "Added hello.txt"
"""


def newcomer_checkout(tmp_path: Path) -> Path:
    """A fresh copy of this repository's files, as `git clone` would give, on a machine where `scripts/setup`
    has run before: `.venv` is this test run's interpreter (a one-line wrapper) with setup's stamp for this
    `pyproject.toml`, so `scripts/serve` skips `pip install` (minutes, and the network) and runs the rest."""
    checkout = tmp_path / "shepherd"
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if name.startswith("tests/") or not source.is_file():
            continue
        target = checkout / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    python = checkout / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    stamp = hashlib.sha256((checkout / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (checkout / ".venv" / ".setup-stamp").write_text(stamp + "\n")
    return checkout


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (the server and any agent it started), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left in the group after the server exited
    except ProcessLookupError:
        pass


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes the test starts; each one's whole group is stopped at teardown."""
    processes: list[subprocess.Popen] = []
    try:
        yield processes
    finally:
        for process in processes:
            stop_process_group(process)


@pytest.fixture
async def github_web(fake_github) -> AsyncIterator[GitHubWeb]:
    web = await GitHubWeb(fake_github).start()
    try:
        yield web
    finally:
        await web.stop()


async def until(predicate, what: str, timeout: float = 60.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)


async def page_text(browser: Browser) -> str:
    [body] = await browser.find_all("body")
    return await browser.text(body)


async def current_url(browser: Browser) -> str:
    return await browser.call("GET", "/url")


async def click(browser: Browser, css: str) -> None:
    [element] = await browser.find_all(css)
    await browser.call("POST", f"/element/{element}/click", {})


async def _startswith(url, prefix: str) -> bool:
    return (await url).startswith(prefix)


async def click_link(browser: Browser, href: str) -> None:
    for link in await browser.find_all("a"):
        if await browser.attribute(link, "href") == href:
            await browser.call("POST", f"/element/{link}/click", {})
            return
    raise AssertionError(f"no link to {href} on the page")


def _status_comments(fake, number: int) -> list[dict]:
    return [c for c in fake.comments(REPO, number)
            if c["user"]["login"] == fake.bot_login and "shepherd:status" in c["body"]]


async def test_a_newcomer_goes_from_scripts_serve_to_a_pull_request(
    fake_github, github_web, git_remote, browser, tmp_path, started  # noqa: F811 - fixtures
):
    checkout = newcomer_checkout(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    agent = tmp_path / "agent.sh"
    agent.write_text(AGENT)
    # The person's repository already exists on GitHub (and its git remote); the App is not registered yet.
    prepare_repo(fake_github, git_remote, policy=None)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "data"
    environment = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # Where "GitHub" is: the fake's API and its web pages. Nothing else is configured: no App
        # credentials (setup mode) and no SHEPHERD_PUBLIC_URL (the loopback default the warning is about).
        "GITHUB_API_URL": fake_github.url,
        "GITHUB_URL": github_web.url,
        "PORT": str(port),
        "SHEPHERD_DATA_DIR": str(data_dir),
        "SHEPHERD_AGENT": "command",
        "SHEPHERD_AGENT_COMMAND": f"sh {agent}",
    }
    log_path = tmp_path / "shepherd.log"
    with log_path.open("wb") as log_file:
        started.append(subprocess.Popen(
            ["scripts/serve", "--host", "127.0.0.1"], cwd=checkout, env=environment,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    [server] = started

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    def setup_url_in_log() -> str | None:
        assert server.poll() is None, f"scripts/serve exited with {server.returncode}:\n{log_text()}"
        match = SETUP_URL.search(log_text())
        return match.group(1) if match else None

    # 1. The start-up log: the one-time setup URL, and a warning that GitHub cannot reach the public URL.
    setup_url = await until(setup_url_in_log, "the setup URL in the log")
    assert setup_url.startswith(f"{base}/setup?code=")
    assert "Shepherd setup mode, listening on 127.0.0.1" in log_text()
    warning = f"GitHub cannot reach {base} (a loopback address): set SHEPHERD_PUBLIC_URL"
    assert warning in log_text() and "docs/setup.md" in log_text(), "no public-URL warning in the start-up log"
    assert "Traceback" not in log_text()

    async with aiohttp.ClientSession() as http:

        async def health() -> dict:
            async with http.get(f"{base}/healthz") as response:
                return await response.json()

        assert (await health())["mode"] == "setup"

        # 2. The setup page, in a browser: what to do, the same warning, the webhook URL it would register.
        await browser.go(setup_url)
        seen = await page_text(browser)
        assert "Register Shepherd as a GitHub App" in seen
        [alert] = await browser.find_all("p.warning")
        alert_text = await browser.text(alert)
        assert f"GitHub cannot reach {base} (a loopback address)" in alert_text
        assert "SHEPHERD_PUBLIC_URL" in alert_text and "docs/setup.md" in alert_text
        assert f"Webhook URL: {base}/webhook" in seen
        assert f"Callback URL: {base}/setup/callback" in seen

        # 3. The form posts the manifest to GitHub's "new App" page (the page submits itself); there the
        # person presses "Create GitHub App", and GitHub sends the browser back with a code and the state.
        await click(browser, "form button[type=submit]")
        await until(
            lambda: _startswith(current_url(browser), f"{github_web.url}/settings/apps/new?state="),
            "the browser on GitHub's new-App page", timeout=30,
        )
        [posted] = github_web.manifests
        assert posted.org is None
        assert posted.manifest["hook_attributes"]["url"] == f"{base}/webhook"
        assert posted.manifest["redirect_url"] == f"{base}/setup/callback"
        on_github = await page_text(browser)
        assert f"Webhook URL: {base}/webhook" in on_github and CREATE_BUTTON in on_github
        await click(browser, "#create")
        await until(
            lambda: _startswith(current_url(browser), f"{base}/setup/callback?"),
            "the browser back at Shepherd's callback", timeout=30,
        )
        callback_url = await current_url(browser)
        assert f"code={github_web.codes[0]}" in callback_url and f"state={posted.state}" in callback_url

        # 4. Registered: the page says so and links to the installation and the dashboard (with its token).
        registered = await page_text(browser)
        assert "Shepherd is registered" in registered
        assert f"GitHub created the App {fake_github.app_slug}" in registered
        assert "no restart is needed" in registered
        links = [await browser.attribute(a, "href") for a in await browser.find_all("a")]
        install_link = f"{fake_github.app_json()['html_url']}/installations/new"
        token = (data_dir / TOKEN_FILE_NAME).read_text().strip()
        dashboard_link = f"{base}/?token={token}"
        assert links == [install_link, dashboard_link]
        assert len(fake_github.calls_to("apps/create-from-manifest")) == 1

        env_file = checkout / ".env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        saved = dotenv_values(env_file, interpolate=False)
        assert saved["GITHUB_APP_ID"] == str(fake_github.app_id)
        assert saved["GITHUB_PRIVATE_KEY"].replace("\\n", "\n").strip() == fake_github.private_key_pem.strip()
        secret = saved["GITHUB_WEBHOOK_SECRET"]
        assert secret == fake_github.webhook_secret
        assert str(env_file) in registered
        assert (await health())["mode"] == "github"
        assert f"registered; credentials written to {env_file}; now in GitHub mode" in log_text()

        # The dashboard link opens the dashboard, not the sign-in page; the setup link is spent.
        await click_link(browser, dashboard_link)
        await until(lambda: _startswith(current_url(browser), dashboard_link), "the dashboard", timeout=30)
        dashboard = await page_text(browser)
        assert "needs its token" not in dashboard
        assert "0 sessions" in dashboard and "Setup mode" not in dashboard
        await browser.go(setup_url)
        assert "no longer works" in await page_text(browser)

        async def deliver(event: str, payload: dict) -> int:
            """A delivery as GitHub signs it: with the webhook secret the setup wrote to `.env`."""
            body, headers = payloads.delivery(event, payload, secret, target_id=fake_github.app_id)
            async with http.post(f"{base}/webhook", data=body, headers=headers) as response:
                return response.status

        # 5. The person installs the App on the repository: the trigger labels appear there.
        assert fake_github.repo_labels(REPO) == []
        created = payloads.installation_event(fake_github, "created", INSTALLATION)
        assert await deliver("installation", created) == 202
        await until(lambda: len(fake_github.repo_labels(REPO)) == 2, "the trigger labels")
        labels = {
            label["name"]: (label["color"], label.get("description"))
            for label in fake_github._repo(REPO).labels.values()  # noqa: SLF001 - the fake's view
        }
        assert labels == {
            "agent:go": (LOOKS["go"].color, LOOKS["go"].description),
            "agent:plan": (LOOKS["plan"].color, LOOKS["plan"].description),
        }
        assert all(color and description for color, description in labels.values())

        # 6. A maintainer labels an issue `agent:go`: a pull request, and the issue says so.
        issue = fake_github.add_issue(REPO, title="Add a greeting", body="Please add hello.txt", user="carol")
        labelled = payloads.issue_labeled(fake_github, REPO, issue["number"], "agent:go", sender="alice")
        assert await deliver("issues", labelled) == 202

        def finished_status() -> dict | None:
            pulls = fake_github.pulls(REPO)
            statuses = _status_comments(fake_github, issue["number"])
            if pulls and statuses and f"[#{pulls[0]['number']}]" in statuses[-1]["body"]:
                return statuses[-1]
            return None

        status = await until(finished_status, "the pull request and the status comment saying so", timeout=120)
        assert "Traceback" not in log_text()
        [pull] = fake_github.pulls(REPO)
        assert pull["head"]["ref"] == BRANCH and pull["base"]["ref"] == "main"
        assert pull["body"].startswith(f"Closes #{issue['number']}\n")
        assert "Added hello.txt" in pull["body"] and "Add hello" in pull["body"]
        assert pull["user"]["login"] == fake_github.bot_login
        assert fake_github.reactions(REPO, issue["number"]) == ["eyes"]
        bot_comments = [c for c in fake_github.comments(REPO, issue["number"])
                        if c["user"]["login"] == fake_github.bot_login]
        assert bot_comments == [status]
        assert "Complete" in status["body"] and f"[#{pull['number']}]({pull['html_url']})" in status["body"]
        assert f"`{BRANCH}`" in status["body"]
        assert git_remote.show(REPO, f"refs/heads/{BRANCH}", "hello.txt") == "hello\n"
        assert "Add hello" in git_remote.messages(REPO, f"refs/heads/{BRANCH}")

        # The dashboard now lists the session and links its pull request.
        await browser.go(dashboard_link)
        [row] = await browser.find_all("tr.session")
        row_text = await browser.text(row)
        assert f"{REPO}#{issue['number']}" in row_text and "Add a greeting" in row_text
        row_links = [await browser.attribute(a, "href") for a in await browser.find_all("tr.session a")]
        assert pull["html_url"] in row_links

