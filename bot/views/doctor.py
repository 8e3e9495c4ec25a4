"""`shepherd doctor`: read-only checks of the settings, the App's credentials and installations, git and the agent CLI.

GitHub is asked through PyGithub (a plain synchronous client is the right tool for a one-shot
diagnostic; the service's own client is async and paced) and only with GET requests: `GET /app` with
the App's JWT and `GET /app/installations`. No token is minted, nothing is written.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.github.manifest import required_permissions
from bot.github.reachability import unreachable_reason
from bot.agent.adapters import agent_cli_install_spec
from bot.settings import PUBLIC_URL_VAR, Settings, SettingsError, load_settings

DOCTOR_HELP = "check the settings, the GitHub App (read-only), git and the agent CLI, and say what to fix"
GITHUB_TIMEOUT_SECONDS = 10
VERSION_TIMEOUT_SECONDS = 30
MIN_GIT_VERSION = (2, 25)  # `git worktree` as Shepherd uses it, and `-c` overrides for the mirror

SETTINGS_OK = "settings load ({mode} mode)"
SETTINGS_BAD = "the settings are invalid: {problem}"
SETTINGS_FIX = "fix the variable in the environment or in .env, then run `shepherd doctor` again"
SETUP_MODE = "no GitHub App credentials yet (setup mode)"
SETUP_MODE_FIX = "run `python -m bot serve` and open the /setup?code=... URL it logs to register the App"
UNREACHABLE_URL = "{var}={reason}: GitHub cannot deliver webhooks there"
UNREACHABLE_URL_FIX = (
    "set {var} to the public https:// URL that reaches this server (a proxy, or a cloudflared or ngrok "
    "tunnel: see docs/setup.md)"
)
DATA_DIR_OK = "data folder {path} is usable"
DATA_DIR_MISSING = "data folder {path} does not exist yet (created at first start)"
DATA_DIR_BAD = "data folder {path} is not writable"
DATA_DIR_FIX = "make it writable by the user that runs Shepherd, or set SHEPHERD_DATA_DIR"
DATA_DIR_OPEN = "data folder {path} has mode {mode:o}; others can read Shepherd's state"
DATA_DIR_OPEN_FIX = "chmod 700 {path}"
APP_OK = "authenticated as the GitHub App {name!r} (id {app_id}) at {api_url}"
APP_REFUSED = "GitHub at {api_url} refused the App's credentials ({status})"
APP_REFUSED_FIX = (
    "check GITHUB_APP_ID and the private key: generate a new private key on the App's settings page "
    "and set GITHUB_PRIVATE_KEY (or GITHUB_PRIVATE_KEY_PATH)"
)
APP_ERROR = "GitHub at {api_url} answered {status} to GET /app"
APP_ERROR_FIX = "check GITHUB_API_URL (GitHub Enterprise Server: https://HOST/api/v3) and try again later"
UNREACHABLE = "cannot reach GitHub at {api_url}: {reason}"
UNREACHABLE_FIX = "check GITHUB_API_URL, this machine's network, proxy and DNS"
NO_INSTALLATIONS = "the App is not installed anywhere yet"
NO_INSTALLATIONS_FIX = "install it on your repositories: {url}"
INSTALLATION_OK = "installed on {account} ({repositories}); permissions complete"
INSTALLATION_SUSPENDED = "the installation on {account} is suspended"
INSTALLATION_SUSPENDED_FIX = "unsuspend it in {account}'s settings (Settings > GitHub Apps)"
INSTALLATION_MISSING = "the installation on {account} lacks {missing}"
INSTALLATION_MISSING_FIX = (
    "accept the App's new permissions in {account}'s settings (Settings > GitHub Apps > Configure), or "
    "give the App these permissions on its settings page"
)
INSTALLATION_WORKFLOWS = "the installation on {account} may write workflows: pushes could change CI"
INSTALLATION_WORKFLOWS_FIX = "remove the `workflows` permission from the App (app.yml leaves it out on purpose)"
GIT_OK = "git {version}"
GIT_MISSING = "git is not installed"
GIT_MISSING_FIX = "install git {minimum} or newer (Debian: apt-get install git)"
GIT_OLD = "git {version} is older than {minimum}"
AGENT_OK = "agent CLI {name}: {version}"
AGENT_MISSING = "the agent CLI {binary!r} ({name}) is not on PATH"
AGENT_MISSING_FIX = {
    "claude": "run scripts/serve (it installs it), or npm install -g {spec}, or set SHEPHERD_AGENT",
    "codex": "run scripts/serve (it installs it), or npm install -g {spec}, or set SHEPHERD_AGENT",
    "command": "check SHEPHERD_AGENT_COMMAND: its program must be on PATH",
}
AGENT_BROKEN = "the agent CLI {binary!r} failed to print its version: {reason}"
AGENT_BROKEN_FIX = "run `{binary} --version` yourself and fix what it reports"
SUMMARY_OK = "Everything Shepherd needs looks right."
SUMMARY_PROBLEMS = "{count} problem(s) to fix."


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


MARKS = {Level.OK: "[ok]  ", Level.WARN: "[warn]", Level.FAIL: "[FAIL]"}
_LEVELS = {"none": 0, "read": 1, "write": 2, "admin": 3}


@dataclass(frozen=True)
class Finding:
    """One check's outcome, and what to do about it when it is not fine."""

    level: Level
    check: str
    message: str
    fix: str | None = None


