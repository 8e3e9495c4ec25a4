"""The agent-only `shepherd` tool's own constants, read from its source with `ast`.

Tests never import `bot/agent/tool.py` (it is a file copied into the agent's box); what they need of
it they read here, and they run it as the agent does: installed, as a subprocess.
"""

from __future__ import annotations

import ast
import operator
from functools import cache
from pathlib import Path
from typing import Any

TOOL_PATH = Path(__file__).resolve().parents[1] / "bot" / "agent" / "tool.py"
_OPERATIONS = {ast.Mult: operator.mul, ast.Add: operator.add}


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATIONS:
        return _OPERATIONS[type(node.op)](_value(node.left), _value(node.right))
    return ast.literal_eval(node)


@cache
def tool_constants() -> dict[str, Any]:
    """Every module-level `NAME = <literal>` of the tool's source (names in capitals only)."""
    tree = ast.parse(TOOL_PATH.read_text(encoding="utf-8"))
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                try:
                    found[name] = _value(node.value)
                except ValueError:
                    continue  # not a literal (e.g. a dict of other constants)
    return found
