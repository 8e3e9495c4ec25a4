"""The runtime's own facts about one session (installation, policy, worktree, port, turn...), as a typed record.

The pure core's `Session` says where a session stands; `RuntimeContext` holds what the runtime needs to
carry out its commands. It is frozen: a change is a `dataclasses.replace`, and only the engine stores
one, under the issue's lock (`Engine.change_context`), so two writers can never overwrite each other's
fields with stale copies. It is kept as JSON in the `sessions` table; `from_dict` also reads the rows
written before it existed (the same keys, as a plain dict). The Temporal session workflow holds one too
and crosses its history with the same JSON; a worker host's answer changes only the host's own facts
(`with_host_answer`), a front end's or the repository's only theirs (`with_found_facts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from bot.core.policy import EffectivePolicy


@dataclass(frozen=True)
class TurnRecord:
    """The running turn's process, so a restarted Shepherd can find and watch it again."""

    turn: int
    session: str  # the session id the turn belongs to
    handle: Mapping[str, Any]  # `bot.agent.processes.TurnHandle.to_json()`

    def to_dict(self) -> dict[str, Any]:
        return {"turn": self.turn, "session": self.session, "handle": dict(self.handle)}


@dataclass(frozen=True)
class AttemptContext:
    """The runtime's own facts about one bake-off attempt (SPEC §8): its workspace, port and turn."""

    worktree: str | None = None
    port: int | None = None
    turn: TurnRecord | None = None
    reports_seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"worktree": self.worktree, "port": self.port, "reports_seq": self.reports_seq,
                "turn": self.turn.to_dict() if self.turn is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttemptContext:
        turn = data.get("turn") or None
        return cls(worktree=data.get("worktree") or None, port=int(data["port"]) if data.get("port") else None,
                   turn=TurnRecord(int(turn["turn"]), str(turn["session"]), dict(turn["handle"])) if turn else None,
                   reports_seq=int(data.get("reports_seq") or 0))


