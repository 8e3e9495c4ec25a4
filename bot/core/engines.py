"""Which label starts what (SPEC §3 `engines`, §8): the go and plan labels, and the policy's engine labels.

The bake-off label (`agent:bakeoff`, `bot.core.bakeoff`) starts a go session with two engines.
An engine label (`agent:codex` in `engines: {agent:codex: codex}`) starts a go session whose agent is
that adapter instead of the policy's `agent`. A label the policy names under `engines` with an agent
the operator has not set up is still a trigger, as an invalid `agent` is: the session runs with the
defaults and its status comment reports the problem, so the person who labelled the issue learns why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.core.bakeoff import BAKEOFF_LABEL, bakeoff_engines
from bot.core.effects import IssueRef
from bot.core.policy import EffectivePolicy, LoadedPolicy
from bot.core.session import Limits, Mode, Session, Trigger

ENGINES_KEY = "engines."


@dataclass(frozen=True)
class Choice:
    """What a trigger label asks for: the mode and, for an engine label, the adapter to run."""

    mode: Mode
    engine: str | None = None  # None: the policy's own `agent`
    rival: str | None = None  # the bake-off label: the second engine (SPEC §8)


def _same(left: str, right: str) -> bool:
    return left.lower() == right.lower()  # GitHub label names compare without case


def engine_for(policy: EffectivePolicy, label: str) -> str | None:
    """The adapter an engine label picks, or None when `label` is not one of the policy's engine labels."""
    return next((adapter for name, adapter in policy.engines.items() if _same(name, label)), None)


def choose(loaded: LoadedPolicy, label: str) -> Choice | None:
    """What adding `label` starts, or None when it is not a trigger label."""
    labels = loaded.policy.labels
    if _same(label, labels.go):
        return Choice(Mode.GO)
    if _same(label, labels.plan):
        return Choice(Mode.PLAN)
    engine = engine_for(loaded.policy, label)
    if engine is not None:
        return Choice(Mode.GO, engine)
    if any(_same(problem.key, ENGINES_KEY + label) for problem in loaded.problems):
        return Choice(Mode.GO)  # the file names it, wrongly: run the defaults and say what is wrong
    if _same(label, BAKEOFF_LABEL):
        first, second = bakeoff_engines(loaded.policy.agent, loaded.policy.engines.values())
        return Choice(Mode.GO, first, second)
    return None


def trigger_event(issue: IssueRef, policy: EffectivePolicy, *, mode: Mode, actor: str,
                  labelled_at: datetime | None = None, engine: str | None = None,
                  rival: str | None = None) -> Trigger:
    """The core's `Trigger` for a label on `issue`, built from the one policy reading that gave the label
    its meaning: the base branch and the limits the session keeps come from that reading too."""
    return Trigger(
        repo=issue.full_name,
        issue_number=issue.number,
        issue_title=issue.title,
        mode=mode,
        actor=actor,
        base_branch=policy.base_branch or issue.default_branch,
        limits=Limits(policy.max_turns, policy.review_rounds, policy.ci_rounds, max_cost_usd=policy.max_cost_usd),
        labelled_at=labelled_at,
        engine=engine,
        rival=rival,
    )


def is_trigger_of(policy: EffectivePolicy, session: Session, label: str) -> bool:
    """Whether removing `label` takes away the label that started `session` (and so cancels it)."""
    if session.rival is not None:
        return _same(label, BAKEOFF_LABEL)
    if session.engine is not None and engine_for(policy, label) == session.engine:
        return True
    own = policy.labels.plan if session.mode == Mode.PLAN else policy.labels.go
    return session.engine is None and _same(label, own)
