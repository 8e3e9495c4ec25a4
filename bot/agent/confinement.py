"""One session's confinement: its box, its egress proxy and its cgroup, for turns, `setup` and `test` alike.

`for_session` builds it; `Confinement` lays out the session's folders (a report channel, HOME and /tmp
owned by the agent's uid, next to Shepherd's read-only control files), works out what the box may reach
(the model endpoint of the adapter's own configuration plus the operator's `SHEPHERD_EGRESS`, narrowed
by the repository's `network.allow`) and hands `processes.spawn_turn` the wrapped command and the
wrapper's prelude. Everything the prelude starts (the proxy, the box) belongs to the turn's process
group and cgroup, not to Shepherd, so a turn outlives a restart of Shepherd and is found again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bot.agent import egress
from bot.agent import limits
from bot.agent import processes
from bot.agent.processes import Prelude, TurnHandle
from bot.agent.sandbox import (
    CHANNEL_FOLDER,
    HOME_FOLDER,
    SOCKET_PATH,
    STATS_NAME,
    TMP_FOLDER,
    Box,
    Network,
    Sandbox,
    agent_environment,
    cli_folders,
    command_files,
    loopback_tunnels,
    parse_sandbox_paths,
    proxy_argv,
)

if TYPE_CHECKING:
    from bot.settings import Settings
    from bot.workspace.workspaces import Workspaces

log = logging.getLogger(__name__)

COPIED_CONFIG = ("CLAUDE_CONFIG_DIR", "CODEX_HOME")
COPIES_FOLDER = ".shepherd-config"
DISK_EXCEEDED = "the worktree and home grew past {limit} and the turn was stopped"
_CGROUP_NAME = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Confinement:
    """The box, proxy and limits of one session."""

    sandbox: Sandbox
    session_dir: Path
    worktree: Path
    mirror_objects: Path | None
    egress: tuple[str, ...] = ()
    turn_limits: limits.TurnLimits = field(default_factory=limits.TurnLimits)
    cgroup_prefix: str = "session"

    @property
    def channel(self) -> Path:
        return self.session_dir / CHANNEL_FOLDER

    @property
    def home(self) -> Path:
        return self.session_dir / HOME_FOLDER

    @property
    def tmp(self) -> Path:
        return self.session_dir / TMP_FOLDER

    def prepare(self) -> None:
        """The session's folders, owned by the agent where it writes (idempotent)."""
        self.session_dir.chmod(0o755)
        for folder in (self.channel, self.home, self.tmp):
            self.sandbox.own(folder)

    def environment(self, env: Mapping[str, str], *, network: bool) -> tuple[dict[str, str], Box]:
        """The command's environment and box: the agent CLI's configuration copied into its HOME."""
        self.prepare()
        adjusted = dict(env)
        for name in COPIED_CONFIG:
            source = adjusted.get(name)
            if source and self.sandbox.enabled:
                adjusted[name] = str(self._copy_config(name, Path(source)))
        endpoints = egress.model_endpoints(adjusted, _codex_config(adjusted))
        net = None
        if network and self.sandbox.enabled:
            net = Network(socket=SOCKET_PATH, tunnels=loopback_tunnels(endpoints))
        box = Box(
            worktree=str(self.worktree), session_dir=str(self.session_dir), home=str(self.home),
            tmp=str(self.tmp), channel=str(self.channel),
            readonly=(str(self.mirror_objects),) if self.mirror_objects else (),
            network=net, cwd=str(self.worktree),
        )
        if not self.sandbox.enabled:
            return adjusted, box
        return agent_environment(adjusted, box), box

    def allow_list(self, env: Mapping[str, str]) -> tuple[str, ...]:
        endpoints = egress.model_endpoints(env, _codex_config(env))
        return tuple(dict.fromkeys([*endpoints, *self.egress]))

    def _copy_config(self, name: str, source: Path) -> Path:
        """A copy the agent may change, never the operator's own folder (copied once per session)."""
        target = self.home / COPIES_FOLDER / name.lower()
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                target.mkdir()
            if self.sandbox.drops_uid:
                for root, folders, files in os.walk(target.parent):
                    for entry in [root, *(os.path.join(root, item) for item in (*folders, *files))]:
                        os.chown(entry, self.sandbox.agent_uid, self.sandbox.agent_gid,  # type: ignore[arg-type]
                                 follow_symlinks=False)
        return target

    def cgroup_name(self, name: str) -> str:
        """The cgroup of the process group `name` (`turn-3`, `setup`...): the same on every try of it."""
        return _CGROUP_NAME.sub("-", f"{self.cgroup_prefix}-{name}")[:200]

    def spawn(
        self,
        command: Sequence[str] | str,
        *,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        exit_path: Path,
    ) -> TurnHandle:
        """Start `command` in the box as a turn-like process group: the agent, `setup` or `test`."""
        adjusted, box = self.environment(env, network=True)
        if not self.sandbox.enabled:
            return processes.spawn_turn(command, cwd=self.worktree, env=adjusted, log_path=log_path,
                                        exit_path=exit_path)
        cgroup_name = self.cgroup_name(name)
        cgroup = limits.create(cgroup_name, self.turn_limits) if os.geteuid() == 0 else None
        if cgroup is not None:
            cgroup.kill_all()  # a leftover of an earlier try of the same turn
        proxy = proxy_argv(self.sandbox, str(self.channel), self.allow_list(adjusted))
        prelude = Prelude(
            cgroup=cgroup_name if cgroup is not None else None,
            cgroup_procs=tuple(cgroup.procs_files()) if cgroup is not None else (),
            proxy=tuple(limits.rlimit_args(self.turn_limits) + proxy),
        )
        sandbox = self.sandbox

        def wrap(argv: list[str]) -> list[str]:
            return limits.rlimit_args(self.turn_limits) + sandbox.wrap(argv, box)

        return processes.spawn_turn(command, cwd=self.worktree, env=adjusted, log_path=log_path,
                                    exit_path=exit_path, wrap=wrap, prelude=prelude)

    async def run(
        self,
        command: str,
        *,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        exit_path: Path,
        timeout_s: float,
        poll: float = 0.2,
    ) -> processes.TurnOutcome:
        """Run one `setup` or `test` command in the box to its end (or its time limit)."""
        handle = self.spawn(command, name=name, env=env, log_path=log_path, exit_path=exit_path)
        outcome = await processes.wait_turn(
            handle, max_runtime_s=timeout_s, idle_timeout_s=timeout_s, heartbeat=lambda: None, poll=poll,
            limit_check=self.limit_check(handle),
        )
        exceeded = self.finish(handle)
        if exceeded is not None and outcome.detail is None:
            outcome = processes.TurnOutcome(outcome.exit_code, processes.REASON_LIMIT, outcome.elapsed_s, exceeded)
        return outcome

    def limit_check(self, handle: TurnHandle) -> Callable[[], str | None]:
        """A check, run every few seconds while the turn lives, of limits no cgroup enforces."""
        budget = self.turn_limits.disk_bytes
        folders = [str(self.worktree), str(self.home), str(self.tmp)]

        def check() -> str | None:
            if handle.cgroup is not None:
                reason = limits.exceeded_reason(limits.open(handle.cgroup))
                if reason is not None:
                    return reason
            if limits.tree_size(folders, budget) > budget:
                return DISK_EXCEEDED.format(limit=limits.human_size(budget))
            return None

        return check

    def finish(self, handle: TurnHandle) -> str | None:
        """After the turn: the limit it went past, if any; its cgroup removed either way."""
        if handle.cgroup is None:
            return None
        cgroup = limits.open(handle.cgroup)
        if cgroup is None:
            return None
        reason = limits.exceeded_reason(cgroup)
        cgroup.kill_all()
        cgroup.remove()
        return reason

    def refused_hosts(self) -> dict:
        """What the egress proxy refused so far (for the status comment)."""
        return egress.read_stats(str(self.channel / STATS_NAME))


