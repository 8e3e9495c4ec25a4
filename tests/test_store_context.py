"""The runtime's per-session record (`bot/store/context.py`): typed, stored by the store, written by the engine alone."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from bot.core.policy import OperatorLimits, default_policy
from bot.core.session import Mode, Trigger, decide_trigger
from bot.store.context import RuntimeContext, TurnRecord
from bot.store.database import Store
from bot.store.sessions import SessionStore

ROOT = Path(__file__).resolve().parents[1]

# A context row exactly as Shepherd wrote it while the record was a plain dict: an upgrade meets these.
OLD_ROW = {
    "installation_id": 4242, "owner": "octo-org", "repo": "widgets",
    "clone_url": "https://github.com/octo-org/widgets.git", "default_branch": "main",
    "issue_body": "Depends on #3", "issue_author": "carol", "trigger_label": "agent:go", "trigger_at": 1700000000.5,
    "policy": default_policy(OperatorLimits(), "main").as_dict(), "policy_problems": ["max_turns: must be a number"],
    "worktree": "/data/worktrees/octo-org/widgets/agent-issue-1", "port": 41234,
    "turn": {"turn": 2, "session": "octo-org/widgets#1/1",
             "handle": {"pid": 123, "create_time": 1.5, "log_path": "/x/turn-2.log"}},
    "reports_seq": 7, "notes": ["Shepherd restarted and found the agent still running."],
    "overlaps": {"#2": ["shared.txt"]}, "dependency_body": "Depends on #4",
}


def _stored_session(tmp_path: Path) -> tuple[SessionStore, str]:
    sessions = SessionStore(Store.open(tmp_path / "shepherd.db").db)
    trigger = Trigger(repo="octo-org/widgets", issue_number=1, issue_title="Widgets", mode=Mode.GO, actor="alice",
                      base_branch="main")
    decision = decide_trigger(None, trigger, datetime.now(timezone.utc))
    sessions.record(decision.session, RuntimeContext.from_dict(OLD_ROW), trigger, (), now=1.0)
    return sessions, decision.session.id


def test_a_record_written_before_the_type_existed_keeps_every_fact(tmp_path: Path) -> None:
    sessions, session_id = _stored_session(tmp_path)
    sessions.db.execute("UPDATE sessions SET context = ? WHERE id = ?", (json.dumps(OLD_ROW), session_id))

    context = sessions.get(session_id).context

    assert (context.installation_id, context.owner, context.port, context.reports_seq) == (4242, "octo-org", 41234, 7)
    assert context.turn == TurnRecord(2, "octo-org/widgets#1/1", OLD_ROW["turn"]["handle"])
    assert context.overlaps == {"#2": ("shared.txt",)} and context.dependency_body == "Depends on #4"
    assert context.policy == default_policy(OperatorLimits(), "main")
    # Written back, it is the same row a restarted older reader would understand.
    assert context.to_dict() == OLD_ROW


def test_a_change_is_a_new_record_and_a_retry_drops_the_turns_facts(tmp_path: Path) -> None:
    sessions, session_id = _stored_session(tmp_path)
    before = sessions.get(session_id).context
    after = replace(before, reports_seq=8)
    sessions.save_context(session_id, after)

    assert sessions.get(session_id).context == after and before.reports_seq == 7
    retried = after.for_retry()
    assert (retried.turn, retried.worktree, retried.port, retried.notes, retried.reports_seq) == (None, None, None, (), 0)
    assert (retried.owner, retried.policy, retried.dependency_body) == (after.owner, after.policy, after.dependency_body)


def test_only_the_engine_writes_the_record() -> None:
    # Writers that each save their own copy lose each other's fields; the engine saves under the issue's lock.
    writers = []
    for path in sorted((ROOT / "bot").rglob("*.py")) + sorted((ROOT / "handlers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save_context":
                writers.append(str(path.relative_to(ROOT)))
    # The Temporal front end keeps a copy of its own, changed only through its `change_context` (a dependency
    # edit, which it also signals to the workflow); the workflow holds the session's facts for the hosts.
    assert set(writers) == {"bot/runtime/engine.py", "bot/temporal/frontend.py"}


def test_a_hosts_answer_brings_its_own_facts_and_keeps_what_others_told_meanwhile() -> None:
    # The Temporal workflow holds the record; a host answers with its whole copy, as it was when the activity
    # started plus what the host learned. Meanwhile a front end told an edited body and the repository overlaps.
    ours = RuntimeContext.from_dict(OLD_ROW).with_found_facts(
        {"dependency_body": "Depends on #9", "overlaps": {"#5": ["a.py"]}, "owner": "mallory"})
    host = replace(RuntimeContext.from_dict(OLD_ROW).without_host_facts(), worktree="/b/wt", port=5,
                   checkpoint="c0ffee", notes=(*OLD_ROW["notes"], "The session moved."))

    merged = ours.with_host_answer(host)

    assert (merged.worktree, merged.port, merged.turn, merged.reports_seq) == ("/b/wt", 5, None, 0)
    assert merged.checkpoint == "c0ffee"
    assert merged.dependency_body == "Depends on #9" and merged.overlaps == {"#5": ("a.py",)}
    assert merged.owner == "octo-org"  # found facts change only what others may find
    assert merged.notes == (*OLD_ROW["notes"], "The session moved.")
    # A later answer that pushed nothing keeps the checkpoint: it stays with the session wherever it goes.
    assert merged.with_host_answer(replace(host, checkpoint=None)).checkpoint == "c0ffee"


def test_a_workflow_started_with_the_plain_dict_reads_it_and_writes_it_back_the_same() -> None:
    # The facts a front end starts a workflow with (and older runs carried through continue-as-new).
    started = {key: OLD_ROW[key] for key in ("installation_id", "owner", "repo", "clone_url", "default_branch",
                                             "issue_body", "issue_author", "trigger_label", "trigger_at", "policy",
                                             "policy_problems", "notes")}
    record = RuntimeContext.from_dict(started)
    assert (record.worktree, record.turn, record.checkpoint) == (None, None, None)
    assert RuntimeContext.from_dict(record.to_dict()) == record
