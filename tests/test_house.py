"""The house's rules: stages import only downward, no import cycle, the relay needs no Ray
(import-linter's contracts in pyproject.toml), no module over 600 lines and no function
over 100, and imports inside functions only of what is slow to import, each saying why."""

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
    """The map of the house (docs/house.md) names real files: a move that forgets it fails
    here."""
    import re

    page = (SRC.parents[1] / "docs" / "house.md").read_text()
    section = page.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\b((?:src|tests)/[\w/.]+)", section))
    assert len(named) > 20
    missing = sorted(p for p in named if not (SRC.parents[1] / p).exists())
    assert not missing, f"docs/house.md's 'Where things live' names what is not there: {missing}"


# What may be imported inside a function: what is slow to import or optional, so that a
# command that does not need it never pays for it (torch in the reader commands, say).
LATE = (
    "torch",
    "torchvision",
    "scipy",
    "altair",
    "vl_convert",
    "sklearn",
    "ray",
    "submitit",
    "medmnist",
    "uvicorn",
)
LATE_OPTLAB = ("optlab.training.engine", "optlab.training.probing", "optlab.training.state")


def late_imports() -> list[tuple[str, int, str, bool]]:
    """(module, line, what it imports, whether a comment says why) of every import inside
    a function; an import right below a commented one shares its comment."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        seen: set[int] = set()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in seen:
                    continue
                seen.add(node.lineno)
                names = [a.name for a in node.names]
                module = node.module if isinstance(node, ast.ImportFrom) else names[0]
                targets = [module] + [f"{module}.{n}" for n in names]
                above = lines[node.lineno - 2].strip()
                said = "#" in lines[node.lineno - 1] or above.startswith(("#", "import ", "from "))
                found.append((path.relative_to(SRC).as_posix(), node.lineno, targets, said))
    return found


def test_imports_inside_functions_are_only_of_slow_modules_and_say_why():
    lazy_api = "__init__.py"  # optlab's own attributes, imported on first use (PEP 562)
    wrong = [
        f"{where}:{line} {targets[0]}"
        for where, line, targets, _ in late_imports()
        if where != lazy_api
        and not any(t.split(".")[0] in LATE or t in LATE_OPTLAB for t in targets)
    ]
    assert not wrong, f"imports inside functions of what is quick to import: {wrong}"
    unsaid = [f"{where}:{line}" for where, line, _, said in late_imports() if not said]
    assert not unsaid, f"imports inside functions with no comment saying why: {unsaid}"


def test_the_quick_tier_refuses_a_test_that_starts_optlab():
    """tests/conftest.py fails an unmarked test that starts a real `optlab` process (the
    quick tier stays quick); this test is unmarked, so what it starts is refused."""
    from tests.conftest import RealProcessInQuickTier, _starts_optlab

    with pytest.raises(RealProcessInQuickTier, match="mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-m", "optlab", "--help"], capture_output=True)
    # the pool's workers, forked from its fork server rather than started through Popen
    import asyncio

    from optlab.execution.executors import forked

    with pytest.raises(RealProcessInQuickTier, match="starts a real optlab worker"):
        asyncio.run(forked.start({}, Path("worker.log"), 1024))
    for argv in (
        ["optlab", "run"],
        ["/x/.venv/bin/optlab", "status"],
        [sys.executable, "-m", "optlab.training.worker"],
        [sys.executable, "-c", "import optlab.cli"],
        ["sh", "-c", "python -m optlab run"],
    ):
        assert _starts_optlab(argv), argv
    for argv in (
        [sys.executable, "-c", "import duckdb", "/tmp/optlab/optlab.duckdb"],
        ["/home/u/optlab/.venv/bin/python", "-c", "print(1)"],
        ["/tmp/x/fake-python", "-m", "optlab.training.worker"],
        ["chromium", "--headless", "optlab_report.html"],
    ):
        assert not _starts_optlab(argv), argv


def test_no_executor_is_special_cased_outside_its_own_package():
    """A new executor is one module against the protocol: nothing outside
    src/optlab/execution/executors/ compares a name with an executor's (the imports are held
    by an import-linter contract)."""
    names = {"local", "ray"}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "execution/executors" in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in names:
                        found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"an executor special-cased by name: {found}"


def test_run_states_are_declared_once():
    """A run's state is spelled in src/optlab/states.py only: elsewhere code compares with
    and collects ``State`` members, never a bare "done" (a new state, or a renamed one, is
    one edit; the per-run tables are ``store.schema.RUN_TABLES``, likewise one list). A
    state's name as a column of a query's result, a key of an output table, or a word in a
    sentence, is not a state and may be written."""
    states = {"pending", "running", "done", "failed", "diverged", "stopped", "interrupted"}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "states.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            pool: list[ast.AST] = []
            if isinstance(node, ast.Compare):
                pool = [node.left, *node.comparators]
                pool += [
                    e for p in pool if isinstance(p, ast.Tuple | ast.List | ast.Set) for e in p.elts
                ]
            elif isinstance(node, ast.Tuple | ast.List | ast.Set):
                pool = list(node.elts)
            found += [
                f"{path.relative_to(SRC)}:{c.lineno}: {c.value!r}"
                for c in pool
                if isinstance(c, ast.Constant) and c.value in states
            ]
    assert not found, f"states spelled as strings (use optlab.states.State): {found}"