def _codex_config(env: Mapping[str, str]) -> str | None:
    home = env.get("CODEX_HOME")
    if not home:
        return None
    try:
        with open(os.path.join(home, "config.toml"), "rb") as stream:
            return stream.read(256 * 1024).decode("utf-8", errors="replace")
    except OSError:
        return None



def build_sandbox(settings: Settings, parent_env: Mapping[str, str], state_dir: Path) -> Sandbox:
    """The operator's sandbox: its mode, the agent's uid, and the folders of the configured agent CLIs."""
    path_env = parent_env.get("PATH") or os.environ.get("PATH")
    agent_paths: list[str] = []
    for program in ("claude", "codex"):
        agent_paths += cli_folders(program, path_env)
    agent_paths += command_files(settings.agent_command)
    return Sandbox.build(
        settings.sandbox,
        agent_user=settings.agent_user,
        extra_paths=parse_sandbox_paths(",".join(settings.sandbox_paths)),
        agent_paths=agent_paths,
        state_dir=state_dir,
    )


def for_session(
    workspaces: Workspaces, folder: str, worktree: Path, full_name: str, egress: Sequence[str]
) -> Confinement:
    """The confinement of the session whose control folder is `sessions/<folder>`; `egress` is the
    effective policy's `network.allow` (the operator's SHEPHERD_EGRESS, perhaps narrowed)."""
    return Confinement(
        sandbox=workspaces.sandbox,
        session_dir=workspaces.session_dir(folder),
        worktree=Path(worktree),
        mirror_objects=workspaces.mirror_path(full_name) / "objects",
        egress=tuple(egress),
        cgroup_prefix=f"{instance_tag(workspaces.data_dir)}-{folder}",
    )


def instance_tag(data_dir: os.PathLike[str] | str) -> str:
    """A short tag of this Shepherd's data folder for its cgroup names.

    Turn cgroups live under the hierarchy's root, shared by every Shepherd on the host; session
    folders (`owner__repo__issue__n`) repeat from one data folder to the next, so without the tag a
    second instance's "kill the leftover group of this turn" would kill the first one's running turn.
    """
    return hashlib.sha256(os.path.realpath(os.fspath(data_dir)).encode()).hexdigest()[:10]
