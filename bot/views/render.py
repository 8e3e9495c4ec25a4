"""Renders every comment a person reads on the issue from `templates/*.md.j2` (Jinja2, no autoescape, strict).

The texts themselves live in the templates; this module only gathers the facts a template shows and
defuses what an agent wrote (`neutralise_for_github`) before it reaches a template. Times are absolute
UTC from the session, never "now", so an unchanged session renders to the same text and an edit can be
skipped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import yaml

from bot.core.budget import spend_line
from bot.core.effects import ChangedFile, SessionContext
from bot.core.policy import Problem
from bot.redaction import redact
from bot.core.sanitize import code_span, marker, neutralise_for_github
from bot.core.session import FAILURE_EXIT_CODE, Detail, Mode, Session, State

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
MAX_FILES_SHOWN = 30
MAX_LOG_TAIL_CHARS = 6000
MAX_AGENT_TEXT_CHARS = 20000

STATE_SYMBOLS = {
    State.REGISTERED: "🛠️",
    State.QUEUED: "⏳",
    State.PLANNING: "📝",
    State.WORKING: "🔨",
    State.STUCK: "✋",
    State.COMPLETE: "✅",
    State.CANCELLED: "⛔",
    State.FAILED: "❌",
}
STATE_TITLES = {
    State.REGISTERED: "Preparing the workspace",
    State.QUEUED: "Queued",
    State.PLANNING: "Planning",
    State.WORKING: "Working",
    State.STUCK: "Waiting for a person",
    State.COMPLETE: "Complete",
    State.CANCELLED: "Cancelled",
    State.FAILED: "Failed",
}
STATE_SENTENCES = {
    State.REGISTERED: "Shepherd is preparing a worktree for this issue.",
    State.QUEUED: "The agent waits for a free slot.",
    State.PLANNING: "The agent is writing a plan.",
    State.WORKING: "The agent is working on this issue.",
    State.STUCK: "The agent waits for an answer in this thread.",
    State.COMPLETE: "The work is in the pull request; review it there.",
    State.CANCELLED: "The session was cancelled. The branch is kept; add the label again or comment `/agent retry` to continue.",
    State.FAILED: "The session failed. The branch is kept; comment `/agent retry` to try again.",
}
DETAIL_SENTENCES = {
    Detail.WAITING_FOR_DEPENDENCIES: "It waits for the issues it depends on to be done.",
    Detail.PLAN_AWAITING_APPROVAL: "The plan waits for approval: comment `/agent approve`, or `/agent revise <what to change>`.",
    Detail.NEEDS_HUMAN: "A person needs to step in.",
    Detail.REVIEW_ROUND: "This is a review round: the agent addresses the feedback on the pull request.",
    Detail.CI_ROUND: "This is a CI round: the agent fixes the failing checks of the pull request.",
    Detail.NO_CHANGES: "The agent finished without changing anything.",
    Detail.PROTECTED_PATHS: "The agent must revert changes to protected paths.",
    Detail.MERGE_CONFLICT: "The branch no longer merges into its base: the agent rebases it before the pull request.",
    Detail.NO_PLAN: "The planning turn ended without a plan.",
    Detail.EXIT_CODE: "The agent process failed.",
    Detail.TIMED_OUT: "The turn ran out of time.",
    Detail.IDLE: "The agent went silent.",
    Detail.CRASHED: "The agent process was lost.",
    Detail.LIMIT_EXCEEDED: "The turn went past a limit of its sandbox and was stopped.",
    Detail.MAX_TURNS: "The session used all its turns.",
    Detail.PUSH_FAILED: "Shepherd could not push the branch or open the pull request.",
    Detail.WORKSPACE_FAILED: "Shepherd could not prepare the workspace.",
    Detail.LABEL_REMOVED: "The trigger label was removed.",
    Detail.ISSUE_CLOSED: "The issue was closed.",
    Detail.STOP_COMMAND: "Someone commented `/agent stop`.",
    Detail.UNINSTALLED: "The app was uninstalled or lost access to this repository.",
    Detail.WAITING_FOR_PULL_REQUEST_SLOT: (
        "This repository has as many open agent pull requests as its `max_open_prs` allows; the pull request "
        "opens when one of them is merged or closed."
    ),
}
# A detail that changes what the state means replaces the state's sentence.
DETAIL_STATE_SENTENCES = {
    Detail.WAITING_FOR_PULL_REQUEST_SLOT: "The agent is done; its pull request waits for a free place.",
}
WITHDRAWN_SENTENCE = "The agent withdrew this question and carried on without an answer."
CANCELLED_SENTENCE = "The session ended before this question was answered."
MERGED_SENTENCE = "The pull request was merged."
CLOSED_SENTENCE = "The pull request was closed without merging."
FINISHING_SENTENCE = "The agent is done; Shepherd is checking, pushing and opening the pull request."
PLAN_MODE_NAME = "plan first"
GO_MODE_NAME = "go"


def ordinal(number: int) -> str:
    """`1st`, `2nd`, `3rd`, `4th`, `11th`, `22nd`: a queue place as people read it."""
    if 10 <= number % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def utc(moment: datetime | None) -> str:
    """An absolute UTC time as the comments show it."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`, so the text cannot close it early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def quote(text: str) -> str:
    """Markdown block quote of every line."""
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def agent_text(text: str | None) -> str:
    """Text an agent wrote, safe to re-post: no pings, closing keywords or markers; bounded length."""
    cleaned = neutralise_for_github(text)
    if len(cleaned) > MAX_AGENT_TEXT_CHARS:
        cleaned = cleaned[:MAX_AGENT_TEXT_CHARS].rstrip() + " …"
    return cleaned


