"""Test bed for the session runtime: a recording Publisher, a pushing Finisher and an engine on the fakes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from bot.agent.adapters import make_adapter
from bot.agent.confinement import build_sandbox
from bot.core.effects import IssueRef, SessionContext
from bot.workspace.git import Mirror
from bot.github.client import GitHubApp
from bot.metrics import Metrics
from bot.workspace.push import push_branch
from bot.runtime.engine import Engine
from bot.github.labels import load_policy
from bot.core.session import (
    Command,
    Event,
    FinishWork,
    Mode,
    PostQuestion,
    PullRequestOpened,
    PullRequestUpdated,
    Session,
    WorkPushed,
)
from bot.settings import Settings
from bot.store.database import Store
from bot.workspace.workspaces import Workspaces
from tests.conftest import settings_for
from tests.fakes.model import bash, text, write

REPO = "octo-org/widgets"
INSTALLATION = 4242


@dataclass
class RecordingPublisher:
    """Remembers every command it was handed; answers a question with `QuestionPosted`."""

    calls: list[tuple[str, Command, SessionContext]] = field(default_factory=list)
    log_file: Path | None = None

    async def publish(self, session: Session, command: Command, context: SessionContext) -> Sequence[Event]:
        from bot.core.session import QuestionPosted

        self.calls.append((session.id, command, context))
        if self.log_file is not None:
            with open(self.log_file, "a") as stream:
                stream.write(json.dumps({"session": session.id, "command": type(command).__name__}) + "\n")
        if isinstance(command, PostQuestion):
            return (QuestionPosted(command.question_id, 1000 + len(self.calls), datetime.now(timezone.utc)),)
        return ()

    def kinds(self, session_id: str | None = None) -> list[str]:
        return [type(c).__name__ for sid, c, _ in self.calls if session_id in (None, sid)]


@dataclass
class PushingFinisher:
    """Commits leftovers as the bot, pushes through the one push function, 'opens' PR number 1..n."""

    github: Any
    workspaces: Workspaces
    calls: list[tuple[str, FinishWork]] = field(default_factory=list)
    log_file: Path | None = None
    pushed_marker: Path | None = None

    async def finish(self, session: Session, command: FinishWork, context: SessionContext) -> Sequence[Event]:
        self.calls.append((session.id, command))
        assert context.worktree is not None
        await self.workspaces.commit_all(context.worktree, "Shepherd: leftovers", "shepherd[bot]", "1+shepherd[bot]@users.noreply.github.com")
        await self.workspaces.export_branch(context.worktree, command.branch)
        token = await self.github.mint_push_token(context.installation_id, context.owner, context.repo)
        mirror = Mirror(context.full_name, self.workspaces.mirror_path(context.full_name), context.clone_url)
        sha = await push_branch(self.workspaces.git, mirror, command.branch, token, created_by_shepherd=True)
        if self.log_file is not None:
            with open(self.log_file, "a") as stream:
                stream.write(json.dumps({"session": session.id, "branch": command.branch, "sha": sha}) + "\n")
        if self.pushed_marker is not None:
            self.pushed_marker.write_text(session.id)
        if not command.open_pull_request:
            return (WorkPushed(sha),)
        if command.pull_request_number is not None:
            return (PullRequestUpdated(sha),)
        number = len(self.calls)
        return (PullRequestOpened(number, f"https://github.com/{context.full_name}/pull/{number}", sha),)


def wire_remote(fake, git_remote) -> None:
    """Let the git remote accept exactly the tokens the fake GitHub minted."""
    git_remote.authorize = lambda token, repo, write: fake.is_token_valid(
        token, repo, "contents", "write" if write else "read")


def prepare_repo(fake, git_remote, files: dict[str, str] | None = None, policy: str | None = None,
                 repo: str = REPO) -> str:
    url = git_remote.create_repo(repo, files or {"README.md": "# widgets\n"})
    if INSTALLATION not in getattr(fake, "_installations", {}):
        fake.add_installation(INSTALLATION, account=repo.split("/")[0], repositories=[repo])
    else:
        fake.set_installation_repositories(INSTALLATION, [*fake._installation_repos[INSTALLATION], repo])  # noqa: SLF001
    fake.set_clone_url(repo, url)
    fake.set_permission(repo, "alice", "write")
    if policy is not None:
        fake.set_file(repo, ".github/shepherd.yml", policy)
    wire_remote(fake, git_remote)
    return url


def agent_script(tmp_path: Path, body: str, name: str = "agent.sh") -> str:
    """A command agent: a small shell script run in the worktree with the agent-only `shepherd` tool."""
    script = tmp_path / name
    script.write_text("set -e\n" + body)
    return f"sh {script}"


FAST_POLICY = "max_runtime_minutes: 1\nidle_timeout_minutes: 1\n"


# A real agent CLI's scripted session (tests/fakes/model.py): it writes a file, asks which port and ends
# its turn; resumed with the reply, it writes the reply to port.txt, commits and finishes.
ASK_THEN_FINISH = [
    [
        [text("Writing the server file."), write("{cwd}/server.txt", "listen\n")],
        [bash('shepherd ask "Which port?" --option 8080 --option 9090')],
        [text("I asked; ending my turn.")],
    ],
    [
        [bash('printf "%s" "$SHEPHERD_REPLY" > port.txt && git add -A && git commit -qm "Port"')],
        [bash('shepherd done "Server listens on 9090"')],
        [text("All done.")],
    ],
]


def issue_ref(fake, number: int, repo: str = REPO) -> IssueRef:
    """The engine's view of one of the fake's issues, triggered by its author."""
    issue = fake.issue(repo, number)
    owner, name = repo.split("/")
    return IssueRef(INSTALLATION, owner, name, number, issue["title"], issue["body"] or "",
                    fake.repo(repo)["clone_url"], "main", issue["user"]["login"])


async def add_go_label(harness: Harness, ref: IssueRef) -> Session | None:
    """Alice adds the go label: the repository's policy is read once, as the trigger handler reads it, and the
    engine is triggered with that reading."""
    gh = harness.github.installation(ref.installation_id)
    loaded = await load_policy(gh, ref.owner, ref.repo, ref.default_branch, harness.settings.operator_limits())
    return await harness.engine.trigger(ref, mode=Mode.GO, actor="alice", label="agent:go", policy=loaded)


@dataclass
class Harness:
    engine: Engine
    store: Store
    workspaces: Workspaces
    publisher: RecordingPublisher
    finisher: PushingFinisher
    github: GitHubApp
    settings: Settings
    http: aiohttp.ClientSession

    async def close(self) -> None:
        await self.engine.stop()
        await self.github.close()
        await self.http.close()
        self.store.close()


async def build_harness(fake, data_dir: Path, *, parent_env: dict[str, str] | None = None,
                        adapter_factory=None, settings: Settings | None = None, **env: str) -> Harness:
    settings = settings or settings_for(fake, data_dir, **env)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.data_dir / "shepherd.db")
    http = aiohttp.ClientSession()
    github = GitHubApp(http, app_id=settings.app_id, private_key=settings.private_key.get_secret_value(),
                       api_url=settings.api_url, metrics=Metrics(), write_spacing=0)
    parent_env = parent_env if parent_env is not None else {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(data_dir)}
    sandbox = build_sandbox(settings, parent_env, settings.data_dir / "sandbox")
    workspaces = Workspaces(settings.data_dir, sandbox=sandbox)
    publisher = RecordingPublisher()
    finisher = PushingFinisher(github, workspaces)
    engine = Engine(store, workspaces, github, publisher, finisher, settings,
                    parent_env=parent_env,
                    adapter_factory=adapter_factory, poll=0.05, retry_delay=0.05)
    return Harness(engine, store, workspaces, publisher, finisher, github, settings, http)


async def wait_for(predicate, timeout: float = 60.0, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(poll)


# -- the real agent CLIs (pinned in tests/vendor) against the scripted model server ----------------------

VENDOR_BIN = Path(__file__).resolve().parent / "vendor" / "node_modules" / ".bin"
CLAUDE_BIN = VENDOR_BIN / "claude"
CODEX_BIN = VENDOR_BIN / "codex"
CODEX_MODEL = "gpt-5.5"  # a slug Codex knows, so it offers `apply_patch` and warns about no missing metadata
CODEX_KEY_NAME = "STUB_OPENAI_KEY"


def _cli_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    return home, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(scratch)}


async def build_claude_harness(fake, tmp_path: Path, model_url: str, **env: str) -> Harness:
    """The engine running the real Claude Code CLI against the model server at `model_url`: a home of its
    own, no traffic but the model's, no retries (a script mistake fails at once). The CLI is not on PATH
    here, so the operator shows its folder to the box."""
    home, parent_env = _cli_home(tmp_path)
    parent_env.update({
        "CLAUDE_CONFIG_DIR": str(home / ".claude"), "CLAUDE_CODE_TMPDIR": "/tmp",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_RETRIES": "0",
        "ANTHROPIC_BASE_URL": model_url, "ANTHROPIC_API_KEY": "dummy", "IS_SANDBOX": "1",
    })
    return await build_harness(
        fake, tmp_path / "data", parent_env=parent_env,
        adapter_factory=lambda policy: make_adapter("claude", claude_bin=str(CLAUDE_BIN)),
        SHEPHERD_AGENT="claude", SHEPHERD_AGENT_ENV="IS_SANDBOX,TMPDIR",
        SHEPHERD_SANDBOX_PATHS=str(CLAUDE_BIN.parent.parent), **env,
    )


def write_codex_config(codex_home: Path, model_url: str) -> None:
    """Point Codex at the model server, with retries and every outside connection switched off."""
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(
        f'model = "{CODEX_MODEL}"\n'
        'model_provider = "stub"\n'
        "check_for_update_on_startup = false\n"
        "\n[analytics]\nenabled = false\n"
        "\n[features]\nplugins = false\n"
        "\n[model_providers.stub]\n"
        'name = "stub"\n'
        f'base_url = "{model_url}/v1"\n'
        f'env_key = "{CODEX_KEY_NAME}"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )


async def build_codex_harness(fake, tmp_path: Path, model_url: str, **env: str) -> Harness:
    """The engine running the real Codex CLI against the model server's Responses API (a custom model
    provider in `$CODEX_HOME/config.toml`)."""
    home, parent_env = _cli_home(tmp_path)
    write_codex_config(home / ".codex", model_url)
    parent_env.update({"CODEX_HOME": str(home / ".codex"), CODEX_KEY_NAME: "dummy"})
    return await build_harness(
        fake, tmp_path / "data", parent_env=parent_env,
        adapter_factory=lambda policy: make_adapter("codex", codex_bin=str(CODEX_BIN)),
        SHEPHERD_AGENT="codex", SHEPHERD_AGENT_ENV=f"{CODEX_KEY_NAME},TMPDIR",
        SHEPHERD_SANDBOX_PATHS=str(CODEX_BIN.parent.parent), **env,
    )
