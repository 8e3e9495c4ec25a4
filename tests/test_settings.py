"""Tests of the operator's settings: every variable, the two modes, `.env`, and startup errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.core.policy import OperatorLimits
from bot.settings import Settings, SettingsError, load_settings


@pytest.fixture(scope="module")
def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def credentials(pem: str) -> dict[str, str]:
    return {
        "GITHUB_APP_ID": "4242",
        "GITHUB_PRIVATE_KEY": pem,
        "GITHUB_WEBHOOK_SECRET": "hook-secret-value",
    }


def problems_of(environ: dict[str, str], **kwargs) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ, env_file=kwargs.get("env_file"))
    assert str(caught.value).count("\n") == len(caught.value.problems)
    return caught.value.problems


def test_defaults_start_in_setup_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({}, env_file=None)
    assert settings.mode == "setup"
    assert settings.app_id is None and settings.private_key is None
    assert settings.webhook_secret is None and settings.dashboard_token is None
    assert settings.api_url == "https://api.github.com"
    assert settings.github_url == "https://github.com"
    assert settings.port == 3000
    assert settings.public_url == "http://127.0.0.1:3000"
    assert settings.data_dir == tmp_path / ".shepherd"
    assert settings.data_dir.is_absolute()
    assert settings.agent == "claude"
    assert settings.agent_command is None and settings.agent_user is None
    assert settings.agent_env == ()
    assert (settings.max_workers, settings.max_per_repo) == (4, 2)
    assert settings.write_spacing_seconds == 1.0
    assert settings.worktree_pool == 1


def test_every_variable_is_parsed(credentials: dict[str, str], pem: str, tmp_path: Path) -> None:
    environ = {
        **credentials,
        "GITHUB_API_URL": "https://ghe.example.com/api/v3/",
        "GITHUB_URL": "https://ghe.example.com/",
        "SHEPHERD_PUBLIC_URL": "https://shepherd.example.com/",
        "PORT": "8080",
        "SHEPHERD_DATA_DIR": str(tmp_path / "data"),
        "SHEPHERD_AGENT": "command",
        "SHEPHERD_AGENT_COMMAND": "./agent.sh --fast",
        "SHEPHERD_AGENT_ENV": " IS_SANDBOX, NPM_CONFIG_REGISTRY ,,IS_SANDBOX",
        "SHEPHERD_AGENT_USER": "nobody",
        "SHEPHERD_MAX_WORKERS": "8",
        "SHEPHERD_MAX_PER_REPO": "3",
        "SHEPHERD_DASHBOARD_TOKEN": "dash-token-value",
        "SHEPHERD_WRITE_SPACING_SECONDS": "0.05",
        "UNRELATED": "ignored",
    }
    settings = load_settings(environ, env_file=None)
    assert settings.mode == "github"
    assert settings.app_id == 4242
    assert settings.private_key is not None and settings.private_key.get_secret_value() == pem
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == "hook-secret-value"
    assert settings.api_url == "https://ghe.example.com/api/v3"
    assert settings.github_url == "https://ghe.example.com"
    assert settings.public_url == "https://shepherd.example.com"
    assert settings.port == 8080
    assert settings.data_dir == tmp_path / "data"
    assert settings.agent == "command"
    assert settings.agent_command == "./agent.sh --fast"
    assert settings.agent_env == ("IS_SANDBOX", "NPM_CONFIG_REGISTRY")
    assert settings.agent_user == "nobody"
    assert (settings.max_workers, settings.max_per_repo) == (8, 3)
    assert settings.dashboard_token is not None
    assert settings.dashboard_token.get_secret_value() == "dash-token-value"
    assert settings.write_spacing_seconds == 0.05


def test_public_url_follows_port() -> None:
    assert load_settings({"PORT": "4567"}, env_file=None).public_url == "http://127.0.0.1:4567"


def test_relative_data_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"SHEPHERD_DATA_DIR": "state/here"}, env_file=None)
    assert settings.data_dir == tmp_path / "state" / "here"


@pytest.mark.parametrize(
    "present",
    [
        ("GITHUB_APP_ID",),
        ("GITHUB_PRIVATE_KEY",),
        ("GITHUB_WEBHOOK_SECRET",),
        ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY"),
        ("GITHUB_APP_ID", "GITHUB_WEBHOOK_SECRET"),
        ("GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET"),
    ],
)
def test_partial_credentials_name_what_is_missing(
    credentials: dict[str, str], present: tuple[str, ...]
) -> None:
    environ = {name: credentials[name] for name in present}
    problems = problems_of(environ)
    assert len(problems) == 1
    missing_part = problems[0].split(" but ", 1)[1]
    for name in credentials:
        assert (name in missing_part) == (name not in present), (name, problems[0])
    assert "setup mode" in problems[0]


def test_key_file_path_is_read(credentials: dict[str, str], pem: str, tmp_path: Path) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem)
    environ = {**credentials, "GITHUB_PRIVATE_KEY_PATH": str(key_file)}
    del environ["GITHUB_PRIVATE_KEY"]
    settings = load_settings(environ, env_file=None)
    assert settings.mode == "github"
    assert settings.private_key is not None and settings.private_key.get_secret_value() == pem


def test_key_file_that_is_not_pem_is_refused(credentials: dict[str, str], tmp_path: Path) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text("ssh-rsa AAAAB3NzaC1yc2E this is a public key\n")
    environ = {**credentials, "GITHUB_PRIVATE_KEY_PATH": str(key_file)}
    del environ["GITHUB_PRIVATE_KEY"]
    problems = problems_of(environ)
    assert len(problems) == 1
    assert problems[0].startswith("GITHUB_PRIVATE_KEY: is not a PEM private key")
    assert "ssh-rsa" not in problems[0]


def test_missing_key_file_names_the_path(credentials: dict[str, str], tmp_path: Path) -> None:
    environ = {**credentials, "GITHUB_PRIVATE_KEY_PATH": str(tmp_path / "absent.pem")}
    del environ["GITHUB_PRIVATE_KEY"]
    problems = problems_of(environ)
    assert len(problems) == 1
    assert problems[0].startswith("GITHUB_PRIVATE_KEY_PATH: cannot read the key file")
    assert "absent.pem" in problems[0]


def test_key_and_key_path_together_are_refused(credentials: dict[str, str], tmp_path: Path) -> None:
    environ = {**credentials, "GITHUB_PRIVATE_KEY_PATH": str(tmp_path / "app.pem")}
    problems = problems_of(environ)
    assert any("both set" in problem for problem in problems)


def test_key_with_escaped_line_breaks_is_accepted(credentials: dict[str, str], pem: str) -> None:
    environ = {**credentials, "GITHUB_PRIVATE_KEY": pem.strip().replace("\n", "\\n")}
    settings = load_settings(environ, env_file=None)
    assert settings.private_key is not None
    assert settings.private_key.get_secret_value() == pem.strip()


def test_repr_and_errors_never_show_secrets(credentials: dict[str, str], pem: str) -> None:
    environ = {**credentials, "SHEPHERD_DASHBOARD_TOKEN": "dash-token-value"}
    settings = load_settings(environ, env_file=None)
    body = pem.splitlines()[1]
    for text in (repr(settings), str(settings), repr(settings.model_dump())):
        assert "hook-secret-value" not in text
        assert "dash-token-value" not in text
        assert body not in text
    bad = {**credentials, "GITHUB_PRIVATE_KEY": "not-a-key-but-still-secret", "PORT": "x"}
    message = str(pytest.raises(SettingsError, load_settings, bad, env_file=None).value)
    assert "not-a-key-but-still-secret" not in message
    assert "GITHUB_PRIVATE_KEY" in message and "PORT" in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORT", "http", "PORT: must be a whole number, got 'http'"),
        ("PORT", "70000", "PORT: must be at most 65535, got '70000'"),
        ("SHEPHERD_MAX_WORKERS", "0", "SHEPHERD_MAX_WORKERS: must be at least 1, got '0'"),
        ("SHEPHERD_MAX_PER_REPO", "two", "SHEPHERD_MAX_PER_REPO: must be a whole number, got 'two'"),
        ("SHEPHERD_MAX_PER_REPO", "1.5", "SHEPHERD_MAX_PER_REPO: must be a whole number, got '1.5'"),
        ("GITHUB_APP_ID", "-3", None),
        ("SHEPHERD_WRITE_SPACING_SECONDS", "soon", None),
        ("SHEPHERD_WORKTREE_POOL", "-1", "SHEPHERD_WORKTREE_POOL: must be at least 0, got '-1'"),
        ("SHEPHERD_AGENT", "gpt", None),
        ("GITHUB_API_URL", "api.github.com", None),
        ("SHEPHERD_MODEL_PRICES", '{"gpt-5.5": {"input": 1}}', None),
        ("SHEPHERD_MODEL_PRICES", "cheap", None),
    ],
)
def test_bad_values_are_named(name: str, value: str, expected: str | None) -> None:
    problems = problems_of({name: value})
    problems = [problem for problem in problems if "GitHub mode needs" not in problem]
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}: ")
    if expected is not None:
        assert problems[0] == expected


def test_every_bad_variable_is_reported_at_once() -> None:
    problems = problems_of(
        {"PORT": "x", "SHEPHERD_MAX_WORKERS": "-1", "SHEPHERD_AGENT": "command"}
    )
    text = "\n".join(problems)
    assert "PORT:" in text and "SHEPHERD_MAX_WORKERS:" in text
    assert "SHEPHERD_AGENT=command needs SHEPHERD_AGENT_COMMAND" in text


def test_command_agent_needs_a_command() -> None:
    assert problems_of({"SHEPHERD_AGENT": "command"}) == [
        "SHEPHERD_AGENT=command needs SHEPHERD_AGENT_COMMAND, the command line to run for each turn."
    ]


@pytest.mark.parametrize(
    "name",
    [
        "GITHUB_PRIVATE_KEY",
        "GITHUB_PRIVATE_KEY_PATH",
        "GITHUB_WEBHOOK_SECRET",
        "SHEPHERD_DASHBOARD_TOKEN",
        "GITHUB_APP_ID",
        "GH_TOKEN",
        "GITHUB_TOKEN",
        "gh_token",
        "GH_ENTERPRISE_TOKEN",
        "GITHUB_PERSONAL_ACCESS_TOKEN",
        "SHEPHERD_SESSION_DIR",
    ],
)
def test_agent_env_refuses_secrets(name: str) -> None:
    problems = problems_of({"SHEPHERD_AGENT_ENV": f"IS_SANDBOX,{name}"})
    assert len(problems) == 1
    assert problems[0].startswith("SHEPHERD_AGENT_ENV: refuses ")
    assert name in problems[0] and "IS_SANDBOX" not in problems[0]


def test_agent_env_refuses_malformed_names() -> None:
    problems = problems_of({"SHEPHERD_AGENT_ENV": "GOOD,1BAD,ALSO BAD"})
    assert problems == [
        "SHEPHERD_AGENT_ENV: '1BAD', 'ALSO BAD' are not a valid environment variable name"
    ]


def test_unknown_agent_user_is_refused() -> None:
    problems = problems_of({"SHEPHERD_AGENT_USER": "no-such-user-here"})
    assert problems == [
        "SHEPHERD_AGENT_USER: there is no OS user named 'no-such-user-here' on this machine"
    ]


def test_dotenv_is_loaded_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PORT=4000\nSHEPHERD_MAX_WORKERS=6\nSHEPHERD_AGENT=codex\nSHEPHERD_DASHBOARD_TOKEN=\n"
        'SHEPHERD_AGENT_ENV="IS_SANDBOX"\n'
    )
    before = dict(os.environ)
    settings = load_settings({"PORT": "5000", "SHEPHERD_MAX_WORKERS": ""}, env_file=env_file)
    assert settings.port == 5000  # the environment wins
    assert settings.max_workers == 6  # an empty variable counts as unset
    assert settings.agent == "codex"
    assert settings.agent_env == ("IS_SANDBOX",)
    assert settings.dashboard_token is None
    assert dict(os.environ) == before  # .env is never written into the process environment


def test_dotenv_can_hold_credentials_for_github_mode(tmp_path: Path, pem: str) -> None:
    env_file = tmp_path / ".env"
    escaped = pem.strip().replace("\n", "\\n")
    env_file.write_text(
        f'GITHUB_APP_ID=77\nGITHUB_PRIVATE_KEY="{escaped}"\nGITHUB_WEBHOOK_SECRET=s3cret\n'
    )
    settings = load_settings({}, env_file=env_file)
    assert settings.mode == "github" and settings.app_id == 77
    assert settings.private_key is not None
    assert settings.private_key.get_secret_value() == pem.strip()


def test_missing_dotenv_is_fine(tmp_path: Path) -> None:
    assert load_settings({}, env_file=tmp_path / "absent.env").mode == "setup"


def test_default_reads_os_environ_and_dotenv_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SHEPHERD_MAX_PER_REPO=5\n")
    monkeypatch.setenv("SHEPHERD_MAX_WORKERS", "9")
    settings = load_settings()
    assert (settings.max_workers, settings.max_per_repo) == (9, 5)


def test_settings_are_frozen() -> None:
    settings = load_settings({}, env_file=None)
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


def test_operator_limits() -> None:
    settings = load_settings({"SHEPHERD_AGENT": "codex", "SHEPHERD_MAX_PER_REPO": "3"}, env_file=None)
    assert settings.operator_limits() == OperatorLimits(
        agent="codex", adapters=("claude", "codex"), max_per_repo=3
    )
    with_command = load_settings({"SHEPHERD_AGENT_COMMAND": "run-it"}, env_file=None)
    assert with_command.operator_limits().adapters == ("claude", "codex", "command")
    assert with_command.operator_limits().agent == "claude"


def test_with_credentials_switches_to_github_mode(pem: str) -> None:
    setup = load_settings({"PORT": "3100"}, env_file=None)
    github = setup.with_credentials(9, pem, "fresh-secret")
    assert setup.mode == "setup"
    assert github.mode == "github" and github.app_id == 9 and github.port == 3100
    assert github.webhook_secret is not None
    assert github.webhook_secret.get_secret_value() == "fresh-secret"


def test_settings_can_be_built_by_field_name(pem: str, tmp_path: Path) -> None:
    settings = Settings(
        app_id=1, private_key=pem, webhook_secret="w", port=3200, data_dir=tmp_path
    )
    assert settings.mode == "github"
    assert settings.public_url == "http://127.0.0.1:3200"
    with pytest.raises(ValueError, match="GITHUB_WEBHOOK_SECRET"):
        Settings(app_id=1, private_key=pem)


def test_dotenv_values_are_taken_literally(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SHEPHERD_DASHBOARD_TOKEN=a${HOME}b$PATH\n")
    settings = load_settings({}, env_file=env_file)
    assert settings.dashboard_token is not None
    assert settings.dashboard_token.get_secret_value() == "a${HOME}b$PATH"


def test_model_prices_are_merged_over_the_defaults() -> None:
    settings = load_settings({"SHEPHERD_MODEL_PRICES": '{"house-model": {"input": 3, "output": 15}}'}, env_file=None)
    assert settings.prices["house-model"].output == 15.0
    assert "codex" in settings.prices  # the defaults stay
    assert load_settings({}, env_file=None).prices["codex"].input > 0
