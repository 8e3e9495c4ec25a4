"""Tests of `.github/shepherd.yml`: schema, defaults, which setting wins, problems, loading, README."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from gidgethub import BadRequest
from gidgethub.abc import GitHubAPI

from bot.core.policy import (
    FILE_KEY,
    MAX_POLICY_BYTES,
    EffectivePolicy,
    LoadedPolicy,
    OperatorLimits,
    Problem,
    RepoPolicy,
    parse_policy,
    policy_reference_markdown,
    read_reference_block,
    replace_reference_block,
)
from bot.github.labels import load_policy
from bot.settings import load_settings
from tests.fakes.openapi import load_spec

README = Path(__file__).resolve().parents[1] / "README.md"
OPERATOR = OperatorLimits(agent="claude", adapters=("claude", "codex"), max_per_repo=3)

DEFAULTS = {
    "labels": {
        "go": "agent:go",
        "plan": "agent:plan",
        "needs_input": "agent:needs-input",
        "needs_human": "agent:needs-human",
    },
    "agent": "claude",
    "allowed_tools": None,
    "base_branch": "main",
    "max_parallel": 3,
    "setup": [],
    "test": None,
    "env_files": {},
    "draft": False,
    "min_permission": "write",
    "max_turns": 20,
    "max_runtime_minutes": 120.0,
    "idle_timeout_minutes": 15.0,
    "status_interval_seconds": 180.0,
    "review_rounds": 3,
    "ci_rounds": 2,
    "protected_paths": [".github/workflows/**"],
    "stack": False,
    "dashboard_issue": True,
    "network": {"allow": []},
    "max_open_prs": None,
    "engines": {},
    "max_cost_usd": None,
    "loops": {"repeats": 3, "flip_flops": 2, "stall_minutes": 20},
}

FULL_FILE = """\
labels:
  go: "bot: go"
  plan: "bot: plan"
  needs_input: "bot: waiting"
  needs_human: "bot: human"
agent: codex
base_branch: develop
max_parallel: 1
setup:
  - npm ci
  - npm run build
test: npm test
env_files:
  .env.example: .env
draft: true
min_permission: maintain
max_turns: 5
max_runtime_minutes: 0.5
idle_timeout_minutes: 2.5
status_interval_seconds: 30
review_rounds: 0
ci_rounds: 1
protected_paths: ["migrations/**", ".github/**"]
stack: true
dashboard_issue: false
max_open_prs: 3
engines:
  agent:codex: codex
