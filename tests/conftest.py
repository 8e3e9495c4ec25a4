"""Shared fixtures: the strict fake GitHub (tests/fakes/plugin.py) and Shepherd's settings against it."""

from __future__ import annotations

import pytest

from bot.settings import Settings, load_settings

pytest_plugins = ["tests.fakes.plugin"]


def settings_for(fake, data_dir, **extra: str) -> Settings:
    """GitHub-mode settings pointing at a FakeGitHub; writes are not spaced out in tests."""
    environ = {
        "GITHUB_APP_ID": str(fake.app_id),
        "GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "GITHUB_WEBHOOK_SECRET": fake.webhook_secret,
        "GITHUB_API_URL": fake.url,
        "SHEPHERD_DATA_DIR": str(data_dir),
        "SHEPHERD_WRITE_SPACING_SECONDS": "0",
        "SHEPHERD_DASHBOARD_TOKEN": "test-dashboard-token",
        **extra,
    }
    return load_settings(environ, env_file=None)


@pytest.fixture
def shepherd_settings(fake_github, tmp_path) -> Settings:
    return settings_for(fake_github, tmp_path / "data")
