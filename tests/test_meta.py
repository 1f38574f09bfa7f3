"""Meta-tests: every command has help; the read-side commands never import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command

from optlab.cli import app

COMMANDS = sorted(get_command(app).commands)


def test_the_commands_are_there():
    assert COMMANDS == [
        "analyze",
        "export",
        "merge",
        "plot",
        "plugins",
        "query",
        "rebuild",
        "report",
        "rm",
        "run",
        "serve",
        "show",
        "status",
        "train",
        "weights",
    ]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.stdout and len(result.stdout.splitlines()) > 3


def test_store_option_on_every_command_that_reads_or_writes(cli):
    for name in ("run", "show", "status", "query", "analyze", "report", "export", "merge"):
        assert "--store" in cli(name, "--help").stdout
    for chart in ("heatmap", "curves", "sensitivity", "scaling", "sfo", "gradnorm", "probes"):
        assert "--store" in cli("plot", chart, "--help").stdout


NO_TORCH = """
import sys
from optlab.cli import app
for args in {commands!r}:
    try:
        app(args)
    except SystemExit:
        pass
    assert "torch" not in sys.modules, f"optlab {{' '.join(args)}} imported torch"
print("ok")
"""


def without_torch(folder, commands: list[list[str]]) -> subprocess.CompletedProcess[str]:
    """The commands one after the other in one fresh interpreter, which must still not
    have imported torch after each (a command cannot hide another's import)."""
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH.format(commands=commands)],
        cwd=folder,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow  # a fresh interpreter
def test_read_side_commands_do_not_import_torch(tmp_path):
    commands = [
        ["--help"],
        ["show"],
        ["status"],
        ["query", "select 1"],
        ["plot", "heatmap", "--help"],
        ["plot", "heatmap"],
    ]
    proc = without_torch(tmp_path, commands)
    assert proc.stdout.endswith("ok\n"), proc.stderr


@pytest.mark.slow  # a fresh interpreter
def test_analysis_side_commands_do_not_import_torch(tmp_path):
    from tests.synth import make_store
    from tests.test_outputs import STUDY, acc, norms

    make_store(tmp_path, STUDY, acc, grad_norm=norms)
    commands = [
        ["analyze", "optimal"],
        ["analyze", "scaling"],
        ["report"],
        ["export", "--format", "seed001"],
        ["plot", "curves"],
        ["plot", "sensitivity"],
        ["plot", "probes"],
    ]
    proc = without_torch(tmp_path, commands)
    assert proc.stdout.endswith("ok\n") and "Error" not in proc.stderr, proc.stderr
    for made in ("report.html", "curves.html", "sensitivity.html", "probes.html"):
        assert any(tmp_path.glob(f"*{made}")), made


def test_plugins_lists_distribution_description_and_typed_params(cli):
    result = cli("plugins", "optimizer")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    start = lines.index(
        "optimizer sgd (optlab): stochastic gradient descent with momentum "
        "(dampening, Nesterov) and L2 weight decay"
    )
    assert lines[start + 1 : start + 7] == [
        "    lr: float (> 0) = 0.1  # base learning rate (the LR schedule multiplies it every "
        "step)",
        "    momentum: float (>= 0, < 1) = 0.0  # momentum coefficient",
        "    dampening: float (>= 0, <= 1) = 0.0  # dampening of the momentum buffer's new "
        "gradient",
        "    nesterov: bool = False  # Nesterov momentum",
        "    weight_decay: float (>= 0) = 0.0  # L2 weight decay, added to the gradient",
        "    exclude_bias_norm: bool = False  # keep biases and normalisation parameters (fewer "
        "than 2 dimensions) out of weight decay",
    ]


def test_plugins_json_for_tools(cli):
    import json

    result = cli("plugins", "optimizer", "--json")
    assert result.exit_code == 0
    got = json.loads(result.stdout)
    assert got["errors"] == []
    sam = next(p for p in got["plugins"] if p["name"] == "sam")
    assert sam["kind"] == "optimizer" and sam["distribution"] == "optlab"
    assert {
        "name": "rho",
        "type": "float (> 0)",
        "default": "0.05",
        "description": "radius of the neighbourhood in which SAM looks for the worst point",
    } in sam["params"]
    # every built-in optimizer's every parameter says what it is
    assert all(p["description"] for o in got["plugins"] for p in o["params"])
    every = json.loads(cli("plugins", "--json").stdout)["plugins"]
    undescribed = [
        f"{o['kind']} {o['name']}: {p['name']}"
        for o in every
        for p in o["params"]
        if not p["description"] and o["distribution"] == "optlab"
    ]
    assert undescribed == []


def test_a_plugin_that_breaks_the_contract_is_named_in_one_line(tmp_path, cli):
    from pydantic import BaseModel

    from optlab.plugins.plugin import Plugin
    from optlab.plugins.registry import check_contract

    class Loose(BaseModel):
        lr: float = 0.1

    with pytest.raises(
        Exception,
        match=r"optimizer plugin 'loose': its params model 'Loose' "
        r"is not derived from optlab.Params",
    ):
        check_contract("optimizer", "loose", Plugin("x", Loose, lambda p: None))
    from optlab import Params

    class Wrong(Params):
        every: int = 1

    with pytest.raises(
        Exception,
        match=r"probe plugin 'p': its params model 'Wrong' is not "
        r"derived from optlab.ProbeParams",
    ):
        check_contract("probe", "p", Plugin("x", Wrong, lambda p: None))
    with pytest.raises(
        Exception,
        match=r"optimizer plugin 'gone': its build 'nowhere.at_all:"
        r"build' names no module that can be imported",
    ):
        check_contract("optimizer", "gone", Plugin("x", Params, "nowhere.at_all:build"))
    # from a file beside a study: at optlab show, by name, in one line
    (tmp_path / "p.py").write_text(
        "from pydantic import BaseModel\nfrom optlab import Plugin\n"
        "class Loose(BaseModel):\n    lr: float = 0.1\n"
        "bad = Plugin('x', Loose, lambda params, **_: None)\n"
    )
    from tests.test_validation import BASE

    (tmp_path / "s.toml").write_text(BASE + '\n[plugins.optimizers]\nbad = "p.py:bad"\n')
    result = cli("show", "s.toml")
    assert result.stderr == (
        "Error: s.toml: plugins.optimizers.bad: p.py: optimizer plugin "
        "'bad': its params model 'Loose' is not derived from "
        "optlab.Params\n"
    )


def test_plugins_with_an_unknown_kind(cli):
    result = cli("plugins", "optimisers")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: unknown plugin kind 'optimisers'; did you mean 'optimizer'? Registered: dataset, "
        "model, optimizer, lr_schedule, batch_schedule, augmentation, probe, executor\n"
    )
