"""Trigger labels and the issue's life: the go/plan label starts a session, removing it or closing the issue cancels one.

GitHub may deliver `labeled`, `unlabeled` and `closed` out of order, so each handler re-reads the issue
before acting on it. Bots never start or stop anything. People without the repository's minimum
permission get at most one polite refusal per issue an hour, and no session.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from gidgethub import routing, sansio

from bot.github.permissions import PermissionCache, is_bot
from bot.runtime.publisher import post_refusal
from bot.core.effects import IssueRef
from bot.github.labels import RepoPolicies, has_label, trigger_label, trigger_mode
from bot.core.session import Cancel, CancelReason

log = logging.getLogger(__name__)

router = routing.Router()

ISSUE_URL = "/repos/{owner}/{repo}/issues/{issue_number}"


def issue_ref(event: sansio.Event) -> IssueRef:
    """The issue a webhook is about, from its payload."""
    data = event.data
    repository = data["repository"]
    issue = data["issue"]
    return IssueRef(
        installation_id=int(data["installation"]["id"]),
        owner=repository["owner"]["login"],
        repo=repository["name"],
        number=int(issue["number"]),
        title=issue.get("title") or "",
        body=issue.get("body") or "",
        clone_url=repository["clone_url"],
        default_branch=repository.get("default_branch") or "main",
        author=(issue.get("user") or {}).get("login"),
    )


async def current_issue(gh: Any, ref: IssueRef) -> dict[str, Any]:
    """The issue as GitHub has it now (deliveries can arrive out of order)."""
    return await gh.getitem(ISSUE_URL, {"owner": ref.owner, "repo": ref.repo, "issue_number": ref.number})


def label_names(issue: dict[str, Any]) -> list[str]:
    return [label["name"] if isinstance(label, dict) else str(label) for label in issue.get("labels") or []]


def _policies(policies: RepoPolicies | None) -> RepoPolicies:
    return policies if policies is not None else RepoPolicies()


def _permissions(permissions: PermissionCache | None) -> PermissionCache:
    return permissions if permissions is not None else PermissionCache()


@router.register("issues", action="labeled")
async def start_session(
    event: sansio.Event,
    gh: Any,
    *,
    engine: Any = None,
    store: Any,
    github: Any,
    clock: Any,
    permissions: PermissionCache | None = None,
    policies: RepoPolicies | None = None,
    **_: Any,
) -> None:
    """Start (or refuse) a session when a person adds the go or plan label."""
    sender = event.data.get("sender")
    label = (event.data.get("label") or {}).get("name") or ""
    if engine is None or is_bot(sender) or "pull_request" in event.data["issue"]:
        return
    ref = issue_ref(event)
    loaded = await _policies(policies).get(gh, ref.owner, ref.repo, ref.default_branch)
    mode = trigger_mode(loaded.policy.labels, label)
    if mode is None:
        return
    issue = await current_issue(gh, ref)
    if issue.get("state") != "open" or not has_label(label_names(issue), label):
        log.info("%s#%s: label %r is gone or the issue is closed; not starting", ref.full_name, ref.number, label)
        return
    login = sender["login"]
    minimum = loaded.policy.min_permission
    if not await _permissions(permissions).may_drive(gh, ref.owner, ref.repo, sender, minimum=minimum):
        bot_login, _email = await github.bot_identity(ref.installation_id)
        await post_refusal(gh, store, owner=ref.owner, repo=ref.repo, number=ref.number, login=login, label=label,
                           min_permission=minimum, bot_login=bot_login, now=clock())
        log.info("%s#%s: %s may not start Shepherd", ref.full_name, ref.number, login)
        return
    ref = replace(ref, title=issue.get("title") or ref.title, body=issue.get("body") or "")
    await engine.trigger(ref, mode=mode, actor=login, label=label)


@router.register("issues", action="unlabeled")
async def cancel_on_unlabel(
    event: sansio.Event, gh: Any, *, engine: Any = None, policies: RepoPolicies | None = None, **_: Any
) -> None:
    """Cancel the live session when a person removes its trigger label."""
    if engine is None or is_bot(event.data.get("sender")) or "pull_request" in event.data["issue"]:
        return
    ref = issue_ref(event)
    label = (event.data.get("label") or {}).get("name") or ""
    session = engine.last_session(ref.full_name, ref.number)
    if session is None or not session.is_live:
        return
    loaded = await _policies(policies).get(gh, ref.owner, ref.repo, ref.default_branch)
    if trigger_label(loaded.policy.labels, session.mode).lower() != label.lower():
        return
    issue = await current_issue(gh, ref)
    if has_label(label_names(issue), label):
        return  # put back already: this delivery is older than the issue's state
    await engine.signal(ref.full_name, ref.number, Cancel(CancelReason.LABEL_REMOVED))


@router.register("issues", action="closed")
async def cancel_on_close(event: sansio.Event, gh: Any, *, engine: Any = None, **_: Any) -> None:
    """Closing the issue cancels a live session (after `complete`, the core only cleans up)."""
    if engine is None or "pull_request" in event.data["issue"]:
        return
    ref = issue_ref(event)
    if engine.last_session(ref.full_name, ref.number) is None:
        return
    issue = await current_issue(gh, ref)
    if issue.get("state") != "closed":
        return  # reopened since
    await engine.signal(ref.full_name, ref.number, Cancel(CancelReason.ISSUE_CLOSED))
