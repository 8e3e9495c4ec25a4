"""Pull requests on `agent/` branches: reviews, PR comments, inline comments and failing checks become
rounds; a closed or merged PR ends the session's work.

Feedback counts only from authorised people (never bots, Shepherd included) and only on a PR whose head
is an `agent/` branch of this repository that a session works on. The texts are built in `bot/runtime/rounds.py`;
the handlers read only what the payload lacks (a review's inline comments, a PR's head, the failing
runs of a commit) and hand one event to the runtime.
"""

from __future__ import annotations

import logging
from typing import Any

from gidgethub import routing, sansio

from bot.github.permissions import PermissionCache, is_bot
from bot.runtime.rounds import (
    became_needs_human,
    ci_feedback,
    comment_feedback,
    failing_check_runs,
    is_failing,
    is_slash_command,
    post_needs_human,
    review_comments,
    review_feedback,
)
from bot.core.session import BRANCH_PREFIX, PullRequestClosed, Session

log = logging.getLogger(__name__)

router = routing.Router()

CHANGES_REQUESTED = "changes_requested"
MIN_PERMISSION = "write"

# Used when the app does not pass its own cache (it should, so one cache serves every handler).
_fallback_permissions = PermissionCache()


def _repo(event: sansio.Event) -> tuple[str, str, str]:
    repository = event.data["repository"]
    return repository["owner"]["login"], repository["name"], repository["full_name"]


def _session_for_pull(engine: Any, full_name: str, pull: dict[str, Any]) -> Session | None:
    """The session behind a PR of this repository whose head is an `agent/` branch, if any."""
    head = pull.get("head") or {}
    ref = head.get("ref") or ""
    head_repo = (head.get("repo") or {}).get("full_name")
    if engine is None or not ref.startswith(BRANCH_PREFIX):
        return None
    if head_repo is not None and head_repo != full_name:
        return None  # a fork's branch that happens to be called agent/...
    session = engine.session_for_branch(full_name, ref)
    if session is None or session.pr_number not in (None, pull.get("number")):
        return None
    return session


async def _may_drive(
    gh: Any, event: sansio.Event, user: dict[str, Any] | None, permissions: Any, policies: Any
) -> bool:
    """A person (never a bot) with the repository policy's `min_permission` (at least write)."""
    if not user or is_bot(user):
        return False
    owner, repo, _ = _repo(event)
    minimum = MIN_PERMISSION
    if policies is not None:
        default_branch = event.data["repository"].get("default_branch") or "main"
        minimum = (await policies.get(gh, owner, repo, default_branch)).policy.min_permission
    cache = permissions or _fallback_permissions
    return await cache.may_drive(gh, owner, repo, user, minimum=minimum)


async def _signal(
    gh: Any, owner: str, repo: str, full_name: str, pull_number: int, session: Session, event: Any,
    *, engine: Any, store: Any, github: Any,
) -> Session | None:
    """Hand one event to the runtime; at a round cap, explain on the PR why Shepherd stops."""
    after = await engine.signal(full_name, session.issue_number, event)
    if became_needs_human(session, after):
        assert after is not None
        bot_login, _email = await github.bot_identity()
        await post_needs_human(gh, owner, repo, pull_number, after, store=store, bot_login=bot_login)
    return after


@router.register("pull_request_review", action="submitted")
async def start_review_round(
    event: sansio.Event, gh: Any, *, engine: Any = None, store: Any = None, github: Any = None,
    permissions: Any = None, policies: Any = None, **_: Any,
) -> None:
    """A review requesting changes, with its inline comments, starts one review round."""
    review = event.data["review"]
    if str(review.get("state", "")).lower() != CHANGES_REQUESTED:
        return
    owner, repo, full_name = _repo(event)
    pull = event.data["pull_request"]
    session = _session_for_pull(engine, full_name, pull)
    if session is None or not await _may_drive(gh, event, review.get("user"), permissions, policies):
        return
    comments = await review_comments(gh, owner, repo, pull["number"], review["id"])
    feedback = review_feedback(review, comments)
    await _signal(
        gh, owner, repo, full_name, pull["number"], session, feedback, engine=engine, store=store, github=github
    )


