"""Reconciling with GitHub (SPEC §6): what happened while Shepherd was down or a delivery was lost, caught up.

Run at start-up and every 15 minutes from the app's sweep. For every installation and repository:

- an open issue carrying the go or plan label (the repository policy's names) but no session at all
  gets one only when the person who added that label (the newest `labeled` event for it in the
  issue's events) may drive Shepherd, checked exactly as the webhook path checks it: a bot never, a
  person by their permission against the policy's `min_permission`. It is started as that person.
  Otherwise the issue is skipped with a log line and nothing on GitHub: a label the webhook path
  refused stays refused, without a second refusal comment. Issues whose delivery is still waiting
  in the store are left to it.
- an open PR on an `agent/` branch whose session never recorded it (Shepherd stopped between opening
  the PR and storing it) is reported to the session as `PullRequestOpened`;
- a session whose PR is no longer open on GitHub (merged or closed while Shepherd was down) gets
  `PullRequestClosed(merged)`, which cleans its worktree up.

The session core ignores events that no longer apply, so running this twice, or alongside the
deliveries, starts nothing twice. Failed deliveries are redelivered by `bot/ingest/redelivery.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import gidgethub

from bot.github.api import GitHub
from bot.github.permissions import PermissionCache
from bot.core.responses import BAKEOFF_NOT_ON_TEMPORAL, NotOffered
from bot.core.effects import IssueRef
from bot.core.bakeoff import BAKEOFF_LABEL
from bot.core.engines import Choice, choose
from bot.core.policy import LoadedPolicy, trigger_label
from bot.github.labels import RepoPolicies
from bot.core.session import BRANCH_PREFIX, Mode, PullRequestClosed, PullRequestOpened, PullRequestState

log = logging.getLogger(__name__)

REPOSITORIES_URL = "/installation/repositories{?per_page}"
ISSUES_URL = "/repos/{owner}/{repo}/issues{?state,labels,per_page}"
PULLS_URL = "/repos/{owner}/{repo}/pulls{?state,per_page}"
PULL_URL = "/repos/{owner}/{repo}/pulls/{pull_number}"
EVENTS_URL = "/repos/{owner}/{repo}/issues/{issue_number}/events{?per_page}"
PER_PAGE = 100

LOG_STARTED = "%s#%s: %s label with no session; started as %s, who added it (reconciliation)"
LOG_NOT_ALLOWED = "%s#%s: %s label with no session, but %s, who added it, may not drive Shepherd; skipped"
LOG_NO_LABELLER = "%s#%s: %s label with no session and no record of who added it; skipped"
LOG_PR_FOUND = "%s: PR #%s on %s was opened but never recorded; linked to its session"
LOG_PR_ENDED = "%s: PR #%s was %s while Shepherd was not listening; ending the session's work"
LOG_REPO_FAILED = "reconciling %s failed; the next sweep tries again"
LOG_INSTALLATION_FAILED = "reconciling installation %s failed; the next sweep tries again"


@dataclass
class Reconciled:
    """What one pass did, for logs and tests."""

    started: list[str] = field(default_factory=list)  # "owner/repo#n"
    skipped: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)  # "owner/repo#pr"
    ended: list[str] = field(default_factory=list)


async def reconcile(
    github: Any,
    engine: Any,
    *,
    policies: RepoPolicies,
    permissions: PermissionCache,
    store: Any = None,
) -> Reconciled:
    """One pass over every installation and repository the App can see; errors in one do not stop the rest."""
    done = Reconciled()
    waiting = _waiting_keys(store)
    for installation in await github.list_installations():
        if installation.get("suspended_at"):
            continue
        installation_id = int(installation["id"])
        gh = github.installation(installation_id)
        try:
            repositories = [r async for r in gh.getiter(
                REPOSITORIES_URL, {"per_page": PER_PAGE}, iterable_key="repositories")]
        except gidgethub.GitHubException:
            log.exception(LOG_INSTALLATION_FAILED, installation_id)
            continue
        for repository in repositories:
            if repository.get("archived") or repository.get("disabled"):
                continue
            try:
                await _reconcile_repository(gh, installation_id, repository, engine, policies, permissions,
                                            waiting, done)
            except gidgethub.GitHubException:
                log.exception(LOG_REPO_FAILED, repository.get("full_name"))
    return done


def _waiting_keys(store: Any) -> set[str]:
    """Ordering keys ("owner/repo#n") of deliveries stored but not yet handled."""
    if store is None:
        return set()
    return {delivery.ordering_key for delivery in store.pending_deliveries()}


async def _reconcile_repository(
    gh: GitHub, installation_id: int, repository: dict[str, Any], engine: Any, policies: RepoPolicies,
    permissions: PermissionCache, waiting: set[str], done: Reconciled,
) -> None:
    owner, name = repository["owner"]["login"], repository["name"]
    full_name = repository["full_name"]
    default_branch = repository.get("default_branch") or "main"
    loaded = await policies.get(gh, owner, name, default_branch)
    # Every trigger label: go, plan, each engine label of the policy (SPEC §3 `engines`) and the bake-off's.
    labels = [trigger_label(loaded.policy.labels, Mode.GO), trigger_label(loaded.policy.labels, Mode.PLAN),
              *loaded.policy.engines, BAKEOFF_LABEL]
    for label in labels:
        choice = choose(loaded, label)
        if choice is None:
            continue
        async for issue in gh.getiter(
            ISSUES_URL, {"owner": owner, "repo": name, "state": "open", "labels": label, "per_page": PER_PAGE}
        ):
            if "pull_request" in issue or f"{full_name}#{issue['number']}" in waiting:
                continue
            if engine.last_session(full_name, int(issue["number"])) is not None:
                continue
            ref = IssueRef(
                installation_id=installation_id, owner=owner, repo=name, number=int(issue["number"]),
                title=issue.get("title") or "", body=issue.get("body") or "",
                clone_url=repository["clone_url"], default_branch=default_branch,
                author=(issue.get("user") or {}).get("login"),
            )
            await _start_as_labeller(gh, engine, ref, choice, label, loaded, permissions, done)
    await _reconcile_pulls(gh, owner, name, full_name, engine, done)


async def labeller(gh: GitHub, owner: str, repo: str, number: int, label: str) -> dict[str, Any] | None:
    """Who added `label` to the issue most recently (the user of its newest `labeled` event), if known."""
    found: dict[str, Any] | None = None
    async for event in gh.getiter(EVENTS_URL, {"owner": owner, "repo": repo, "issue_number": number,
                                              "per_page": PER_PAGE}):
        if event.get("event") != "labeled":
            continue
        if str((event.get("label") or {}).get("name", "")).lower() == label.lower():
            found = event.get("actor") or None  # events come oldest first: the last one wins
    return found


async def _start_as_labeller(
    gh: GitHub, engine: Any, ref: IssueRef, choice: Choice, label: str, loaded: LoadedPolicy,
    permissions: PermissionCache, done: Reconciled,
) -> None:
    """Start the issue as the person who added `label`, with the one policy reading (`loaded`) that gave the
    label its meaning (`choice`): the engine builds the session from that reading, never from a second one."""
    key = f"{ref.full_name}#{ref.number}"
    actor = await labeller(gh, ref.owner, ref.repo, ref.number, label)
    if not actor or not actor.get("login"):
        log.info(LOG_NO_LABELLER, ref.full_name, ref.number, label)
        done.skipped.append(key)
        return
    if not await permissions.may_drive(gh, ref.owner, ref.repo, actor, minimum=loaded.policy.min_permission):
        log.info(LOG_NOT_ALLOWED, ref.full_name, ref.number, label, actor["login"])
        done.skipped.append(key)
        return
    if choice.rival is not None and not engine.runs_bakeoffs:
        # Said once on the issue (the same answer as the label's delivery gets); nothing starts.
        await engine.respond(ref.installation_id, ref.full_name, ref.number, (NotOffered(label, BAKEOFF_NOT_ON_TEMPORAL),))
        done.skipped.append(key)
        return
    session = await engine.trigger(ref, mode=choice.mode, actor=actor["login"], label=label, policy=loaded,
                                   engine=choice.engine, **({"rival": choice.rival} if choice.rival is not None else {}))
    if session is not None:
        log.info(LOG_STARTED, ref.full_name, ref.number, label, actor["login"])
        done.started.append(key)


async def _reconcile_pulls(gh: GitHub, owner: str, name: str, full_name: str, engine: Any, done: Reconciled) -> None:
    open_numbers: set[int] = set()
    async for pull in gh.getiter(PULLS_URL, {"owner": owner, "repo": name, "state": "open", "per_page": PER_PAGE}):
        open_numbers.add(int(pull["number"]))
        head = pull.get("head") or {}
        branch = head.get("ref") or ""
        if not branch.startswith(BRANCH_PREFIX) or (head.get("repo") or {}).get("full_name") != full_name:
            continue  # not Shepherd's branch, or a fork's branch that happens to be called agent/...
        session = engine.session_for_branch(full_name, branch)
        if session is None or session.pr_number is not None or not session.finishing:
            continue
        await engine.signal(full_name, session.issue_number,
                            PullRequestOpened(int(pull["number"]), pull["html_url"], head.get("sha")))
        log.info(LOG_PR_FOUND, full_name, pull["number"], branch)
        done.linked.append(f"{full_name}#{pull['number']}")
    for session in _sessions_with_open_pulls(engine, full_name):
        if session.pr_number in open_numbers:
            continue
        pull = await gh.getitem(PULL_URL, {"owner": owner, "repo": name, "pull_number": session.pr_number})
        if pull.get("state") != "closed":
            continue
        merged = bool(pull.get("merged") or pull.get("merged_at"))
        await engine.signal(full_name, session.issue_number, PullRequestClosed(merged=merged, number=session.pr_number))
        log.info(LOG_PR_ENDED, full_name, session.pr_number, "merged" if merged else "closed")
        done.ended.append(f"{full_name}#{session.pr_number}")


def _sessions_with_open_pulls(engine: Any, full_name: str) -> Iterable[Any]:
    """Sessions of this repository whose PR Shepherd last knew as open (only each issue's latest session)."""
    for stored in engine.sessions.with_open_pull_requests():
        session = stored.session
        if session.repo != full_name or session.pr_state != PullRequestState.OPEN:
            continue
        latest = engine.last_session(full_name, session.issue_number)
        if latest is not None and latest.id == session.id:
            yield session
