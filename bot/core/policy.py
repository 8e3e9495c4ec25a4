"""The per-repository policy in `.github/shepherd.yml`: its schema, defaults and which setting wins.

`RepoPolicy` is what a repository may write; `EffectivePolicy` is what a session runs with, after
the operator's limits (`OperatorLimits`) have been applied. A file with any problem is not
partly applied: the session uses the defaults and every problem is reported (SPEC §3).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bot.core.session import LabelKind, Mode

POLICY_PATH = ".github/shepherd.yml"
CONTENTS_URL = "/repos/{owner}/{repo}/contents/{+path}{?ref}"
ADAPTERS = ("claude", "codex", "command")
PERMISSIONS = ("read", "triage", "write", "maintain", "admin")
# A policy file is a few dozen lines; a limit keeps a hostile file from costing real memory or time.
MAX_POLICY_BYTES = 64 * 1024
MAX_PROBLEMS = 20
README_START = "<!-- policy-reference:start -->"
README_END = "<!-- policy-reference:end -->"
FILE_KEY = "(file)"

# Every sentence a maintainer reads about their file.
NOT_YAML_TEXT = "is not valid YAML: {reason}"
NOT_MAPPING_TEXT = "must be a mapping of settings (`key: value` lines), got {got}"
TOO_LARGE_TEXT = "is larger than {limit} KiB; a policy file needs only a few lines"
NOT_UTF8_TEXT = "is not UTF-8 text"
NOT_A_FILE_TEXT = "is a {kind}, not a file"
UNKNOWN_KEY_TEXT = "is not a setting Shepherd knows"
DID_YOU_MEAN_TEXT = "; did you mean `{suggestion}`?"
MUST_BE_TEXT = "must be {expected}, got {got}"
TOO_MANY_PROBLEMS_TEXT = "and {count} more problems not listed"
PERMISSION_TOO_LOW_TEXT = (
    "must be write, maintain or admin, got {got}: Shepherd never lets people without write "
    "access start an agent"
)
AGENT_NOT_SET_UP_TEXT = (
    "must be one of the agents this Shepherd server has set up ({available}), got {got}"
)
COMMAND_NOT_SET_UP_TEXT = (
    "is `command`, but this Shepherd server has no SHEPHERD_AGENT_COMMAND; ask its operator, or "
    "pick one of {available}"
)
DUPLICATE_LABELS_TEXT = "must be four different label names, but {names} {verb} used twice"
BAD_PATH_TEXT = "must be a relative path inside the repository, got {got}"
BAD_BRANCH_TEXT = "must be a branch name, got {got}"
ENGINE_LABEL_TAKEN_TEXT = "names {label}, which is already Shepherd's {field} label; an engine needs a label of its own"

# What each key expects, said the way a maintainer would want to read it in an error.
EXPECTATIONS = {
    "labels": "a mapping with any of go, plan, needs_input and needs_human",
    "labels.*": "a label name of 1 to 50 characters",
    "agent": "one of claude, codex, command",
    "allowed_tools": 'a list of Claude Code tool rules, like [Read, Edit, "Bash(npm test)"]',
    "allowed_tools[]": "a tool rule (text)",
    "base_branch": "a branch name",
    "max_parallel": "a whole number of at least 1",
    "setup": "a list of shell commands",
    "setup[]": "a shell command (text)",
    "test": "a shell command (text)",
    "env_files": "a mapping from a file in the repository to the copy to make, like {.env.example: .env}",
    "env_files.*": "a relative path (text)",
    "draft": "true or false",
    "min_permission": "one of write, maintain, admin",
    "max_turns": "a whole number of at least 1",
    "max_runtime_minutes": "a number of minutes greater than 0 (fractions allowed)",
    "idle_timeout_minutes": "a number of minutes greater than 0 (fractions allowed)",
    "status_interval_seconds": "a number of seconds of at least 10",
    "review_rounds": "a whole number of at least 0",
    "ci_rounds": "a whole number of at least 0",
    "protected_paths": 'a list of path patterns, like [".github/workflows/**"]',
    "protected_paths[]": "a path pattern (text)",
    "stack": "true or false",
    "dashboard_issue": "true or false",
    "network": "a mapping with allow, like {allow: [registry.npmjs.org]}",
    "max_open_prs": "a whole number of at least 1",
    "engines": "a mapping from a trigger label to an agent, like {agent:codex: codex}",
    "engines.*": "one of claude, codex, command",
    "network.*": "a list of host[:port] patterns, like [registry.npmjs.org]",
    "max_cost_usd": "an amount in USD greater than 0, like 2.50",
    "loops": "a mapping with any of repeats, flip_flops and stall_minutes",
    "loops.repeats": "a whole number of at least 2",
    "loops.flip_flops": "a whole number of at least 1",
    "loops.stall_minutes": "a number of minutes greater than 0 (fractions allowed)",
}

PositiveMinutes = Annotated[StrictFloat | StrictInt, Field(gt=0)]
LabelName = Annotated[StrictStr, Field(min_length=1, max_length=50)]
Command = Annotated[StrictStr, Field(min_length=1)]
PathPattern = Annotated[StrictStr, Field(min_length=1)]

_BAD_REF = re.compile(r"(^[-/.])|(/$)|(\.lock$)|(\.\.)|(@\{)|(//)|(/\.)|[\s~^:?*\[\\\x00-\x1f\x7f]")


class OperatorLimits(BaseModel):
    """What the operator configured, which a repository's policy may tighten but never loosen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: str = Field("claude", description="The operator's default adapter (SHEPHERD_AGENT).")
    adapters: tuple[str, ...] = Field(
        ("claude", "codex"),
        description="Adapters a repository may pick; `command` only when SHEPHERD_AGENT_COMMAND is set.",
    )
    max_per_repo: int = Field(2, ge=1, description="SHEPHERD_MAX_PER_REPO.")
    egress: tuple[str, ...] = Field((), description="SHEPHERD_EGRESS: hosts agents may reach besides their model.")


