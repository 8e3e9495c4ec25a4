"""Dependencies between issues: `depends on #N` / `blocked by owner/repo#N` parsed, resolved and checked for cycles.

The parsing, the verdict on one issue's dependencies (`resolve`) and the cycle search (`find_cycle`) are
pure, in `bot.core.dependencies`. `DependencyTracker` is the shell around them: it reads dependency issues through the installation's
client and the runtime's sessions, and feeds `DependenciesWaiting` / `DependenciesSatisfied` to the
engine. A dependency is done when its PR is merged, or when its issue was closed as completed. With
`stack: true` a dependency whose PR is open (and only one such) is enough, and the session starts on that
PR's branch. A dependency Shepherd cannot see is reported once and ignored; a cycle is reported on every
issue in it, and the session keeps waiting until a person edits the issues.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gidgethub

from bot.github.api import GitHub
from bot.runtime.marked import ensure_comment
from bot.runtime.publisher import issue_scope
from bot.store.posted import PostedRecords
from bot.github.pacing import Priority
from bot.core.dependencies import (
    CYCLE_KIND,
    UNSEEN_KIND,
    DependencyFacts,
    IssueKey,
    Resolution,
    cycle_id,
    find_cycle,
    issue_key,
    parse_dependencies,
    render_cycle,
    render_unseen,
    resolve,
)
from bot.core.session import (
    Detail,
    DependenciesSatisfied,
    DependenciesWaiting,
    PullRequestState,
    Session,
    State,
)

log = logging.getLogger(__name__)

ISSUE_URL = "/repos/{owner}/{repo}/issues/{issue_number}"
MAX_GRAPH_ISSUES = 50  # how far the cycle search reads through other issues' bodies

# -- the shell ------------------------------------------------------------------------------------


@dataclass
class _Seen:
    """One evaluation's reads of dependency issues (each issue read once)."""

    issues: dict[IssueKey, dict[str, Any] | None] = field(default_factory=dict)


