"""Hostile agents (issue 12, SPEC §4.1): real `command` agents attack Shepherd through the real engine.

Each test runs a shell agent that tries one family of attacks from inside its sandbox, writes what it
got into an observation folder (`SHEPHERD_SANDBOX_PATHS=<obs>:rw`, the operator's documented way to
widen the box), and then asserts three things: the attacker got nothing, Shepherd is still healthy
(another session runs to its end afterwards), and the attacking session ended in a known state.

Markers that only a process *outside* the box could write go to `<tmp>/host/`, a folder the box
cannot see at all: if one appears, something the agent planted ran Shepherd-side.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import secrets
import socket
import threading
from pathlib import Path

import psutil
import pytest

from bot.session import FinishWork, Mode, ReportFailure, State
from bot.settings import load_settings
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import REPO, build_harness, issue_ref, prepare_repo, wait_for

pytestmark = pytest.mark.timeout(180)

POLICY = "max_runtime_minutes: 1\nidle_timeout_minutes: 1\n"
ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)

# The agent every "is Shepherd still fine?" session runs: commit one file and say done.
BENIGN = """
echo "fine $SHEPHERD_ISSUE" > "fine-$SHEPHERD_ISSUE.txt"
git add "fine-$SHEPHERD_ISSUE.txt"
git commit -q -m "Benign work for $SHEPHERD_ISSUE"
shepherd done "benign work done"
"""


class Bed:
    """One engine on the fake GitHub with an observation folder and a host-only marker folder."""

    def __init__(self, fake, remote, tmp_path: Path) -> None:
        self.fake = fake
        self.remote = remote
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.obs = tmp_path / "obs"
        self.obs.mkdir()
        self.obs.chmod(0o1777)
        self.host = tmp_path / "host"  # never bound into a box; 0777 so even a dropped uid could write
        self.host.mkdir()
        self.host.chmod(0o777)
        self.key_file = tmp_path / "app-key.pem"
        self.key_file.write_text(fake.private_key_pem)
        self.key_file.chmod(0o600)
        self.harness = None
        self.scripts = 0

    def script(self, attack: str, benign: str = BENIGN, attack_issues: str = "1") -> str:
        """A command agent: `attack` on the issues named in `attack_issues` (a `case` pattern), else benign."""
        self.scripts += 1
        path = self.tmp / f"agent-{self.scripts}.sh"
        path.write_text(
            f'O={self.obs}\nH={self.host}\nD={self.data}\n'
            f'case "$SHEPHERD_ISSUE" in\n{attack_issues})\n{attack}\n;;\n*)\n{benign}\n;;\nesac\n'
        )
        path.chmod(0o644)
        return f"sh {path}"

    async def start(self, command: str, *, pool: int = 0, **env: str):
        environ = {
            "GITHUB_APP_ID": str(self.fake.app_id),
            "GITHUB_PRIVATE_KEY_PATH": str(self.key_file),
            "GITHUB_WEBHOOK_SECRET": self.fake.webhook_secret,
            "GITHUB_API_URL": self.fake.url,
            "SHEPHERD_DATA_DIR": str(self.data),
            "SHEPHERD_WRITE_SPACING_SECONDS": "0",
            "SHEPHERD_DASHBOARD_TOKEN": "dashboard-token-" + secrets.token_hex(8),
            "SHEPHERD_AGENT": "command",
            "SHEPHERD_AGENT_COMMAND": command,
            "SHEPHERD_SANDBOX_PATHS": f"{self.obs}:rw",
            "SHEPHERD_MAX_WORKERS": "3",
            "SHEPHERD_MAX_PER_REPO": "3",
            **({"SHEPHERD_WORKTREE_POOL": str(pool)} if pool else {}),
            **env,
        }
        settings = load_settings(environ, env_file=None)
        self.harness = await build_harness(self.fake, self.data, settings=settings)
        self.harness.workspaces.pool_size = settings.worktree_pool  # the harness leaves the pool off
        await self.harness.engine.start()
        return self.harness

    # -- sessions ----------------------------------------------------------------------------

    def issue(self, title: str, body: str = "") -> int:
        return self.fake.add_issue(REPO, title=title, body=body)["number"]

    async def trigger(self, number: int):
        session = await self.harness.engine.trigger(issue_ref(self.fake, number), mode=Mode.GO,
                                                    actor="alice", label="agent:go")
        assert session is not None
        return session

    def session(self, number: int):
        return self.harness.engine.last_session(REPO, number)

    async def settle(self, number: int, timeout: float = 90.0) -> State:
        def ended():
            session = self.session(number)
            return session is not None and session.state in ENDED and session.state
        return await wait_for(ended, timeout=timeout)

    def commands(self, number: int) -> list:
        session_id = self.session(number).id
        return [command for sid, command, _ in self.harness.publisher.calls if sid == session_id]

    def failure(self, number: int) -> ReportFailure | None:
        failures = [c for c in self.commands(number) if isinstance(c, ReportFailure)]
        return failures[-1] if failures else None

    def everything_published(self) -> str:
        return "\n".join(repr(command) for _, command, _ in self.harness.publisher.calls)

    async def benign_session_completes(self, title: str = "Is Shepherd still fine?") -> None:
        """Shepherd is healthy: a fresh session of another issue runs and pushes."""
        number = self.issue(title)
        session = await self.trigger(number)
        assert await self.settle(number) == State.COMPLETE, self.failure(number)
        assert self.remote.show(REPO, f"refs/heads/{session.branch}", f"fine-{number}.txt") == f"fine {number}\n"

    def host_markers(self) -> list[str]:
        return sorted(p.name for p in self.host.iterdir())

    def seen(self, name: str) -> str:
        path = self.obs / name
        assert path.exists(), f"the agent never wrote {name}: the attack did not run"
        return path.read_text(errors="replace")


@pytest.fixture
async def bed(fake_github, git_remote, tmp_path):  # noqa: F811 - fixture
    prepare_repo(fake_github, git_remote, policy=POLICY)
    made = Bed(fake_github, git_remote, tmp_path)
    yield made
    if made.harness is not None:
        await made.harness.close()
    _kill_marked(str(tmp_path))


def _kill_marked(marker: str) -> None:
    """Kill whatever process of this test is still around (only ever ours: its command line names our tmp)."""
    for process in _marked(marker):
        try:
            process.kill()
        except psutil.Error:
            pass


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid != os.getpid() and marker in " ".join(process.info["cmdline"] or ()):
                found.append(process)
        except psutil.Error:
            continue
    return found


# --- 1. secrets, other sessions, Shepherd's own process ----------------------------------------


async def test_agent_reads_no_secret_and_cannot_touch_shepherds_process(bed, monkeypatch):
    canary = "canary-" + secrets.token_hex(12)
    monkeypatch.setenv("SHEPHERD_TEST_CANARY", canary)  # in Shepherd's own /proc/<pid>/environ
    (bed.data).mkdir(parents=True, exist_ok=True)
    dotenv_secret = "dotenv-" + secrets.token_hex(12)
    (bed.data / ".env").write_text(f"GITHUB_WEBHOOK_SECRET={dotenv_secret}\n")
    (bed.tmp / ".env").write_text(f"GITHUB_WEBHOOK_SECRET={dotenv_secret}\n")
    token_secret = "token-" + secrets.token_hex(12)
    (bed.data / "dashboard_token").write_text(token_secret)
    shepherd_pid = os.getpid()
    mirror_config = f"$D/mirrors/{REPO}.git/config"
    attack = f"""
