"""The box every agent turn, `setup` and `test` command, and every git command on an agent's repository runs in (SPEC §4.1).

How the box is made, and why this way:

- **bubblewrap as root, then a real uid.** When Shepherd runs as root, `bwrap` itself runs as root so it
  can bind folders that only root may traverse (the data folder is 0700, the interpreter may live under
  `/root`), and makes the pid, ipc, uts, net and mount namespaces. Inside, `setpriv` drops to the agent's
  unprivileged uid with no capabilities and `no_new_privs`, and `unshare --user` puts it in a user
  namespace of its own. `bwrap --uid` alone would leave the process root outside the namespace
  (shared/notes/sandbox.md). When Shepherd runs as an ordinary user, bwrap makes every namespace,
  the user one included, and the agent keeps that uid outside.
- **Files.** A fresh root holds only: the system folders read-only, the interpreter Shepherd's
  agent-only tool runs with, the agent CLI's folders, `SHEPHERD_SANDBOX_PATHS`, the session's control
  folder read-only with its report channel writable on top, its worktree, a private HOME and /tmp,
  and the mirror's objects read-only (the session repository borrows them as alternates). Paths keep
  their real names inside, so logs and messages read the same on both sides.
- **Processes.** The pid namespace dies with its first process, so nothing started inside (double
  fork, `setsid`, `nohup`) outlives the box; `--die-with-parent` ties that first process to bwrap.
- **Network.** None of its own (`--unshare-net`). With egress, a forwarder started inside listens on
  the box's own loopback and relays to Shepherd's egress proxy through a Unix socket in the channel
  folder; the proxy runs in a box of its own that shares the host network (see `bot/agent/egress.py`).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EGRESS_SCRIPT = Path(__file__).with_name("egress.py")
BOX_GIT_SCRIPT = Path(__file__).with_name("box_git.py")
PROXY_PORT = 3128
READY_WAIT_STEPS = 500  # 0.02 s each: at most 10 s for the forwarder and the proxy to come up
SOCKET_NAME = "egress.sock"
# The channel is also shown here, in both the agent's box and the proxy's: a Unix socket path must be
# short (108 bytes), and a data folder's may not be.
SOCKET_MOUNT = "/run/shepherd"
SOCKET_PATH = f"{SOCKET_MOUNT}/{SOCKET_NAME}"
STATS_NAME = "egress.json"
CHANNEL_FOLDER = "channel"
HOME_FOLDER = "home"
TMP_FOLDER = "tmp"
TOOLS_FOLDER = "bin"
SYSTEM_FOLDERS = ("/usr", "/etc")
LINKED_ROOTS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
AGENT_UID_RANGE = range(64000, 65000)
AGENT_NAME = "agent"
MODES = ("bwrap", "none")

NO_BWRAP = "bubblewrap (bwrap) is not installed; install Debian's `bubblewrap` or set SHEPHERD_SANDBOX=none"
NO_SETPRIV = "setpriv and unshare (util-linux) are needed to drop agents to their own uid"
SANDBOX_OFF_WARNING = (
    "SHEPHERD_SANDBOX=none: agents run WITHOUT a sandbox, as Shepherd's own user, and can read "
    "Shepherd's data folder, secrets and every other session"
)
AGENT_UID_IS_SHEPHERDS = "SHEPHERD_AGENT_USER must not be Shepherd's own user or root (uid {uid})"


class SandboxError(Exception):
    """The sandbox cannot be built on this machine as configured."""


@dataclass(frozen=True)
class ExtraPath:
    """One `SHEPHERD_SANDBOX_PATHS` entry."""

    path: str
    writable: bool = False


def parse_sandbox_paths(text: str) -> tuple[ExtraPath, ...]:
    """`/a,/b:rw` into entries; raises ValueError with a sentence on a relative path or a bad suffix."""
    entries = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        path, writable = item, False
        if item.endswith(":rw"):
            path, writable = item[: -len(":rw")], True
        elif item.endswith(":ro"):
            path = item[: -len(":ro")]
        if not os.path.isabs(path):
            raise ValueError(f"{item!r} is not an absolute path")
        entries.append(ExtraPath(os.path.normpath(path), writable))
    return tuple(entries)


def pick_agent_uid(user: str | None) -> tuple[int, int]:
    """The uid and gid agents run as: the named user's, or the first uid of our range no user has."""
    shepherd = os.geteuid()
    if user:
        entry = pwd.getpwnam(user)
        if entry.pw_uid in (0, shepherd):
            raise SandboxError(AGENT_UID_IS_SHEPHERDS.format(uid=entry.pw_uid))
        return entry.pw_uid, entry.pw_gid
    taken = {entry.pw_uid for entry in pwd.getpwall()}
    for uid in AGENT_UID_RANGE:
        if uid not in taken and uid != shepherd:
            return uid, uid
    raise SandboxError("no free uid for agents in 64000-64999; set SHEPHERD_AGENT_USER")