class Network(BaseModel):
    """What the agents of a repository may reach through the egress proxy, besides their model endpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: list[Annotated[StrictStr, Field(min_length=1)]] | None = Field(
        None,
        description=(
            "`host[:port]` patterns, a subset of the operator's SHEPHERD_EGRESS (anything else is left out). "
            "When unset, the operator's list."
        ),
    )


class EffectiveNetwork(BaseModel):
    """The egress allow-list a session runs with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[str, ...] = ()


def narrow_egress(operator: Sequence[str], repository: Sequence[str] | None) -> tuple[str, ...]:
    """The repository's `network.allow` keeps only what the operator allows: an entry the operator
    lists, or any entry when the operator allows `*` (whose meaning, public hosts only, still holds)."""
    if repository is None:
        return tuple(operator)
    if "*" in operator:
        return tuple(dict.fromkeys(repository))
    allowed = set(operator)
    return tuple(entry for entry in dict.fromkeys(repository) if entry in allowed)


class Loops(BaseModel):
    """When Shepherd stops a turn that spins (SPEC §8), judged from the agent's events and the worktree."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repeats: StrictInt = Field(
        3, ge=2, description="The same command or tool call failing the same way this many times in a turn."
    )
    flip_flops: StrictInt = Field(
        2, ge=1, description="A file's change reverted and re-applied this many times in a turn."
    )
    stall_minutes: PositiveMinutes = Field(
        20, description="No change to the worktree for this many minutes while the agent keeps working."
    )


class Labels(BaseModel):
    """The labels Shepherd reads and writes on issues."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    go: LabelName = Field("agent:go", description="Starts a session.")
    plan: LabelName = Field(
        "agent:plan", description="Starts a session that submits a plan for approval first."
    )
    needs_input: LabelName = Field(
        "agent:needs-input", description="Added while the agent waits for an answer."
    )
    needs_human: LabelName = Field(
        "agent:needs-human", description="Added when a round cap is reached and a person must step in."
    )

    @model_validator(mode="after")
    def _check_distinct(self) -> Labels:
        names = [self.go, self.plan, self.needs_input, self.needs_human]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise PydanticCustomError(
                "policy",
                DUPLICATE_LABELS_TEXT.format(
                    names=", ".join(f"`{name}`" for name in repeated),
                    verb="is" if len(repeated) == 1 else "are",
                ),
            )
        return self