class DependencyTracker:
    """Checks dependencies when a session is triggered and re-checks waiting sessions when work lands.

    `engine` is the runtime (`sessions`, `apply`, `last_session`); `github` the `GitHubApp`."""

    def __init__(self, github: Any, store: Any, *, clock: Callable[[], float]) -> None:
        self.github = github
        self.clock = clock
        self.posted = PostedRecords(store)
        self.engine: Any = None

    async def _read_issue(self, gh: GitHub, key: IssueKey, seen: _Seen) -> dict[str, Any] | None:
        if key in seen.issues:
            return seen.issues[key]
        issue: dict[str, Any] | None
        try:
            issue = await gh.getitem(ISSUE_URL, {"owner": key.owner, "repo": key.name, "issue_number": key.number})
        except gidgethub.BadRequest as error:
            if int(error.status_code) not in (403, 404, 410):
                raise
            issue = None
        if issue is not None and "pull_request" in issue:
            issue = None  # a PR number is not an issue to wait for
        seen.issues[key] = issue
        return issue

    def _session_of(self, key: IssueKey, home: str) -> Session | None:
        """The dependency issue's newest Shepherd session, if it had one (`home` gives the name's case)."""
        if self.engine is None:
            return None
        name = home if key.repo == home.lower() else key.repo
        stored = self.engine.sessions.last_for_issue(name, key.number)
        return stored.session if stored is not None else None

    async def _facts(self, gh: GitHub, key: IssueKey, home: str, seen: _Seen) -> DependencyFacts:
        issue = await self._read_issue(gh, key, seen)
        if issue is None:
            return DependencyFacts(visible=False)
        session = self._session_of(key, home)
        closed_completed = issue.get("state") == "closed" and (issue.get("state_reason") or "completed") == "completed"
        if session is None:
            return DependencyFacts(closed_completed=closed_completed)
        return DependencyFacts(closed_completed=closed_completed, pr_state=session.pr_state, branch=session.branch)

    async def _cycle(self, gh: GitHub, start: IssueKey, body: str | None, seen: _Seen) -> list[IssueKey] | None:
        edges: dict[IssueKey, list[IssueKey]] = {start: parse_dependencies(body, start.repo)}
        queue = list(edges[start])
        while queue and len(edges) < MAX_GRAPH_ISSUES:
            key = queue.pop(0)
            if key in edges:
                continue
            issue = await self._read_issue(gh, key, seen)
            edges[key] = parse_dependencies(issue.get("body") if issue else None, key.repo)
            queue.extend(k for k in edges[key] if k not in edges)
        return find_cycle(start, edges)

    async def evaluate(
        self, installation_id: int, full_name: str, number: int, body: str | None, *, stack: bool
    ) -> Resolution:
        """The verdict on an issue's dependencies; reports unseen dependencies and cycles on GitHub."""
        home = full_name.lower()
        dependencies = [key for key in parse_dependencies(body, home) if key != issue_key(home, number)]
        if not dependencies:
            return Resolution()
        gh = self.github.installation(installation_id)
        seen = _Seen()
        facts = {key: await self._facts(gh, key, full_name, seen) for key in dependencies}
        resolution = resolve(dependencies, facts, stack=stack)
        if resolution.unseen:
            await self._report_unseen(gh, issue_key(home, number), resolution.unseen, installation_id)
        if not resolution.ready:
            cycle = await self._cycle(gh, issue_key(home, number), body, seen)
            if cycle:
                await self._report_cycle(gh, cycle, installation_id)
        return resolution

    async def _report_unseen(self, gh: GitHub, key: IssueKey, unseen: Sequence[IssueKey], installation_id: int) -> None:
        scope = issue_scope(key.repo, key.number)
        name = ",".join(f"{k.repo}#{k.number}" for k in unseen)
        if self.posted.get(scope, UNSEEN_KIND, name) is not None:
            return  # reported once
        bot_login, _ = await self.github.bot_identity(installation_id)
        await ensure_comment(
            gh, self.posted, scope=scope, kind=UNSEEN_KIND, key=name, owner=key.owner, repo=key.name,
            number=key.number, bot_login=bot_login, marker_fields={"issue": key.repo}, body=render_unseen(key.repo, unseen),
            now=self.clock(), priority=Priority.NORMAL, edit=False,
        )

    async def _report_cycle(self, gh: GitHub, cycle: Sequence[IssueKey], installation_id: int) -> None:
        bot_login, _ = await self.github.bot_identity(installation_id)
        ident = cycle_id(cycle)
        for key in cycle:
            scope = issue_scope(key.repo, key.number)
            if self.posted.get(scope, CYCLE_KIND, ident) is not None:
                continue
            try:
                await ensure_comment(
                    gh, self.posted, scope=scope, kind=CYCLE_KIND, key=ident, owner=key.owner, repo=key.name,
                    number=key.number, bot_login=bot_login, marker_fields={"cycle": ident},
                    body=render_cycle(key.repo, cycle), now=self.clock(), priority=Priority.NORMAL, edit=False,
                )
            except gidgethub.BadRequest as error:
                log.warning("could not report the cycle on %s#%s: %s", key.repo, key.number, error)

    # -- re-checking waiting sessions ----------------------------------------------------------

    async def recheck(self, only_repo: str | None = None) -> None:
        """Feed every waiting session its current verdict (after a merge, a close or an edit)."""
        if self.engine is None:
            return
        for stored in list(self.engine.sessions.live()):
            session = stored.session
            if session.detail != Detail.WAITING_FOR_DEPENDENCIES or session.state != State.QUEUED:
                continue
            if only_repo is not None and session.repo.lower() != only_repo.lower():
                continue
            await self.recheck_session(stored)

    async def observe(self, before: Session | None, after: Session, event: Any) -> None:
        """A runtime observer: a dependency's PR merged (or, for stacking, opened) may free waiting issues."""
        if before is None or before.pr_state == after.pr_state:
            return
        if after.pr_state in (PullRequestState.MERGED, PullRequestState.OPEN):
            await self.recheck()

    async def recheck_issue(self, full_name: str, number: int, body: str) -> None:
        """A person edited the waiting issue's body: check its dependencies as they read now."""
        stored = self.engine.sessions.last_for_issue(full_name, number)
        if stored is None:
            return
        await self.engine.change_context(stored.session.id, lambda known: replace(known, dependency_body=body))
        await self.recheck_session(self.engine.sessions.get(stored.session.id))

    async def recheck_session(self, stored: Any) -> None:
        session, context = stored.session, stored.context
        # The body as an authorised person last edited it, else as it was when the session started.
        body = context.dependency_body if context.dependency_body is not None else context.issue_body
        resolution = await self.evaluate(
            stored.installation_id, session.repo, session.issue_number, body, stack=bool(context.policy.stack)
        )
        if resolution.ready:
            await self.engine.apply(session.id, DependenciesSatisfied(resolution.stack_base))
        else:
            refs = tuple(key.ref(session.repo) for key in resolution.waiting)
            await self.engine.apply(session.id, DependenciesWaiting(refs))