ls /proc | grep -E '^[0-9]+$' | while read p; do
  printf '%s %s\\n' "$p" "$(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null)"
done > $O/procs
for f in /proc/{shepherd_pid}/environ /proc/{shepherd_pid}/cmdline /proc/1/environ \\
         $D/shepherd.db $D/dashboard_token $D/.env {bed.tmp}/.env {bed.key_file} {mirror_config} \\
         /etc/shadow; do
  if cat "$f" > /dev/null 2>&1; then echo "READ $f"; cat "$f" | tr '\\0' '\\n'; else echo "DENIED $f"; fi
done > $O/files 2>&1
ls -la $D $D/sessions $D/mirrors $D/worktrees / > $O/listing 2>&1
echo "uid=$(id -u)" > $O/identity
kill -9 {shepherd_pid} 2> /dev/null; echo "kill-shepherd=$?" >> $O/identity
kill -9 1 2> /dev/null; echo "kill-init=$?" >> $O/identity
python3 - {shepherd_pid} >> $O/identity 2>&1 <<'EOF'
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
for pid in (int(sys.argv[1]), 1):
    result = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    print(f"ptrace-{{pid}}={{result}} errno={{ctypes.get_errno()}}")
EOF
echo attacked > attacked.txt && git add attacked.txt && git commit -q -m attacked
shepherd done "attacked"
echo "before-kill-all" >> $O/identity
kill -9 -1
"""
    await bed.start(bed.script(attack))
    number = bed.issue("Steal secrets")
    await bed.trigger(number)
    state = await bed.settle(number)

    # /proc shows only the box's own processes: no pytest, no Shepherd, no host process.
    procs = bed.seen("procs").splitlines()
    assert procs and len(procs) < 12, procs
    assert not any("-m pytest" in line or " proxy " in line or "process_api" in line for line in procs), procs
    assert any("agent-1.sh" in line for line in procs)  # it did see its own processes
    files = bed.seen("files")
    assert "READ" not in files, files
    for secret in (canary, dotenv_secret, token_secret, bed.fake.webhook_secret, "BEGIN RSA PRIVATE KEY",
                   "SQLite format", "[remote", "x-access-token"):
        assert secret not in files
    listing = bed.seen("listing")
    assert "shepherd.db" not in listing and "dashboard_token" not in listing and ".pool" not in listing
    identity = bed.seen("identity")
    assert "uid=0" not in identity and "uid=64" in identity
    assert "kill-shepherd=0" not in identity and "kill-init=0" not in identity
    assert "ptrace-" in identity and "=0 errno" not in identity, identity
    assert "before-kill-all" in identity
    # Shepherd lived through all of it (this very process), and the session ended in a known state:
    # the agent said done, then killed everything in its box.
    assert psutil.pid_exists(shepherd_pid)
    assert state in (State.COMPLETE, State.FAILED)
    await bed.benign_session_completes()


async def test_agent_cannot_read_another_sessions_worktree_or_prompt(bed):
    prompt_secret = "prompt-secret-" + secrets.token_hex(8)
    file_secret = "file-secret-" + secrets.token_hex(8)
    # No secret is written into the script (every box sees the operator's script): the victim takes
    # its file's content from its own prompt.
    victim = f"""