# Which `Labels` field names each of Shepherd's own labels and each trigger mode's label.
KIND_FIELDS: dict[LabelKind, str] = {LabelKind.NEEDS_INPUT: "needs_input", LabelKind.NEEDS_HUMAN: "needs_human"}
MODE_FIELDS: dict[Mode, str] = {Mode.GO: "go", Mode.PLAN: "plan"}


def label_name(labels: Labels, kind: LabelKind) -> str:
    """The repository's name for Shepherd's needs-input or needs-human label."""
    return str(getattr(labels, KIND_FIELDS[kind]))


def trigger_label(labels: Labels, mode: Mode) -> str:
    """The repository's name for the go or plan label."""
    return str(getattr(labels, MODE_FIELDS[mode]))


def has_label(names: Sequence[str], name: str) -> bool:
    """Whether `name` is among `names` (GitHub label names compare without case)."""
    return name.lower() in (n.lower() for n in names)


def _check_relative(path: str) -> str:
    pure = PurePosixPath(path)
    if not path.strip() or pure.is_absolute() or ".." in pure.parts or path.startswith("~"):
        raise PydanticCustomError("policy", BAD_PATH_TEXT.format(got=_show(path)))
    return path


class RepoPolicy(BaseModel):
    """The keys of `.github/shepherd.yml` (SPEC §3); every one is optional."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: Labels = Field(
        Labels(),
        description="Label names. Give only the ones you want to change.",
    )
    agent: Literal["claude", "codex", "command"] | None = Field(
        None,
        description=(
            "The agent adapter: `claude`, `codex` or `command`. Only adapters the operator has "
            "set up can be picked; `command` needs the operator's SHEPHERD_AGENT_COMMAND."
        ),
        json_schema_extra={"x-default": "the operator's `SHEPHERD_AGENT`"},
    )
    allowed_tools: list[Annotated[StrictStr, Field(min_length=1)]] | None = Field(
        None,
        min_length=1,
        description=(
            "For `claude` only: the tools the agent may use without asking (Claude Code's "
            "`--allowedTools` rules). When unset, the agent runs with `--permission-mode "
            "bypassPermissions`."
        ),
        json_schema_extra={"x-default": "none (all tools)"},
    )
    base_branch: StrictStr | None = Field(
        None,
        description="The branch sessions start from and pull requests target.",
        json_schema_extra={"x-default": "the default branch"},
    )
    max_parallel: StrictInt | None = Field(
        None,
        ge=1,
        description=(
            "Agents running at once in this repository. It can only lower the operator's "
            "SHEPHERD_MAX_PER_REPO: a higher value is capped to it."
        ),
        json_schema_extra={"x-default": "the operator's `SHEPHERD_MAX_PER_REPO`"},
    )
    setup: list[Command] = Field(
        [],
        description=(
            "Shell commands run in a new worktree before the first turn, as the agent and with "
            "the agent's environment (e.g. `npm ci`)."
        ),
    )
    test: Command | None = Field(
        None,
        description=(
            "A shell command run after each finished turn, as the agent. When it fails, the pull "
            "request is opened as a draft."
        ),
        json_schema_extra={"x-default": "none"},
    )
    env_files: dict[StrictStr, StrictStr] = Field(
        {},
        description=(
            "Files copied inside the worktree before the first turn, source to copy (e.g. "
            "`{.env.example: .env}`). Copies are never committed."
        ),
    )
    draft: StrictBool = Field(False, description="Open every pull request as a draft.")
    min_permission: Literal["read", "triage", "write", "maintain", "admin"] = Field(
        "write",
        description=(
            "The least repository permission of the people who may start, steer and answer a "
            "session: `write`, `maintain` or `admin`. It can never be lower than `write`."
        ),
    )
    max_turns: StrictInt = Field(20, ge=1, description="Most agent turns in one session.")
    max_runtime_minutes: PositiveMinutes = Field(
        120, description="Longest run of one turn, in minutes (fractions allowed)."
    )
    idle_timeout_minutes: PositiveMinutes = Field(
        15,
        description=(
            "A turn with neither a heartbeat nor output for this many minutes fails "
            "(fractions allowed)."
        ),
    )
    status_interval_seconds: Annotated[StrictFloat | StrictInt, Field(ge=10)] = Field(
        180,
        description=(
            "Between state changes, the status comment is edited at most once per this many "
            "seconds (at least 10)."
        ),
    )
    review_rounds: StrictInt = Field(
        3, ge=0, description="Review rounds on the pull request before a person must step in."
    )
    ci_rounds: StrictInt = Field(
        2, ge=0, description="Failing CI rounds on the pull request before a person must step in."
    )
    protected_paths: list[PathPattern] = Field(
        [".github/workflows/**"],
        description=(
            "Path patterns the agent must not change. A turn that touches one gets one more turn "
            "to revert it; a second time, the session fails."
        ),
    )
    stack: StrictBool = Field(
        False, description="Stack a session's branch on the branch of the issue it depends on."
    )
    dashboard_issue: StrictBool = Field(
        True,
        description=(
            "Keep the repository's \"Shepherd dashboard\" issue up to date; `false` turns it off (an "
            "existing issue is left as it is)."
        ),
    )
    network: Network = Field(
        Network(),
        description="`allow`: the hosts agents may reach, which can only narrow the operator's SHEPHERD_EGRESS.",
    )
    max_open_prs: StrictInt | None = Field(
        None,
        ge=1,
        description=(
            "The most open agent pull requests in this repository. A finished session whose pull request "
            "would go past it waits, queued, until an agent pull request is merged or closed."
        ),
        json_schema_extra={"x-default": "none"},
    )
    engines: dict[LabelName, Literal["claude", "codex", "command"]] = Field(
        {},
        description=(
            "Extra trigger labels that pick an agent for the issue, e.g. `{agent:codex: codex}`. Only "
            "agents the operator has set up can be picked."
        ),
    )
    max_cost_usd: Annotated[StrictFloat | StrictInt, Field(gt=0)] | None = Field(
        None,
        description=(
            "The most one session may spend on the model, in USD, as the agent CLI reports it (Claude "
            "Code's cost; Codex's tokens priced by the operator's table). At the cap the turn stops, the "
            "work so far is pushed, and the session waits for `/agent budget <usd>`."
        ),
        json_schema_extra={"x-default": "none"},
    )
    loops: Loops = Field(
        Loops(),
        description=(
            "When Shepherd stops a spinning turn and asks a person, with the evidence: `repeats` (the same "
            "failing command), `flip_flops` (the same change undone and redone), `stall_minutes` (no "
            "change while the agent keeps going)."
        ),
    )

    @field_validator("min_permission")
    @classmethod
    def _at_least_write(cls, value: str) -> str:
        if PERMISSIONS.index(value) < PERMISSIONS.index("write"):
            raise PydanticCustomError("policy", PERMISSION_TOO_LOW_TEXT.format(got=_show(value)))
        return value

    @field_validator("base_branch")
    @classmethod
    def _check_branch(cls, value: str | None) -> str | None:
        if value is not None and (not value or _BAD_REF.search(value)):
            raise PydanticCustomError("policy", BAD_BRANCH_TEXT.format(got=_show(value)))
        return value

    @field_validator("env_files")
    @classmethod
    def _check_env_files(cls, value: dict[str, str]) -> dict[str, str]:
        for source, copy in value.items():
            _check_relative(source)
            _check_relative(copy)
        return value

    @field_validator("engines")
    @classmethod
    def _check_engine_labels(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        labels = info.data.get("labels") or Labels()
        own = {str(getattr(labels, name)).lower(): name for name in Labels.model_fields}
        for label in value:
            if label.lower() in own:
                raise PydanticCustomError(
                    "policy", ENGINE_LABEL_TAKEN_TEXT.format(label=_show(label), field=own[label.lower()])
                )
        return value

    @field_validator("protected_paths")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if pattern.startswith("/"):
                raise PydanticCustomError("policy", BAD_PATH_TEXT.format(got=_show(pattern)))
        return value


class EffectivePolicy(BaseModel):
    """What a session runs with: the repository's policy after the operator's limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: Labels
    agent: str
    allowed_tools: tuple[str, ...] | None
    base_branch: str | None  # None: the repository's default branch, when it was not known
    max_parallel: int
    setup: tuple[str, ...]
    test: str | None
    env_files: dict[str, str]
    draft: bool
    min_permission: str
    max_turns: int
    max_runtime_minutes: float
    idle_timeout_minutes: float
    status_interval_seconds: float
    review_rounds: int
    ci_rounds: int
    protected_paths: tuple[str, ...]
    stack: bool
    dashboard_issue: bool = True  # a default, so sessions stored before it still load
    network: EffectiveNetwork = EffectiveNetwork()  # a default, so sessions stored before it still load
    max_open_prs: int | None = None
    engines: dict[str, str] = {}
    max_cost_usd: float | None = None  # defaults, so sessions stored before them still load
    loops: Loops = Loops()

    @property
    def max_runtime_seconds(self) -> float:
        return self.max_runtime_minutes * 60

    @property
    def idle_timeout_seconds(self) -> float:
        return self.idle_timeout_minutes * 60

    def as_dict(self) -> dict[str, Any]:
        """The settings under their file keys, JSON-friendly, for the status comment's policy block."""
        data: dict[str, Any] = json.loads(self.model_dump_json())
        return data


