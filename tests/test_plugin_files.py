"""Plugins from a file beside the study: no packaging, the file's hash in every run id that
uses it, one line for anything wrong with it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import optlab

PLUGIN = """
from typing import Any
from pydantic import Field
from optlab.plugins.plugin import Params, Plugin


class SignParams(Params):
    lr: float = Field(0.01, gt=0, description="step size")


def build(params: SignParams, *, model: Any, **_: Any):
    import torch

    class SignSGD(torch.optim.Optimizer):
        def __init__(self, ps, lr):
            super().__init__(ps, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad.sign(), alpha=-g["lr"])

    return SignSGD(model.parameters(), params.lr)


signsgd = Plugin("signSGD from a file", SignParams, build)
"""

STUDY = """
name = "fp"
seeds = [0]
[plugins.optimizers]
{entry}
[base]
epochs = 2
dataset = {{ name = "synthetic", classes = 3, shape = [1, 4, 4], train_size = 48, test_size = 24 }}
model = {{ name = "mlp", hidden = [8] }}
optimizer = {{ name = "{name}", lr = 0.01 }}
batch_schedule = {{ name = "constant", batch_size = 16 }}
[[block]]
name = "g"
grid = {{ "optimizer.lr" = [0.01, 0.02] }}
"""


def setup(
    folder: Path,
    entry: str = 'mysign = "lib/my_optimizers.py:signsgd"',
    name: str = "mysign",
    source: str = PLUGIN,
) -> None:
    (folder / "lib").mkdir(exist_ok=True)
    (folder / "lib" / "my_optimizers.py").write_text(textwrap.dedent(source))
    (folder / "s.toml").write_text(STUDY.format(entry=entry, name=name))


def ids(cli) -> list[str]:
    from optlab.study.expand import all_runs, expand
    from optlab.study.schema import load_study

    return [r.run_id for r in all_runs(expand(load_study("s.toml")))]


@pytest.mark.slow  # real worker processes
def test_a_plugin_in_a_file_beside_the_study_runs_and_its_hash_makes_the_run_id(tmp_path, cli):
    setup(tmp_path)
    before = ids(cli)
    proc = optlab("run", "s.toml", "--workers", "2", cwd=tmp_path, check=True)
    assert proc.stdout.splitlines()[-1].endswith(": 2 done")
    got = optlab(
        "query",
        "select optimizer, plugin_files from runs",
        "--format",
        "json",
        cwd=tmp_path,
        check=True,
    ).stdout
    rows = json.loads(got)
    assert {r["optimizer"] for r in rows} == {"mysign"}
    label = json.loads(rows[0]["plugin_files"])[0]
    assert label.startswith("optimizer mysign lib/my_optimizers.py:signsgd sha256=")
    # A changed file is a new run: new ids, nothing done.
    with open(tmp_path / "lib" / "my_optimizers.py", "a") as f:
        f.write("\n# tuned\n")
    after = ids(cli)
    assert set(before).isdisjoint(after)
    assert "2 runs, 0 done" in cli("show", "s.toml").stdout
    # The worker runs the text the run id names, not whatever the file holds later.
    assert ids(cli) == after


def test_runs_that_do_not_use_a_file_plugin_keep_their_ids(tmp_path, cli):
    setup(tmp_path, name="sgd")
    with_table = ids(cli)
    (tmp_path / "s.toml").write_text(STUDY.format(entry="", name="sgd"))
    assert ids(cli) == with_table


@pytest.mark.parametrize(
    "entry,source,message",
    [
        (
            'mysign = "lib/nothere.py:signsgd"',
            PLUGIN,
            "s.toml: plugins.optimizers.mysign: lib/nothere.py: cannot read it (No such file or "
            "directory)",
        ),
        (
            'mysign = "lib/my_optimizers.py:other"',
            PLUGIN,
            "s.toml: plugins.optimizers.mysign: lib/my_optimizers.py has no 'other'",
        ),
        (
            'mysign = "lib/my_optimizers.py:Field"',
            PLUGIN,
            "s.toml: plugins.optimizers.mysign: lib/my_optimizers.py:Field is a function, not an "
            "optlab Plugin(description, params, build)",
        ),
        (
            'mysign = "lib/my_optimizers.py"',
            PLUGIN,
            "s.toml: plugins.optimizers.mysign: 'lib/my_optimizers.py' is not \"FILE.py:OBJECT\"",
        ),
        (
            'sgd = "lib/my_optimizers.py:signsgd"',
            PLUGIN,
            "s.toml: plugins.optimizers.sgd: an installed optimizer plugin is called 'sgd'; give "
            "this one another name",
        ),
        (
            'mysign = "lib/my_optimizers.py:signsgd"',
            "import not_a_module\n",
            "s.toml: plugins.optimizers.mysign: lib/my_optimizers.py cannot be loaded: "
            "ModuleNotFoundError: No module named 'not_a_module'",
        ),
    ],
)
def test_a_plugin_file_that_cannot_be_used_is_one_line(tmp_path, cli, entry, source, message):
    setup(tmp_path, entry=entry, source=source)
    result = cli("show", "s.toml")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_an_unknown_plugin_group_names_the_groups(tmp_path, cli):
    setup(tmp_path)
    text = (tmp_path / "s.toml").read_text().replace("[plugins.optimizers]", "[plugins.optimisers]")
    (tmp_path / "s.toml").write_text(text)
    result = cli("show", "s.toml")
    assert result.stderr == (
        "Error: s.toml: plugins.optimisers: not a plugin group; groups: "
        "datasets, models, optimizers, lr_schedules, batch_schedules, "
        "augmentations, probes\n"
    )
