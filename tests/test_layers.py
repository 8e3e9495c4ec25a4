"""The layers of `bot/` (README "How it is built"), enforced on the source with `ast`.

- The core is pure: it imports nothing from Shepherd outside `bot.core`, and no I/O library.
- Handlers turn deliveries into events: they import only the core, the GitHub layer and each other, and
  write nothing themselves (no GitHub write call, no store).
- Only the store runs SQL: no other module imports `sqlite3` or calls `execute`.
- Nothing imports the agent-only `shepherd` tool: it is a file copied into the agent's box.
- Nothing below the runtime reaches up: the core, the store, the GitHub layer, the workspace and the agent
  layer import nothing from the runtime, ingest, Temporal or handlers, and from the views only the one
  template environment (`bot.views.render`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "ingest", "github", "store", "runtime", "agent", "workspace", "views")
AGENT_TOOL = "bot.agent.tool"
SQL_CALLS = {"execute", "executemany", "executescript"}
# What the pure core may import from outside Shepherd: the standard library's pure parts and nothing
# that reaches a file, a process, a socket or the clock of the machine.
CORE_FORBIDDEN = {"asyncio", "aiohttp", "gidgethub", "sqlite3", "subprocess", "socket", "os", "shutil",
                  "requests", "github", "psutil", "threading", "time"}


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """Every module `path` imports, absolute, with its line (`from bot import x` counts as `bot.x`); `name`
    is the module's dotted name when the file is not in the tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = name or _name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _is_shepherd(module: str) -> bool:
    return module.split(".")[0] in {"bot", "handlers"}


def _within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


def _known(module: str) -> bool:
    """`from bot.core import session` yields both `bot.core` and `bot.core.session`; only real modules count."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = ROOT.joinpath(*parts[:cut])
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return cut == len(parts)
    return False


def test_bot_is_layered() -> None:
    top = sorted(p.name for p in (ROOT / "bot").iterdir() if not p.name.startswith("__pycache__"))
    assert [name for name in LAYERS if not (ROOT / "bot" / name / "__init__.py").is_file()] == []
    loose = [name for name in top if name.endswith(".py") and name not in
             {"__init__.py", "__main__.py", "app.py", "settings.py", "metrics.py", "redaction.py"}]
    assert loose == [], "every module of bot/ belongs to a layer"


def test_the_core_imports_nothing_else_from_shepherd() -> None:
    wrong = []
    for path in _modules("bot/core"):
        for line, module in _imports(path):
            if _is_shepherd(module) and not _within(module, ("bot.core",)) and _known(module):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if module.split(".")[0] in CORE_FORBIDDEN:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} (I/O)")
    assert wrong == []


def test_handlers_import_only_the_core_and_the_github_layer() -> None:
    wrong = []
    for path in _modules("handlers"):
        for line, module in _imports(path):
            if _is_shepherd(module) and _known(module) and not _within(module, ("bot.core", "bot.github", "handlers")):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == []


WRITE_CALLS = {"post", "patch", "put", "delete"}


def _handler_writes(paths: list[Path]) -> list[str]:
    wrong = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITE_CALLS:
                wrong.append(f"{where}:{node.lineno} calls .{node.func.attr}()")
            if isinstance(node, ast.arg) and node.arg == "store":
                wrong.append(f"{where}:{node.lineno} takes the store")
    return wrong


def test_handlers_write_nothing_themselves() -> None:
    """Every write a person sees is carried out behind the engine or the installations service (rule 3 of the
    layers); a handler that posts, patches or keeps state itself would be a second home for a decision."""
    assert _handler_writes(_modules("handlers")) == []


def test_the_write_check_sees_a_write(tmp_path: Path) -> None:
    probe = tmp_path / "handler_probe.py"
    probe.write_text("async def h(event, gh, *, store, **_):\n    await gh.post('/x', data={})\n")
    assert sorted(_handler_writes([probe])) == [f"{probe}:1 takes the store", f"{probe}:2 calls .post()"]


def _sql_outside_the_store() -> list[str]:
    wrong = []
    for folder in ("bot", "handlers"):
        for path in _modules(folder):
            if _within(_name(path), ("bot.store",)):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.func.attr}()")
            for line, module in _imports(path):
                if module.split(".")[0] == "sqlite3":
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports sqlite3")
    return wrong


def test_only_the_store_runs_sql() -> None:
    assert _sql_outside_the_store() == []


def test_nothing_imports_the_agent_only_tool() -> None:
    wrong = []
    for folder in ("bot", "handlers", "tests", "bench"):
        for path in _modules(folder):
            if folder == "tests" and "vendor" in path.parts:
                continue
            for line, module in _imports(path):
                if _within(module, (AGENT_TOOL,)) or module.endswith(".agent.tool"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == []


LOWER = ("bot.core", "bot.store", "bot.github", "bot.workspace", "bot.agent")
UPPER = ("bot.runtime", "bot.ingest", "bot.temporal", "bot.views", "bot.app", "handlers")
TEMPLATES = ("bot.views.render",)


def test_nothing_below_the_runtime_reaches_up() -> None:
    wrong = []
    for folder in LOWER:
        for path in _modules(folder.replace(".", "/")):
            for line, module in _imports(path):
                if _known(module) and _within(module, UPPER) and not _within(module, TEMPLATES):
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == []


@pytest.mark.parametrize("source, expected", [
    ("from bot.runtime import engine\n", ["bot.runtime", "bot.runtime.engine"]),
    ("import sqlite3\n", ["sqlite3"]),
    ("from . import session\n", ["bot.core", "bot.core.session"]),
])
def test_the_rule_reader_sees_imports(tmp_path: Path, source: str, expected: list[str]) -> None:
    """The checks above can fail: the reader finds each kind of import a violation would use."""
    probe = tmp_path / "layer_probe.py"  # outside the tree: a parallel run never sees it
    probe.write_text(source, encoding="utf-8")
    assert [module for _line, module in _imports(probe, "bot.core.layer_probe")] == expected