class Problem(NamedTuple):
    """One thing wrong with a policy file: the key (`(file)` for the whole file) and what is wrong."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class LoadedPolicy(NamedTuple):
    """The policy a session uses, the problems found in the file, and whether there was a file."""

    policy: EffectivePolicy
    problems: list[Problem]
    found: bool = False


def _show(value: Any) -> str:
    """A short rendering of a YAML value for an error message; never walks a large structure."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple, set)):
        return "a list" if value else "an empty list"
    return f"a {type(value).__name__}"


def _is_branch_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"float", "int", "str", "bool"})


def _problem_from_error(error: Mapping[str, Any]) -> Problem:
    loc = list(error.get("loc") or ())
    # pydantic marks dictionary-key errors with a trailing "[key]"; the key is the one to name.
    if loc and loc[-1] == "[key]":
        loc.pop()
    # pydantic adds union branch tags ("float", "literal[...]", ...) to the location; they are not
    # the maintainer's words. env_files is exempt: its keys are the maintainer's file names.
    if loc and loc[0] != "env_files":
        loc = [loc[0], *(part for part in loc[1:] if not _is_branch_tag(part))]
    key = str(loc[0]) if loc else FILE_KEY
    expectation_key = key
    if len(loc) > 1:
        part = loc[1]
        if isinstance(part, int):
            key, expectation_key = f"{key}[{part}]", f"{key}[]"
        else:
            key, expectation_key = f"{key}.{part}", f"{key}.*"
    if error.get("type") == "extra_forbidden":
        return Problem(key, UNKNOWN_KEY_TEXT)
    if error.get("type") == "policy":
        return Problem(key, str(error["msg"]))
    expected = EXPECTATIONS.get(expectation_key) or EXPECTATIONS.get(str(loc[0]) if loc else "")
    if expected is None:
        return Problem(key, str(error["msg"]))
    return Problem(key, MUST_BE_TEXT.format(expected=expected, got=_show(error.get("input"))))


