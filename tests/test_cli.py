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


def test_version_prints_the_package_version(operator_env, capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"shepherd {version('shepherd')}"


def test_bare_shepherd_prints_the_help_not_an_error(operator_env, capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: shepherd")
    for command in ("serve", "status", "doctor", "prune", "logs"):
        assert command in out


def test_shepherd_serve_is_python_m_bot_serve(operator_env, capsys, monkeypatch):
    import socket

    with socket.socket() as taken:  # a start-up problem answers the same way through either door
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("SHEPHERD_AGENT", "command")
        monkeypatch.setenv("SHEPHERD_AGENT_COMMAND", "true")
        assert main(["serve", "--host", "127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shepherd: cannot start: port ") and "already in use" in err


def test_status_json_without_a_database_is_an_empty_list(operator_env, capsys):
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (operator_env / "shepherd.db").exists()


def test_logs_prints_the_newest_sessions_turn_logs_redacted(operator_env, capsys, monkeypatch):
    secret = "dashboard-token-of-this-installation"
    monkeypatch.setenv("SHEPHERD_DASHBOARD_TOKEN", secret)
    old = operator_env / "sessions" / "acme__web__12__1"
    new = operator_env / "sessions" / "acme__web__12__2"
    other = operator_env / "sessions" / "acme__web__13__1"
    for folder in (old, new, other):
        folder.mkdir(parents=True)
    (old / "turn-1.log").write_text("the first attempt\n")
    (new / "turn-1.log").write_text("sh: 1: claude: not found\n")
    (new / "turn-2.log").write_text(f"token ghs_{'a' * 36} and {secret}\n")
    (new / "turn-10.log").write_text("the tenth turn\n")
    (other / "turn-1.log").write_text("another issue\n")

    assert main(["logs", "acme/web#12"]) == 0
    out = capsys.readouterr().out
    assert "the first attempt" not in out and "another issue" not in out
    assert "claude: not found" in out
    assert "ghs_" not in out and secret not in out and "[redacted]" in out
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> {new / name} <==" for name in ("turn-1.log", "turn-2.log", "turn-10.log")]

    assert main(["logs", "acme/web#12", "--attempt", "1"]) == 0
    assert "the first attempt" in capsys.readouterr().out


def test_logs_of_an_unknown_issue_or_a_bad_name_say_so(operator_env, capsys):
    assert main(["logs", "acme/web#99"]) == 1
    assert "no session logs for acme/web#99" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["logs", "not-an-issue"])
    assert exit_.value.code == 2