def web_url(clone_url: str) -> str | None:
    """The repository's web address from its clone URL (github.com and GHES alike), or None."""
    if not clone_url.startswith(("https://", "http://")):
        return None
    return clone_url.removesuffix(".git").rstrip("/")


@functools.cache
def environment(directory: str = str(TEMPLATES_DIR)) -> jinja2.Environment:
    """The one Jinja2 environment: Markdown, so no autoescape; a missing value is an error, not blank."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = utc
    env.filters["quote"] = quote
    env.filters["fence"] = fence
    env.filters["ordinal"] = ordinal
    return env


def render(name: str, **values: Any) -> str:
    """Render `templates/<name>.md.j2`; the text ends with exactly one newline."""
    text = environment().get_template(f"{name}.md.j2").render(**values)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# -- status -------------------------------------------------------------------------------------

EARLIER_OUTCOMES = {
    State.COMPLETE: "completed",
    State.CANCELLED: "was cancelled",
    State.FAILED: "failed",
}


def _files(files: Sequence[ChangedFile]) -> dict[str, Any]:
    shown = sorted(files, key=lambda f: f.path)[:MAX_FILES_SHOWN]
    return {
        "shown": [{"path": code_span(agent_text(f.path)), "added": f.added, "removed": f.removed} for f in shown],
        "count": len(files),
        "hidden": max(0, len(files) - len(shown)),
        "added": sum(f.added for f in files),
        "removed": sum(f.removed for f in files),
    }


SANDBOX_OFF_POLICY_LINE = "sandbox: none  # WARNING: agents run WITHOUT a sandbox (SHEPHERD_SANDBOX=none)"
SANDBOX_OFF_SENTENCE = (
    "**Warning: no sandbox.** This Shepherd runs agents with `SHEPHERD_SANDBOX=none`: the agent ran as "
    "Shepherd's own user and could reach its data folder, its secrets and other sessions."
)


def _policy_yaml(context: SessionContext) -> str:
    text = yaml.safe_dump(context.policy.as_dict(), sort_keys=False, allow_unicode=True).strip()
    return text + "\n" + (SANDBOX_OFF_POLICY_LINE if context.sandbox == "none" else "sandbox: bwrap")


def _egress_refusals(context: SessionContext) -> str:
    """`host:port (n)` for what the egress proxy refused, or an empty string."""
    stats = context.egress
    if stats is None or not stats.refused:
        return ""
    # Host names come from the agent: defused like any agent text, and kept out of code spans' way.
    hosts = ", ".join(
        f"`{agent_text(str(host))[:100].replace('`', '')}` ({int(count)})"
        for host, count in sorted(stats.hosts.items())[:10]
    )
    return f"{stats.refused} connection(s) refused" + (f": {hosts}" if hosts else "")


# Exit code 127 is the shell's "command not found": for a named agent CLI it means the CLI is missing.
COMMAND_NOT_FOUND = 127
AGENT_CLI_MISSING = (
    "The agent CLI `{cli}` was not found on the server (exit code 127). The operator installs it "
    "(`scripts/serve` does, or `shepherd doctor` says how); then `/agent retry` starts again."
)
NAMED_AGENT_CLIS = ("claude", "codex")


def failure_text(session: Session, agent: str | None) -> str | None:
    """Why the session failed, in the words a person needs: the stored reason, except that exit code 127
    of a named agent CLI says the CLI is missing (the real cause is otherwise buried in the turn's log)."""
    if session.state != State.FAILED:
        return None
    if (
        session.detail == Detail.EXIT_CODE
        and session.failure_reason == FAILURE_EXIT_CODE.format(code=COMMAND_NOT_FOUND)
        and agent in NAMED_AGENT_CLIS
    ):
        return AGENT_CLI_MISSING.format(cli=agent)
    return session.failure_reason


def _detail_sentence(session: Session) -> str:
    if session.state == State.COMPLETE and session.pr_state is not None:
        return {"merged": MERGED_SENTENCE, "closed": CLOSED_SENTENCE}.get(str(session.pr_state), "")
    if session.state == State.WORKING and session.finishing:
        return FINISHING_SENTENCE
    if session.detail is None:
        return ""
    return DETAIL_SENTENCES.get(session.detail, "")


def _waiting_links(session: Session, repo_url: str | None) -> list[dict[str, str]]:
    """The dependencies a session waits for, each with a link to its issue."""
    host = repo_url.rsplit("/", 2)[0] if repo_url else None
    shown = []
    for ref in session.waiting_for:
        repo, _, number = ref.rpartition("#")
        link = f"{host}/{repo or session.repo}/issues/{number}" if host and number.isdigit() else ""
        shown.append({"ref": ref, "link": link})
    return shown


def render_status(session: Session, context: SessionContext, *, log_tail: str | None = None) -> str:
    """The status comment: state, times, checkpoint, files, branch and PR, failure, policy."""
    repo_url = web_url(context.clone_url)
    branch_url = None
    if repo_url and (session.pr_number is not None or session.from_kept_branch):
        branch_url = f"{repo_url}/tree/{session.branch}"
    tail = log_tail if log_tail is not None else context.log_tail
    tail = redact(tail or "").strip()
    bakeoff_running = bool(session.attempts) and session.bakeoff_winner is None
    if len(tail) > MAX_LOG_TAIL_CHARS:
        tail = tail[-MAX_LOG_TAIL_CHARS:].partition("\n")[2]
    return render(
        "status",
        marker=marker("status", session=session.id),
        session=session,
        state=str(session.state),
        symbol=STATE_SYMBOLS[session.state],
        title=STATE_TITLES[session.state],
        sentence=DETAIL_STATE_SENTENCES.get(session.detail, STATE_SENTENCES[session.state])
        if session.detail is not None else STATE_SENTENCES[session.state],
        detail=_detail_sentence(session),
        # A bake-off before its judgement runs two engines, one against the other (SPEC §8).
        engine=session.attempts[0].name if bakeoff_running else context.policy.agent,
        rivals=[attempt.name for attempt in session.attempts[1:]] if bakeoff_running else [],
        mode=PLAN_MODE_NAME if session.mode == Mode.PLAN else GO_MODE_NAME,
        queue_position=context.queue_position if session.state == State.QUEUED else None,
        stuck_reason=agent_text(session.stuck_reason) if session.state == State.STUCK else "",
        checkpoint=agent_text(session.checkpoint),
        files=_files(context.changed_files),
        branch_url=branch_url,
        failure=agent_text(failure_text(session, context.policy.agent)) if session.state == State.FAILED else "",
        log_tail=tail if session.state == State.FAILED else "",
        notes=[agent_text(note) for note in context.notes],
        earlier=_earlier(context.earlier),
        policy_yaml=_policy_yaml(context),
        sandbox_off=SANDBOX_OFF_SENTENCE if context.sandbox == "none" else "",
        egress_refused=_egress_refusals(context),
        waiting=_waiting_links(session, repo_url) if session.detail == Detail.WAITING_FOR_DEPENDENCIES else [],
        spend=(spend_line(session.spent_usd, session.limits.max_cost_usd)
               if session.spent_usd > 0 or session.limits.max_cost_usd is not None else ""),
        attempts=_attempts(session, context, repo_url),
    )


def _attempts(session: Session, context: SessionContext, repo_url: str | None) -> list[dict[str, Any]]:
    """A bake-off's two attempts (SPEC §8): engine, branch, state, place in the queue, and its question."""
    positions = context.attempt_positions
    shown = []
    for attempt in session.attempts:
        own = attempt.session
        question = own.question if own.state == State.STUCK else None
        url = (f"{repo_url}/issues/{session.issue_number}#issuecomment-{question.comment_id}"
               if question is not None and question.comment_id is not None and repo_url else None)
        state = f"`{own.state}`" + (f" (`{own.detail}`)" if own.detail is not None else "")
        if session.bakeoff_winner is not None:
            state = "chosen" if attempt.name == session.bakeoff_winner else "not chosen"
        shown.append({"name": attempt.name, "branch": own.branch, "state": state, "turns": own.turn_count,
                      "queue": positions.get(attempt.name) if own.state == State.QUEUED else None,
                      "question": question is not None, "question_url": url})
    return shown


# -- questions ----------------------------------------------------------------------------------

QUESTION_TEXT_START = "question-text"
QUESTION_TEXT_END = "question-end"


def render_question(session_id: str, question_id: str, text: str, options: Sequence[str],
                    context: str | None, mention: str, engine: str | None = None) -> str:
    """The question comment: the question, numbered options, context, and a ping for who triggered;
    `engine` names the asking attempt of a bake-off (SPEC §8)."""
    return render(
        "question",
        engine=engine,
        marker=marker("question", session=session_id, id=question_id),
        start=marker(QUESTION_TEXT_START),
        end=marker(QUESTION_TEXT_END),
        text=agent_text(text),
        options=[agent_text(option) for option in options],
        context=agent_text(context),
        mention=mention,
    )


def question_section(body: str) -> str:
    """The question itself, cut from a question comment Shepherd wrote (for the answered/cancelled edits)."""
    start, end = marker(QUESTION_TEXT_START), marker(QUESTION_TEXT_END)
    if start in body and end in body:
        return body.split(start, 1)[1].split(end, 1)[0].strip()
    return ""


def render_question_answered(session_id: str, question_id: str, section: str, by: str) -> str:
    return render(
        "question_answered",
        marker=marker("question", session=session_id, id=question_id, state="answered"),
        start=marker(QUESTION_TEXT_START),
        end=marker(QUESTION_TEXT_END),
        section=section,
        by=by,
    )


def render_question_cancelled(session_id: str, question_id: str, section: str, *, withdrawn: bool) -> str:
    return render(
        "question_cancelled",
        marker=marker("question", session=session_id, id=question_id,
                      state="withdrawn" if withdrawn else "cancelled"),
        start=marker(QUESTION_TEXT_START),
        end=marker(QUESTION_TEXT_END),
        section=section,
        reason=WITHDRAWN_SENTENCE if withdrawn else CANCELLED_SENTENCE,
    )


# -- other comments -----------------------------------------------------------------------------


def render_refusal(login: str, label: str, min_permission: str) -> str:
    return render("refusal", marker=marker("refusal", login=login.lower()), login=login, label=label,
                  min_permission=min_permission)


def render_help(comment_id: int | None, unknown: str | None = None) -> str:
    fields = {"comment": comment_id} if comment_id is not None else {}
    return render("help", marker=marker("help", **fields), unknown=agent_text(unknown) if unknown else "")


def render_not_offered(label: str, reason: str) -> str:
    return render("not_offered", marker=marker("not-offered", label=label.replace(" ", "_")), label=label,
                  reason=reason)


def render_plan(session_id: str, text: str, revision: int, mention: str) -> str:
    return render("plan", marker=marker("plan", session=session_id), text=agent_text(text),
                  revision=revision, mention=mention)


def render_pointer(session_id: str, number: int, url: str) -> str:
    return render("pointer", marker=marker("pointer", session=session_id), number=number, url=url)


def _earlier(sessions: Sequence[Session]) -> str:
    """One line about the issue's earlier sessions, whose status this comment used to show."""
    parts = []
    for session in sessions:
        part = f"attempt {session.attempt} {EARLIER_OUTCOMES.get(session.state, str(session.state))}"
        if session.state == State.FAILED and session.failure_reason:
            part += f" ({agent_text(session.failure_reason)})"
        parts.append(part)
    return "; ".join(parts)


def _problem(problem: Problem | str) -> dict[str, str]:
    """A `Problem`, or its text form `key: message` (as a runtime may have stored it)."""
    if isinstance(problem, str):
        key, _, message = problem.partition(": ")
        return {"key": key, "message": agent_text(message)}
    return {"key": problem.key, "message": agent_text(problem.message)}


def render_policy_problems(session_id: str, problems: Iterable[Problem | str], path: str) -> str:
    return render(
        "policy_problems",
        marker=marker("policy", session=session_id),
        problems=[_problem(p) for p in problems],
        path=path,
    )