@router.register("issue_comment", action="created")
async def start_comment_round(
    event: sansio.Event, gh: Any, *, engine: Any = None, store: Any = None, github: Any = None,
    permissions: Any = None, policies: Any = None, **_: Any,
) -> None:
    """A comment in a PR's conversation (not a slash command) starts one review round."""
    issue = event.data["issue"]
    comment = event.data["comment"]
    if not issue.get("pull_request") or is_slash_command(comment.get("body")) or engine is None:
        return
    if is_bot(comment.get("user")):
        return
    owner, repo, full_name = _repo(event)
    if engine.session_for_pull(full_name, issue["number"]) is None:
        return  # not a pull request Shepherd opened, by its own records: no call on the budget
    pull = await gh.getitem(
        "/repos/{owner}/{repo}/pulls/{pull_number}", {"owner": owner, "repo": repo, "pull_number": issue["number"]}
    )
    session = _session_for_pull(engine, full_name, pull)
    if session is None or not await _may_drive(gh, event, comment.get("user"), permissions, policies):
        return
    await _signal(
        gh, owner, repo, full_name, pull["number"], session, comment_feedback(comment), engine=engine, store=store,
        github=github,
    )


@router.register("pull_request_review_comment", action="created")
async def collect_inline_comment(
    event: sansio.Event, gh: Any, *, engine: Any = None, inline_collector: Any = None, permissions: Any = None,
    policies: Any = None, **_: Any,
) -> None:
    """An inline comment outside a changes-requested review waits in the collector for its window."""
    comment = event.data["comment"]
    if inline_collector is None:
        return
    owner, repo, full_name = _repo(event)
    pull = event.data["pull_request"]
    session = _session_for_pull(engine, full_name, pull)
    if session is None or not await _may_drive(gh, event, comment.get("user"), permissions, policies):
        return
    review_id = comment.get("pull_request_review_id")
    if review_id is not None and await _review_requests_changes(gh, owner, repo, pull["number"], review_id):
        return  # part of a review round: the review handler carries it
    inline_collector.add(
        full_name=full_name, pull_number=pull["number"], issue_number=session.issue_number, comment=comment
    )


async def _review_requests_changes(gh: Any, owner: str, repo: str, number: int, review_id: int) -> bool:
    async for review in gh.getiter(
        "/repos/{owner}/{repo}/pulls/{pull_number}/reviews{?per_page}",
        {"owner": owner, "repo": repo, "pull_number": number, "per_page": 100},
    ):
        if review.get("id") == review_id:
            return str(review.get("state", "")).lower() == CHANGES_REQUESTED
    return False


@router.register("check_suite", action="completed")
@router.register("check_run", action="completed")
async def start_ci_round(
    event: sansio.Event, gh: Any, *, engine: Any = None, store: Any = None, github: Any = None, **_: Any
) -> None:
    """A failing check on a PR's head commit starts one CI round per head (the core dedupes the SHA)."""
    check = event.data.get("check_suite") or event.data.get("check_run") or {}
    if not is_failing(check.get("conclusion")) or engine is None:
        return
    suite = event.data.get("check_suite") or check.get("check_suite") or {}
    head_sha = check.get("head_sha") or suite.get("head_sha")
    owner, repo, full_name = _repo(event)
    refs = [pull.get("head", {}).get("ref") for pull in check.get("pull_requests") or []]
    if not refs and suite.get("head_branch"):
        refs = [suite["head_branch"]]
    for ref in dict.fromkeys(r for r in refs if r and r.startswith(BRANCH_PREFIX)):
        session = engine.session_for_branch(full_name, ref)
        if session is None or session.pr_number is None or head_sha in session.ci_shas_seen:
            continue
        if session.pr_head_sha is not None and session.pr_head_sha != head_sha:
            continue  # an older head: only the PR's current head matters
        runs = await failing_check_runs(gh, owner, repo, head_sha)
        app = (suite.get("app") or {}).get("slug")
        feedback = ci_feedback(head_sha, runs, suite_app=app, suite_conclusion=check.get("conclusion"))
        await _signal(
            gh, owner, repo, full_name, session.pr_number, session, feedback, engine=engine, store=store, github=github
        )


@router.register("pull_request", action="closed")
async def end_with_pull_request(event: sansio.Event, gh: Any, *, engine: Any = None, **_: Any) -> None:
    """A merged or closed PR ends the session's work; the runtime then cleans the worktree up."""
    owner, repo, full_name = _repo(event)
    pull = event.data["pull_request"]
    session = _session_for_pull(engine, full_name, pull)
    if session is None:
        return
    merged = bool(pull.get("merged"))
    await engine.signal(full_name, session.issue_number, PullRequestClosed(merged=merged))
    log.info("PR #%s of %s %s", pull["number"], full_name, "merged" if merged else "closed")
