"""The operator's `shepherd status` and `shepherd doctor`, run through the command line's entry point."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from bot.views.cli import main
from bot.settings import VARIABLES
from bot.store.database import Store
from tests import test_views
from tests.test_views import sample_sessions, store_session


@pytest.fixture
def operator_env(monkeypatch, tmp_path):
    """A clean environment: no variables from the machine, an empty working directory, one data folder."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHEPHERD_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_status_lists_sessions_stuck_first(operator_env, capsys, monkeypatch):
    # Ages are counted from the real clock: the sample sessions start relative to now, not to the time
    # tests.test_views was imported (minutes earlier when slow end-to-end tests ran in between).
    monkeypatch.setattr(test_views, "NOW", datetime.now(timezone.utc).replace(microsecond=0))
    store = Store.open(operator_env / "shepherd.db")
    for session in sample_sessions():
        store_session(store, session)
    store.close()

    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[!] acme/web#124 STUCK (12m) Implement auth flow"
    assert lines[1].strip() == "? Should the export include archived rows?"
    assert [line.split()[1] for line in lines if line.startswith("[")] == [
        "acme/web#124", "acme/api#7", "acme/web#120", "acme/web#121",
    ]

    assert main(["status", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [item["issueNumber"] for item in listed] == [124, 7, 120, 121]
    assert listed[0]["stuckReason"] == "Should the export include archived rows?"


def test_status_without_a_database_says_so_and_creates_nothing(operator_env, capsys):
    assert main(["status"]) == 0
    assert "No Shepherd database" in capsys.readouterr().out
    assert not (operator_env / "shepherd.db").exists()


def test_doctor_exit_code_and_report(operator_env, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))  # no git, no claude
    (tmp_path / ".env").write_text("GITHUB_APP_ID=12\n")  # the key and secret are missing
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] settings:" in out and "GITHUB_WEBHOOK_SECRET" in out
    assert "[FAIL] git: git is not installed" in out
    assert out.rstrip().endswith("problem(s) to fix.")
