"""The one find-or-create of Shepherd's marked things, against the strict fake GitHub: its own comment is
found again after a lost database, a deleted one is written again once, racing writers create one, and
a copy of its marker in someone else's comment is never edited."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bot.github.client import GitHubApp
from bot.metrics import Metrics
from bot.runtime.marked import ensure_marked, issue_comment
from bot.store.database import Store
from bot.store.posted import PostedRecords

REPO = "acme/web"
OWNER, NAME = REPO.split("/")
INSTALLATION = 7
MARK = "<!-- shepherd:note session=acme/web#1/1 -->"


@pytest.fixture
async def gh(fake_github):
    fake_github.add_installation(INSTALLATION, account=OWNER, repositories=[REPO])
    fake_github.add_issue(REPO, title="Something")
    async with aiohttp.ClientSession() as session:
        app = GitHubApp(session, app_id=fake_github.app_id, private_key=fake_github.private_key_pem,
                        api_url=fake_github.url, metrics=Metrics(), write_spacing=0.0)
        yield app.installation(INSTALLATION)
        await app.close()


@pytest.fixture
def posted(tmp_path):
    store = Store.open(tmp_path / "shepherd.db")
    yield PostedRecords(store)
    store.close()


async def _note(gh, posted, fake_github, text: str, **options):
    place = issue_comment(OWNER, NAME, 1, "note", {"session": "acme/web#1/1"})
    return await ensure_marked(gh, posted, place, scope="acme/web#1/1", kind="note", key="",
                               bot_login=fake_github.bot_login, body=f"{MARK}\n{text}", now=0.0, **options)


def _notes(fake_github) -> list[dict]:
    return [c for c in fake_github.comments(REPO, 1) if MARK in c["body"]]


async def test_a_comment_deleted_by_a_person_is_written_again_once(gh, posted, fake_github):
    first = await _note(gh, posted, fake_github, "one")
    fake_github.delete_comment(REPO, first.id)

    again = await _note(gh, posted, fake_github, "two")
    await _note(gh, posted, fake_github, "two")

    assert again.created and again.id != first.id
    assert [(c["id"], c["body"].endswith("two")) for c in _notes(fake_github)] == [(again.id, True)]


async def test_racing_writers_create_one_comment(gh, posted, fake_github):
    done = await asyncio.gather(*(_note(gh, posted, fake_github, "same") for _ in range(3)))
    assert len({d.id for d in done}) == 1
    assert len(_notes(fake_github)) == 1
    assert len(fake_github.calls_to("issues/create-comment")) == 1


async def test_someone_elses_copy_of_the_marker_is_never_edited_and_left_alone_without_edit(gh, posted, fake_github):
    copies = [fake_github.add_comment(REPO, 1, f"{MARK}\ntheirs", user=login) for login in ("other[bot]", "eve")]
    mine = await _note(gh, posted, fake_github, "mine", edit=False)
    changed = await _note(gh, posted, fake_github, "changed", edit=False)  # edit=False: left as it is

    assert mine.created and changed.id == mine.id and not changed.written
    bodies = {c["id"]: c["body"] for c in _notes(fake_github)}
    assert [bodies[c["id"]] for c in copies] == [f"{MARK}\ntheirs"] * 2
    assert bodies[mine.id].endswith("mine")
    assert fake_github.calls_to("issues/update-comment") == []