def interpreter() -> str:
    """Shepherd's own interpreter as a real file: the agent-only tool and the forwarder run with it."""
    return os.path.realpath(sys.executable)


def interpreter_prefix() -> str:
    return os.path.realpath(sys.base_prefix)


def cli_folders(program: str | None, path_env: str | None) -> tuple[str, ...]:
    """The folders an agent CLI needs, read-only: its npm `node_modules` tree, or its own folder."""
    if not program:
        return ()
    found = shutil.which(program, path=path_env) if not os.path.isabs(program) else program
    if not found:
        return ()
    folders = {os.path.dirname(os.path.abspath(found))}
    real = os.path.realpath(found)
    parts = Path(real).parts
    if "node_modules" in parts:
        index = len(parts) - 1 - parts[::-1].index("node_modules")
        folders = {str(Path(*parts[: index + 1]))}
    else:
        folders.add(os.path.dirname(real))
    return tuple(sorted(folders))


def command_files(command_line: str | None) -> tuple[str, ...]:
    """Absolute paths of existing files named on a `command` agent's line, shown read-only.

    Only files, never their folders: a script beside the data folder must not bring the folder in.
    """
    if not command_line:
        return ()
    try:
        words = shlex.split(command_line)
    except ValueError:
        return ()
    files = []
    for word in words:
        if os.path.isabs(word) and os.path.isfile(word):
            files.append(os.path.normpath(word))
    return tuple(dict.fromkeys(files))


@dataclass(frozen=True)
class Network:
    """The egress of one box: where the proxy listens and which loopback ports tunnel through it."""

    socket: str
    tunnels: tuple[tuple[int, str, int], ...] = ()

    def forwarder(self, python: str) -> list[str]:
        argv = [python, "-I", str(EGRESS_SCRIPT), "forward", "--socket", self.socket,
                "--listen-port", str(PROXY_PORT)]
        for local, host, remote in self.tunnels:
            argv += ["--tunnel", f"{local}:{host}:{remote}"]
        return argv


@dataclass(frozen=True)
class Box:
    """What one sandboxed command sees besides the system: its folders and its network."""

    worktree: str | None = None
    session_dir: str | None = None
    home: str | None = None
    tmp: str | None = None
    channel: str | None = None
    readonly: tuple[str, ...] = ()
    network: Network | None = None
    share_net: bool = False
    cwd: str | None = None