Runner = Callable[..., subprocess.CompletedProcess]


def check_settings(environ: Mapping[str, str] | None, env_file: Path | None) -> tuple[Settings | None, list[Finding]]:
    try:
        settings = load_settings(environ, env_file=env_file)
    except SettingsError as error:
        return None, [
            Finding(Level.FAIL, "settings", SETTINGS_BAD.format(problem=problem), SETTINGS_FIX)
            for problem in error.problems
        ]
    findings = [Finding(Level.OK, "settings", SETTINGS_OK.format(mode=settings.mode))]
    if settings.mode == "setup":
        findings.append(Finding(Level.WARN, "settings", SETUP_MODE, SETUP_MODE_FIX))
    unreachable = unreachable_reason(settings.public_url)
    if unreachable is not None:
        findings.append(
            Finding(
                Level.WARN,
                "settings",
                UNREACHABLE_URL.format(var=PUBLIC_URL_VAR, reason=unreachable),
                UNREACHABLE_URL_FIX.format(var=PUBLIC_URL_VAR),
            )
        )
    return settings, findings


def check_data_dir(settings: Settings) -> list[Finding]:
    path = settings.data_dir
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK):
            return [Finding(Level.OK, "data", DATA_DIR_MISSING.format(path=path))]
        return [Finding(Level.FAIL, "data", DATA_DIR_BAD.format(path=path), DATA_DIR_FIX)]
    if not os.access(path, os.W_OK | os.X_OK):
        return [Finding(Level.FAIL, "data", DATA_DIR_BAD.format(path=path), DATA_DIR_FIX)]
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return [
            Finding(Level.WARN, "data", DATA_DIR_OPEN.format(path=path, mode=mode), DATA_DIR_OPEN_FIX.format(path=path))
        ]
    return [Finding(Level.OK, "data", DATA_DIR_OK.format(path=path))]


def check_github(settings: Settings) -> list[Finding]:
    """`GET /app` and `GET /app/installations` with the App's JWT, through PyGithub; read-only."""
    import github  # PyGithub; imported here so that the other checks work even if it is broken
    import requests

    assert settings.app_id is not None and settings.private_key is not None
    api_url = settings.api_url
    integration = github.GithubIntegration(
        auth=github.Auth.AppAuth(settings.app_id, settings.private_key.get_secret_value()),
        base_url=api_url,
        timeout=GITHUB_TIMEOUT_SECONDS,
        retry=0,  # a diagnosis must answer now; retrying an unreachable host only delays the news
    )
    try:
        try:
            app = integration.get_app()
            app_data = app.raw_data
        except github.GithubException as error:
            if error.status in (401, 403):
                return [
                    Finding(Level.FAIL, "app", APP_REFUSED.format(api_url=api_url, status=error.status), APP_REFUSED_FIX)
                ]
            return [Finding(Level.FAIL, "app", APP_ERROR.format(api_url=api_url, status=error.status), APP_ERROR_FIX)]
        except (requests.exceptions.RequestException, OSError) as error:
            return [
                Finding(Level.FAIL, "app", UNREACHABLE.format(api_url=api_url, reason=_reason(error)), UNREACHABLE_FIX)
            ]
        findings = [
            Finding(
                Level.OK,
                "app",
                APP_OK.format(name=app_data.get("name") or app_data.get("slug"), app_id=app_data.get("id"), api_url=api_url),
            )
        ]
        try:
            installations = [item.raw_data for item in integration.get_installations()]
        except github.GithubException as error:
            return findings + [
                Finding(Level.FAIL, "installations", APP_ERROR.format(api_url=api_url, status=error.status), APP_ERROR_FIX)
            ]
        except (requests.exceptions.RequestException, OSError) as error:
            return findings + [
                Finding(Level.FAIL, "installations", UNREACHABLE.format(api_url=api_url, reason=_reason(error)), UNREACHABLE_FIX)
            ]
        return findings + check_installations(app_data, installations)
    finally:
        integration.close()


