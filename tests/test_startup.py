"""Start-up problems of a real `python -m bot serve` (issue 16): one clean line on stderr and exit code 2,
before anything claims to listen or prints a setup URL."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e_support import wait_blocking
from tests.fakes.ports import free_port

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def serve_environ(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """Setup mode (no App credentials) on one port and one data folder; the agent is a plain command."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir.parent),
        "PYTHONPATH": str(ROOT),
        "SHEPHERD_DATA_DIR": str(data_dir),
        "SHEPHERD_AGENT": "command",
        "SHEPHERD_AGENT_COMMAND": "true",
        "PORT": str(port),
        **extra,
    }


def run_serve(folder: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"],
        cwd=folder, env=environ, capture_output=True, text=True, timeout=60,
    )


def assert_refused_with_one_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("shepherd: cannot start: ")
    for needle in needles:
        assert needle in lines[0]
    assert "listening" not in done.stderr and "/setup?code=" not in done.stderr
    assert done.stdout == ""


def test_a_port_in_use_is_one_line_and_exit_code_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_serve(tmp_path, serve_environ(tmp_path / "data", port))
    assert_refused_with_one_line(done, f"port {port}", "already in use", "PORT")


def test_a_data_folder_that_cannot_be_written_is_one_line_and_exit_code_2(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder's parent should be\n")
    done = run_serve(tmp_path, serve_environ(blocker / "data", free_port()))
    assert_refused_with_one_line(done, str(blocker / "data"), "SHEPHERD_DATA_DIR")


def test_a_second_server_on_the_same_data_folder_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    first_port = free_port()
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    first = subprocess.Popen(
        [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"],
        cwd=tmp_path, env=serve_environ(data_dir, first_port), stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def healthy() -> bool:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{first_port}/healthz", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_blocking(healthy, timeout=30)
        done = run_serve(tmp_path, serve_environ(data_dir, free_port()))
        assert_refused_with_one_line(done, "another Shepherd server", str(data_dir))
        assert first.poll() is None  # the first one is untouched
    finally:
        first.terminate()
        first.wait(timeout=30)
        log.close()
    # Once the first one has stopped, the folder is free again: the lock is not a file left behind.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_serve(tmp_path, serve_environ(data_dir, port))
    assert_refused_with_one_line(done, "already in use")


def test_a_missing_agent_cli_refuses_to_start_and_says_how(tmp_path):
    environ = serve_environ(tmp_path / "data", free_port(), SHEPHERD_AGENT="claude")
    environ["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # what this machine has, without the pinned CLI
    del environ["SHEPHERD_AGENT_COMMAND"]
    done = run_serve(tmp_path, environ)
    assert_refused_with_one_line(done, "`claude`", "scripts/serve", "npm install -g @anthropic-ai/claude-code@2.1.197")


def test_an_agent_cli_whose_interpreter_is_missing_refuses_to_start_and_names_it(tmp_path):
    # Claude Code and Codex are node scripts: on a machine without node, `claude` is on PATH, yet every turn
    # would fail with exit code 127 ("env: 'node': No such file or directory").
    cli_dir = tmp_path / "cli"
    cli_dir.mkdir()
    cli = cli_dir / "claude"
    cli.write_text("#!/usr/bin/env shepherd-test-no-such-node\nconsole.log('hi')\n")
    cli.chmod(0o755)
    environ = serve_environ(tmp_path / "data", free_port(), SHEPHERD_AGENT="claude")
    environ["PATH"] = f"{cli_dir}:/usr/local/bin:/usr/bin:/bin"
    del environ["SHEPHERD_AGENT_COMMAND"]
    done = run_serve(tmp_path, environ)
    assert_refused_with_one_line(done, "`claude`", "`shepherd-test-no-such-node`")


def test_a_worker_host_without_the_agent_cli_refuses_before_it_reaches_temporal(tmp_path, fake_github):
    # `python -m bot worker` is the process that runs the turns on Temporal: it checks the CLI as `serve` does.
    with socket.socket() as temporal:  # where the worker would connect: nothing may knock
        temporal.bind(("127.0.0.1", 0))
        temporal.listen()
        address = "127.0.0.1:%d" % temporal.getsockname()[1]
        environ = serve_environ(
            tmp_path / "data", free_port(), SHEPHERD_AGENT="claude", SHEPHERD_ENGINE="temporal",
            TEMPORAL_ADDRESS=address, GITHUB_APP_ID=str(fake_github.app_id),
            GITHUB_PRIVATE_KEY=fake_github.private_key_pem, GITHUB_WEBHOOK_SECRET=fake_github.webhook_secret,
            GITHUB_API_URL=fake_github.url,
        )
        environ["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # what this machine has, without the pinned CLI
        del environ["SHEPHERD_AGENT_COMMAND"]
        done = subprocess.run([sys.executable, "-m", "bot", "worker"], cwd=tmp_path, env=environ,
                              capture_output=True, text=True, timeout=60)
        temporal.setblocking(False)
        with pytest.raises(BlockingIOError):  # no connection is waiting to be accepted
            temporal.accept()
    assert_refused_with_one_line(done, "`claude`", "npm install -g @anthropic-ai/claude-code@2.1.197")
    assert address not in done.stderr


def test_the_pinned_agent_cli_lets_it_start(tmp_path):
    # The version the tests run (tests/vendor) is the one start-up asks for and scripts/serve installs.
    import json

    from bot.agent.adapters import AGENT_CLI_PACKAGES

    vendored = json.loads((ROOT / "tests" / "vendor" / "package.json").read_text())["dependencies"]
    assert {package: vendored[package] for package, _ in AGENT_CLI_PACKAGES.values()} == dict(
        AGENT_CLI_PACKAGES.values())
    bin_dir = ROOT / "tests" / "vendor" / "node_modules" / ".bin"
    if not (bin_dir / "claude").exists():
        pytest.skip("the pinned claude is not installed (scripts/setup --test)")
    with socket.socket() as taken:  # stops right after the agent check, at the port: no server to clean up
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        environ = serve_environ(tmp_path / "data", taken.getsockname()[1], SHEPHERD_AGENT="claude")
        environ["PATH"] = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"
        done = run_serve(tmp_path, environ)
    assert_refused_with_one_line(done, "already in use")


def _bin_without_npm(folder: Path, *extra: Path) -> str:
    """A PATH with the shell tools scripts need, and no npm (so nothing is fetched from a registry)."""
    folder.mkdir()
    for tool in ("bash", "env", "dirname", "cat"):
        (folder / tool).symlink_to(f"/usr/bin/{tool}")
    return ":".join([str(folder), *map(str, extra)])


def run_install_agent(tmp_path: Path, path: str, **settings: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": path, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "SHEPHERD_PYTHON": sys.executable,
               "SHEPHERD_DATA_DIR": str(tmp_path / "data"), **settings}
    return subprocess.run([str(ROOT / "scripts" / "install-agent")], env=environ, capture_output=True, text=True,
                          timeout=60)


def test_scripts_serve_installs_the_agent_cli_for_both_engines(tmp_path):
    # `scripts/serve --temporal` runs its worker host (the one that runs turns) with the CLI on PATH too.
    lines = [line.strip() for line in (ROOT / "scripts" / "serve").read_text().splitlines()]
    install = lines.index("scripts/install-agent")
    path = next(i for i, line in enumerate(lines) if line.startswith("export PATH=") and "agent-cli" in line)
    runs = [i for i, line in enumerate(lines) if line.startswith("exec ")]
    assert any("bot.temporal.local" in lines[i] for i in runs) and any("bot serve" in lines[i] for i in runs)
    assert install < path < min(runs)


def test_scripts_serve_refuses_in_one_line_when_npm_cannot_install_the_agent_cli(tmp_path):
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed")
    # A real npm, with an empty cache, asking a registry that is not there.
    folder = tmp_path / "agent-cli"
    done = run_install_agent(tmp_path, f"{Path(npm).parent}:/usr/bin:/bin", SHEPHERD_AGENT_CLI_DIR=str(folder),
                             npm_config_registry=f"http://127.0.0.1:{free_port()}/",
                             npm_config_cache=str(tmp_path / "npm-cache"), npm_config_fetch_retries="0")
    assert done.returncode == 2, done.stderr
    # What it was doing, then one line saying what failed and how to do it by hand; none of npm's own.
    doing, line = done.stderr.strip().splitlines()
    assert doing.startswith("install-agent: installing the agent CLI @anthropic-ai/claude-code@2.1.197")
    assert line.startswith("shepherd: cannot start: npm could not install the agent CLI `claude` "
                           "(@anthropic-ai/claude-code@2.1.197; ")
    assert "npm install -g @anthropic-ai/claude-code@2.1.197" in line  # how to do it by hand
    log = folder / "npm-install.log"
    assert str(log) in line and "ECONNREFUSED" in log.read_text()  # npm's own words are kept, not printed


def test_scripts_serve_refuses_in_one_line_when_it_cannot_install_the_agent_cli(tmp_path):
    done = run_install_agent(tmp_path, _bin_without_npm(tmp_path / "bin"))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("shepherd: cannot start: the agent CLI `claude` is not installed")
    assert "@anthropic-ai/claude-code@2.1.197" in line and "npm" in line
    assert not (ROOT / ".agent-cli").exists() or (ROOT / ".agent-cli").is_dir()


def test_scripts_serve_uses_an_agent_cli_on_path_without_npm_and_skips_command_agents(tmp_path):
    vendored = ROOT / "tests" / "vendor" / "node_modules" / ".bin"
    if not (vendored / "claude").exists():
        pytest.skip("the pinned claude is not installed (scripts/setup --test)")
    path = _bin_without_npm(tmp_path / "bin", vendored)
    done = run_install_agent(tmp_path, path)
    assert done.returncode == 0 and "using the claude on PATH" in done.stderr
    done = run_install_agent(tmp_path, path, SHEPHERD_AGENT="command", SHEPHERD_AGENT_COMMAND="true")
    assert (done.returncode, done.stderr) == (0, "")
