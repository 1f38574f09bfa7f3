"""optlab train and optlab.train(config): one configuration over a study's [base], in the
foreground, into the store as a run of study 'train'."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import optlab, write_study


def test_a_bad_seed_is_one_line_and_writes_nothing(cli, tmp_path):
    write_study(tmp_path)
    result = cli("train", "tiny.toml", "--seed", "-1")
    assert result.exit_code == 1
    assert result.stderr == "Error: --seed -1: a seed is a whole number from 0 to 2147483647\n"
    assert not (tmp_path / "optlab.duckdb").exists()


@pytest.mark.slow  # real worker processes
def test_train_from_the_command_line_and_from_python(tmp_path):
    write_study(tmp_path)
    first = optlab("train", "tiny.toml", "--set", "optimizer.lr=0.05", cwd=tmp_path, check=True)
    assert first.stdout.startswith("train: running 1 of 1 runs")
    again = optlab("train", "tiny.toml", "--set", "optimizer.lr=0.05", cwd=tmp_path, check=True)
    assert again.stdout.startswith("Nothing to run: all 1 runs of train are finished")
    # From a notebook: the same configuration is found done and its results come back.
    code = (
        "import json, optlab\n"
        "t = optlab.train({'optimizer': {'lr': 0.05}}, study='tiny.toml')\n"
        "u = optlab.train({'optimizer': {'lr': 0.2}}, study='tiny.toml', seed=1)\n"
        "print(json.dumps([t.run_id, t.status, len(t.epochs), u.status, u.summary['seed']]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    run_id, status, epochs, other, seed = json.loads(out.splitlines()[-1])
    assert (status, epochs, other, seed) == ("done", 2, "done", 1)
    rows = optlab(
        "query",
        "select run_id, lr, seed, epochs from runs where study = 'train' order by lr",
        "--format",
        "json",
        cwd=tmp_path,
        check=True,
    ).stdout
    assert [(r["lr"], r["seed"], r["epochs"]) for r in json.loads(rows)] == [
        (0.05, 0, 2),
        (0.2, 1, 2),
    ]
    assert json.loads(rows)[0]["run_id"] == run_id
