"""Trigger labels and the issue's life: the go/plan label starts a session, removing it or closing the issue cancels one.

GitHub may deliver `labeled`, `unlabeled` and `closed` out of order, so each handler re-reads the issue
before acting on it. Bots never start or stop anything. People without the repository's minimum
permission get at most one polite refusal per issue an hour, and no session. The prompt gets the title
and body as the payload carries them: the text as it was when the person labelled the issue, which is
what they vouched for (SPEC §1.4). The core recognises a replayed `labeled` by GitHub's time of it.
"""

from __future__ import annotations

import logging
from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import Engine, IssueRef
from bot.core.engines import choose, is_trigger_of
from bot.core.policy import has_label
from bot.core.responses import BAKEOFF_NOT_ON_TEMPORAL, NotOffered, Refuse
from bot.core.session import Cancel, CancelReason
from bot.core.payload import parse_time
from bot.github.api import GitHubReader
from bot.github.gate import Gate, gate_for
from bot.github.labels import RepoPolicies
from bot.github.permissions import PermissionCache, is_bot

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


async def current_issue(gh: GitHubReader, ref: IssueRef) -> dict[str, Any]:
    """The issue as GitHub has it now (deliveries can arrive out of order)."""
    issue: dict[str, Any] = await gh.getitem(
        ISSUE_URL, {"owner": ref.owner, "repo": ref.repo, "issue_number": ref.number}
    )
    return issue


def label_names(issue: dict[str, Any]) -> list[str]:
    return [label["name"] if isinstance(label, dict) else str(label) for label in issue.get("labels") or []]


@router.register("issues", action="labeled")
async def start_session(
    event: sansio.Event,
    gh: GitHubReader,
    *,
    engine: Engine | None = None,
    gate: Gate | None = None,
    permissions: PermissionCache | None = None,
    policies: RepoPolicies | None = None,
    **_: Any,
) -> None:
    """Start (or refuse) a session when a person adds the go or plan label, or one of the policy's engine labels."""
    sender = event.data.get("sender")
    label = (event.data.get("label") or {}).get("name") or ""
    if engine is None or is_bot(sender) or "pull_request" in event.data["issue"]:
        return
    ref = issue_ref(event)
    gate = gate_for(gate, permissions, policies)
    loaded = await gate.policy(gh, event.data["repository"])
    choice = choose(loaded, label)
    if choice is None:
        return
    issue = await current_issue(gh, ref)
    if issue.get("state") != "open" or not has_label(label_names(issue), label):
        log.info("%s#%s: label %r is gone or the issue is closed; not starting", ref.full_name, ref.number, label)
        return
    login = sender["login"]
    if not await gate.allows(gh, event.data["repository"], sender):
        refusal = Refuse(login, label, loaded.policy.min_permission)
        await engine.respond(ref.installation_id, ref.full_name, ref.number, (refusal,))
        log.info("%s#%s: %s may not start Shepherd", ref.full_name, ref.number, login)
        return
    if choice.rival is not None and not engine.runs_bakeoffs:
        await engine.respond(ref.installation_id, ref.full_name, ref.number, (NotOffered(label, BAKEOFF_NOT_ON_TEMPORAL),))
        log.info("%s#%s: a bake-off is not run by this engine", ref.full_name, ref.number)
        return
    labelled_at = parse_time(event.data["issue"].get("updated_at"))
    edited = (issue.get("title") or "") != ref.title or (issue.get("body") or "") != ref.body
    await engine.trigger(ref, mode=choice.mode, actor=login, label=label, policy=loaded, labelled_at=labelled_at,
                         edited_after_label=edited, engine=choice.engine,
                         **({"rival": choice.rival} if choice.rival is not None else {}))


@router.register("issues", action="unlabeled")
async def cancel_on_unlabel(
    event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, gate: Gate | None = None,
    policies: RepoPolicies | None = None, **_: Any
) -> None:
    """Cancel the live session when a person removes its trigger label."""
    if engine is None or is_bot(event.data.get("sender")) or "pull_request" in event.data["issue"]:
        return
    ref = issue_ref(event)
    label = (event.data.get("label") or {}).get("name") or ""
    session = engine.last_session(ref.full_name, ref.number)
    if session is None or not session.is_live:
        return
    loaded = await gate_for(gate, None, policies).policy(gh, event.data["repository"])
    if not is_trigger_of(loaded.policy, session, label):
        return
    issue = await current_issue(gh, ref)
    if has_label(label_names(issue), label):
        return  # put back already: this delivery is older than the issue's state
    await engine.signal(ref.full_name, ref.number, Cancel(CancelReason.LABEL_REMOVED))


@router.register("issues", action="closed")
async def cancel_on_close(event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, **_: Any) -> None:
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
