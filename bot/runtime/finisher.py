"""The Finisher: finished work leaves the worktree as a pushed `agent/` branch and exactly one pull request.

`Finisher.finish` carries out the core's `FinishWork` (SPEC §1.8) in this order, each step safe to
repeat, so a redelivered `done` or a restart that re-runs the command changes nothing twice:

1. commit leftover changes as the App's bot identity;
2. refuse to push while protected paths are changed (the runtime already gave the agent a turn to
   revert them);
3. merge the branch into the base as it is now, in a scratch worktree; when that conflicts, return
   `MergeConflict` with the files, so the agent rebases before anything is tested or pushed;
4. run the repository's `test` command as the agent would (same environment, stdin closed, its
   own process group, output in `<session_dir>/test.log`);
5. push with `bot.workspace.push.push_branch` and a freshly minted, repository-scoped token that lives only in
   this call;
6. find the branch's open pull request, or open it (`bot.runtime.marked`: only one the bot opened is
   taken), with a body whose facts Shepherd read from git itself; the agent's summary follows under its
   own label, defused.

Definite refusals (protected paths, a ref outside `agent/`, someone else's pull request on the branch,
git or GitHub saying no) come back as
`PushFailed`. Transport trouble (GitHub 5xx after the client's retries, lost connections) is raised,
so the runtime's outbox retries the whole, idempotent command later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gidgethub

from bot.github.api import GitHub
from bot.agent.environment import SessionEnvironment
from bot.redaction import redact
from bot.workspace.git import Git, GitError, Mirror
from bot.github.operations import OperationRefused
from bot.agent.confinement import for_session as confinement_for
from bot.agent.processes import REASON_EXITED, log_tail
from bot.core.effects import SessionContext
from bot.core.protected import touched_protected_paths
from bot.workspace.push import PushRefused, agent_branch, push_branch, remote_tip
from bot.views.render import environment, fence
from bot.core.sanitize import closing_references, code_span, marker, neutralise_for_github
from bot.runtime.coordination import test_merge
from bot.runtime.marked import ensure_marked, find_own, pull_request
from bot.core.session import (
    Event,
    FinishWork,
    MergeConflict,
    PullRequestClosed,
    PullRequestOpened,
    PullRequestUpdated,
    PushFailed,
    Session,
    WorkPushed,
)
from bot.store.database import Store
from bot.store.posted import PostedRecords
from bot.store.pushes import PushRecords
from bot.workspace.workspaces import WorkspaceError, Workspaces, session_folder

log = logging.getLogger(__name__)

PR_BODY_TEMPLATE = "pr_body.md.j2"

LEFTOVER_COMMIT_MESSAGE = "Commit the changes the agent left uncommitted"
PROTECTED_REFUSED = "the branch still changes protected paths ({paths}); Shepherd does not push those"
NO_CHANGES_AGAINST_BASE = "the branch has no commits on top of {base}; there is nothing to open a pull request for"
GITHUB_REFUSED = "GitHub refused to {what} ({status}): {message}"
GIT_FAILED = "git failed: {message}"
FOREIGN_COMMITS = (
    "{branch} on GitHub has {count} commit(s) Shepherd did not write: {commits}. Shepherd never "
    "overwrites them, so it did not push. Its own work is kept in its worktree; to go on, merge or "
    "rebase it with those commits, or ask for `/agent retry`"
)
FOREIGN_COMMIT = "{sha} by {author} ({subject})"
WORKSPACE_FAILED = "the worktree cannot be used: {message}"
NO_SUMMARY = "_The agent did not write a summary._"
CLOSING_COMMIT = (
    "> ⚠️ Merged, the message of commit `{sha}` would close {references} as well (GitHub reads closing "
    "keywords in commit messages): reword the commit before merging, or reopen what it closes."
)
NO_DIFF = "(no file changes)"
TEST_NONE = "no `test` command is configured in `.github/shepherd.yml`."
TEST_PASSED = "`{command}` exited with code 0."
TEST_FAILED = "`{command}` exited with code {code}, so this pull request is a draft."
TEST_STOPPED = "`{command}` was stopped ({reason}), so this pull request is a draft."
TEST_STOP_REASONS = {
    "runtime": "it ran longer than max_runtime_minutes",
    "idle": "it printed nothing for idle_timeout_minutes",
    "vanished": "its process was lost",
    "limit": "it went past a limit of its sandbox",
}

TEST_LOG = "test.log"
TEST_EXIT = "test.exit"
TEST_TAIL_LINES = 40
MAX_COMMITS_LISTED = 50
REVIEW_REQUEST_IGNORED = 422  # e.g. the actor is the PR's author or not a collaborator any more
PR_EXISTS_HINT = "already exists"
PULL_REQUEST_KIND = "pull_request"
FOREIGN_PULL = (
    "a pull request from `{branch}` is already open and Shepherd did not open it; Shepherd does not take over "
    "someone else's pull request: close that one, then ask again"
)


def render(template: str, **values: Any) -> str:
    """Render one of `templates/` through Shepherd's one Jinja2 environment."""
    return environment().get_template(template).render(**values)


