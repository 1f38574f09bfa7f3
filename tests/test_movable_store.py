"""A store and its folders are one movable unit: moved, merged and trimmed, no command
touches another store's files, and every recorded file resolves where the store is now."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import optlab, write_study

pytestmark = pytest.mark.slow  # real worker processes

KEPT = """
name = "kept"
seeds = [0, 1]

[base]
epochs = 2
save_weights = "final"
checkpoint = { every_epochs = 1 }
dataset = { name = "synthetic", classes = 3, shape = [1, 4, 4], train_size = 48, test_size = 24 }
model = { name = "mlp", hidden = [8] }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
batch_schedule = { name = "constant", batch_size = 16 }

[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = [0.01, 0.1]
"""


def hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (lock files aside: they say who writes now)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def query(folder: Path, store: str, sql: str) -> list[dict]:
    out = optlab("query", sql, "--format", "json", "--store", store, cwd=folder, check=True)
    return json.loads(out.stdout)


def weights(folder: Path, store: str, run_id: str) -> Path:
    return Path(optlab("weights", run_id, "--store", store, cwd=folder, check=True).stdout.strip())


def test_a_moved_store_merged_and_trimmed_never_touches_the_other_stores_files(tmp_path):
    machine_a, b = tmp_path / "machine_a", tmp_path / "b"
    for folder in (machine_a, b):
        folder.mkdir()
        write_study(folder, text=KEPT, name="kept.toml")
    optlab(
        "run", "kept.toml", "--set", "seeds=[0]", "--store", "a.duckdb", cwd=machine_a, check=True
    )
    optlab("run", "kept.toml", "--set", "seeds=[1]", "--store", "b.duckdb", cwd=b, check=True)
    # The store moves (a notebook's disk copied off, say) with its folders, and keeps working.
    a = tmp_path / "elsewhere" / "a"
    a.parent.mkdir()
    shutil.move(machine_a, a)
    # Checkpoints and weights stay out of git, as a venv does.
    assert (a / "a.checkpoints" / ".gitignore").read_text().endswith("\n*\n")
    ids_a = [r["run_id"] for r in query(a, "a.duckdb", "select run_id from runs order by 1")]
    assert len(ids_a) == 2
    for run_id in ids_a:
        assert weights(a, "a.duckdb", run_id) == a / "a.checkpoints" / run_id / "final.pt"
    before = hashes(a)

    merged = optlab("merge", str(a / "a.duckdb"), "--store", "b.duckdb", cwd=b, check=True)
    assert "2 new runs" in merged.stdout
    # The merged runs' weights were copied into b's folder and resolve there.
    for run_id in ids_a:
        assert weights(b, "b.duckdb", run_id) == b / "b.checkpoints" / run_id / "final.pt"
    gone, kept = ids_a
    optlab("rm", gone, "--store", "b.duckdb", "--yes", cwd=b, check=True)
    assert not (b / "b.checkpoints" / gone).exists() and not (b / "b.runs" / gone).exists()
    # b, rebuilt from its journals (the merged run's journal came along, renamed for b),
    # still finds the merged run's weights in its own folder.
    optlab("rebuild", "--store", "b.duckdb", cwd=b, check=True)
    assert weights(b, "b.duckdb", kept) == b / "b.checkpoints" / kept / "final.pt"

    # Merged with --link, the files stay in a's folders: named there, never removed here.
    c = tmp_path / "c"
    c.mkdir()
    optlab("merge", str(a / "a.duckdb"), "--link", "--store", "c.duckdb", cwd=c, check=True)
    assert weights(c, "c.duckdb", gone) == a / "a.checkpoints" / gone / "final.pt"
    assert query(c, "c.duckdb", "select distinct files_store from runs") == [
        {"files_store": str(a / "a.duckdb")}
    ]
    optlab("rm", "--where", "true", "--store", "c.duckdb", "--yes", cwd=c, check=True)

    # A bundle carries the study off a disk that is about to go (a notebook's session).
    carry = tmp_path / "carry"
    carry.mkdir()
    packed = optlab(
        "export", "kept", "--format", "bundle", "--to", str(carry / "kept.tar"),
        "--store", "a.duckdb", cwd=a, check=True,
    )  # fmt: skip
    assert "kept: 2 runs with their epochs, probes, journals, logs and kept files" in packed.stdout
    assert sorted(p.name for p in carry.iterdir()) == ["kept.tar"]
    d = tmp_path / "d"
    d.mkdir()
    merged = optlab("merge", str(carry / "kept.tar"), "--store", "d.duckdb", cwd=d, check=True)
    assert merged.stdout.startswith(f"merged {carry / 'kept.tar'}: 2 new runs")
    assert [p.name for p in d.iterdir() if p.name.startswith(".")] == []  # no scratch left
    for run_id in ids_a:
        assert weights(d, "d.duckdb", run_id) == d / "d.checkpoints" / run_id / "final.pt"
    epochs = "select run_id, epoch, train_loss from epochs order by 1, 2"
    assert query(d, "d.duckdb", epochs) == query(a, "a.duckdb", epochs)
    optlab("rebuild", "--store", "d.duckdb", cwd=d, check=True)
    assert query(d, "d.duckdb", epochs) == query(a, "a.duckdb", epochs)

    assert hashes(a) == before  # not one file of a changed
    for run_id in ids_a:
        assert weights(a, "a.duckdb", run_id) == a / "a.checkpoints" / run_id / "final.pt"
    assert query(a, "a.duckdb", "select count(*) as n from runs where status = 'done'") == [
        {"n": 2}
    ]
