"""Shepherd's marked things on GitHub (its comments, the dashboard issue, its pull requests): found or created once.

Everything Shepherd writes carries a hidden marker (`<!-- shepherd:<kind> ... -->`) and is remembered in
the `posted` table under (scope, kind, key). To write one, `ensure_marked`
1. edits the remembered one, unless its text is unchanged (a stored hash) or it is gone;
2. else looks for it on GitHub, trusting only items written by Shepherd's own bot login (the App's
   `<slug>[bot]`): a person or another App can copy a marker, but not the author;
3. else creates it, and remembers its id at once.
Calls for the same thing are serialised, so two tasks racing to report it cannot both create it.
A create whose answer was lost (a 502 after GitHub did create it) or a database lost in a restart is
therefore found again, never doubled.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gidgethub

from bot.core.sanitize import find_marker
from bot.github.pacing import Priority
from bot.github.permissions import is_self
from bot.store.posted import PostedRecords

log = logging.getLogger(__name__)

COMMENTS_URL = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
COMMENT_URL = "/repos/{owner}/{repo}/issues/comments/{comment_id}"
ISSUES_URL = "/repos/{owner}/{repo}/issues"
OPEN_ISSUES_URL = "/repos/{owner}/{repo}/issues{?state,creator,per_page}"
ISSUE_URL = "/repos/{owner}/{repo}/issues/{issue_number}"
PULLS_URL = "/repos/{owner}/{repo}/pulls"
OPEN_PULLS_URL = "/repos/{owner}/{repo}/pulls{?head,state}"
PULL_URL = "/repos/{owner}/{repo}/pulls/{pull_number}"


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _same_text(written: str | None, wanted: str) -> bool:
    # GitHub trims what it stores of some bodies; trailing blanks never make a difference worth an edit.
    return (written or "").strip() == wanted.strip()


@dataclass(frozen=True)
class Place:
    """Where one marked thing lives on GitHub, how it is recognised among its neighbours, and how it is
    created and edited. Build one with `issue_comment`, `repository_issue` or `pull_request`."""

    list_url: str
    list_vars: Mapping[str, Any]
    matches: Callable[[Mapping[str, Any]], bool]
    create_url: str
    create_vars: Mapping[str, Any]
    edit_url: str
    edit_vars: Mapping[str, Any]
    id_name: str  # the edit URL's variable naming the thing
    id_field: str  # the field of GitHub's answer that fills it
    create_fields: Mapping[str, Any] = field(default_factory=dict)  # besides the body
    trust_record: bool = True  # False: always look on GitHub (a closed pull request is not reused)
    gone: tuple[int, ...] = (404,)


def _marked(kind: str, fields: Mapping[str, str]) -> Callable[[Mapping[str, Any]], bool]:
    def matches(item: Mapping[str, Any]) -> bool:
        found = find_marker(item.get("body"), kind)
        return found is not None and all(found.get(k) == str(v) for k, v in fields.items())

    return matches


def issue_comment(owner: str, repo: str, number: int, kind: str, fields: Mapping[str, str]) -> Place:
    """A comment on an issue or a pull request, carrying the marker `kind` with `fields`."""
    where = {"owner": owner, "repo": repo}
    return Place(
        list_url=COMMENTS_URL, list_vars={**where, "issue_number": number}, matches=_marked(kind, fields),
        create_url=COMMENTS_URL, create_vars={**where, "issue_number": number},
        edit_url=COMMENT_URL, edit_vars=where, id_name="comment_id", id_field="id",
    )


def repository_issue(owner: str, repo: str, *, bot_login: str, title: str, kind: str,
                     fields: Mapping[str, str]) -> Place:
    """An open issue of the repository opened by the bot, carrying the marker `kind` with `fields`."""
    where = {"owner": owner, "repo": repo}
    marked = _marked(kind, fields)
    return Place(
        list_url=OPEN_ISSUES_URL,
        list_vars={**where, "state": "open", "creator": bot_login, "per_page": 100},
        matches=lambda issue: "pull_request" not in issue and marked(issue),
        create_url=ISSUES_URL, create_vars=where, edit_url=ISSUE_URL, edit_vars=where,
        id_name="issue_number", id_field="number", create_fields={"title": title}, gone=(404, 410),
    )


def pull_request(owner: str, repo: str, *, head: str, base: str, title: str, draft: bool) -> Place:
    """The open pull request from the branch `head` (GitHub allows one per head and base)."""
    where = {"owner": owner, "repo": repo}
    return Place(
        list_url=OPEN_PULLS_URL, list_vars={**where, "head": f"{owner}:{head}", "state": "open"},
        matches=lambda pull: (pull.get("head") or {}).get("ref") == head,
        create_url=PULLS_URL, create_vars=where, edit_url=PULL_URL, edit_vars=where,
        id_name="pull_number", id_field="number",
        create_fields={"title": title, "head": head, "base": base, "draft": draft, "maintainer_can_modify": False},
        trust_record=False,
    )


@dataclass(frozen=True)
class Marked:
    """What `ensure_marked` did: the thing's id; GitHub's view of it when one was read or written (None
    when the remembered text was already right); whether it was written now, and whether created."""

    id: int
    item: dict[str, Any] | None
    written: bool
    created: bool = False


async def find_own(gh: Any, place: Place, bot_login: str) -> dict[str, Any] | None:
    """The bot's own item at `place`; the same marker anywhere else is not trusted."""
    async for item in gh.getiter(place.list_url, dict(place.list_vars)):
        if is_self(item.get("user"), bot_login) and place.matches(item):
            return item
    return None