grep -o 'file-secret-[0-9a-f]*' "$SHEPHERD_PROMPT_FILE" | head -n 1 > victim.txt
touch $O/victim-ready
i=0; while [ ! -e $O/thief-done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
git add victim.txt && git commit -q -m "Victim work"
shepherd done "victim done"
"""
    thief = f"""
i=0; while [ ! -e $O/victim-ready ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
{{
  echo "worktree=$SHEPHERD_WORKTREE"
  ls -la "$(dirname "$SHEPHERD_WORKTREE")" 2>&1
  ls -la "$(dirname "$SHEPHERD_SESSION_DIR")" 2>&1
  cat "$(dirname "$SHEPHERD_WORKTREE")"/*/victim.txt 2>&1
  cat "$(dirname "$SHEPHERD_SESSION_DIR")"/*/prompt.md 2>&1
  cat $D/worktrees/{REPO}/*/victim.txt 2>&1
  cat $D/sessions/*/prompt.md 2>&1
  find / -name victim.txt -not -path '/proc/*' 2>/dev/null
  grep -rs 'secret-[0-9a-f]' /tmp $HOME "$(dirname "$SHEPHERD_SESSION_DIR")" 2>/dev/null
}} > $O/thief 2>&1
touch $O/thief-done
echo thief > thief.txt && git add thief.txt && git commit -q -m thief
shepherd done "thief done"
"""
    script = bed.script(
        f'if [ "$SHEPHERD_ISSUE" = 1 ]; then\n{victim}\nelse\n{thief}\nfi', attack_issues="1|2")
    await bed.start(script)
    first = bed.issue("Victim", body=f"Keep this private: {prompt_secret}\nAnd this: {file_secret}")
    second = bed.issue("Thief")
    await bed.trigger(first)
    await bed.trigger(second)
    assert await bed.settle(first) == State.COMPLETE
    assert await bed.settle(second) == State.COMPLETE
    seen = bed.seen("thief")
    assert "worktree=" in seen
    assert file_secret not in seen and prompt_secret not in seen, seen
    assert "victim" not in seen.replace("victim.txt", ""), seen  # not even the victim's folder name
    # The victim's own session saw its prompt; the work of both landed on their own branches.
    assert bed.remote.show(REPO, f"refs/heads/{bed.session(first).branch}", "victim.txt") == file_secret + "\n"
    assert bed.remote.show(REPO, f"refs/heads/{bed.session(second).branch}", "victim.txt") is None


# --- 2. daemons ---------------------------------------------------------------------------------


async def test_no_daemon_outlives_the_turn(bed):
    mark = "hostile-daemon-" + secrets.token_hex(6)
    attack = f"""
setsid nohup sh -c 'sleep 300; : {mark}-setsid' > /dev/null 2>&1 &
( ( sh -c 'sleep 300; : {mark}-double' > /dev/null 2>&1 & ) & )
python3 -c '
import os, sys, time
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
time.sleep(300)
' {mark}-python > /dev/null 2>&1 &
i=0; while [ ! -e $O/ack ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo daemon > daemon.txt && git add daemon.txt && git commit -q -m daemon
shepherd done "left daemons"
"""
    await bed.start(bed.script(attack))
    number = bed.issue("Leave a daemon")
    await bed.trigger(number)
    # While the turn runs the daemons exist (the test would see them on the host)...
    await wait_for(lambda: len(_marked(mark)) >= 3, timeout=30)
    (bed.obs / "ack").touch()
    assert await bed.settle(number) == State.COMPLETE
    # ...and once it ended, none of them is left anywhere on the host.
    await wait_for(lambda: not _marked(mark), timeout=15)
    await bed.benign_session_completes()
    assert not _marked(mark)
