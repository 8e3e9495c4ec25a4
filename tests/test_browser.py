"""The dashboard in a real headless Chromium, driven through chromedriver's W3C WebDriver API, with a screenshot.

chromedriver speaks plain HTTP+JSON, so aiohttp drives it directly (no Selenium pin to keep in step with
the mirror). Debian's `chromium` and `chromedriver` are installed by `scripts/setup --test`.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import SERVICES, create_app
from tests.conftest import settings_for
from tests.test_views import TOKEN, sample_sessions, store_session
from tests.fakes.ports import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
STUCK_BACKGROUND = "rgba(255, 248, 197, 1)"  # tr.stuck td in templates/dashboard.html.j2

pytestmark = pytest.mark.e2e


@pytest.fixture
async def chromedriver(tmp_path):
    if not (shutil.which(CHROMEDRIVER) and shutil.which(CHROMIUM)):
        pytest.skip("chromium and chromedriver are not installed (scripts/setup --test installs them)")
    port = free_port()
    log = (tmp_path / "chromedriver.log").open("wb")
    process = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{url}/status") as response:
                        if (await response.json())["value"]["ready"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("chromedriver did not become ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


class Browser:
    """A WebDriver session: just the few commands these tests need."""

    def __init__(self, http: aiohttp.ClientSession, driver: str, session_id: str) -> None:
        self.http = http
        self.base = f"{driver}/session/{session_id}"

    async def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, self.base + path, json=payload) as response:
            answer = await response.json()
            assert response.status == 200, answer
            return answer["value"]

    async def go(self, url: str) -> None:
        await self.call("POST", "/url", {"url": url})

    async def find_all(self, css: str) -> list[str]:
        found = await self.call("POST", "/elements", {"using": "css selector", "value": css})
        return [item[ELEMENT] for item in found]

    async def text(self, element: str) -> str:
        return await self.call("GET", f"/element/{element}/text")

    async def attribute(self, element: str, name: str) -> str | None:
        return await self.call("GET", f"/element/{element}/attribute/{name}")

    async def css(self, element: str, name: str) -> str:
        return await self.call("GET", f"/element/{element}/css/{name}")

    async def script(self, source: str) -> Any:
        return await self.call("POST", "/execute/sync", {"script": source, "args": []})

    async def resize(self, width: int, height: int) -> None:
        await self.call("POST", "/window/rect", {"width": width, "height": height})

    async def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(await self.call("GET", "/screenshot"))
        path.write_bytes(png)
        return png


@pytest.fixture
async def browser(chromedriver, tmp_path):
    capabilities = {
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900",
                    ],
                },
            }
        }
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{chromedriver}/session", json=capabilities) as response:
            answer = await response.json()
            assert response.status == 200, answer
        session_id = answer["value"]["sessionId"]
        try:
            yield Browser(http, chromedriver, session_id)
        finally:
            async with http.delete(f"{chromedriver}/session/{session_id}"):
                pass


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


async def test_dashboard_in_chromium_shows_the_stuck_session_first_and_refuses_without_token(
    aiohttp_client, fake_github, tmp_path, browser
):
    client = await aiohttp_client(create_app(settings_for(fake_github, tmp_path / "data")))
    for session in sample_sessions():
        store_session(client.server.app[SERVICES].store, session)
    dashboard = str(client.make_url("/"))

    await browser.go(f"{dashboard}?token={TOKEN}")
    rows = await browser.find_all("tr.session")
    assert len(rows) == 4
    first = await browser.text(rows[0])
    assert "acme/web#124" in first and "Implement auth flow" in first
    assert "Should the export include archived rows?" in first
    assert "STUCK" in first.upper()
    assert await browser.attribute(rows[0], "data-session") == "acme/web#124/1"
    cells = await browser.find_all("tr.session:first-child td")
    assert await browser.css(cells[0], "background-color") == STUCK_BACKGROUND
    assert "#130" in await browser.text(rows[3])
    png = await browser.screenshot(tmp_path / "dashboard.png")
    width, height = _png_size(png)
    assert width >= 800 and height >= 400

    await browser.go(dashboard)
    [body] = await browser.find_all("body")
    refused = await browser.text(body)
    assert "The dashboard needs its token" in refused  # a login page, not raw JSON
    assert "Should the export" not in refused and not await browser.find_all("tr.session")
    await browser.screenshot(tmp_path / "refused.png")
    # Signing in on that page opens the dashboard.
    [field] = await browser.find_all("input[name=token]")
    await browser.call("POST", f"/element/{field}/value", {"text": TOKEN})
    [button] = await browser.find_all("form.login button")
    await browser.call("POST", f"/element/{button}/click", {})
    for _ in range(100):
        if len(await browser.find_all("tr.session")) == 4:
            break
        await asyncio.sleep(0.05)
    assert len(await browser.find_all("tr.session")) == 4


@pytest.mark.parametrize("width", [1280, 390])
async def test_dashboard_fits_the_window_at_desktop_and_phone_width(
    aiohttp_client, fake_github, tmp_path, browser, width
):
    client = await aiohttp_client(create_app(settings_for(fake_github, tmp_path / "data")))
    for session in sample_sessions():
        store_session(client.server.app[SERVICES].store, session)
    await browser.resize(width, 900)
    await browser.go(f"{client.make_url('/')}?token={TOKEN}")
    viewport, scrolled = await browser.script(
        "return [document.documentElement.clientWidth, document.documentElement.scrollWidth]")
    assert viewport <= width
    assert scrolled <= viewport, f"the page is {scrolled}px wide in a {viewport}px window"
    rows = await browser.find_all("tr.session")
    first = await browser.text(rows[0])
    assert "acme/web#124" in first and "Should the export include archived rows?" in first
    png = await browser.screenshot(tmp_path / f"dashboard-{width}.png")
    assert _png_size(png)[0] <= width

