"""The one function through which Shepherd pushes: only `agent/` branches, never a blind force."""

from __future__ import annotations

import logging
import re

from bot.workspace.git import Git, Mirror

log = logging.getLogger(__name__)

AGENT_PREFIX = "agent/"
HEADS = "refs/heads/"
REFUSED_NOT_AGENT = "Shepherd only pushes branches under agent/, not {branch!r}"
REFUSED_SHAPE = "refusing to push {branch!r}: {why}"
REFUSED_LEASE = "refusing to push {branch!r}: the expected remote commit {sha!r} is not a commit id"

_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class PushRefused(Exception):
    """A push that Shepherd's rules forbid; raised before git runs."""


def agent_branch(branch: str) -> str:
    """Return the short branch name if `branch` names a branch under `agent/`, else refuse.

    Accepts `agent/x` and `refs/heads/agent/x`. Refspec syntax (`+`, `:`), other ref namespaces
    (tags, notes), relative components (`..`, `.`), empty components and git's forbidden
    characters are refused rather than cleaned up.
    """
    if not isinstance(branch, str) or not branch:
        raise PushRefused(REFUSED_SHAPE.format(branch=branch, why="no branch given"))
    if branch.startswith("+"):
        raise PushRefused(REFUSED_SHAPE.format(branch=branch, why="forced refspecs are not allowed"))
    if ":" in branch:
        raise PushRefused(REFUSED_SHAPE.format(branch=branch, why="refspecs and deletes are not allowed"))
    short = branch[len(HEADS):] if branch.startswith(HEADS) else branch
    if short.startswith("refs/") or not short.startswith(AGENT_PREFIX):
        raise PushRefused(REFUSED_NOT_AGENT.format(branch=branch))
    components = short.split("/")
    if len(components) < 2:
        raise PushRefused(REFUSED_NOT_AGENT.format(branch=branch))
    for component in components:
        if not _COMPONENT.match(component) or ".." in component or component.endswith(".lock"):
            raise PushRefused(
                REFUSED_SHAPE.format(branch=branch, why=f"{component!r} is not a safe name part")
            )
    return short


async def push_branch(
    git: Git,
    mirror: Mirror,
    branch: str,
    token: str,
    *,
    created_by_shepherd: bool,
    expected_remote_sha: str | None = None,
) -> str:
    """Push the mirror's `refs/heads/<branch>` to the same ref on the remote; return the commit.

    Worktrees share the mirror's object store, so their commits are already here. A branch
    Shepherd did not create is never force-pushed; one it did create is overwritten only with a
    lease on `expected_remote_sha`.
    """
    short = agent_branch(branch)
    if mirror.clone_url is None:
        raise PushRefused(REFUSED_SHAPE.format(branch=branch, why="the mirror's clone URL is unknown"))
    lease: list[str] = []
    if expected_remote_sha is not None:
        if not _SHA.match(expected_remote_sha):
            raise PushRefused(REFUSED_LEASE.format(branch=branch, sha=expected_remote_sha))
        if created_by_shepherd:
            lease = [f"--force-with-lease={HEADS}{short}:{expected_remote_sha}"]
    ref = f"{HEADS}{short}"
    local = (await git.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", mirror=mirror)).strip()
    # An explicit URL and refspec: nothing in the mirror's config decides where this goes.
    await git.run(
        "push", "--quiet", "--porcelain", "--no-verify", "--no-recurse-submodules", *lease,
        "--", mirror.clone_url, f"{ref}:{ref}",
        mirror=mirror, token=token,
    )
    await git.run("update-ref", f"refs/remotes/origin/{short}", local, mirror=mirror)
    log.info("pushed %s of %s at %s", short, mirror.full_name, local)
    return local


async def remote_tip(git: Git, mirror: Mirror, branch: str, token: str) -> str | None:
    """The commit `branch` points to on the remote now (None when it does not exist), its objects
    fetched into the mirror under `refs/remotes/origin/<branch>` so they can be compared and kept."""
    short = agent_branch(branch)
    if mirror.clone_url is None:
        raise PushRefused(REFUSED_SHAPE.format(branch=branch, why="the mirror's clone URL is unknown"))
    ref = f"{HEADS}{short}"
    listed = await git.run("ls-remote", "--refs", "--", mirror.clone_url, ref, mirror=mirror, token=token)
    tip = next((line.split()[0] for line in listed.splitlines() if line.split()[1:] == [ref]), None)
    if tip is None:
        return None
    if not _SHA.match(tip):
        raise PushRefused(REFUSED_LEASE.format(branch=branch, sha=tip))
    await git.run(
        "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", "--",
        mirror.clone_url, f"+{ref}:refs/remotes/origin/{short}", mirror=mirror, token=token,
    )
    return tip
