"""The house's rules: stages import only downward, no import cycle, the relay needs no Ray
(import-linter's contracts in pyproject.toml), no module over 600 lines and no function
over 100."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "optlab"
MODULE_LINES, FUNCTION_LINES = 600, 100


def test_stages_import_only_downward_and_nothing_imports_in_a_circle():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([str(lint)], capture_output=True, text=True, cwd=SRC.parents[1])
    assert done.returncode == 0, done.stdout[-3000:]


def sizes() -> dict[str, int]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        text = path.read_text()
        found[name] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return found


def test_no_module_over_600_lines_and_no_function_over_100():
    over = {
        name: n
        for name, n in sizes().items()
        if n > (FUNCTION_LINES if ":" in name else MODULE_LINES)
    }
    limits = f"{MODULE_LINES} lines a module, {FUNCTION_LINES} a function"
    assert not over, f"over the limit ({limits}): {over}"


def test_every_path_where_things_live_names_exists():
    """README's map of the house names real files: a move that forgets it fails here."""
    import re

    readme = (SRC.parents[1] / "README.md").read_text()
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\b((?:src|tests)/[\w/.]+)", section))
    assert len(named) > 20
    missing = sorted(p for p in named if not (SRC.parents[1] / p).exists())
    assert not missing, f"README's 'Where things live' names what is not there: {missing}"
