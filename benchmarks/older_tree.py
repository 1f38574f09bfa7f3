"""What the benchmarks that compare this tree with an older commit of optlab share: the
older commit checked out as a git worktree, and a measurement run in a fresh interpreter
with one tree's ``src`` first on ``sys.path``."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def older_tree(rev: str) -> Iterator[Path]:
    """optlab at commit ``rev`` in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


# Plugins are found through entry points, and the installed ones name this tree's modules:
# a tree measured with its own pyproject's entry points finds its own (the modules moved).
OWN_ENTRY_POINTS = """
import importlib.metadata as _md, sys as _sys, tomllib as _toml
from importlib.metadata import EntryPoint as _EP, EntryPoints as _EPS
from pathlib import Path as _P
_py = _P(_sys.argv[1]).parent / "pyproject.toml"
if _py.exists():
    _t = _toml.loads(_py.read_text())["project"].get("entry-points", {})
    _eps = [_EP(n, v, g) for g, t in _t.items() for n, v in t.items()]
    _md.entry_points = lambda **kw: _EPS([e for e in _eps if e.group == kw.get("group")])
"""


def measure(script: str, src: Path, *args: object) -> dict:
    """Run ``script`` (Python source; it puts ``sys.argv[1]`` first on sys.path) in a fresh
    interpreter with ``src`` and ``args``, its plugins found through that tree's own entry
    points; the JSON object its last line prints."""
    out = subprocess.run(
        [sys.executable, "-c", OWN_ENTRY_POINTS + script, str(src), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])