def _unknown_key_problem(key: Any) -> Problem:
    name = str(key) if str(key).strip() else f"{str(key)!r}"  # an empty or blank key is still named
    message = UNKNOWN_KEY_TEXT
    close = difflib.get_close_matches(name, list(RepoPolicy.model_fields), n=1, cutoff=0.7)
    if close:
        message += DID_YOU_MEAN_TEXT.format(suggestion=close[0])
    return Problem(name, message)


def _validate(data: Mapping[Any, Any]) -> tuple[RepoPolicy | None, list[Problem]]:
    known = set(RepoPolicy.model_fields)
    problems = [_unknown_key_problem(key) for key in data if key not in known]
    fields = {key: value for key, value in data.items() if key in known}
    try:
        policy = RepoPolicy.model_validate(fields)
    except ValidationError as error:
        seen: set[Problem] = set(problems)
        for detail in error.errors(include_url=False):
            problem = _problem_from_error(detail)
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
        return None, problems
    return policy, problems


def _check_operator(policy: RepoPolicy, operator: OperatorLimits) -> list[Problem]:
    """The repository may tighten the operator's settings but never loosen them (SPEC §3)."""
    choices = [("agent", policy.agent)] if policy.agent is not None else []
    choices += [(f"engines.{label}", adapter) for label, adapter in policy.engines.items()]
    available = ", ".join(operator.adapters)
    problems = []
    for key, adapter in choices:
        if adapter in operator.adapters:
            continue
        if adapter == "command":
            problems.append(Problem(key, COMMAND_NOT_SET_UP_TEXT.format(available=available)))
        else:
            problems.append(Problem(key, AGENT_NOT_SET_UP_TEXT.format(available=available, got=_show(adapter))))
    return problems