@dataclass(frozen=True)
class RuntimeContext:
    """What the runtime knows of one session beyond the core's `Session`."""

    installation_id: int
    owner: str
    repo: str  # the repository's name, without the owner
    clone_url: str
    default_branch: str
    policy: EffectivePolicy
    policy_problems: tuple[str, ...] = ()
    issue_body: str | None = None
    dependency_body: str | None = None  # the issue body as last edited by an authorised person
    issue_author: str = ""
    trigger_label: str = ""
    trigger_at: float | None = None
    worktree: str | None = None
    port: int | None = None
    turn: TurnRecord | None = None
    reports_seq: int = 0  # the last `shepherd` report turned into an event
    notes: tuple[str, ...] = ()  # extra lines for the status comment
    overlaps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # `#12` → files both change
    attempts: Mapping[str, AttemptContext] = field(default_factory=dict)  # a bake-off's, by attempt name
    checkpoint: str | None = None  # the commit the last work-in-progress push left on the branch (Temporal)

    def attempt_view(self, name: str) -> RuntimeContext:
        """The facts as one attempt's commands see them: its own worktree, port and turn."""
        own = self.attempts.get(name, AttemptContext())
        return replace(self, worktree=own.worktree, port=own.port, turn=own.turn, reports_seq=own.reports_seq,
                       attempts={})

    def with_attempt_view(self, name: str, view: RuntimeContext) -> RuntimeContext:
        """These facts with attempt `name`'s taken from `view` (a changed `attempt_view`); the rest of
        `view` but its policy (which names the attempt's engine) belongs to the session and is kept too."""
        own = AttemptContext(view.worktree, view.port, view.turn, view.reports_seq)
        return replace(view, policy=self.policy, worktree=self.worktree, port=self.port, turn=self.turn, reports_seq=self.reports_seq,
                       attempts={**self.attempts, name: own})

    def with_host_facts(self, host: RuntimeContext) -> RuntimeContext:
        """These facts with one worker host's own (Temporal, SPEC §7): its worktree, port, running turn and
        last report seen. They belong to that host's disk and do not travel when the session moves."""
        return replace(self, worktree=host.worktree, port=host.port, turn=host.turn, reports_seq=host.reports_seq)

    def without_host_facts(self) -> RuntimeContext:
        """These facts as a new host starts from them: nothing of the last host's disk."""
        return replace(self, worktree=None, port=None, turn=None, reports_seq=0)

    def with_host_answer(self, host: RuntimeContext) -> RuntimeContext:
        """These facts after a worker host's answer (`host`, its copy after the activity): its own facts, the
        checkpoint it pushed (kept wherever the session goes) and the notes it added. Everything else is
        the workflow's and stays as it is now: a fact others told meanwhile (`with_found_facts`) survives."""
        notes = self.notes + tuple(note for note in host.notes if note not in self.notes)
        return replace(self.with_host_facts(host), checkpoint=host.checkpoint or self.checkpoint, notes=notes)

    def with_found_facts(self, facts: Mapping[str, Any]) -> RuntimeContext:
        """These facts with what others found about the session, as they send it (JSON): the repository's
        `overlaps` (`#12` → files both change) and the `dependency_body` an authorised person last edited.
        Anything else in `facts` is not theirs to change and is ignored."""
        changed = self
        if "overlaps" in facts:
            found = facts["overlaps"] or {}
            overlaps = {str(issue): tuple(str(path) for path in paths) for issue, paths in found.items()}
            changed = replace(changed, overlaps=overlaps)
        if "dependency_body" in facts:
            body = facts["dependency_body"]
            changed = replace(changed, dependency_body=str(body) if body is not None else None)
        return changed

    def for_retry(self) -> RuntimeContext:
        """The facts a retried session keeps: everything but its predecessor's turn, worktree, port and notes."""
        return RuntimeContext(
            installation_id=self.installation_id, owner=self.owner, repo=self.repo, clone_url=self.clone_url,
            default_branch=self.default_branch, policy=self.policy, policy_problems=self.policy_problems,
            issue_body=self.issue_body, dependency_body=self.dependency_body, issue_author=self.issue_author,
            trigger_label=self.trigger_label, trigger_at=self.trigger_at, overlaps=self.overlaps,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {item.name: getattr(self, item.name) for item in fields(self)}
        data["policy"] = self.policy.as_dict()
        data["policy_problems"] = list(self.policy_problems)
        data["turn"] = self.turn.to_dict() if self.turn is not None else None
        data["notes"] = list(self.notes)
        data["overlaps"] = {issue: list(paths) for issue, paths in self.overlaps.items()}
        data["attempts"] = {name: own.to_dict() for name, own in self.attempts.items()}
        # Facts only some sessions have are left out when empty, so an older reader's row stays as it was.
        for key in ("attempts", "checkpoint"):
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeContext:
        turn = data.get("turn") or None
        port = data.get("port")
        trigger_at = data.get("trigger_at")
        return cls(
            installation_id=int(data.get("installation_id") or 0),
            owner=str(data["owner"]),
            repo=str(data["repo"]),
            clone_url=str(data["clone_url"]),
            default_branch=str(data["default_branch"]),
            policy=EffectivePolicy.model_validate(data["policy"]),
            policy_problems=tuple(str(problem) for problem in data.get("policy_problems") or ()),
            issue_body=data.get("issue_body"),
            dependency_body=data.get("dependency_body"),
            issue_author=str(data.get("issue_author") or ""),
            trigger_label=str(data.get("trigger_label") or ""),
            trigger_at=float(trigger_at) if trigger_at is not None else None,
            worktree=data.get("worktree") or None,
            port=int(port) if port else None,
            turn=TurnRecord(int(turn["turn"]), str(turn["session"]), dict(turn["handle"])) if turn else None,
            reports_seq=int(data.get("reports_seq") or 0),
            notes=tuple(str(note) for note in data.get("notes") or ()),
            overlaps={str(issue): tuple(paths) for issue, paths in (data.get("overlaps") or {}).items()},
            attempts={str(name): AttemptContext.from_dict(own) for name, own in (data.get("attempts") or {}).items()},
            checkpoint=data.get("checkpoint") or None,
        )