@dataclass(frozen=True)
class Sandbox:
    """The operator's sandbox settings, and the argv builder for every box."""

    mode: str = "bwrap"
    agent_uid: int | None = None
    agent_gid: int | None = None
    extra_paths: tuple[ExtraPath, ...] = ()
    agent_paths: tuple[str, ...] = ()
    passwd_file: str | None = None
    bwrap: str = "bwrap"
    python: str = field(default_factory=interpreter)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def drops_uid(self) -> bool:
        return self.enabled and self.agent_uid is not None

    @classmethod
    def build(
        cls,
        mode: str,
        *,
        agent_user: str | None,
        extra_paths: Sequence[ExtraPath] = (),
        agent_paths: Sequence[str] = (),
        state_dir: Path,
    ) -> Sandbox:
        """The sandbox for this machine; raises SandboxError when `mode` cannot work here."""
        if mode not in MODES:
            raise SandboxError(f"SHEPHERD_SANDBOX must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "none":
            return cls(mode="none")
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError(NO_BWRAP)
        uid = gid = None
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None or shutil.which("unshare") is None:
                raise SandboxError(NO_SETPRIV)
            uid, gid = pick_agent_uid(agent_user)
        passwd = write_identity_files(state_dir, uid, gid)
        return cls(
            mode="bwrap", agent_uid=uid, agent_gid=gid, extra_paths=tuple(extra_paths),
            agent_paths=tuple(dict.fromkeys(agent_paths)), passwd_file=passwd, bwrap=bwrap,
        )

    # -- ownership ---------------------------------------------------------------------------------

    def own(self, path: Path, mode: int = 0o700) -> Path:
        """Create `path` (if missing) as a folder the agent owns."""
        path.mkdir(parents=True, exist_ok=True)
        if self.drops_uid:
            os.chown(path, self.agent_uid, self.agent_gid, follow_symlinks=False)  # type: ignore[arg-type]
        path.chmod(mode)
        return path

    # -- argv ----------------------------------------------------------------------------------------

    def wrap(self, argv: Sequence[str], box: Box) -> list[str]:
        """The whole command line that runs `argv` inside `box` (or `argv` itself when disabled)."""
        inner = list(argv)
        if box.network is not None and self.enabled:
            forwarder = shlex.join(box.network.forwarder(self.python))
            # The agent starts once the forwarder listens on the box's loopback (/proc/net/tcp of the
            # box's own network; its tunnels open before this port). Otherwise the agent's first
            # requests race it and fail as "connection refused". The forwarder itself waits for the
            # egress proxy's socket, which starts at the same moment, so the agent need not.
            ready = f"grep -q ':{PROXY_PORT:04X} 00000000:0000 0A' /proc/net/tcp 2>/dev/null"
            wait = f"i=0; until {ready} || [ $i -ge {READY_WAIT_STEPS} ]; do sleep 0.02; i=$((i+1)); done; "
            inner = ["/bin/sh", "-c", f'{forwarder} </dev/null & {wait}exec "$@"', "shepherd-box", *inner]
        if not self.enabled:
            # No box to --chdir: the command must still run where the box would have put it, never
            # in Shepherd's own working folder (a session repository's `git init .` / `reset --hard`
            # there would wipe Shepherd's checkout). `env -C` fails rather than fall back.
            cwd = box.cwd or box.worktree
            return ["env", "-C", cwd, "--", *inner] if cwd else inner
        if self.drops_uid:
            inner = [
                "setpriv", f"--reuid={self.agent_uid}", f"--regid={self.agent_gid}", "--clear-groups",
                "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
                "unshare", "--user", "--map-current-user", "--", *inner,
            ]
        return [self.bwrap, *self._options(box), "--", *inner]

    def _options(self, box: Box) -> list[str]:
        options = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                   "--unshare-cgroup-try", "--hostname", "shepherd-agent"]
        if not box.share_net:
            options.append("--unshare-net")
        if not self.drops_uid:
            options += ["--unshare-user", "--disable-userns"]
        mounts = _Mounts()
        for folder in SYSTEM_FOLDERS:
            mounts.bind(folder, readonly=True)
        for link in LINKED_ROOTS:
            if os.path.islink(link):
                mounts.symlink(os.readlink(link), link)
            elif os.path.isdir(link):
                mounts.bind(link, readonly=True)
        mounts.raw("--proc", "/proc")
        mounts.raw("--dev", "/dev")
        # /tmp first: later binds may live under it (a data folder in /tmp) and must stay on top.
        if box.tmp is not None:
            mounts.bind(box.tmp, "/tmp", readonly=False)
        else:
            mounts.options += ["--perms", "1777"]  # bwrap's tmpfs would be root's alone
            mounts.raw("--tmpfs", "/tmp")
        if self.passwd_file is not None:
            mounts.bind(self.passwd_file, "/etc/passwd", readonly=True)
            mounts.bind(self.passwd_file + ".group", "/etc/group", readonly=True)
        prefix = interpreter_prefix()
        if not prefix.startswith("/usr/"):
            mounts.bind(prefix, readonly=True)
        if not self.python.startswith((prefix + os.sep, "/usr/")):
            mounts.bind(os.path.dirname(self.python), readonly=True)
        if box.network is not None or box.share_net:
            mounts.bind(str(EGRESS_SCRIPT), readonly=True)
        mounts.bind(str(BOX_GIT_SCRIPT), readonly=True)
        for folder in self.agent_paths:
            if os.path.exists(folder):
                mounts.bind(folder, readonly=True)
        for extra in self.extra_paths:
            if os.path.exists(extra.path):
                mounts.bind(extra.path, readonly=not extra.writable)
        for path in box.readonly:
            if os.path.exists(path):
                mounts.bind(path, readonly=True)
        if box.session_dir is not None:
            mounts.bind(box.session_dir, readonly=True)
        if box.channel is not None:
            mounts.bind(box.channel, readonly=False)
            mounts.bind(box.channel, SOCKET_MOUNT, readonly=False)
        if box.home is not None:
            mounts.bind(box.home, readonly=False)
        if box.worktree is not None:
            mounts.bind(box.worktree, readonly=False)
        cwd = box.cwd or box.worktree or box.home or "/"
        return [*options, *mounts.options, "--chdir", cwd]


