"""`shepherd doctor` against the fake GitHub: good, refused and unreachable credentials, installations, git, agent."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.views.doctor import Level, check_agent, check_git, render_findings, run_checks
from bot.settings import load_settings
from tests.fakes.ports import free_port

CLAUDE = Path(__file__).resolve().parent / "vendor" / "node_modules" / ".bin" / "claude"
FULL_PERMISSIONS = {
    "metadata": "read", "issues": "write", "pull_requests": "write", "contents": "write",
    "checks": "read", "statuses": "read",
}


def _environ(fake, tmp_path, **extra: str) -> dict[str, str]:
    return {
        "GITHUB_APP_ID": str(fake.app_id),
        "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": fake.webhook_secret,
        "GITHUB_API_URL": fake.url,
        "SHEPHERD_PUBLIC_URL": "https://shepherd.example.com",
        "SHEPHERD_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


def _checks(environ, check: str) -> list:
    findings = run_checks(environ, env_file=None, which=lambda name: None)
    return [finding for finding in findings if finding.check == check]


def _other_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_good_app_and_installation_pass_and_nothing_is_written(fake_github, tmp_path):
    fake_github.add_installation(7, account="octo-org", permissions=FULL_PERMISSIONS)
    app = _checks(_environ(fake_github, tmp_path), "app")
    installations = _checks(_environ(fake_github, tmp_path), "installations")
    assert [f.level for f in app] == [Level.OK]
    assert f"(id {fake_github.app_id})" in app[0].message
    assert [f.level for f in installations] == [Level.OK]
    assert "octo-org" in installations[0].message
    assert fake_github.writes() == []
    assert {call.operation_id for call in fake_github.calls} == {"apps/get-authenticated", "apps/list-installations"}
    fake_github.assert_clean()


def test_refused_credentials_are_reported_with_the_fix(fake_github, tmp_path):
    for environ in (
        _environ(fake_github, tmp_path, GITHUB_PRIVATE_KEY=_other_key()),
        _environ(fake_github, tmp_path, GITHUB_APP_ID=str(fake_github.app_id + 1)),
    ):
        [app] = _checks(environ, "app")
        assert app.level == Level.FAIL
        assert "refused the App's credentials (401)" in app.message
        assert "private key" in app.fix
        assert _checks(environ, "installations") == []
    assert fake_github.writes() == []
    fake_github.take_violations()


def test_unreachable_api_is_reported(tmp_path, fake_github):
    url = f"http://127.0.0.1:{free_port()}"
    findings = run_checks(_environ(fake_github, tmp_path, GITHUB_API_URL=url), env_file=None, which=lambda n: None)
    [app] = [f for f in findings if f.check == "app"]
    assert app.level == Level.FAIL
    assert f"cannot reach GitHub at {url}" in app.message
    assert "GITHUB_API_URL" in app.fix
    text = render_findings(findings)
    assert "[FAIL] app: cannot reach GitHub" in text and "problem(s) to fix" in text


def test_installation_problems_name_what_to_fix(fake_github, tmp_path):
    none = _checks(_environ(fake_github, tmp_path), "installations")
    assert [f.level for f in none] == [Level.WARN]
    assert none[0].fix.endswith(f"/apps/{fake_github.app_slug}/installations/new")

    fake_github.add_installation(7, account="octo-org", permissions={**FULL_PERMISSIONS, "issues": "read"})
    fake_github.add_installation(8, account="acme", permissions=FULL_PERMISSIONS, suspended=True)
    fake_github.add_installation(9, account="wide", permissions={**FULL_PERMISSIONS, "workflows": "write"})
    found = _checks(_environ(fake_github, tmp_path), "installations")
    messages = [f.message for f in found]
    assert "the installation on octo-org lacks issues:write" in messages
    assert "the installation on acme is suspended" in messages
    assert "the installation on wide may write workflows: pushes could change CI" in messages
    assert [f.level for f in found] == [Level.FAIL, Level.FAIL, Level.WARN, Level.OK]


def test_bad_settings_name_the_variable_and_skip_github(fake_github, tmp_path):
    environ = _environ(fake_github, tmp_path, PORT="eighty")
    del environ["GITHUB_WEBHOOK_SECRET"]
    settings = _checks(environ, "settings")
    assert all(f.level == Level.FAIL for f in settings)
    text = " ".join(f.message for f in settings)
    assert "PORT" in text and "GITHUB_WEBHOOK_SECRET" in text
    assert fake_github.calls == []


def test_setup_mode_and_loopback_url_are_warnings(fake_github, tmp_path):
    setup = _checks({"SHEPHERD_DATA_DIR": str(tmp_path / "d")}, "settings")
    assert any(f.level == Level.WARN and "/setup" in f.fix for f in setup)
    environ = _environ(fake_github, tmp_path)
    del environ["SHEPHERD_PUBLIC_URL"]
    loopback = _checks(environ, "settings")
    assert any(f.level == Level.WARN and "loopback" in f.message for f in loopback)


def test_git_and_agent_checks(tmp_path):
    settings = load_settings({"SHEPHERD_DATA_DIR": str(tmp_path)}, env_file=None)
    [git] = check_git()
    assert git.level == Level.OK and git.message.startswith("git 2.")
    [no_git] = check_git(which=lambda name: None)
    assert no_git.level == Level.FAIL and "apt-get install git" in no_git.fix

    [missing] = check_agent(settings, which=lambda name: None)
    assert missing.level == Level.FAIL and "'claude'" in missing.message and "npm install" in missing.fix

    broken = tmp_path / "claude"
    broken.write_text("#!/bin/sh\necho 'cannot start: node missing' >&2\nexit 3\n")
    broken.chmod(0o755)
    [failing] = check_agent(settings, which=lambda name: str(broken))
    assert failing.level == Level.FAIL and "cannot start: node missing" in failing.message

    command = load_settings(
        {"SHEPHERD_AGENT": "command", "SHEPHERD_AGENT_COMMAND": "no-such-agent --go"}, env_file=None
    )
    [absent] = check_agent(command)
    assert absent.level == Level.FAIL and "'no-such-agent'" in absent.message


@pytest.mark.skipif(not CLAUDE.exists(), reason="the pinned Claude Code is not installed in tests/vendor")
def test_the_real_claude_cli_reports_its_version(tmp_path):
    settings = load_settings({"SHEPHERD_DATA_DIR": str(tmp_path)}, env_file=None)
    [agent] = check_agent(settings, which=lambda name: str(CLAUDE) if name == "claude" else None)
    assert agent.level == Level.OK
    assert "2.1.197" in agent.message


def test_a_private_network_url_is_a_warning_in_either_mode(fake_github, tmp_path):
    environ = _environ(fake_github, tmp_path)
    environ["SHEPHERD_PUBLIC_URL"] = "http://192.168.1.20:3000"
    [warning] = [f for f in _checks(environ, "settings") if f.level == Level.WARN]
    assert "private-network" in warning.message and "docs/setup.md" in warning.fix
    setup = _checks({"SHEPHERD_DATA_DIR": str(tmp_path / "d")}, "settings")
    assert any(f.level == Level.WARN and "loopback" in f.message for f in setup)
