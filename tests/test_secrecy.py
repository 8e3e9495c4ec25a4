"""Shepherd's own process keeps its secrets out of reach (SPEC §4.1): gone from its environment once read, not dumpable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_support import wait_blocking
from tests.test_server_restart import Server

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SECRET = "s3cret-value-for-the-scrub-test"

# Run in a fresh interpreter: the test process's own environment must not be scrubbed.
SCRUB_PROGRAM = """
import os, subprocess, sys
from bot.agent.secrecy import scrub_environment
os.environ["HEAP_SECRET"] = sys.argv[1] + "-heap"  # setenv copies it to the heap, outside the block
removed = scrub_environment(["BLOCK_SECRET", "HEAP_SECRET", "NEVER_SET"])
block = open("/proc/self/environ", "rb").read()
child = subprocess.run(["env", "-0"], capture_output=True).stdout  # inherits libc's environ as is
print(removed)
print(sys.argv[1].encode() in block, b"BLOCK_SECRET" in block, b"KEEP=kept" in block)
print(sys.argv[1].encode() in child, b"KEEP=kept" in child, b"\\0\\0" in b"\\0" + child)
print("BLOCK_SECRET" in os.environ, "HEAP_SECRET" in os.environ, os.environ["KEEP"])
"""

UNDUMPABLE_PROGRAM = """
from bot.agent.secrecy import is_dumpable, make_undumpable
before = is_dumpable()
print(before, make_undumpable(), is_dumpable())
"""


def run_python(program: str, *args: str, env: dict[str, str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", program, *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_scrubbed_variables_are_gone_from_proc_environ_and_from_children():
    lines = run_python(SCRUB_PROGRAM, SECRET, env={"BLOCK_SECRET": SECRET, "KEEP": "kept"})
    assert lines == [
        "['BLOCK_SECRET', 'HEAP_SECRET']",
        "False False True",  # neither the value nor the name is left in /proc/self/environ
        "False True False",  # a child inherits neither, nor an empty leftover entry
        "False False kept",
    ]


def test_without_the_scrub_proc_environ_still_shows_an_unset_variable():
    """Why the scrub overwrites bytes: unsetting alone leaves the value readable in /proc."""
    program = (
        "import os, sys; os.environ.pop('BLOCK_SECRET');"
        "print(sys.argv[1].encode() in open('/proc/self/environ', 'rb').read())"
    )
    assert run_python(program, SECRET, env={"BLOCK_SECRET": SECRET}) == ["True"]


def test_make_undumpable_clears_the_dumpable_flag():
    assert run_python(UNDUMPABLE_PROGRAM, env={}) == ["True True False"]


@pytest.fixture
def nobody_folder() -> Iterator[Path]:
    """A folder the server can write when it runs as nobody (pytest's tmp_path is root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="shepherd-secrecy-"))
    os.chown(folder, NOBODY, NOBODY)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class NobodyServer(Server):
    """`python -m bot serve` as uid 65534, so that another process of that same uid can try to read it."""

    def start(self) -> subprocess.Popen:
        log = open(self.folder / f"server-{len(self.processes)}.log", "w")  # noqa: SIM115 - closed with the process
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        process = subprocess.Popen(
            [*drop, sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"],
            cwd=self.folder, env=self.environ, stdout=log, stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        wait_blocking(self._healthy, timeout=30)
        return process


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to read a non-dumpable process's environment, and setpriv")
def test_the_running_server_has_no_secret_in_its_environment_and_is_not_dumpable(fake_github, nobody_folder):
    server = NobodyServer(fake_github, nobody_folder, "true")
    try:
        process = server.start()
        proc = Path(f"/proc/{process.pid}")
        environ = (proc / "environ").read_bytes()
        key_lines = [line for line in fake_github.private_key_pem.splitlines() if not line.startswith("-----")]

        # What a root process sees: the settings that are not secret, none that are.
        assert f"SHEPHERD_DATA_DIR={server.data_dir}".encode() in environ
        assert fake_github.webhook_secret.encode() not in environ
        assert b"test-dashboard-token" not in environ
        assert not [line for line in key_lines if line.encode() in environ]
        assert b"GITHUB_PRIVATE_KEY" not in environ and b"GITHUB_WEBHOOK_SECRET" not in environ

        # It runs as nobody, and yet nobody cannot read it: the kernel hands a non-dumpable
        # process's /proc files to root.
        status = (proc / "status").read_text()
        assert f"Uid:\t{NOBODY}\t" in status
        assert (proc / "environ").stat().st_uid == 0
        peek = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "cat", str(proc / "environ")],
            capture_output=True, timeout=10,
        )
        assert peek.returncode != 0 and b"Permission denied" in peek.stderr
        assert fake_github.webhook_secret.encode() not in peek.stdout

        # A process of nobody's that is dumpable, for contrast: readable by nobody.
        contrast = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sleep", "30"]
        )
        try:
            wait_blocking(lambda: Path(f"/proc/{contrast.pid}/comm").read_text().strip() == "sleep", timeout=10)
            readable = subprocess.run(
                ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "cat", f"/proc/{contrast.pid}/environ"],
                capture_output=True, timeout=10,
            )
            assert readable.returncode == 0, readable.stderr
        finally:
            contrast.kill()
            contrast.wait()
    finally:
        server.stop()