def shown_diffstat(out: str) -> str:
    """`git diff --stat` output for the PR body: defused, and every line still in line (git indents each
    line by one space; stripping the text as a whole would pull only the first one left)."""
    text = neutralise_for_github(out)
    if not text:
        return NO_DIFF
    indent = out[: len(out) - len(out.lstrip(" "))].rpartition("\n")[2]
    return indent + text if not text.startswith(" ") else text


@dataclass(frozen=True)
class TestRun:
    """How the repository's test command went."""

    command: str
    exit_code: int | None
    stop_reason: str | None  # None when it exited on its own
    tail: str

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.stop_reason is None

    def line(self) -> str:
        if self.stop_reason is not None:
            reason = TEST_STOP_REASONS.get(self.stop_reason, self.stop_reason)
            return TEST_STOPPED.format(command=self.command, reason=reason)
        if self.exit_code == 0:
            return TEST_PASSED.format(command=self.command)
        return TEST_FAILED.format(command=self.command, code=self.exit_code)


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str


class FinishRefused(Exception):
    """A definite reason not to push or open the PR; becomes `PushFailed`."""


class Finisher:
    """Implements `bot.core.effects.Finisher`: commit, check, test, push, and open or update the one PR."""

    def __init__(
        self,
        github: Any,
        workspaces: Workspaces,
        git: Git,
        store: Store,
        settings: Any,
        *,
        clock: Callable[[], float],
        parent_env: Mapping[str, str] | None = None,
        poll: float = 0.1,
    ) -> None:
        """`parent_env` is the environment the agent's allow-list is taken from (the runtime passes
        the one it gives agents); without it the test command gets only the allow-listed basics."""
        self._github = github
        self._workspaces = workspaces
        self._git = git
        self._store = store
        self._settings = settings
        self._clock = clock
        self._parent_env = dict(parent_env or {})
        self._poll = poll

    async def finish(self, session: Session, command: FinishWork, context: Any,
                     appendix: str | None = None) -> Sequence[Event]:
        """`appendix` is Markdown added to a new PR's body (the bake-off's comparison, SPEC §8)."""
        try:
            return await self._finish(session, command, context, appendix)
        except (FinishRefused, PushRefused, OperationRefused) as refusal:
            reason = str(refusal)
        except WorkspaceError as error:
            reason = WORKSPACE_FAILED.format(message=error)
        except GitError as error:
            reason = GIT_FAILED.format(message=error.stderr.strip()[-500:] or error)
        except gidgethub.BadRequest as error:  # 4xx: asking again will not help
            reason = GITHUB_REFUSED.format(what="take the change", status=error.status_code, message=error)
        reason = redact(reason)
        log.warning("finishing %s failed: %s", session.id, reason)
        return [PushFailed(reason)]

    # -- the steps ------------------------------------------------------------------------------

    async def _finish(self, session: Session, command: FinishWork, context: Any,
                      appendix: str | None = None) -> list[Event]:
        branch = agent_branch(command.branch)  # refuse a foreign ref before touching anything
        full_name = context.full_name
        worktree = Path(context.worktree) if context.worktree else self._workspaces.worktree_path(full_name, branch)
        base = session.base_branch
        bot_name, bot_email = await self._github.bot_identity(context.installation_id)

        await self._workspaces.commit_all(worktree, LEFTOVER_COMMIT_MESSAGE, bot_name, bot_email)
        # From here on every fact comes from the mirror, where the agent's work arrived as checked data.
        head = await self._workspaces.export_branch(worktree, branch)
        ref = f"refs/heads/{branch}"

        changed = await self._workspaces.branch_changes(full_name, ref, base)
        touched = touched_protected_paths([path for path, _, _ in changed], context.policy.protected_paths)
        if touched:
            raise FinishRefused(PROTECTED_REFUSED.format(paths=", ".join(touched)))

        commits, commit_count = await self._commits(full_name, ref, base)
        closing = await self._closing_commits(full_name, ref, base, session.issue_number)
        if commit_count == 0:
            raise FinishRefused(NO_CHANGES_AGAINST_BASE.format(base=base))
        if not command.open_pull_request:
            # Stopped at the cost cap (SPEC §8): the work so far is kept on the branch, unreviewed.
            return [WorkPushed(await self._push(session, context, branch))]
        conflicts = await self._test_merge(context, head, base)
        if conflicts:
            log.info("%s does not merge into %s: %s", branch, base, ", ".join(conflicts))
            return [MergeConflict(conflicts)]
        diffstat = await self._diffstat(full_name, ref, base)

        test = None
        if context.policy.test:
            test = await self._run_tests(session, context, worktree, branch, bot_name, bot_email)

        head_sha = await self._push(session, context, branch)

        body = self._body(session, branch, base, commits, commit_count, diffstat, test, closing)
        if appendix:
            body = f"{body.rstrip()}\n\n{appendix}"
        draft = bool(context.policy.draft) or (test is not None and not test.passed)
        return await self._open_or_update(session, command, context, branch, base, body, draft, head_sha)

    async def _test_merge(self, context: Any, head: str, base: str) -> tuple[str, ...]:
        """Fetch the base as it is now, then merge the branch into it in a scratch worktree."""
        mirror = Mirror(context.full_name, self._workspaces.mirror_path(context.full_name), context.clone_url)
        token = await self._github.mint_push_token(context.installation_id, context.owner, context.repo)
        try:
            # Only the base: refreshing the branch's own remote ref would move the push lease.
            await self._git.run(
                "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", context.clone_url,
                f"+refs/heads/{base}:refs/remotes/origin/{base}", mirror=mirror, token=token,
            )
        finally:
            del token
        return await test_merge(self._git, self._workspaces, context.full_name, head, base)

    async def _commits(self, full_name: str, ref: str, base: str) -> tuple[list[Commit], int]:
        mirror = self._workspaces.mirror(full_name)
        span = f"refs/remotes/origin/{base}..{ref}"
        count = int((await self._git.run("rev-list", "--count", span, mirror=mirror)).strip() or 0)
        out = await self._git.run(
            "log", "--no-decorate", "--no-color", f"--max-count={MAX_COMMITS_LISTED}",
            "--format=%h%x09%s", span, "--",
            mirror=mirror,
        )
        commits = []
        for line in out.splitlines():
            sha, _, subject = line.partition("\t")
            commits.append(Commit(sha, neutralise_for_github(subject) or "(no message)"))
        return commits, count

    async def _closing_commits(self, full_name: str, ref: str, base: str, issue: int) -> list[str]:
        """A warning per commit whose message would close issues other than this one when merged."""
        out = await self._git.run(
            "log", "--no-decorate", "--no-color", f"--max-count={MAX_COMMITS_LISTED}", "--format=%h%x00%B%x1e",
            f"refs/remotes/origin/{base}..{ref}", "--", mirror=self._workspaces.mirror(full_name),
        )
        warnings = []
        for record in out.split("\x1e"):
            sha, _, message = record.strip("\n").partition("\x00")
            others = [r for r in closing_references(message) if r not in (f"#{issue}", f"GH-{issue}")]
            if sha and others:
                shown = ", ".join(code_span(r) for r in dict.fromkeys(others))
                warnings.append(CLOSING_COMMIT.format(sha=sha, references=shown))
        return warnings

    async def _diffstat(self, full_name: str, ref: str, base: str) -> str:
        out = await self._git.run(
            "diff", "--stat=100", "--no-color", "--no-ext-diff", "--no-textconv",
            f"refs/remotes/origin/{base}...{ref}", "--",
            mirror=self._workspaces.mirror(full_name),
        )
        return shown_diffstat(out)

    async def _run_tests(
        self, session: Session, context: Any, worktree: Path, branch: str, bot_name: str, bot_email: str
    ) -> TestRun:
        session_dir = Path(context.session_dir) if context.session_dir else (
            self._workspaces.session_dir(session_folder(session.id))
        )
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = session_dir / TEST_LOG
        log_path.unlink(missing_ok=True)  # the tail must be this run's
        # The session's own PORT, as its turns had it; a session without one (never given a workspace by
        # the runtime) borrows a free port for the run.
        port = context.port
        allocated = None
        if not port:
            port = allocated = self._workspaces.allocate_port()
        try:
            env = SessionEnvironment(
                parent_env=self._parent_env,
                extra_names=tuple(getattr(self._settings, "agent_env", ()) or ()),
                session_dir=session_dir, worktree=worktree, repo=context.full_name, issue=session.issue_number,
                branch=branch, port=int(port), bot_name=bot_name, bot_email=bot_email,
            ).build(session.turn_count)
            confinement = confinement_for(
                self._workspaces, session_dir.name, worktree, context.full_name, context.policy.network.allow
            )
            outcome = await confinement.run(
                context.policy.test, name="test", env=env, log_path=log_path,
                exit_path=session_dir / TEST_EXIT, timeout_s=context.policy.max_runtime_seconds, poll=self._poll,
            )
        finally:
            if allocated is not None:
                self._workspaces.release_port(allocated)
        stop_reason = None if outcome.reason == REASON_EXITED else outcome.reason
        passed = outcome.exit_code == 0 and stop_reason is None
        tail = "" if passed else log_tail(log_path, lines=TEST_TAIL_LINES)
        log.info("tests of %s: exit %s (%s)", session.id, outcome.exit_code, outcome.reason)
        return TestRun(context.policy.test, outcome.exit_code, stop_reason, tail)

    async def checkpoint(self, session: Session, context: SessionContext, *, last: str | None = None) -> str | None:
        """Push the agent's commits so far to the session's branch, as work in progress (SPEC §7: a session
        that moves to another host starts from them); return the commit pushed, or None when nothing was.

        The same rules as the finished work's push: only committed work (nothing is committed for the
        agent), nothing while the branch changes a protected path, and `_push`'s lease that never
        overwrites a person's commits. `last` is the previous checkpoint: the same commit is not pushed
        again. A checkpoint is a help, not a promise: any trouble is logged and the session goes on."""
        try:
            branch = agent_branch(session.branch)
            full_name, base = context.full_name, session.base_branch
            worktree = Path(context.worktree) if context.worktree else None
            if worktree is None or not worktree.is_dir():
                return None
            head = await self._workspaces.export_branch(worktree, branch)
            if head == last:
                return head
            ref = f"refs/heads/{branch}"
            changed = await self._workspaces.branch_changes(full_name, ref, base)
            touched = touched_protected_paths([path for path, _, _ in changed], context.policy.protected_paths)
            if touched:
                log.info("no checkpoint of %s: the branch changes protected paths (%s)", session.id, ", ".join(touched))
                return None
            _, count = await self._commits(full_name, ref, base)
            if count == 0:
                return None
            mirror = Mirror(full_name, self._workspaces.mirror_path(full_name), context.clone_url)
            tracked = f"refs/remotes/origin/{branch}"
            before = (await self._git.run("for-each-ref", "--format=%(objectname)", tracked, mirror=mirror)).strip()
            try:
                sha = await self._push(session, context, branch)
            finally:
                # The agent's next turn still counts these commits as its own unpushed work (the core's
                # `TurnExited.has_new_commits` means "since the last push of finished work").
                if before:
                    await self._git.run("update-ref", tracked, before, mirror=mirror)
                else:
                    await self._git.run("update-ref", "-d", tracked, mirror=mirror)
        except Exception as error:  # noqa: BLE001 - best effort: the finisher's own push says what is wrong
            log.warning("no checkpoint of %s: %s", session.id, redact(str(error)))
            return None
        log.info("checkpoint of %s pushed at %s", session.id, sha)
        return sha

    def remember_push(self, session: Session, full_name: str, sha: str) -> None:
        """Take `sha` on the session's branch as Shepherd's own last push (a checkpoint another host made),
        so the lease of the next push may replace it and never names its commits as someone else's."""
        if self._store is not None:
            PushRecords(self._store.db).record(full_name, agent_branch(session.branch), sha, session_id=session.id,
                                               now=self._clock())

    async def push(self, session: Session, context: SessionContext, branch: str) -> str:
        """Push one more of the session's branches (a bake-off's other attempt) the way its own is pushed."""
        return await self._push(session, context, agent_branch(branch))

    async def _push(self, session: Session, context: Any, branch: str) -> str:
        """Push the branch without ever losing a commit Shepherd did not write (SPEC §2).

        The remote tip is compared with what Shepherd itself last pushed there (`PushRecords`, which
        no fetch moves). A remote the branch already contains is fast-forwarded; Shepherd's own last
        push may be replaced (an agent's rewritten history) with a lease on exactly that commit;
        anything else on the remote is someone else's work, and the push stops with their commits named.
        """
        mirror = Mirror(context.full_name, self._workspaces.mirror_path(context.full_name), context.clone_url)
        records = PushRecords(self._store.db) if self._store is not None else None
        ours = records.last(context.full_name, branch) if records is not None else None
        local = (await self._git.run("rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}", mirror=mirror)).strip()
        token = await self._github.mint_push_token(context.installation_id, context.owner, context.repo)
        try:
            remote = await remote_tip(self._git, mirror, branch, token)
            if remote is not None and remote != ours and not await self._contains(mirror, local, remote):
                foreign = await self._foreign_commits(mirror, local, remote, ours)
                if foreign:
                    raise FinishRefused(FOREIGN_COMMITS.format(
                        branch=code_span(branch), count=len(foreign), commits="; ".join(foreign)))
            sha = await push_branch(
                self._git, mirror, branch, token, created_by_shepherd=ours is not None, expected_remote_sha=remote
            )
        finally:
            del token
        if records is not None:
            records.record(context.full_name, branch, sha, session_id=session.id, now=self._clock())
        return sha

    async def _contains(self, mirror: Mirror, head: str, commit: str) -> bool:
        try:
            await self._git.run("merge-base", "--is-ancestor", commit, head, mirror=mirror)
        except GitError as error:
            if error.returncode == 1:
                return False
            raise
        return True

    async def _has_commit(self, mirror: Mirror, sha: str) -> bool:
        try:
            await self._git.run("cat-file", "-e", f"{sha}^{{commit}}", mirror=mirror)
        except GitError:
            return False
        return True

    async def _foreign_commits(self, mirror: Mirror, local: str, remote: str, ours: str | None) -> list[str]:
        """Commits on the remote that neither the branch to push nor Shepherd's last push holds."""
        exclude = [f"^{local}"]
        if ours is not None and await self._has_commit(mirror, ours):
            exclude.append(f"^{ours}")
        out = await self._git.run(
            "log", "--no-decorate", "--no-color", f"--max-count={MAX_COMMITS_LISTED}", "--format=%h%x09%an%x09%s",
            remote, *exclude, "--", mirror=mirror,
        )
        commits = []
        for line in out.splitlines():
            sha, _, rest = line.partition("\t")
            author, _, subject = rest.partition("\t")
            commits.append(FOREIGN_COMMIT.format(sha=code_span(sha), author=neutralise_for_github(author),
                                                 subject=neutralise_for_github(subject) or "(no message)"))
        return commits

    def _body(
        self,
        session: Session,
        branch: str,
        base: str,
        commits: list[Commit],
        commit_count: int,
        diffstat: str,
        test: TestRun | None,
        closing: list[str] = (),  # type: ignore[assignment]
    ) -> str:
        tail = neutralise_for_github(test.tail) if test is not None else ""
        return render(
            PR_BODY_TEMPLATE,
            issue_number=session.issue_number,
            actor=session.trigger_actor,
            branch=branch,
            base=base,
            commits=commits,
            commit_count=commit_count,
            closing=list(closing),
            diffstat=diffstat,
            diffstat_fence=fence(diffstat),
            test_line=test.line() if test is not None else TEST_NONE,
            test_tail=tail,
            test_fence=fence(tail),
            summary=neutralise_for_github(session_summary(session)) or NO_SUMMARY,
            marker=marker("pr", session=session.id),
        )

    # -- the pull request -----------------------------------------------------------------------

    async def _open_or_update(
        self,
        session: Session,
        command: FinishWork,
        context: Any,
        branch: str,
        base: str,
        body: str,
        draft: bool,
        head_sha: str,
    ) -> list[Event]:
        gh = self._github.installation(context.installation_id)
        owner, repo = context.owner, context.repo
        bot_login, _email = await self._github.bot_identity(context.installation_id)
        place = pull_request(owner, repo, head=branch, base=base, title=session.issue_title, draft=draft,
                             session_id=session.id)
        posted = PostedRecords(self._store)
        mark = dict(scope=session.id, kind=PULL_REQUEST_KIND, key=branch, bot_login=bot_login, body=body)
        try:
            pull = await ensure_marked(gh, posted, place, now=self._clock(), **mark)
        except gidgethub.BadRequest as error:
            if int(error.status_code) != 422 or PR_EXISTS_HINT not in str(error):
                raise
            if await find_own(gh, place, bot_login) is None:
                raise FinishRefused(FOREIGN_PULL.format(branch=branch)) from error
            # Two finishes raced and the other one opened it first: it is found now.
            pull = await ensure_marked(gh, posted, place, now=self._clock(), **mark)
        if pull.created:
            await self._request_review(gh, owner, repo, pull.id, session.trigger_actor)
            log.info("opened PR #%s for %s", pull.id, session.id)
        if command.pull_request_number is None:
            assert pull.item is not None  # never remembered without a look (`trust_record` is off)
            opened: list[Event] = [PullRequestOpened(number=pull.id, url=pull.item["html_url"], head_sha=head_sha)]
            if pull.item.get("state") == "closed":
                # Opened by an answer that was lost, and merged or closed since: the session learns both.
                opened.append(PullRequestClosed(merged=bool(pull.item.get("merged_at")), number=pull.id))
            return opened
        return [PullRequestUpdated(head_sha=head_sha)]

    async def _request_review(self, gh: GitHub, owner: str, repo: str, number: int, login: str) -> None:
        try:
            await gh.post(
                "/repos/{owner}/{repo}/pulls/{pull_number}/requested_reviewers",
                {"owner": owner, "repo": repo, "pull_number": number},
                data={"reviewers": [login]},
            )
        except gidgethub.BadRequest as error:
            if int(error.status_code) != REVIEW_REQUEST_IGNORED:
                raise
            log.info("review request for %s on #%s declined: %s", login, number, error)


def session_summary(session: Session) -> str:
    """The agent's `shepherd done` summary, the text of the PR body's last section."""
    return session.done_summary or ""
