"""Mutated study files (the shipped ones, changed at random) never give a traceback: `optlab
show` exits 0, 1 or 2 with at most one line of error, and when it rejects a file, `optlab run`
rejects it too and leaves the store exactly as it was."""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from optlab.cli import app
from tests.conftest import ROOT

STUDIES = {p.name: tomllib.loads(p.read_text()) for p in sorted((ROOT / "studies").glob("*.toml"))}

SCALARS = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            0,
            1,
            -1,
            0.0,
            1e308,
            -1e-308,
            True,
            False,
            "",
            "sgd",
            "none",
            "1-3",
            "synthetic",
            "cifar100",
            "x" * 300,
            "é✓",
        ]
    ),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["name", "lr", "x", "a.b", "epochs", "grid", "set"]), inner, max_size=3
        ),
    ),
    max_leaves=6,
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node of the parsed file (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def _parent(tree: Any, path: tuple) -> Any:
    for part in path[:-1]:
        tree = tree[part]
    return tree


@st.composite
def mutated(draw) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(STUDIES)))
    tree = json.loads(json.dumps(STUDIES[name]))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(tree, path), path[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        if action == "replace":
            parent[last] = draw(VALUES)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[
                draw(
                    st.sampled_from(
                        [
                            "lr",
                            "name",
                            "seeds",
                            "epochs",
                            "zip",
                            "probes",
                            "checkpoint",
                            "save_weights",
                            "bogus",
                        ]
                    )
                )
            ] = draw(VALUES)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = parent.pop(last)
    return name, tree


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(tree: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in tree.items())


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def store(tmp_path_factory) -> Path:
    """A real store made by running the tiny quickstart-like study below once."""
    folder = tmp_path_factory.mktemp("fuzz")
    study = folder / "seed.toml"
    study.write_text(
        '[base]\nepochs = 1\ndataset = { name = "synthetic", train_size = 16, '
        'test_size = 8 }\nmodel = { name = "mlp", hidden = [4] }\n'
        'optimizer = { name = "sgd", lr = 0.1 }\n'
    )
    from tests.conftest import optlab

    optlab(
        "run",
        str(study),
        "--store",
        str(folder / "s.duckdb"),
        "--workers",
        "1",
        cwd=folder,
        check=True,
    )
    return folder / "s.duckdb"


def check_clean(result, what: str) -> None:
    assert result.exit_code in (0, 1, 2), (what, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        what,
        repr(result.exception),
    )
    assert "Traceback" not in result.output, (what, result.output)
    assert "unexpected" not in result.stderr, (what, result.stderr)
    if result.exit_code:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert (
            len(lines) == 1
            and lines[0].startswith(("Error: ", "Usage: "))
            or "Usage:" in result.stderr
        ), (what, result.stderr)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow  # real worker processes
@given(case=mutated())
def test_mutated_studies_give_one_line_and_leave_the_store_alone(case, store, tmp_path):
    name, tree = case
    path = tmp_path / name
    path.write_text(to_toml(tree))
    shown = invoke("show", str(path), "--store", str(store))
    check_clean(shown, f"show {name}: {tree}")
    if shown.exit_code == 0:
        return
    before = digest(store)
    ran = invoke("run", str(path), "--store", str(store), "--gpus", "none", "--workers", "1")
    check_clean(ran, f"run {name}: {tree}")
    assert ran.exit_code != 0, (tree, ran.output)
    assert digest(store) == before


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.sampled_from(
        [
            "dataset",
            "optimizer",
            "optimizer.lr",
            "optimizer.lr.x",
            "epochs",
            "seeds",
            "base",
            "block",
            "block.0",
            "block.0.grid",
            "probes",
            "model.hidden",
            "a.b.c",
            "checkpoint",
            "save_weights",
            "name",
        ]
    ),
    value=VALUES,
)
def test_random_set_overrides_give_one_line(key, value, tmp_path):
    shown = invoke(
        "show",
        str(ROOT / "studies" / "quickstart.toml"),
        "--store",
        str(tmp_path / "none.duckdb"),
        "--set",
        f"{key}={toml_value(value)}",
    )
    check_clean(shown, f"--set {key}={toml_value(value)}")
