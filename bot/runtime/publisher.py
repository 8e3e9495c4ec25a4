"""The Publisher: carries out the session core's commands that show on the issue (status, questions, plan, labels, reactions), idempotently.

Nothing here is ever written twice: comments are found or created through `bot.runtime.marked` (the
stored id, then the marker in the bot's own comments, and only then a create, its id stored at once).
Status edits (which the engine already coalesces per session, "latest wins") are skipped when the text
is unchanged (a stored hash), throttled to one per `status_interval_seconds` for progress-only updates,
and written at the priority the core asked for: new questions and final states first, periodic progress
last. `respond` carries out the core's answers outside a session (`bot.core.responses`): refusals,
command outcomes and help.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import gidgethub

from bot.github import labels as label_ops
from bot.github.api import GitHub
from bot.github.client import GitHubApp
from bot.views import render
from bot.core.effects import SessionContext
from bot.core.payload import parse_time
from bot.github.pacing import Priority
from bot.core.policy import POLICY_PATH, Problem
from bot.core.session import (
    AddLabel,
    Command,
    EditQuestion,
    Event,
    ExplainNeedsHuman,
    MarkQuestionAnswered,
    MarkQuestionCancelled,
    PointToPullRequest,
    PostPlan,
    PostQuestion,
    PostStatus,
    QuestionPosted,
    React,
    RemoveLabel,
    ReportFailure,
    Session,
    State,
    WithdrawQuestion,
)
from bot.core.responses import Acknowledge, NotOffered, Refuse, Response, ShowHelp
from bot.runtime.marked import (
    COMMENT_URL,
    COMMENTS_URL,
    body_hash,
    ensure_comment,
    find_own_comment,
)
from bot.runtime.rounds import post_needs_human
from bot.store.database import Store
from bot.store.log_tails import LogTails
from bot.store.posted import PostedRecords, Refusals

log = logging.getLogger(__name__)

ISSUE_REACTIONS_URL = "/repos/{owner}/{repo}/issues/{issue_number}/reactions"
COMMENT_REACTIONS_URL = "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"

STATUS = "status"
QUESTION = "question"
PLAN = "plan"
POINTER = "pointer"
POLICY = "policy"
REACTION = "reaction"
HELP = "help"
NOT_OFFERED = "not-offered"
COMMAND = "command"
REFUSAL = "refusal"
REFUSAL_WINDOW_SECONDS = 3600.0
CLOCK_SLACK_SECONDS = 60.0  # GitHub's clock and ours may disagree a little

UNEXPECTED_COMMAND = "the Publisher does not carry out {name}"


def issue_scope(full_name: str, number: int) -> str:
    """The `posted.session_id` of things that belong to an issue rather than one session (commands)."""
    return f"{full_name}#{number}"


# -- building blocks shared with the handlers ------------------------------------------------------


async def react_once(
    gh: GitHub,
    posted: PostedRecords,
    *,
    scope: str,
    owner: str,
    repo: str,
    number: int,
    content: str,
    comment_id: int | None,
    now: float,
    priority: Priority = Priority.NORMAL,
) -> bool:
    """Add a reaction to the issue or one of its comments, once; True when it was written now."""
    key = f"{content}:{comment_id if comment_id is not None else 'issue'}"
    if posted.get(scope, REACTION, key) is not None:
        return False
    if comment_id is None:
        answer = await gh.post(ISSUE_REACTIONS_URL, {"owner": owner, "repo": repo, "issue_number": number},
                               data={"content": content}, priority=priority)
    else:
        answer = await gh.post(COMMENT_REACTIONS_URL, {"owner": owner, "repo": repo, "comment_id": comment_id},
                               data={"content": content}, priority=priority)
    posted.put(scope, REACTION, key, int(answer["id"]), content, now)
    return True


async def post_refusal(
    gh: GitHub,
    store: Store,
    *,
    owner: str,
    repo: str,
    number: int,
    login: str,
    label: str,
    min_permission: str,
    bot_login: str,
    now: float,
) -> bool:
    """At most one short, polite refusal per person and issue per hour; True when one was posted now."""
    refusals = Refusals(store)
    full_name = f"{owner}/{repo}"
    last = refusals.last(full_name, number, login)
    if last is not None and now - last < REFUSAL_WINDOW_SECONDS:
        return False
    body = render.render_refusal(login, label, min_permission)
    if last is None:
        # A refusal posted just before a crash (so never recorded) is still on the issue.
        found = await find_own_comment(gh, owner, repo, number, bot_login, REFUSAL, {"login": login.lower()})
        created = parse_time(found.get("created_at")) if found else None
        if created is not None and -CLOCK_SLACK_SECONDS <= now - created.timestamp() < REFUSAL_WINDOW_SECONDS:
            refusals.record(full_name, number, login, now)
            return False
    await gh.post(COMMENTS_URL, {"owner": owner, "repo": repo, "issue_number": number},
                  data={"body": body}, priority=Priority.NORMAL)
    refusals.record(full_name, number, login, now)
    return True


# -- the Publisher ---------------------------------------------------------------------------------


class Publisher:
    """Carries out `PostStatus`, `PostQuestion`, `EditQuestion`, `WithdrawQuestion`, `MarkQuestionAnswered`,
    `MarkQuestionCancelled`, `AddLabel`, `RemoveLabel`, `React`, `PostPlan`, `PointToPullRequest` and
    `ReportFailure` on the session's issue (`bot.core.effects.Publisher`)."""

    def __init__(
        self,
        github: GitHubApp,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        bot_login: str | None = None,
        label_maker: label_ops.LabelMaker | None = None,
    ) -> None:
        self._github = github
        self._clock = clock
        self._bot_login = bot_login
        self._store = store
        self.posted = PostedRecords(store)
        self._tails = LogTails(store)
        self._labels = label_maker or label_ops.LabelMaker()
        # Per session, kind and key; like `bot.runtime.marked`'s locks, dropped once nobody holds or waits for it.
        self._locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()

    async def bot_login(self, installation_id: int) -> str:
        if self._bot_login is None:
            self._bot_login, _email = await self._github.bot_identity(installation_id)
        return self._bot_login

    def _lock(self, session_id: str, kind: str, key: str = "") -> asyncio.Lock:
        lock = self._locks.get((session_id, kind, key))
        if lock is None:
            lock = self._locks[(session_id, kind, key)] = asyncio.Lock()
        return lock

    async def publish(self, session: Session, command: Command, context: SessionContext) -> Sequence[Event]:
        """Carry out one command idempotently; return the events it produced (`QuestionPosted`)."""
        gh = self._github.installation(context.installation_id)
        problems = context.policy_problems
        if problems:
            await self._post_policy_problems(gh, session, context, problems)
        if isinstance(command, PostStatus):
            await self._post_status(gh, session, context, command)
            return []
        if isinstance(command, (PostQuestion, EditQuestion)):
            return await self._post_question(gh, session, context, command)
        if isinstance(command, MarkQuestionAnswered):
            await self._close_question(gh, session, context, command.question_id, answered_by=command.by)
            return []
        if isinstance(command, (MarkQuestionCancelled, WithdrawQuestion)):
            await self._close_question(gh, session, context, command.question_id,
                                       withdrawn=isinstance(command, WithdrawQuestion))
            return []
        if isinstance(command, AddLabel):
            await label_ops.add_label(gh, self._labels, context.owner, context.repo, session.issue_number,
                                      context.policy.labels, command.kind, priority=Priority.URGENT)
            return []
        if isinstance(command, RemoveLabel):
            await label_ops.remove_label(gh, context.owner, context.repo, session.issue_number,
                                         context.policy.labels, command.kind)
            return []
        if isinstance(command, React):
            await self._react(gh, session, context, command.content, command.comment_id)
            return []
        if isinstance(command, PostPlan):
            await self._post_plan(gh, session, context, command)
            return []
        if isinstance(command, PointToPullRequest):
            await self._point_to_pull_request(gh, session, context, command)
            return []
        if isinstance(command, ReportFailure):
            await self._report_failure(gh, session, context, command)
            return []
        if isinstance(command, ExplainNeedsHuman):
            await post_needs_human(gh, context.owner, context.repo, command.number, session, store=self._store,
                                   bot_login=await self.bot_login(context.installation_id), clock=self._clock)
            return []
        raise ValueError(UNEXPECTED_COMMAND.format(name=type(command).__name__))

    # -- answers outside a session ----------------------------------------------------------------

    def answered(self, full_name: str, number: int, comment_id: int) -> bool:
        """Was this command comment already carried out and acknowledged (a delivery seen again)?"""
        return self.posted.get(issue_scope(full_name, number), COMMAND, str(comment_id)) is not None

    async def respond(self, installation_id: int, full_name: str, number: int, response: Response) -> None:
        """Carry out one of the core's answers on issue `number`, once."""
        gh = self._github.installation(installation_id)
        owner, repo = full_name.split("/", 1)
        scope = issue_scope(full_name, number)
        now = self._clock()
        if isinstance(response, Refuse):
            await post_refusal(gh, self._store, owner=owner, repo=repo, number=number, login=response.login,
                               label=response.label, min_permission=response.min_permission,
                               bot_login=await self.bot_login(installation_id), now=now)
        elif isinstance(response, ShowHelp):
            key = str(response.comment_id)
            await ensure_comment(
                gh, self.posted, scope=scope, kind=HELP, key=key, owner=owner, repo=repo, number=number,
                bot_login=await self.bot_login(installation_id), marker_fields={"comment": key},
                body=render.render_help(response.comment_id, response.unknown), now=now, edit=False,
            )
        elif isinstance(response, NotOffered):
            await ensure_comment(
                gh, self.posted, scope=scope, kind=NOT_OFFERED, key=response.label, owner=owner, repo=repo,
                number=number, bot_login=await self.bot_login(installation_id),
                marker_fields={"label": response.label.replace(" ", "_")},
                body=render.render_not_offered(response.label, response.reason), now=now, edit=False,
            )
        elif isinstance(response, Acknowledge):
            await react_once(gh, self.posted, scope=scope, owner=owner, repo=repo, number=number,
                             content=response.content, comment_id=response.comment_id, now=now)
            self.posted.put(scope, COMMAND, str(response.comment_id), response.comment_id, response.content, now)
        else:
            raise ValueError(UNEXPECTED_COMMAND.format(name=type(response).__name__))

    # -- status ------------------------------------------------------------------------------------

    async def _post_status(self, gh: GitHub, session: Session, context: SessionContext, command: PostStatus) -> None:
        tail = None
        if session.state == State.FAILED and not context.log_tail:
            tail = self._tails.get(session.id)
        body = render.render_status(session, context, log_tail=tail)
        # One status comment per issue (SPEC §1.5): a retry or a re-label takes over the same comment.
        scope = issue_scope(session.repo, session.issue_number)
        async with self._lock(scope, STATUS):
            now = self._clock()
            record = self.posted.get(scope, STATUS)
            interval = context.policy.status_interval_seconds
            if record is not None and command.throttled and now - record.updated_at < interval:
                return  # progress only: the next edit (state change or a later heartbeat) shows it
            priority = Priority.URGENT if command.urgent else Priority.LOW if command.throttled else Priority.NORMAL
            await ensure_comment(
                gh, self.posted, scope=scope, kind=STATUS, key="", owner=context.owner, repo=context.repo,
                number=session.issue_number, bot_login=await self.bot_login(context.installation_id),
                marker_fields={}, body=body, now=now, priority=priority,
            )

    async def _report_failure(self, gh: GitHub, session: Session, context: SessionContext,
                              command: ReportFailure) -> None:
        tail = command.log_tail or context.log_tail or ""
        if tail:
            self._tails.put(session.id, tail)  # the status comment the core posts next shows it

    # -- questions ---------------------------------------------------------------------------------

    async def _post_question(self, gh: GitHub, session: Session, context: SessionContext,
                             command: PostQuestion | EditQuestion) -> list[Event]:
        asking = context.attempt  # a bake-off attempt's question names its engine (SPEC §8)
        body = render.render_question(session.id, command.question_id, command.text, command.options,
                                      command.context, command.mention, engine=asking)
        async with self._lock(session.id, QUESTION, command.question_id):
            comment, _written = await ensure_comment(
                gh, self.posted, scope=session.id, kind=QUESTION, key=command.question_id, owner=context.owner,
                repo=context.repo, number=session.issue_number,
                bot_login=await self.bot_login(context.installation_id),
                marker_fields={"session": session.id, "id": command.question_id}, body=body, now=self._clock(),
                priority=Priority.URGENT,
            )
        if isinstance(command, EditQuestion) and session.question is not None and session.question.comment_id:
            return []
        if comment is None:  # its text was already right: read the remembered comment for its time
            record = self.posted.get(session.id, QUESTION, command.question_id)
            assert record is not None  # `ensure_comment` has just remembered it
            comment = await gh.getitem(COMMENT_URL, {
                "owner": context.owner, "repo": context.repo, "comment_id": record.github_id,
            })
        posted_at = parse_time(comment.get("created_at")) or datetime.now(timezone.utc)
        return [QuestionPosted(command.question_id, int(comment["id"]), posted_at)]

    async def _close_question(self, gh: GitHub, session: Session, context: SessionContext, question_id: str, *,
                              answered_by: str | None = None, withdrawn: bool = False) -> None:
        async with self._lock(session.id, QUESTION, question_id):
            record = self.posted.get(session.id, QUESTION, question_id)
            comment: dict[str, Any] | None
            if record is not None:
                try:
                    comment = await gh.getitem(COMMENT_URL, {"owner": context.owner, "repo": context.repo,
                                                             "comment_id": record.github_id})
                except gidgethub.BadRequest as exc:
                    if int(exc.status_code) != 404:
                        raise
                    comment = None
            else:
                comment = await find_own_comment(gh, context.owner, context.repo, session.issue_number,
                                                 await self.bot_login(context.installation_id), QUESTION,
                                                 {"session": session.id, "id": question_id})
            if comment is None:
                log.warning("question %s of %s has no comment to update", question_id, session.id)
                return
            section = render.question_section(comment.get("body") or "")
            if answered_by is not None:
                body = render.render_question_answered(session.id, question_id, section, answered_by)
            else:
                body = render.render_question_cancelled(session.id, question_id, section, withdrawn=withdrawn)
            if body_hash(body) == body_hash(comment.get("body") or ""):
                return
            await gh.patch(COMMENT_URL, {"owner": context.owner, "repo": context.repo, "comment_id": comment["id"]},
                           data={"body": body}, priority=Priority.NORMAL)
            self.posted.put(session.id, QUESTION, question_id, int(comment["id"]), body_hash(body), self._clock())

    # -- the rest ----------------------------------------------------------------------------------

    async def _react(self, gh: GitHub, session: Session, context: SessionContext, content: str,
                     comment_id: int | None) -> None:
        await react_once(gh, self.posted, scope=session.id, owner=context.owner, repo=context.repo,
                         number=session.issue_number, content=content, comment_id=comment_id, now=self._clock())

    async def _post_plan(self, gh: GitHub, session: Session, context: SessionContext, command: PostPlan) -> None:
        body = render.render_plan(session.id, command.text, command.revision, command.mention)
        async with self._lock(session.id, PLAN):
            await ensure_comment(
                gh, self.posted, scope=session.id, kind=PLAN, key="", owner=context.owner, repo=context.repo,
                number=session.issue_number, bot_login=await self.bot_login(context.installation_id),
                marker_fields={"session": session.id}, body=body, now=self._clock(), priority=Priority.URGENT,
            )

    async def _point_to_pull_request(self, gh: GitHub, session: Session, context: SessionContext,
                                     command: PointToPullRequest) -> None:
        body = render.render_pointer(session.id, command.number, command.url)
        async with self._lock(session.id, POINTER):
            await ensure_comment(
                gh, self.posted, scope=session.id, kind=POINTER, key="", owner=context.owner, repo=context.repo,
                number=session.issue_number, bot_login=await self.bot_login(context.installation_id),
                marker_fields={"session": session.id}, body=body, now=self._clock(), edit=False,
            )

    async def _post_policy_problems(self, gh: GitHub, session: Session, context: SessionContext,
                                    problems: Sequence[Problem | str]) -> None:
        if self.posted.get(session.id, POLICY) is not None:
            return
        body = render.render_policy_problems(session.id, problems, POLICY_PATH)
        async with self._lock(session.id, POLICY):
            await ensure_comment(
                gh, self.posted, scope=session.id, kind=POLICY, key="", owner=context.owner, repo=context.repo,
                number=session.issue_number, bot_login=await self.bot_login(context.installation_id),
                marker_fields={"session": session.id}, body=body, now=self._clock(), edit=False,
            )
