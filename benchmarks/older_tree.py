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


def measure(script: str, src: Path, *args: object) -> dict:
    """Run ``script`` (Python source; it puts ``sys.argv[1]`` first on sys.path) in a fresh
    interpreter with ``src`` and ``args``; the JSON object its last line prints."""
    out = subprocess.run(
        [sys.executable, "-c", script, str(src), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])