def apply_operator(
    policy: RepoPolicy, operator: OperatorLimits, default_branch: str | None = None
) -> EffectivePolicy:
    """Resolve a valid repository policy against the operator's limits."""
    agent = policy.agent if policy.agent in operator.adapters else operator.agent
    max_parallel = min(policy.max_parallel or operator.max_per_repo, operator.max_per_repo)
    return EffectivePolicy(
        labels=policy.labels,
        agent=agent,
        allowed_tools=tuple(policy.allowed_tools) if policy.allowed_tools is not None else None,
        base_branch=policy.base_branch or default_branch,
        max_parallel=max_parallel,
        setup=tuple(policy.setup),
        test=policy.test,
        env_files=dict(policy.env_files),
        draft=policy.draft,
        min_permission=policy.min_permission,
        max_turns=policy.max_turns,
        max_runtime_minutes=float(policy.max_runtime_minutes),
        idle_timeout_minutes=float(policy.idle_timeout_minutes),
        status_interval_seconds=float(policy.status_interval_seconds),
        review_rounds=policy.review_rounds,
        ci_rounds=policy.ci_rounds,
        protected_paths=tuple(policy.protected_paths),
        stack=policy.stack,
        dashboard_issue=policy.dashboard_issue,
        network=EffectiveNetwork(allow=narrow_egress(operator.egress, policy.network.allow)),
        max_open_prs=policy.max_open_prs,
        engines=dict(policy.engines),
        max_cost_usd=float(policy.max_cost_usd) if policy.max_cost_usd is not None else None,
        loops=policy.loops,
    )


def default_policy(operator: OperatorLimits, default_branch: str | None = None) -> EffectivePolicy:
    """The policy of a repository without a (valid) `.github/shepherd.yml`."""
    return apply_operator(RepoPolicy(), operator, default_branch)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    reason = getattr(error, "problem", None) or type(error).__name__
    if mark is not None:
        reason = f"{reason} (line {mark.line + 1}, column {mark.column + 1})"
    return NOT_YAML_TEXT.format(reason=reason)