max_cost_usd: 2.5
loops: {repeats: 4, flip_flops: 3, stall_minutes: 7.5}
"""


def parse(text: str | None, operator: OperatorLimits = OPERATOR) -> LoadedPolicy:
    return parse_policy(text, operator, default_branch="main")


def test_every_key_has_a_default_and_a_description() -> None:
    schema = RepoPolicy.model_json_schema()
    assert set(schema["properties"]) == set(DEFAULTS)
    for key, prop in schema["properties"].items():
        assert prop.get("description"), key
        assert "default" in prop or "x-default" in prop, key


def test_no_file_means_defaults_without_problems() -> None:
    loaded = parse(None)
    assert loaded.problems == [] and loaded.found is False
    assert loaded.policy.as_dict() == DEFAULTS


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file_means_defaults(text: str) -> None:
    loaded = parse(text)
    assert loaded.problems == [] and loaded.found is True
    assert loaded.policy.as_dict() == DEFAULTS


def test_every_key_is_read() -> None:
    loaded = parse(FULL_FILE)
    assert loaded.problems == []
    assert loaded.policy.as_dict() == {
        "labels": {
            "go": "bot: go",
            "plan": "bot: plan",
            "needs_input": "bot: waiting",
            "needs_human": "bot: human",
        },
        "agent": "codex",
        "allowed_tools": None,
        "base_branch": "develop",
        "max_parallel": 1,
        "setup": ["npm ci", "npm run build"],
        "test": "npm test",
        "env_files": {".env.example": ".env"},
        "draft": True,
        "min_permission": "maintain",
        "max_turns": 5,
        "max_runtime_minutes": 0.5,
        "idle_timeout_minutes": 2.5,
        "status_interval_seconds": 30.0,
        "review_rounds": 0,
        "ci_rounds": 1,
        "protected_paths": ["migrations/**", ".github/**"],
        "stack": True,
        "dashboard_issue": False,
        "network": {"allow": []},
        "max_open_prs": 3,
        "engines": {"agent:codex": "codex"},
        "max_cost_usd": 2.5,
        "loops": {"repeats": 4, "flip_flops": 3, "stall_minutes": 7.5},
    }
    assert loaded.policy.max_runtime_seconds == 30
    assert loaded.policy.idle_timeout_seconds == 150


def test_partial_labels_keep_the_other_defaults() -> None:
    labels = parse("labels:\n  go: ship-it\n").policy.labels
    assert (labels.go, labels.plan, labels.needs_input, labels.needs_human) == (
        "ship-it",
        "agent:plan",
        "agent:needs-input",
        "agent:needs-human",
    )


def test_allowed_tools_are_read() -> None:
    loaded = parse('allowed_tools: [Read, Edit, "Bash(npm test)"]\n')
    assert loaded.problems == []
    assert loaded.policy.allowed_tools == ("Read", "Edit", "Bash(npm test)")


def test_effective_policy_is_frozen() -> None:
    policy = parse(None).policy
    with pytest.raises(ValueError):
        policy.max_turns = 99  # type: ignore[misc]


# -- which setting wins ------------------------------------------------------------------------


def test_max_parallel_only_lowers_the_operator_limit() -> None:
    assert parse("max_parallel: 1\n").policy.max_parallel == 1
    higher = parse("max_parallel: 10\n")
    assert higher.problems == []  # capping is documented, not an error
    assert higher.policy.max_parallel == 3


@pytest.mark.parametrize("permission", ["maintain", "admin", "write"])
def test_min_permission_can_tighten(permission: str) -> None:
    assert parse(f"min_permission: {permission}\n").policy.min_permission == permission


@pytest.mark.parametrize("permission", ["read", "triage"])
def test_min_permission_never_below_write(permission: str) -> None:
    loaded = parse(f"min_permission: {permission}\nmax_turns: 3\n")
    assert loaded.problems == [
        Problem(
            "min_permission",
            f'must be write, maintain or admin, got "{permission}": Shepherd never lets people '
            "without write access start an agent",
        )
    ]
    assert loaded.policy.min_permission == "write"
    assert loaded.policy.max_turns == 20  # an invalid file is not partly applied


def test_agent_picks_only_adapters_the_operator_set_up() -> None:
    operator = OperatorLimits(agent="codex", adapters=("codex",), max_per_repo=2)
    loaded = parse("agent: claude\n", operator)
    assert loaded.problems == [
        Problem(
            "agent",
            'must be one of the agents this Shepherd server has set up (codex), got "claude"',
        )
    ]
    assert loaded.policy.agent == "codex"


def test_command_needs_the_operators_command() -> None:
    loaded = parse("agent: command\n")
    assert [problem.key for problem in loaded.problems] == ["agent"]
    assert "SHEPHERD_AGENT_COMMAND" in loaded.problems[0].message
    assert loaded.policy.agent == "claude"
    operator = OperatorLimits(agent="claude", adapters=("claude", "codex", "command"))
    assert parse("agent: command\n", operator).policy.agent == "command"


def test_operator_limits_from_settings_feed_the_policy() -> None:
    settings = load_settings(
        {"SHEPHERD_AGENT": "codex", "SHEPHERD_AGENT_COMMAND": "run", "SHEPHERD_MAX_PER_REPO": "4"},
        env_file=None,
    )
    loaded = parse("agent: command\nmax_parallel: 6\n", settings.operator_limits())
    assert loaded.problems == []
    assert (loaded.policy.agent, loaded.policy.max_parallel) == ("command", 4)
    assert parse(None, settings.operator_limits()).policy.agent == "codex"


# -- problems ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_turns: lots\n", Problem("max_turns", 'must be a whole number of at least 1, got "lots"')),
        ("max_turns: 0\n", Problem("max_turns", "must be a whole number of at least 1, got 0")),
        ("max_turns: 2.5\n", Problem("max_turns", "must be a whole number of at least 1, got 2.5")),
        ("max_turns: true\n", Problem("max_turns", "must be a whole number of at least 1, got true")),
        (
            "max_runtime_minutes: 0\n",
            Problem(
                "max_runtime_minutes",
                "must be a number of minutes greater than 0 (fractions allowed), got 0",
            ),
        ),
        (
            "idle_timeout_minutes: soon\n",
            Problem(
                "idle_timeout_minutes",
                'must be a number of minutes greater than 0 (fractions allowed), got "soon"',
            ),
        ),
        (
            "status_interval_seconds: 1\n",
            Problem("status_interval_seconds", "must be a number of seconds of at least 10, got 1"),
        ),
        ("review_rounds: -1\n", Problem("review_rounds", "must be a whole number of at least 0, got -1")),
        ("draft: maybe\n", Problem("draft", 'must be true or false, got "maybe"')),
        ("stack: 1\n", Problem("stack", "must be true or false, got 1")),
        ("agent: gpt\n", Problem("agent", 'must be one of claude, codex, command, got "gpt"')),
        ("setup: [npm ci, 3]\n", Problem("setup[1]", "must be a shell command (text), got 3")),
        ("setup: npm ci\n", Problem("setup", 'must be a list of shell commands, got "npm ci"')),
        ("test: [a, b]\n", Problem("test", "must be a shell command (text), got a list")),
        ("labels:\n  go: ''\n", Problem("labels.go", 'must be a label name of 1 to 50 characters, got ""')),
        ("labels: agent:go\n", Problem("labels", 'must be a mapping with any of go, plan, needs_input and needs_human, got "agent:go"')),
        (
            "labels:\n  go: same\n  plan: same\n",
            Problem("labels", "must be four different label names, but `same` is used twice"),
        ),
        ("labels:\n  stop: x\n", Problem("labels.stop", "is not a setting Shepherd knows")),
        ("base_branch: 'my branch'\n", Problem("base_branch", 'must be a branch name, got "my branch"')),
        ("base_branch: ../main\n", Problem("base_branch", 'must be a branch name, got "../main"')),
        (
            "env_files:\n  ../secrets: .env\n",
            Problem("env_files", 'must be a relative path inside the repository, got "../secrets"'),
        ),
        (
            "env_files:\n  .env.example: /etc/passwd\n",
            Problem("env_files", 'must be a relative path inside the repository, got "/etc/passwd"'),
        ),
        (
            "env_files: [.env]\n",
            Problem(
                "env_files",
                "must be a mapping from a file in the repository to the copy to make, like "
                "{.env.example: .env}, got a list",
            ),
        ),
        (
            "protected_paths: /etc/**\n",
            Problem("protected_paths", 'must be a list of path patterns, like [".github/workflows/**"], got "/etc/**"'),
        ),
        (
            "allowed_tools: []\n",
            Problem(
                "allowed_tools",
                'must be a list of Claude Code tool rules, like [Read, Edit, "Bash(npm test)"], '
                "got an empty list",
            ),
        ),
        ("min_permission: owner\n", Problem("min_permission", 'must be one of write, maintain, admin, got "owner"')),
    ],
)
def test_each_problem_names_the_key_and_what_is_wrong(text: str, expected: Problem) -> None:
    loaded = parse(text)
    assert loaded.problems == [expected]
    assert loaded.found is True
    assert loaded.policy.as_dict() == DEFAULTS


def test_unknown_keys_are_problems_with_a_suggestion() -> None:
    loaded = parse("max_turn: 4\ncolour: blue\n")
    assert loaded.problems == [
        Problem("max_turn", "is not a setting Shepherd knows; did you mean `max_turns`?"),
        Problem("colour", "is not a setting Shepherd knows"),
    ]
    assert loaded.policy.as_dict() == DEFAULTS


def test_every_problem_is_reported_and_no_good_key_is_kept() -> None:
    loaded = parse("max_turns: 4\ndraft: perhaps\nci_rounds: many\nunknown: 1\n")
    assert {problem.key for problem in loaded.problems} == {"draft", "ci_rounds", "unknown"}
    assert loaded.policy.max_turns == 20
    assert str(loaded.problems[0]).startswith("unknown: ")


def test_invalid_yaml_is_one_file_problem() -> None:
    loaded = parse("max_turns: [1,\n")
    assert len(loaded.problems) == 1
    assert loaded.problems[0].key == FILE_KEY
    assert loaded.problems[0].message.startswith("is not valid YAML: ")
    assert "line 2" in loaded.problems[0].message
    assert loaded.policy.as_dict() == DEFAULTS


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "a list"), ("just words\n", '"just words"'), ("42\n", "42")])
def test_a_file_that_is_not_a_mapping_is_one_problem(text: str, got: str) -> None:
    loaded = parse(text)
    assert loaded.problems == [
        Problem(FILE_KEY, f"must be a mapping of settings (`key: value` lines), got {got}")
    ]
    assert loaded.policy.as_dict() == DEFAULTS


def test_yaml_tags_that_build_objects_are_refused() -> None:
    loaded = parse("max_turns: !!python/object/apply:os.system ['touch /tmp/pwned']\n")
    assert [problem.key for problem in loaded.problems] == [FILE_KEY]
    assert loaded.policy.as_dict() == DEFAULTS


def test_a_huge_file_is_refused_without_parsing() -> None:
    loaded = parse("# " + "x" * MAX_POLICY_BYTES + "\n")
    assert [problem.key for problem in loaded.problems] == [FILE_KEY]
    assert "KiB" in loaded.problems[0].message


def test_alias_bombs_stay_cheap() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        below = ", ".join([f"*a{level - 1}"] * 10)
        levels.append(f"a{level}: &a{level} [{below}]")
    loaded = parse("\n".join(levels) + "\nsetup: *a8\n")
    assert any(problem.key.startswith("setup") for problem in loaded.problems)
    assert len(loaded.problems) <= 20


def test_long_values_are_shortened_in_messages() -> None:
    loaded = parse(f"max_turns: {'y' * 500}\n")
    assert len(loaded.problems[0].message) < 200


# -- loading through the contents API ---------------------------------------------------------


class RecordingGitHub(GitHubAPI):
    """gidgethub's client with only the HTTP call replaced: requests are checked against GitHub's
    REST description and answered from `files` (path -> contents answer, or a status code)."""

    def __init__(self, answers: Mapping[tuple[str, str], Any]) -> None:
        super().__init__("shepherd-tests", oauth_token="ghs_test")
        self.answers = answers
        self.requests: list[tuple[str, str, str, dict[str, list[str]]]] = []
        self.spec = load_spec()

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        parts = urlsplit(url)
        operation, params = self.spec.route(method, parts.path)
        query = parse_qs(parts.query)
        errors, _ = self.spec.validate_request(operation, query, body or None)
        assert errors == [], errors
        self.requests.append((method, operation.operation_id, parts.path, query))
        answer = self.answers.get((params.get("path", ""), query.get("ref", [""])[0]), 404)
        status, payload = (answer, {"message": "Not Found"}) if isinstance(answer, int) else (200, answer)
        return status, {"content-type": "application/json; charset=utf-8"}, json.dumps(payload).encode()

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - never retried here
        raise AssertionError("no sleeping in these tests")


def contents_answer(text: str | bytes) -> dict[str, Any]:
    raw = text.encode() if isinstance(text, str) else text
    encoded = base64.encodebytes(raw).decode()  # GitHub wraps the base64 at 60 columns
    return {
        "type": "file",
        "encoding": "base64",
        "size": len(raw),
        "name": "shepherd.yml",
        "path": ".github/shepherd.yml",
        "content": encoded,
        "sha": "3d21ec53a331a6f037a91c368710b99387d012c1",
    }


async def test_load_reads_the_file_from_the_default_branch() -> None:
    gh = RecordingGitHub(
        {
            (".github/shepherd.yml", "trunk"): contents_answer("max_turns: 7\nbase_branch: release\n"),
            (".github/shepherd.yml", "other"): contents_answer("max_turns: 99\n"),
        }
    )
    loaded = await load_policy(gh, "acme", "web", "trunk", OPERATOR)
    assert loaded.problems == [] and loaded.found is True
    assert (loaded.policy.max_turns, loaded.policy.base_branch) == (7, "release")
    assert gh.requests == [
        ("GET", "repos/get-content", "/repos/acme/web/contents/.github/shepherd.yml", {"ref": ["trunk"]})
    ]


async def test_load_without_a_file_uses_defaults() -> None:
    gh = RecordingGitHub({})
    loaded = await load_policy(gh, "acme", "web", "main", OPERATOR)
    assert loaded == LoadedPolicy(parse(None).policy, [], False)
    assert loaded.policy.base_branch == "main"
    assert len(gh.requests) == 1


async def test_load_reports_problems_of_the_file() -> None:
    gh = RecordingGitHub({(".github/shepherd.yml", "main"): contents_answer("max_turns: lots\n")})
    loaded = await load_policy(gh, "acme", "web", "main", OPERATOR)
    assert loaded.problems == [
        Problem("max_turns", 'must be a whole number of at least 1, got "lots"')
    ]
    assert loaded.policy.as_dict() == DEFAULTS


async def test_load_refuses_a_folder_and_non_utf8() -> None:
    folder = RecordingGitHub({(".github/shepherd.yml", "main"): [{"type": "file", "name": "x"}]})
    loaded = await load_policy(folder, "acme", "web", "main", OPERATOR)
    assert loaded.problems == [Problem(FILE_KEY, "is a folder, not a file")]
    binary = RecordingGitHub({(".github/shepherd.yml", "main"): contents_answer(b"\xff\xfe\x00")})
    loaded = await load_policy(binary, "acme", "web", "main", OPERATOR)
    assert loaded.problems == [Problem(FILE_KEY, "is not UTF-8 text")]
    assert loaded.policy.as_dict() == DEFAULTS


async def test_load_passes_on_other_errors() -> None:
    gh = RecordingGitHub({(".github/shepherd.yml", "main"): 403})
    with pytest.raises(BadRequest) as caught:
        await load_policy(gh, "acme", "web", "main", OPERATOR)
    assert caught.value.status_code == 403


# -- the README reference ----------------------------------------------------------------------


def test_readme_reference_matches_the_schema() -> None:
    readme = README.read_text(encoding="utf-8")
    assert read_reference_block(readme) == policy_reference_markdown(), (
        "README.md's configuration reference is stale: run `python -m bot.core.policy README.md`"
    )


def test_reference_lists_every_key_with_its_default() -> None:
    reference = policy_reference_markdown()
    for key in DEFAULTS:
        assert f"| `{key}` |" in reference, key
    assert "| `max_turns` | `20` |" in reference
    assert "| `labels.go` | `agent:go` |" in reference
    assert "| `protected_paths` | `[\".github/workflows/**\"]` |" in reference
    assert "| `agent` | the operator's `SHEPHERD_AGENT` |" in reference


def test_replace_reference_block_keeps_the_rest() -> None:
    text = "intro\n<!-- policy-reference:start -->\nold\n<!-- policy-reference:end -->\noutro\n"
    replaced = replace_reference_block(text)
    assert replaced.startswith("intro\n<!-- policy-reference:start -->\n")
    assert replaced.endswith("<!-- policy-reference:end -->\noutro\n")
    assert read_reference_block(replaced) == policy_reference_markdown()
    assert "old" not in replaced


def test_effective_policy_round_trips_its_dict() -> None:
    policy = parse(FULL_FILE).policy
    assert EffectivePolicy.model_validate(policy.as_dict()) == policy


def test_env_file_keys_are_named_as_written() -> None:
    loaded = parse("env_files:\n  int: 3\n")
    assert loaded.problems == [Problem("env_files.int", "must be a relative path (text), got 3")]


def test_network_allow_only_narrows_the_operators_egress() -> None:
    operator = OperatorLimits(agent="claude", adapters=("claude",), egress=("registry.npmjs.org", "pypi.org:443"))
    assert parse(None, operator).policy.network.allow == ("registry.npmjs.org", "pypi.org:443")
    narrowed = parse("network:\n  allow: [pypi.org:443, evil.example.com, '*']\n", operator)
    assert narrowed.problems == []
    # What the operator never allowed is left out, `*` included: a repository cannot widen the list.
    assert narrowed.policy.network.allow == ("pypi.org:443",)
    assert narrowed.policy.as_dict()["network"] == {"allow": ["pypi.org:443"]}
    closed = parse("network:\n  allow: []\n", operator)
    assert closed.policy.network.allow == ()


def test_network_allow_under_an_operator_star_keeps_the_repositorys_list() -> None:
    operator = OperatorLimits(agent="claude", adapters=("claude",), egress=("*",))
    loaded = parse("network:\n  allow: [registry.npmjs.org]\n", operator)
    assert loaded.policy.network.allow == ("registry.npmjs.org",)


def test_a_bad_network_key_is_reported_with_what_it_expects() -> None:
    loaded = parse("network:\n  allow: registry.npmjs.org\n")
    assert [problem.key for problem in loaded.problems] == ["network.allow"]
    assert "a list of host[:port] patterns" in loaded.problems[0].message


# -- engines (SPEC §3, §8) -------------------------------------------------------------------------


def test_an_engine_the_operator_did_not_set_up_is_reported_under_its_label() -> None:
    loaded = parse("engines:\n  agent:codex: codex\n  agent:script: command\n",
                   OperatorLimits(agent="claude", adapters=("claude",)))
    assert loaded.problems == [
        Problem("engines.agent:codex",
                'must be one of the agents this Shepherd server has set up (claude), got "codex"'),
        Problem("engines.agent:script",
                "is `command`, but this Shepherd server has no SHEPHERD_AGENT_COMMAND; ask its operator, or pick "
                "one of claude"),
    ]
    assert loaded.policy.engines == {}  # the defaults, as for any problem


def test_an_engine_must_be_a_known_agent_and_have_its_own_label() -> None:
    assert parse("engines: {agent:gpt: gpt}\n").problems == [
        Problem("engines.agent:gpt", 'must be one of claude, codex, command, got "gpt"')]
    assert parse("engines: {Agent:Go: codex}\n").problems == [
        Problem("engines", 'names "Agent:Go", which is already Shepherd\'s go label; an engine needs a label of '
                           "its own")]
    assert parse("max_open_prs: 0\n").problems == [
        Problem("max_open_prs", "must be a whole number of at least 1, got 0")]
@pytest.mark.parametrize(
    ("text", "key"),
    [("max_cost_usd: 0\n", "max_cost_usd"), ("max_cost_usd: lots\n", "max_cost_usd"),
     ("loops: {repeats: 1}\n", "loops.repeats"), ("loops: {stall_minutes: 0}\n", "loops.stall_minutes"),
     ("loops: {forever: 2}\n", "loops.forever")],
)
def test_budget_and_loop_keys_refuse_what_makes_no_sense(text: str, key: str) -> None:
    loaded = parse(text)
    assert [problem.key for problem in loaded.problems] == [key]
    assert loaded.policy.as_dict() == DEFAULTS  # a file with a problem is not partly applied
