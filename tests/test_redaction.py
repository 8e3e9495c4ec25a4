"""The one redactor (bot/redaction.py): what a person reading a log tail, an issue comment or a git error sees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.github import auth as appauth
from bot.workspace import git
from bot.agent import processes
from bot import redaction
from bot.redaction import REDACTED, redact, register_secret

GITHUB_TOKEN = "ghs_" + "a1B2c3D4e5" * 4
PAT = "github_pat_11ABCDEFG0" + "x" * 60
JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJpYXQiOjE3MDAwMDAwMDAsImlzcyI6IjEyMyJ9"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
)
KEY_LINES = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj"] * 3 + ["MgvgZ2p9n0Q=="]
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(KEY_LINES) + "\n-----END RSA PRIVATE KEY-----"


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    redaction.forget_registered_secrets()
    yield
    redaction.forget_registered_secrets()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"remote: token {GITHUB_TOKEN} rejected", "remote: token [redacted] rejected"),
        (f"export GH_TOKEN={PAT}", "export GH_TOKEN=[redacted]"),
        (f"jwt={JWT}; exp=600", "jwt=[redacted]; exp=600"),
        (
            "fatal: unable to access 'https://x-access-token:s3cr3t@github.com/o/r.git/': 403",
            "fatal: unable to access 'https://x-access-token:[redacted]@github.com/o/r.git/': 403",
        ),
        ("curl -H 'Authorization: Bearer abc.def-ghi' https://api", "curl -H 'Authorization: [redacted]' https://api"),
        ("> authorization: token 0123456789abcdef", "> authorization: [redacted]"),
        ('{"Authorization": "Basic dXNlcjpwYXNz"}', '{"Authorization": "[redacted]"}'),
        ("cloning https://alice:hunter2@git.example.com/a.git", "cloning https://[redacted]@git.example.com/a.git"),
        ("cloning https://sometoken@git.example.com/a.git", "cloning https://[redacted]@git.example.com/a.git"),
        (f"key:\n{PEM}\nafter", "key:\n[redacted]\nafter"),
    ],
)
def test_each_credential_shape_is_masked_inside_a_log_line(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_a_private_key_cut_off_at_the_end_is_masked_to_the_end() -> None:
    cut = "Traceback: loading key\n" + PEM[: len(PEM) // 2]
    assert redact(cut) == "Traceback: loading key\n[redacted]"


def test_a_private_key_whose_head_was_cut_off_is_masked_through_its_end_line() -> None:
    tail = "\n".join(KEY_LINES[1:]) + "\n-----END RSA PRIVATE KEY-----\nnext line"
    assert redact(tail) == "[redacted]\nnext line"


def test_text_without_secrets_is_unchanged() -> None:
    text = (
        "Running tests\n12 passed in 0.4s\nhttps://github.com/acme/web/pull/7\n"
        "ghost_mode=1 eyJ is not a token; Authorization required; user@example.com\n"
    )
    assert redact(text) == text


def test_explicit_secrets_are_masked_longest_first() -> None:
    assert redact("pw=hunter2hunter2 and hunter2", ["hunter2", "hunter2hunter2"]) == (
        f"pw={REDACTED} and {REDACTED}"
    )


def test_a_registered_secret_is_masked_everywhere(tmp_path) -> None:
    line = "webhook secret is plain-words-secret, dashboard dash-token-123"
    assert redact(line) == line
    register_secret("plain-words-secret", lasting=True)
    register_secret("dash-token-123")
    assert redact(line) == "webhook secret is [redacted], dashboard [redacted]"
    # The same redactor behind git's errors and a turn's log tail (what the issue and the log show).
    error = git.GitError(["git", "push", "origin"], 1, f"fatal: {line}")
    assert error.stderr == f"fatal: {redact(line)}" and "plain-words-secret" not in str(error)
    log = tmp_path / "turn-1.log"
    log.write_text(f"started\n{line}\n", encoding="utf-8")
    assert processes.log_tail(log) == f"started\n{redact(line)}"


def test_a_registered_private_key_masks_its_lines_printed_alone() -> None:
    register_secret(PEM, lasting=True)
    assert redact(f"dump: {KEY_LINES[0]} end") == "dump: [redacted] end"


def test_too_short_a_registered_secret_is_ignored() -> None:
    register_secret("abc", lasting=True)
    assert redact("abc def") == "abc def"


def test_the_registry_is_bounded() -> None:
    for number in range(redaction.MAX_LASTING_SECRETS + 10):
        register_secret(f"lasting-secret-{number:05d}", lasting=True)
    for number in range(redaction.MAX_TOKENS + 10):
        register_secret(f"installation-token-{number:06d}")
    held = redaction.registered_secrets()
    assert len(held) == redaction.MAX_LASTING_SECRETS + redaction.MAX_TOKENS
    assert "lasting-secret-00000" not in held  # the oldest went first
    assert f"lasting-secret-{redaction.MAX_LASTING_SECRETS + 9:05d}" in held


def test_every_minted_installation_token_is_registered() -> None:
    token = appauth.InstallationToken.from_response(
        {"token": "opaque-token-without-a-known-shape", "expires_at": "2030-01-01T00:00:00Z"}
    )
    assert redact(f"using {token.token}") == "using [redacted]"


def test_a_git_error_never_carries_the_token() -> None:
    error = git.GitError(
        ["push", f"https://x-access-token:{GITHUB_TOKEN}@github.com/o/r.git", "HEAD"],
        128,
        f"fatal: Authentication failed for 'https://x-access-token:{GITHUB_TOKEN}@github.com/o/r.git/'\n"
        f"remote: opaque-one-off rejected\n",
        ("opaque-one-off",),
    )
    shown = f"{error} {error.stderr} {error.args_run}"
    assert GITHUB_TOKEN not in shown and "opaque-one-off" not in shown
    assert "Authentication failed for 'https://x-access-token:[redacted]@github.com/o/r.git/'" in str(error)