async def ensure_marked(
    gh: Any,
    posted: PostedRecords,
    place: Place,
    *,
    scope: str,
    kind: str,
    key: str,
    bot_login: str,
    body: str,
    now: float,
    priority: Priority | None = None,
    create_priority: Priority | None = None,
    edit: bool = True,
) -> Marked:
    """Create the thing at `place`, or edit the one already there (left as it is when `edit` is False)."""
    async with _lock(scope, kind, key):
        sha = body_hash(body)
        record = posted.get(scope, kind, key) if place.trust_record else None
        if record is not None:
            if record.body_sha == sha or not edit:
                return Marked(record.github_id, None, False)
            try:
                item = await _edit(gh, place, record.github_id, body, priority)
            except gidgethub.BadRequest as exc:
                if int(exc.status_code) not in place.gone:
                    raise
                log.warning("%s %s of %s is gone; looking for it again", kind, record.github_id, scope)
                posted.forget(scope, kind, key)
            else:
                posted.put(scope, kind, key, record.github_id, sha, now)
                return Marked(record.github_id, item, True)
        found = await find_own(gh, place, bot_login)
        if found is not None:
            ident = int(found[place.id_field])
            if not edit or _same_text(found.get("body"), body):
                posted.put(scope, kind, key, ident, body_hash(found.get("body") or "") if not edit else sha, now)
                return Marked(ident, found, False)
            item = await _edit(gh, place, ident, body, priority)
            posted.put(scope, kind, key, ident, sha, now)
            return Marked(ident, item, True)
        created = await gh.post(place.create_url, dict(place.create_vars), data={**place.create_fields, "body": body},
                                priority=create_priority if create_priority is not None else priority)
        ident = int(created[place.id_field])
        posted.put(scope, kind, key, ident, sha, now)
        return Marked(ident, created, True, created=True)


async def _edit(gh: Any, place: Place, ident: int, body: str, priority: Priority | None) -> dict[str, Any]:
    return await gh.patch(place.edit_url, {**place.edit_vars, place.id_name: ident}, data={"body": body},
                          priority=priority)


# One lock per thing Shepherd writes (scope, kind, key) while its check-then-create runs; a lock nobody
# holds or waits for is dropped with its last reference.
_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(scope: str, kind: str, key: str) -> asyncio.Lock:
    lock = _locks.get((scope, kind, key))
    if lock is None:
        lock = _locks[(scope, kind, key)] = asyncio.Lock()
    return lock


# -- comments on an issue, the common case --------------------------------------------------------------


async def find_own_comment(
    gh: Any, owner: str, repo: str, number: int, bot_login: str, kind: str, fields: dict[str, str]
) -> dict[str, Any] | None:
    """The bot's comment on the issue whose marker is `kind` with `fields`."""
    return await find_own(gh, issue_comment(owner, repo, number, kind, fields), bot_login)


async def ensure_comment(
    gh: Any,
    posted: PostedRecords,
    *,
    scope: str,
    kind: str,
    key: str,
    owner: str,
    repo: str,
    number: int,
    bot_login: str,
    marker_fields: dict[str, str],
    body: str,
    now: float,
    priority: Priority = Priority.NORMAL,
    edit: bool = True,
) -> tuple[dict[str, Any] | None, bool]:
    """`ensure_marked` for a comment on issue `number`; returns (the comment, or None when the remembered
    one is unchanged, and whether it was written now)."""
    done = await ensure_marked(
        gh, posted, issue_comment(owner, repo, number, kind, marker_fields), scope=scope, kind=kind, key=key,
        bot_login=bot_login, body=body, now=now, priority=priority, edit=edit,
    )
    return done.item, done.written