def check_installations(app: Mapping[str, Any], installations: list[Mapping[str, Any]]) -> list[Finding]:
    """Each installation: not suspended, and granted at least what `app.yml` asks for."""
    if not installations:
        url = str(app.get("html_url") or "").rstrip("/") + "/installations/new"
        return [Finding(Level.WARN, "installations", NO_INSTALLATIONS, NO_INSTALLATIONS_FIX.format(url=url))]
    wanted = required_permissions()
    findings = []
    for installation in installations:
        account = (installation.get("account") or {}).get("login") or f"installation {installation.get('id')}"
        if installation.get("suspended_at"):
            findings.append(
                Finding(
                    Level.FAIL,
                    "installations",
                    INSTALLATION_SUSPENDED.format(account=account),
                    INSTALLATION_SUSPENDED_FIX.format(account=account),
                )
            )
            continue
        granted = installation.get("permissions") or {}
        missing = [
            f"{name}:{level}"
            for name, level in wanted.items()
            if _LEVELS.get(str(granted.get(name, "none")), 0) < _LEVELS.get(level, 0)
        ]
        if missing:
            findings.append(
                Finding(
                    Level.FAIL,
                    "installations",
                    INSTALLATION_MISSING.format(account=account, missing=", ".join(missing)),
                    INSTALLATION_MISSING_FIX.format(account=account),
                )
            )
            continue
        if _LEVELS.get(str(granted.get("workflows", "none")), 0) >= _LEVELS["write"]:
            findings.append(
                Finding(
                    Level.WARN,
                    "installations",
                    INSTALLATION_WORKFLOWS.format(account=account),
                    INSTALLATION_WORKFLOWS_FIX,
                )
            )
        selection = installation.get("repository_selection")
        repositories = "all repositories" if selection == "all" else "selected repositories"
        findings.append(
            Finding(Level.OK, "installations", INSTALLATION_OK.format(account=account, repositories=repositories))
        )
    return findings


def check_git(which: Callable[[str], str | None] = shutil.which, run: Runner = subprocess.run) -> list[Finding]:
    minimum = ".".join(map(str, MIN_GIT_VERSION))
    path = which("git")
    if path is None:
        return [Finding(Level.FAIL, "git", GIT_MISSING, GIT_MISSING_FIX.format(minimum=minimum))]
    try:
        output = run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_SECONDS).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return [Finding(Level.FAIL, "git", GIT_MISSING + f" ({_reason(error)})", GIT_MISSING_FIX.format(minimum=minimum))]
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", output)
    version = match.group(0) if match else output.strip()
    if match and (int(match.group(1)), int(match.group(2))) < MIN_GIT_VERSION:
        return [
            Finding(Level.FAIL, "git", GIT_OLD.format(version=version, minimum=minimum), GIT_MISSING_FIX.format(minimum=minimum))
        ]
    return [Finding(Level.OK, "git", GIT_OK.format(version=version))]


