"""Part of a study without editing it: --block, --only and --where, the same for show and
run; the parts add up in the store."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, optlab, write_study

TWO_BLOCKS = (
    TINY.format(lrs="[0.01, 0.1]")
    + """
[[block]]
name = "calm"
set = { "optimizer.momentum" = 0.5 }
"""
)


@pytest.fixture
def two_blocks(tmp_path):
    return write_study(tmp_path, text=TWO_BLOCKS)


def shown(cli, *options: str) -> list[dict]:
    result = cli("show", "tiny.toml", "--format", "json", *options)
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_show_selects_by_block_id_and_condition(cli, two_blocks):
    every = shown(cli)
    assert len(every) == 10
    assert {r["block"] for r in shown(cli, "--block", "calm")} == {"calm"}
    assert len(shown(cli, "--block", "calm", "--block", "grid")) == 10
    picked = shown(cli, "--where", "seed = 1 and lr >= 0.1 and block = 'grid'")
    assert [(r["seed"], r["optimizer.lr"]) for r in picked] == [(1, 0.1), (1, 0.1)]
    one = every[3]["run_id"]
    assert [r["run_id"] for r in shown(cli, "--only", one[:6])] == [one]
    text = cli("show", "tiny.toml", "--block", "grid", "--where", "seed = 0 and wd > 0").stdout
    assert "selected 2 of its 10 runs (--block grid --where 'seed = 0 and wd > 0')" in text
    assert "  seeds: 0\n" in text and "  optimizer.weight_decay: 0.01\n" in text


@pytest.mark.parametrize(
    "options, message",
    [
        (["--block", "nope"], "--block 'nope': no such block; the study's: grid, calm"),
        (["--only", "12"], "--only '12': give a run id (12 hex digits) or at least its first 4"),
        (["--only", "ffffff"], "--only 'ffffff': no run of the study has that id"),
        (["--where", "seed = 7"], "--where 'seed = 7': no run of the study matches"),
        (["--block", "calm", "--where", "block = 'grid'"], "no run of the study matches"),
        (
            ["--where", "nonsense > 1"],
            "--where 'nonsense > 1': give one SQL condition over the study's columns (those "
            "that vary: block, seed, optimizer_lr, optimizer_momentum, optimizer_weight_decay;",
        ),
        (["--where", "1; drop table matrix"], "give one SQL condition"),
    ],
)
def test_a_selection_that_matches_nothing_is_one_line(cli, two_blocks, options, message):
    for command in ("show", "run"):
        result = cli(command, "tiny.toml", *options)
        assert result.exit_code != 0
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (two_blocks.parent / "optlab.duckdb").exists()


@pytest.mark.slow
def test_blocks_run_one_at_a_time_add_up(tmp_path):
    write_study(tmp_path, text=TWO_BLOCKS)
    first = optlab("run", "tiny.toml", "--block", "calm", cwd=tmp_path, check=True)
    assert first.stdout.splitlines()[0].startswith("tiny: running 2 of 2 runs")
    status = optlab("status", "tiny", cwd=tmp_path, check=True).stdout
    assert "tiny: 2 of the study file's 10 runs finished" in status
    second = optlab(
        "run", "tiny.toml", "--block", "grid", "--where", "seed = 0", cwd=tmp_path, check=True
    )
    assert second.stdout.splitlines()[0].startswith("tiny: running 4 of 4 runs")
    assert (
        "tiny: 6 of the study file's 10 runs finished"
        in optlab("status", "tiny", cwd=tmp_path, check=True).stdout
    )
    rest = optlab("run", "tiny.toml", cwd=tmp_path, check=True)
    assert rest.stdout.splitlines()[0].startswith("tiny: running 4 of 10 runs (6 already")
