"""Pull requests on `agent/` branches: reviews, PR comments, inline comments and failing checks become
rounds; a closed or merged PR ends the session's work.

Feedback counts only from authorised people (never bots, Shepherd included) and only on a PR whose head
is an `agent/` branch of this repository that a session works on. The texts are built in `bot/core/feedback.py`;
the handlers read only what the payload lacks (a review's inline comments, a PR's head, the failing
runs of a commit, through `bot/github/pulls.py`) and hand one event to the runtime. When a round meets
its cap, the core itself explains it on the PR.
"""

from __future__ import annotations

import logging
from typing import Any

from gidgethub import routing, sansio

from bot.core.effects import Engine
from bot.github.api import GitHubReader
from bot.core.commands import is_command
from bot.core.feedback import ci_feedback, comment_feedback, is_failing, review_feedback
from bot.core.session import BRANCH_PREFIX, PullRequestClosed, Session, wants_ci_round
from bot.github.gate import Gate, gate_for
from bot.github.permissions import is_bot
from bot.github.pulls import CHANGES_REQUESTED, failing_check_runs, review_comments, review_requests_changes

log = logging.getLogger(__name__)

router = routing.Router()


def _repo(event: sansio.Event) -> tuple[str, str, str]:
    repository = event.data["repository"]
    return repository["owner"]["login"], repository["name"], repository["full_name"]


def _session_for_pull(engine: Engine | None, full_name: str, pull: dict[str, Any]) -> Session | None:
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


@router.register("pull_request_review", action="submitted")
async def start_review_round(
    event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, gate: Gate | None = None, permissions: Any = None,
    policies: Any = None, **_: Any,
) -> None:
    """A review requesting changes, with its inline comments, starts one review round."""
    review = event.data["review"]
    if engine is None or str(review.get("state", "")).lower() != CHANGES_REQUESTED:
        return
    owner, repo, full_name = _repo(event)
    pull = event.data["pull_request"]
    session = _session_for_pull(engine, full_name, pull)
    if session is None or not await gate_for(gate, permissions, policies).allows(
        gh, event.data["repository"], review.get("user")
    ):
        return
    comments = await review_comments(gh, owner, repo, pull["number"], review["id"])
    await engine.signal(full_name, session.issue_number, review_feedback(review, comments))


@router.register("issue_comment", action="created")
async def start_comment_round(
    event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, gate: Gate | None = None, permissions: Any = None,
    policies: Any = None, **_: Any,
) -> None:
    """A comment in a PR's conversation (not a slash command) starts one review round."""
    issue = event.data["issue"]
    comment = event.data["comment"]
    if not issue.get("pull_request") or is_command(comment.get("body")) or engine is None:
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
    if session is None or not await gate_for(gate, permissions, policies).allows(
        gh, event.data["repository"], comment.get("user")
    ):
        return
    await engine.signal(full_name, session.issue_number, comment_feedback(comment))


@router.register("pull_request_review_comment", action="created")
async def collect_inline_comment(
    event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, inline_collector: Any = None, gate: Gate | None = None,
    permissions: Any = None, policies: Any = None, **_: Any,
) -> None:
    """An inline comment outside a changes-requested review waits in the collector for its window."""
    comment = event.data["comment"]
    if inline_collector is None or engine is None:
        return
    owner, repo, full_name = _repo(event)
    pull = event.data["pull_request"]
    session = _session_for_pull(engine, full_name, pull)
    if session is None or not await gate_for(gate, permissions, policies).allows(
        gh, event.data["repository"], comment.get("user")
    ):
        return
    review_id = comment.get("pull_request_review_id")
    if review_id is not None and await review_requests_changes(gh, owner, repo, pull["number"], review_id):
        return  # part of a review round: the review handler carries it
    inline_collector.add(
        full_name=full_name, pull_number=pull["number"], issue_number=session.issue_number, comment=comment
    )


@router.register("check_suite", action="completed")
@router.register("check_run", action="completed")
async def start_ci_round(event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, **_: Any) -> None:
    """A failing check on a PR's head commit starts one CI round per head (the core decides which heads count)."""
    check = event.data.get("check_suite") or event.data.get("check_run") or {}
    if not is_failing(check.get("conclusion")) or engine is None:
        return
    suite = event.data.get("check_suite") or check.get("check_suite") or {}
    head_sha = check.get("head_sha") or suite.get("head_sha")
    if not isinstance(head_sha, str):
        return
    owner, repo, full_name = _repo(event)
    refs = [pull.get("head", {}).get("ref") for pull in check.get("pull_requests") or []]
    if not refs and suite.get("head_branch"):
        refs = [suite["head_branch"]]
    for ref in dict.fromkeys(r for r in refs if r and r.startswith(BRANCH_PREFIX)):
        session = engine.session_for_branch(full_name, ref)
        if session is None or not wants_ci_round(session, head_sha):
            continue  # asked before reading the runs: a head seen already costs no call
        runs = await failing_check_runs(gh, owner, repo, head_sha)
        app = (suite.get("app") or {}).get("slug")
        feedback = ci_feedback(head_sha, runs, suite_app=app, suite_conclusion=check.get("conclusion"))
        await engine.signal(full_name, session.issue_number, feedback)


@router.register("pull_request", action="closed")
async def end_with_pull_request(event: sansio.Event, gh: GitHubReader, *, engine: Engine | None = None, **_: Any) -> None:
    """A merged or closed PR ends the session's work; the runtime then cleans the worktree up."""
    owner, repo, full_name = _repo(event)
    pull = event.data["pull_request"]
    session = _session_for_pull(engine, full_name, pull)
    if session is None or engine is None:
        return
    merged = bool(pull.get("merged"))
    await engine.signal(full_name, session.issue_number, PullRequestClosed(merged=merged, number=pull["number"]))
    log.info("PR #%s of %s %s", pull["number"], full_name, "merged" if merged else "closed")