def check_agent(
    settings: Settings, which: Callable[[str], str | None] = shutil.which, run: Runner = subprocess.run
) -> list[Finding]:
    """The default agent's program is on PATH and prints a version (`command`: its program exists)."""
    name = settings.agent
    if name == "command":
        words = shlex.split(settings.agent_command or "")
        binary = words[0] if words else ""
    else:
        binary = name
    path = which(binary) if binary else None
    if path is None:
        fix = AGENT_MISSING_FIX[name].format(spec=agent_cli_install_spec(name))
        return [Finding(Level.FAIL, "agent", AGENT_MISSING.format(binary=binary, name=name), fix)]
    if name == "command":
        return [Finding(Level.OK, "agent", AGENT_OK.format(name=name, version=path))]
    try:
        done = run([path, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as error:
        return [
            Finding(Level.FAIL, "agent", AGENT_BROKEN.format(binary=binary, reason=_reason(error)), AGENT_BROKEN_FIX.format(binary=binary))
        ]
    if done.returncode != 0:
        reason = (done.stderr or done.stdout or f"exit code {done.returncode}").strip().splitlines()[-1:]
        return [
            Finding(Level.FAIL, "agent", AGENT_BROKEN.format(binary=binary, reason=" ".join(reason)), AGENT_BROKEN_FIX.format(binary=binary))
        ]
    version = (done.stdout.strip().splitlines() or ["?"])[0]
    return [Finding(Level.OK, "agent", AGENT_OK.format(name=name, version=version))]


SANDBOX_OK = "agents run in a bubblewrap sandbox{who}; resource limits: {limits}"
SANDBOX_OFF_FIX = "remove SHEPHERD_SANDBOX=none (bwrap is the default) and install Debian's bubblewrap"
SANDBOX_BROKEN_FIX = "install Debian's bubblewrap (scripts/setup does) or fix the value named above"


def check_sandbox(settings: Settings) -> list[Finding]:
    """Agents must run in their sandbox; `SHEPHERD_SANDBOX=none` is a failing line, never a quiet one."""
    from bot.agent import limits
    from bot.agent.sandbox import SANDBOX_OFF_WARNING, Sandbox, SandboxError

    if settings.sandbox == "none":
        return [Finding(Level.FAIL, "sandbox", SANDBOX_OFF_WARNING, SANDBOX_OFF_FIX)]
    try:
        sandbox = Sandbox.build(settings.sandbox, agent_user=settings.agent_user,
                                state_dir=Path(tempfile.mkdtemp(prefix="shepherd-doctor-")))
    except (SandboxError, KeyError, ValueError) as error:
        return [Finding(Level.FAIL, "sandbox", str(error), SANDBOX_BROKEN_FIX)]
    who = f" as uid {sandbox.agent_uid}" if sandbox.agent_uid is not None else " (user namespaces, Shepherd's own uid)"
    support = limits.detect()
    level = Level.OK if support.usable else Level.WARN
    return [Finding(level, "sandbox", SANDBOX_OK.format(who=who, limits=str(support)))]


TEMPORAL_OK = "connected to Temporal at {address} (namespace {namespace}); {pollers} worker host(s) poll the shared queue"
TEMPORAL_NO_HOSTS = "connected to Temporal at {address} (namespace {namespace}), but no worker host polls it"
TEMPORAL_NO_HOSTS_FIX = "start at least one worker host: python -m bot worker (same TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE)"
TEMPORAL_BAD = "cannot reach Temporal at {address} (namespace {namespace}): {reason}"
TEMPORAL_BAD_FIX = ("check TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and the TEMPORAL_TLS_* files, and that the "
                    "server runs (one machine: scripts/serve --temporal starts a dev server)")


def check_temporal(settings: Settings, *, timeout: float = 10.0) -> list[Finding]:
    """With SHEPHERD_ENGINE=temporal: the cluster answers, the namespace exists and worker hosts poll it."""
    if settings.engine != "temporal":
        return []
    import asyncio

    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from bot.temporal.client import connect_once
    from bot.temporal.workflow import SHARED_QUEUE

    async def ask() -> int:
        client = await connect_once(settings)
        answer = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace, task_queue=TaskQueue(name=SHARED_QUEUE),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        ))
        return len({poller.identity for poller in answer.pollers})

    where = {"address": settings.temporal_address, "namespace": settings.temporal_namespace}
    try:
        pollers = asyncio.run(asyncio.wait_for(ask(), timeout))
    except Exception as error:  # noqa: BLE001 - every failure is the operator's to read
        return [Finding(Level.FAIL, "temporal", TEMPORAL_BAD.format(**where, reason=_reason(error)), TEMPORAL_BAD_FIX)]
    if pollers == 0:
        return [Finding(Level.WARN, "temporal", TEMPORAL_NO_HOSTS.format(**where), TEMPORAL_NO_HOSTS_FIX)]
    return [Finding(Level.OK, "temporal", TEMPORAL_OK.format(**where, pollers=pollers))]


def run_checks(
    environ: Mapping[str, str] | None = None,
    *,
    env_file: Path | None = Path(".env"),
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = subprocess.run,
) -> list[Finding]:
    """Every check, in the order an operator fixes things; GitHub is asked only when the settings allow it."""
    settings, findings = check_settings(environ, env_file)
    if settings is not None:
        findings += check_data_dir(settings)
        if settings.mode == "github":
            findings += check_github(settings)
        findings += check_temporal(settings)
    findings += check_git(which, run)
    if settings is not None:
        findings += check_sandbox(settings)
        findings += check_agent(settings, which, run)
    return findings


def render_findings(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"{MARKS[finding.level]} {finding.check}: {finding.message}")
        if finding.fix:
            lines.append(f"       fix: {finding.fix}")
    problems = sum(1 for finding in findings if finding.level != Level.OK)
    lines.append("")
    lines.append(SUMMARY_PROBLEMS.format(count=problems) if problems else SUMMARY_OK)
    return "\n".join(lines)


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    # requests' connection errors nest the whole retry story; the last clause says what happened.
    match = re.search(r"\[Errno -?\d+\] [^'\")]+|Connection refused|Name or service not known|timed out", text)
    return match.group(0) if match else text[:200]


def run_doctor(args: argparse.Namespace) -> int:
    """`shepherd doctor`: exit 0 when nothing failed (warnings allowed), 1 otherwise."""
    findings = run_checks()
    sys.stdout.write(render_findings(findings) + "\n")
    return 1 if any(finding.level == Level.FAIL for finding in findings) else 0


def add_doctor_command(commands: Any) -> None:
    doctor = commands.add_parser("doctor", help=DOCTOR_HELP, description=DOCTOR_HELP)
    doctor.set_defaults(run=run_doctor)

