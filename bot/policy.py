"""The per-repository policy in `.github/shepherd.yml`: its schema, defaults and which setting wins."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ADAPTERS = ("claude", "codex", "command")


class OperatorLimits(BaseModel):
    """What the operator configured, which a repository's policy may tighten but never loosen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str = Field("claude", description="The operator's default adapter (SHEPHERD_AGENT).")
    adapters: tuple[str, ...] = Field(
        ("claude", "codex"),
        description="Adapters a repository may pick; `command` only when SHEPHERD_AGENT_COMMAND is set.",
    )
    max_per_repo: int = Field(2, ge=1, description="SHEPHERD_MAX_PER_REPO.")