class _Mounts:
    """bwrap mount options, with every parent folder made 0755 first (bwrap would make them 0700)."""

    def __init__(self) -> None:
        self.options: list[str] = []
        self._made: set[str] = {"/"}

    def _parents(self, dest: str) -> None:
        parents = []
        parent = os.path.dirname(dest)
        while parent not in self._made:
            parents.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(parents):
            self.options += ["--perms", "0755", "--dir", folder]
            self._made.add(folder)

    def bind(self, source: str, dest: str | None = None, *, readonly: bool) -> None:
        target = dest or source
        self._parents(target)
        self.options += ["--ro-bind" if readonly else "--bind", source, target]
        self._made.add(target)

    def symlink(self, target: str, link: str) -> None:
        self.options += ["--symlink", target, link]
        self._made.add(link)

    def raw(self, option: str, dest: str) -> None:
        self._parents(dest)
        self.options += [option, dest]
        self._made.add(dest)


def proxy_argv(sandbox: Sandbox, channel: str, allow: Sequence[str]) -> list[str]:
    """The egress proxy of one turn, in a box of its own that shares the host network.

    It runs as the agent's uid with nothing but the channel folder writable, so a flaw in it gives
    an attacker no more than the agent already has.
    """
    argv = [sandbox.python, "-I", str(EGRESS_SCRIPT), "proxy",
            "--socket", SOCKET_PATH, "--stats", os.path.join(channel, STATS_NAME)]
    for pattern in allow:
        argv += ["--allow", pattern]
    return sandbox.wrap(argv, Box(channel=channel, share_net=True, cwd=channel))


def write_identity_files(state_dir: Path, uid: int | None, gid: int | None) -> str:
    """A passwd and group for inside the box that name the agent, so tools that look up their user work."""
    state_dir.mkdir(parents=True, exist_ok=True)
    passwd = state_dir / "passwd"
    lines = ["root:x:0:0:root:/root:/bin/sh", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"]
    groups = ["root:x:0:", "nogroup:x:65534:"]
    if uid is not None:
        lines.append(f"{AGENT_NAME}:x:{uid}:{gid}:Shepherd agent:/tmp:/bin/sh")
        groups.append(f"{AGENT_NAME}:x:{gid}:")
    passwd.write_text("\n".join(lines) + "\n")
    passwd.chmod(0o644)
    group = state_dir / "passwd.group"
    group.write_text("\n".join(groups) + "\n")
    group.chmod(0o644)
    return str(passwd)


def agent_environment(env: Mapping[str, str], box: Box) -> dict[str, str]:
    """The agent's environment adjusted to its box: its own HOME and TMPDIR, and the proxy variables."""
    from bot.agent import egress  # stdlib-only module, imported lazily to keep this one light

    adjusted = dict(env)
    if box.home is not None:
        adjusted["HOME"] = box.home
    adjusted["TMPDIR"] = "/tmp"
    if box.network is not None:
        adjusted.update(egress.proxy_environment(PROXY_PORT))
    return adjusted


def loopback_tunnels(endpoints: Iterable[str]) -> tuple[tuple[int, str, int], ...]:
    """Endpoints on the host's loopback, as tunnels from the same port on the box's own loopback."""
    tunnels = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")
        if host in ("127.0.0.1", "localhost", "::1") and port.isdigit() and int(port) != PROXY_PORT:
            tunnels.append((int(port), host, int(port)))
    return tuple(dict.fromkeys(tunnels))
