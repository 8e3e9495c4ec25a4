"""What the pull-request handlers read from GitHub that a payload lacks: a review's inline comments and the
failing check runs of a head commit."""

from __future__ import annotations

from typing import Any

from bot.github.api import GitHubReader
from bot.core.feedback import is_failing

CHANGES_REQUESTED = "changes_requested"


async def failing_check_runs(gh: GitHubReader, owner: str, repo: str, sha: str) -> list[dict[str, Any]]:
    """The latest run of each check on `sha` whose conclusion fails the head."""
    runs = []
    async for run in gh.getiter(
        "/repos/{owner}/{repo}/commits/{ref}/check-runs{?filter,per_page}",
        {"owner": owner, "repo": repo, "ref": sha, "filter": "latest", "per_page": 100},
        iterable_key="check_runs",
    ):
        if is_failing(run.get("conclusion")):
            runs.append(run)
    return sorted(runs, key=lambda run: str(run.get("name")))


async def review_comments(gh: GitHubReader, owner: str, repo: str, number: int, review_id: int) -> list[dict[str, Any]]:
    """The inline comments of one review, oldest first.

    Read from the PR's comment list filtered by review: those records carry `line`, which the
    per-review listing's older schema lacks (it has only the diff `position`).
    """
    comments = []
    async for comment in gh.getiter(
        "/repos/{owner}/{repo}/pulls/{pull_number}/comments{?per_page}",
        {"owner": owner, "repo": repo, "pull_number": number, "per_page": 100},
    ):
        if comment.get("pull_request_review_id") == review_id:
            comments.append(comment)
    return sorted(comments, key=lambda comment: comment["id"])


async def review_requests_changes(gh: GitHubReader, owner: str, repo: str, number: int, review_id: int) -> bool:
    """Whether review `review_id` of the PR requested changes (its inline comments then belong to it)."""
    async for review in gh.getiter(
        "/repos/{owner}/{repo}/pulls/{pull_number}/reviews{?per_page}",
        {"owner": owner, "repo": repo, "pull_number": number, "per_page": 100},
    ):
        if review.get("id") == review_id:
            return str(review.get("state", "")).lower() == CHANGES_REQUESTED
    return False
