"""Shepherd's marked things on GitHub (its comments, the dashboard issue, its pull requests), found or created once.

Each carries a hidden marker (`<!-- shepherd:<kind> ... -->`) and is remembered in the `posted` table
under (scope, kind, key). `ensure_marked` edits the remembered one (unless its text is unchanged or it
is gone); else looks for it on GitHub, trusting only what Shepherd's own bot login (the App's
`<slug>[bot]`) wrote, since anyone can copy a marker but not its author; else creates it and remembers
its id at once. A create whose answer was lost (a 502 after GitHub did create it) or a database lost in
a restart is so found again, never doubled; calls for one thing are serialised, so racers create one.
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
from bot.github.api import GitHub
from bot.github.pacing import Priority
from bot.github.permissions import is_self
from bot.store.posted import PostedRecords

log = logging.getLogger(__name__)

COMMENTS_URL = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
COMMENT_URL = "/repos/{owner}/{repo}/issues/comments/{comment_id}"


def body_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Place:
    """Where a marked thing lives and how it is recognised, created and edited (`issue_comment`,
    `repository_issue`, `pull_request`). `where` fills every URL; `id_name` is the edit URL's variable
    that the answer's `id_field` fills."""

    where: Mapping[str, Any]
    list_url: str
    list_query: Mapping[str, Any]
    matches: Callable[[Mapping[str, Any]], bool]
    create_url: str
    edit_url: str
    id_name: str
    id_field: str
    create_fields: Mapping[str, Any] = field(default_factory=dict)  # besides the body
    trust_record: bool = True  # False: always look on GitHub (a closed pull request is not reused)
    gone: tuple[int, ...] = (404,)


def _marked(kind: str, fields: Mapping[str, str]) -> Callable[[Mapping[str, Any]], bool]:
    def matches(item: Mapping[str, Any]) -> bool:
        found = find_marker(item.get("body"), kind)
        return found is not None and all(found.get(k) == str(v) for k, v in fields.items())

    return matches


def issue_comment(owner: str, repo: str, number: int, kind: str, fields: Mapping[str, str]) -> Place:
    """A comment on issue or pull request `number` carrying the marker `kind` with `fields`."""
    return Place({"owner": owner, "repo": repo, "issue_number": number}, COMMENTS_URL, {}, _marked(kind, fields),
                 COMMENTS_URL, COMMENT_URL, "comment_id", "id")


def repository_issue(owner: str, repo: str, *, bot_login: str, title: str, kind: str,
                     fields: Mapping[str, str]) -> Place:
    """An open issue the bot opened in the repository, carrying the marker `kind` with `fields`."""
    marked = _marked(kind, fields)
    return Place({"owner": owner, "repo": repo}, "/repos/{owner}/{repo}/issues{?state,creator,per_page}",
                 {"state": "open", "creator": bot_login, "per_page": 100},
                 lambda issue: "pull_request" not in issue and marked(issue), "/repos/{owner}/{repo}/issues",
                 "/repos/{owner}/{repo}/issues/{issue_number}", "issue_number", "number",
                 create_fields={"title": title}, gone=(404, 410))


def pull_request(owner: str, repo: str, *, head: str, base: str, title: str, draft: bool, session_id: str) -> Place:
    """The session's pull request from the branch `head`: the open one (GitHub allows one per head and
    base), or a closed one whose marker names this session: GitHub opened it but its answer was lost,
    and a person merged or closed it before Shepherd asked again. Opening another would be a second PR."""
    this_session = _marked("pr", {"session": session_id})

    def matches(pull: Mapping[str, Any]) -> bool:
        return (pull.get("head") or {}).get("ref") == head and (pull.get("state") == "open" or this_session(pull))

    return Place({"owner": owner, "repo": repo}, "/repos/{owner}/{repo}/pulls{?head,state}",
                 {"head": f"{owner}:{head}", "state": "all"},
                 matches, "/repos/{owner}/{repo}/pulls",
                 "/repos/{owner}/{repo}/pulls/{pull_number}", "pull_number", "number",
                 create_fields={"title": title, "head": head, "base": base, "draft": draft,
                                "maintainer_can_modify": False},
                 trust_record=False)


@dataclass(frozen=True)
class Marked:
    """The thing's id; GitHub's view of it when one was read or written (None when the remembered text
    was already right); whether it was written now, and whether it was created."""

    id: int
    item: dict[str, Any] | None
    written: bool
    created: bool = False


async def find_own(gh: GitHub, place: Place, bot_login: str) -> dict[str, Any] | None:
    """The bot's own item at `place`; the same marker anywhere else is not trusted."""
    async for item in gh.getiter(place.list_url, {**place.where, **place.list_query}):
        if is_self(item.get("user"), bot_login) and place.matches(item):
            own: dict[str, Any] = item
            return own
    return None


async def ensure_marked(
    gh: GitHub, posted: PostedRecords, place: Place, *, scope: str, kind: str, key: str, bot_login: str, body: str,
    now: float, priority: Priority | None = None, create_priority: Priority | None = None, edit: bool = True,
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
            ident, text = int(found[place.id_field]), found.get("body") or ""
            # GitHub trims some bodies it stores: trailing blanks are no reason for an edit.
            if not edit or text.strip() == body.strip():
                posted.put(scope, kind, key, ident, sha if edit else body_hash(text), now)
                return Marked(ident, found, False)
            item = await _edit(gh, place, ident, body, priority)
            posted.put(scope, kind, key, ident, sha, now)
            return Marked(ident, item, True)
        created = await gh.post(place.create_url, dict(place.where), data={**place.create_fields, "body": body},
                                priority=create_priority if create_priority is not None else priority)
        ident = int(created[place.id_field])
        posted.put(scope, kind, key, ident, sha, now)
        return Marked(ident, created, True, created=True)


async def _edit(gh: GitHub, place: Place, ident: int, body: str, priority: Priority | None) -> dict[str, Any]:
    edited: dict[str, Any] = await gh.patch(place.edit_url, {**place.where, place.id_name: ident}, data={"body": body},
                                            priority=priority)
    return edited


# One lock per thing (scope, kind, key) while its check-then-create runs; dropped with its last user.
_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()


def _lock(scope: str, kind: str, key: str) -> asyncio.Lock:
    lock = _locks.get((scope, kind, key))
    if lock is None:
        lock = _locks[(scope, kind, key)] = asyncio.Lock()
    return lock


# -- comments on an issue, the common case --------------------------------------------------------------


async def find_own_comment(
    gh: GitHub, owner: str, repo: str, number: int, bot_login: str, kind: str, fields: dict[str, str]
) -> dict[str, Any] | None:
    return await find_own(gh, issue_comment(owner, repo, number, kind, fields), bot_login)


async def ensure_comment(
    gh: GitHub, posted: PostedRecords, *, scope: str, kind: str, key: str, owner: str, repo: str, number: int,
    bot_login: str, marker_fields: dict[str, str], body: str, now: float, priority: Priority = Priority.NORMAL,
    edit: bool = True,
) -> tuple[dict[str, Any] | None, bool]:
    """`ensure_marked` for a comment on issue `number`: (the comment, or None when unchanged; written now)."""
    done = await ensure_marked(gh, posted, issue_comment(owner, repo, number, kind, marker_fields), scope=scope,
                               kind=kind, key=key, bot_login=bot_login, body=body, now=now, priority=priority,
                               edit=edit)
    return done.item, done.written