def _cap(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    rest = len(problems) - MAX_PROBLEMS + 1
    return [*problems[: MAX_PROBLEMS - 1], Problem(FILE_KEY, TOO_MANY_PROBLEMS_TEXT.format(count=rest))]


def parse_policy(
    text: str | None, operator: OperatorLimits, *, default_branch: str | None = None
) -> LoadedPolicy:
    """Read a policy file's text (None: no file). Any problem means the defaults are used."""
    defaults = default_policy(operator, default_branch)
    if text is None:
        return LoadedPolicy(defaults, [], False)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        return LoadedPolicy(
            defaults, [Problem(FILE_KEY, TOO_LARGE_TEXT.format(limit=MAX_POLICY_BYTES // 1024))], True
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return LoadedPolicy(defaults, [Problem(FILE_KEY, _describe_yaml_error(error))], True)
    if data is None:  # an empty file, or only comments
        return LoadedPolicy(defaults, [], True)
    if not isinstance(data, Mapping):
        return LoadedPolicy(
            defaults, [Problem(FILE_KEY, NOT_MAPPING_TEXT.format(got=_show(data)))], True
        )
    policy, problems = _validate(data)
    if policy is not None:
        problems.extend(_check_operator(policy, operator))
    if problems or policy is None:
        return LoadedPolicy(defaults, _cap(problems), True)
    return LoadedPolicy(apply_operator(policy, operator, default_branch), [], True)


def policy_from_contents(item: Any, operator: OperatorLimits, default_branch: str | None) -> LoadedPolicy:
    """The policy in the contents API's answer for `.github/shepherd.yml` (None: there is no file).

    Reading the file is the GitHub layer's (`bot.github.labels.load_policy`); this only judges the answer.
    """
    if item is None:
        return parse_policy(None, operator, default_branch=default_branch)
    defaults = default_policy(operator, default_branch)
    if isinstance(item, list):
        return LoadedPolicy(defaults, [Problem(FILE_KEY, NOT_A_FILE_TEXT.format(kind="folder"))], True)
    kind = item.get("type", "file")
    if kind != "file":
        return LoadedPolicy(defaults, [Problem(FILE_KEY, NOT_A_FILE_TEXT.format(kind=kind))], True)
    # The contents API leaves `content` empty (encoding "none") for files over 1 MB.
    if item.get("encoding") != "base64" or (item.get("size") or 0) > MAX_POLICY_BYTES:
        return LoadedPolicy(
            defaults, [Problem(FILE_KEY, TOO_LARGE_TEXT.format(limit=MAX_POLICY_BYTES // 1024))], True
        )
    try:
        text = base64.b64decode(item.get("content") or "").decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return LoadedPolicy(defaults, [Problem(FILE_KEY, NOT_UTF8_TEXT)], True)
    return parse_policy(text, operator, default_branch=default_branch)


# -- the README's configuration reference ----------------------------------------------------

REFERENCE_INTRO = (
    "Put a `.github/shepherd.yml` on the repository's default branch; every key is optional. "
    "A repository can tighten the operator's settings but never loosen them. If the file has a "
    "problem, Shepherd says which key and what is wrong on the issue, and the session uses the "
    "defaults. This table is generated from `bot/core/policy.py`."
)


def _render_default(schema: Mapping[str, Any]) -> str:
    if "x-default" in schema:
        return str(schema["x-default"])
    if "default" not in schema:
        return ""
    default = schema["default"]
    # Plain strings read better unquoted; everything else as JSON, which is also valid YAML.
    text = default if isinstance(default, str) else json.dumps(default, ensure_ascii=False)
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def policy_reference_markdown() -> str:
    """The configuration reference table, generated from `RepoPolicy`'s JSON schema."""
    schema = RepoPolicy.model_json_schema()
    definitions = schema.get("$defs", {})
    rows = ["| key | default | description |", "|---|---|---|"]
    for key, prop in schema["properties"].items():
        ref = prop.get("$ref") or next(
            (branch["$ref"] for branch in prop.get("anyOf", []) if "$ref" in branch), None
        )
        nested = definitions.get(ref.rsplit("/", 1)[-1]) if ref else None
        if nested is not None:
            rows.append(f"| `{key}` | | {_cell(prop.get('description', ''))} |")
            for sub_key, sub_prop in nested["properties"].items():
                rows.append(
                    f"| `{key}.{sub_key}` | {_render_default(sub_prop)} | "
                    f"{_cell(sub_prop.get('description', ''))} |"
                )
            continue
        rows.append(f"| `{key}` | {_render_default(prop)} | {_cell(prop.get('description', ''))} |")
    return "\n".join([REFERENCE_INTRO, "", *rows]) + "\n"


def replace_reference_block(readme: str) -> str:
    """`readme` with the text between the policy-reference markers regenerated."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END, start)
    return readme[:start] + "\n" + policy_reference_markdown() + readme[end:]


def read_reference_block(readme: str) -> str:
    """The text between the policy-reference markers, as `replace_reference_block` writes it."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END, start)
    return readme[start:end].removeprefix("\n")


if __name__ == "__main__":  # `python -m bot.core.policy README.md` regenerates the README's block
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    target.write_text(replace_reference_block(target.read_text(encoding="utf-8")), encoding="utf-8")
