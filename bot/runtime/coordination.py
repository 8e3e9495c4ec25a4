"""Coordination of parallel sessions in one repository: shared files between live sessions, and the test merge before a PR.

`bot.core.overlaps.find_overlaps` decides which sessions share files. `Coordinator.check` measures each live session's changed files against its
base, stores each session's overlaps in its context (the next turn's message names them) and keeps one
coordination comment per issue, edited when the overlap changes and never repeated. `test_merge` merges
the branch's head into the current base in a scratch repository borrowing the mirror's objects and reports
the conflicting files; the scratch repository is always removed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.runtime.marked import ensure_comment
from bot.store.posted import PostedRecords
from bot.workspace.git import Git, GitError, Mirror
from bot.github.pacing import Priority
from bot.views.render import environment
from bot.core.overlaps import find_overlaps
from bot.core.sanitize import marker
from bot.core.session import Progress, Session, TurnExited
from bot.store.context import RuntimeContext
from bot.workspace.workspaces import Workspaces

log = logging.getLogger(__name__)

COORDINATION_KIND = "coordination"
COORDINATION_TITLE = "### 🤝 Another agent changes the same files"
COORDINATION_SENTENCE = (
    "Shepherd runs several agents in this repository at once. The work on this issue and on the issues "
    "below changes the same files, so their pull requests may conflict. Both agents were told."
)
COORDINATION_CLEARED = "The overlap is gone: the sessions no longer change the same files."
SCRATCH_USER = ("Shepherd test merge", "shepherd@invalid")


def render_coordination(session_id: str, others: list[dict[str, Any]]) -> str:
    """The coordination comment; `others` holds `issue` (`#12`), `link` and `paths` per other session."""
    return environment().get_template("coordination.md.j2").render(
        marker=marker(COORDINATION_KIND, session=session_id), title=COORDINATION_TITLE,
        sentence=COORDINATION_SENTENCE, cleared=COORDINATION_CLEARED, others=others,
    )


class Coordinator:
    """Finds the files that live sessions of a repository share and tells both sides, once."""

    def __init__(self, engine: Any, github: Any, store: Any, *, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.github = github
        self.posted = PostedRecords(store)
        self.clock = clock

    async def observe(self, before: Session | None, after: Session, event: Any) -> None:
        """A runtime observer: after each turn and on each progress report, compare the repository's sessions."""
        if isinstance(event, (TurnExited, Progress)):
            await self.check(after.repo)

    async def _changed(self, session: Session, context: RuntimeContext) -> set[str]:
        worktree = Path(context.worktree) if context.worktree else None
        if worktree is None or not worktree.is_dir():
            return set()
        try:
            files = await self.engine.workspaces.changed_files(worktree, session.base_branch)
        except Exception:  # noqa: BLE001 - a worktree being removed has nothing to compare
            log.warning("could not list changed files of %s", session.id, exc_info=True)
            return set()
        return {path for path, _, _ in files}

    async def check(self, full_name: str) -> dict[str, dict[str, tuple[str, ...]]]:
        """Compare the live sessions of `full_name`; store and post what overlaps."""
        live = [s for s in self.engine.sessions.live() if s.session.repo == full_name]
        changes = {stored.session.id: await self._changed(stored.session, stored.context) for stored in live}
        overlaps = find_overlaps(changes)
        by_id = {stored.session.id: stored for stored in live}
        for session_id, stored in by_id.items():
            mine = overlaps.get(session_id, {})
            shown = {f"#{by_id[other].session.issue_number}": tuple(paths) for other, paths in mine.items()}
            # The engine stores it, under the issue's lock, over the record as it is then.
            await self.engine.change_context(session_id, lambda known, shown=shown: replace(known, overlaps=shown))
            await self._post(stored, mine, by_id)
        return overlaps

    async def _post(self, stored: Any, mine: Mapping[str, tuple[str, ...]], by_id: Mapping[str, Any]) -> None:
        session, context = stored.session, stored.context
        if not mine and self.posted.get(session.id, COORDINATION_KIND) is None:
            return  # never overlapped: nothing to say
        others = [(by_id[other].session.issue_number, paths) for other, paths in mine.items()]
        await post_coordination(self.github, self.posted, installation_id=stored.installation_id, session=session,
                                clone_url=context.clone_url, others=others, now=self.clock())


async def post_coordination(github: Any, posted: PostedRecords, *, installation_id: int, session: Session,
                            clone_url: str, others: Sequence[tuple[int, Sequence[str]]], now: float) -> None:
    """Create or edit the session's one coordination comment: the other issues (number, shared files),
    or the line that the overlap is gone when `others` is empty. Also the Temporal engine's (one per
    repository, bot/temporal/repository.py)."""
    web = _web_repo(clone_url)
    shown = [{"issue": f"#{number}", "link": f"{web}/issues/{number}" if web else "", "paths": list(paths)}
             for number, paths in sorted(others)]
    body = render_coordination(session.id, shown)
    owner, repo = session.repo.split("/", 1)
    gh = github.installation(installation_id)
    bot_login, _ = await github.bot_identity(installation_id)
    await ensure_comment(
        gh, posted, scope=session.id, kind=COORDINATION_KIND, key="", owner=owner, repo=repo,
        number=session.issue_number, bot_login=bot_login, marker_fields={"session": session.id}, body=body,
        now=now, priority=Priority.NORMAL,
    )


def _web_repo(clone_url: str) -> str:
    return clone_url[:-4] if clone_url.endswith(".git") else clone_url


async def test_merge(git: Git, workspaces: Workspaces, full_name: str, head: str, base: str) -> tuple[str, ...]:
    """Merge `head` (a commit) into `refs/remotes/origin/<base>` in a scratch repository; the conflicting
    files, or () when it merges cleanly. Nothing of the scratch merge survives the call."""
    mirror: Mirror = workspaces.mirror(full_name)
    scratch_root = workspaces.data_dir / "scratch"
    scratch_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A repository of its own that borrows the mirror's objects, not a worktree of the mirror: nothing is
    # written into the mirror, so a fetch into it meanwhile, or a kill -9 half-way, cannot meet a half-made
    # worktree's HEAD there (`bad object worktrees/merge-…/HEAD` failed every later fetch).
    scratch = Path(tempfile.mkdtemp(prefix="merge-", dir=scratch_root))
    try:
        base_sha = (await git.run("rev-parse", "--verify", f"refs/remotes/origin/{base}^{{commit}}",
                                  mirror=mirror)).strip()
        await git.run("init", "--quiet", f"--template={git.hooks}", str(scratch))
        (scratch / ".git" / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (scratch / ".git" / "objects" / "info" / "alternates").write_text(f"{mirror.path / 'objects'}\n")
        await git.run("checkout", "--quiet", "--detach", base_sha, cwd=scratch)
        name, email = SCRATCH_USER
        try:
            await git.run(
                "-c", f"user.name={name}", "-c", f"user.email={email}",
                "merge", "--no-commit", "--no-ff", "--quiet", head,
                cwd=scratch,
            )
        except GitError:
            out = await git.run("diff", "--name-only", "--diff-filter=U", "-z", cwd=scratch)
            conflicts = tuple(sorted(path for path in out.split("\0") if path))
            return conflicts or ("(unknown)",)
        return ()
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
