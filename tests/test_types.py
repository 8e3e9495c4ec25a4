"""The type checker and the linter, as part of every test run: mypy (strict) on the pure core, the GitHub
layer, the handlers, the ingest layer, the runtime and the Temporal engine (`[tool.mypy]` in pyproject.toml);
pyflakes on all of `bot/` and `handlers/`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_passes_on_the_core_the_github_layer_and_the_handlers() -> None:
    result = _run("mypy", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyflakes_finds_nothing_in_bot_or_handlers() -> None:
    result = _run("pyflakes", "bot", "handlers")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_would_see_a_mistake(tmp_path: Path) -> None:
    """The check can fail: the same configuration rejects a module that returns the wrong type (written
    outside the tree, so a parallel run never sees it)."""
    probe = tmp_path / "type_probe.py"
    probe.write_text("def half(n: int) -> int:\n    return n / 2\n", encoding="utf-8")
    result = _run("mypy", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(probe))
    assert result.returncode != 0 and "type_probe.py" in result.stdout
