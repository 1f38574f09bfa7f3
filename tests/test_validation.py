"""Bad input: one line naming the problem, a non-zero exit, and the store untouched."""

from __future__ import annotations

import hashlib

import pytest

from optlab.errors import UsageError
from optlab.execution.devices import make_slots, parse_gpus

BASE = """[base]
epochs = 1
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
"""
GRID = '\n[[block]]\nname = "g"\ngrid = { %s }\n'

CASES = {
    "too_many_seeds": (
        "seeds = 1000000000000\n" + BASE,
        "seeds: give a count from 1 to 100,000 or a list of seeds (given 1000000000000)",
    ),
    "seed_past_32_bits": (
        "seeds = [0, 2147483648]\n" + BASE,
        "seeds: seed 2147483648: a seed is a whole number from 0 to 2147483647 "
        "(given [0, 2147483648])",
    ),
    "nested_too_deep": (
        BASE + "tags = " + "[" * 40 + "1" + "]" * 40 + "\n",
        "tables and arrays nested over 32 levels deep; a study nests at most 32",
    ),
    "nested_past_the_parser": (
        BASE + "tags = " + "[" * 2000 + "1" + "]" * 2000 + "\n",
        "tables and arrays nested over 32 levels deep; a study nests at most 32",
    ),
    "unknown_plugin": (
        BASE.replace('"sgd"', '"sgdd"'),
        "base: optimizer.name: unknown optimizer 'sgdd'; did you mean 'sgd'? "
        "Registered: adam, adamw, lamb, lars, lion, sam, "
        "schedulefree_adamw, sgd",
    ),
    "unknown_key": (
        BASE.replace("lr = 0.1", "lrr = 0.1"),
        "base: optimizer.lrr: unknown key; sgd takes: lr, momentum, dampening, "
        "nesterov, weight_decay, exclude_bias_norm",
    ),
    "wrong_type": (
        BASE.replace("lr = 0.1", 'lr = "fast"'),
        "base: optimizer.lr: Input should be a valid number, unable to parse string "
        "as a number (given 'fast')",
    ),
    "out_of_range": (
        BASE.replace("lr = 0.1", "lr = -0.1"),
        "base: optimizer.lr: Input should be greater than 0 (given -0.1)",
    ),
    "momentum_range": (
        BASE.replace("lr = 0.1", "lr = 0.1, momentum = 1.5"),
        "base: optimizer.momentum: Input should be less than 1 (given 1.5)",
    ),
    "empty_axis": (
        BASE + GRID % '"optimizer.lr" = []',
        "block 'g': grid.optimizer.lr: empty axis; give at least one value",
    ),
    "axis_not_a_param": (
        BASE + GRID % '"optimizer.lrr" = [0.1]',
        "block 'g': axis optimizer.lrr: no such key; sgd takes: dampening, "
        "exclude_bias_norm, lr, momentum, nesterov, weight_decay",
    ),
    "axis_not_a_key": (
        BASE + GRID % '"optimiser.lr" = [0.1]',
        "block 'g': axis optimiser.lr: no such key 'optimiser'; a run config "
        "has: epochs, precision, lr_scaling, lr_reference_batch, checkpoint, "
        "save_weights, divergence, local_sgd, dataset, model, optimizer, "
        "lr_schedule, batch_schedule, augmentation, probes",
    ),
    "unknown_top_level_key": (
        BASE + '\n[[blok]]\nname = "g"\n',
        "blok: unknown key; allowed: name, description, seeds, base, block, analysis, plugins",
    ),
    "syntax": (
        '[base]\nepochs = 1\ndataset = { name = "synthetic" \n',
        "TOML syntax error: Unclosed inline table (at line 3, column 32)",
    ),
    "zero_lr": (
        BASE.replace("lr = 0.1", "lr = 0"),
        "base: optimizer.lr: Input should be greater than 0 (given 0)",
    ),
    "negative_momentum": (
        BASE.replace("lr = 0.1", "lr = 0.1, momentum = -0.1"),
        "base: optimizer.momentum: Input should be greater than or equal to 0 (given -0.1)",
    ),
    "trust_coefficient": (
        BASE.replace('"sgd", lr = 0.1', '"lars", trust_coefficient = 0'),
        "base: optimizer.trust_coefficient: Input should be greater than 0 (given 0)",
    ),
    "precision": (
        BASE.replace("epochs = 1", 'epochs = 1\nprecision = "fp8"'),
        "base: precision: Input should be 'fp32', 'bf16' or 'amp' (given 'fp8')",
    ),
    "zero_epochs": (
        BASE.replace("epochs = 1", "epochs = 0"),
        "base: epochs: Input should be greater than or equal to 1 (given 0)",
    ),
    "probe_beyond_epochs": (
        BASE + 'probes = [{ name = "grad_norm", epochs = [1, 3] }]\n',
        "base: probes[0] (grad_norm): epoch 3 is beyond the run's 1 epochs (allowed: 0 to 1)",
    ),
    "probe_every_beyond": (
        BASE.replace("epochs = 1", "epochs = 4")
        + 'probes = [{ name = "weight_norm", every = 5 }]\n',
        "base: probes[0] (weight_norm): every = 5 is beyond the run's 4 "
        "epochs, so the probe would never run",
    ),
    "probe_unknown": (
        BASE + 'probes = [{ name = "hessian" }]\n',
        "base: probes[0].name: unknown probe 'hessian'; did you mean "
        "'hessian_trace'? Registered: distance_from_init, effective_lr, "
        "full_grad_norm, grad_noise_scale, grad_norm, hessian_trace, "
        "top_eigenvalue, trust_ratio, weight_norm",
    ),
    "probe_key": (
        BASE + 'probes = [{ name = "hessian_trace", vector = 3 }]\n',
        "base: probes[0].vector: unknown key; hessian_trace takes: epochs, every, "
        "first_steps, batch, mode, augment, vectors",
    ),
    "probe_two_schedules": (
        BASE + 'probes = [{ name = "grad_norm", every = 1, first_steps = 5 }]\n',
        "base: probes[0]: give one of epochs, every, "
        "first_steps (given every, first_steps) (given {'every': 1, "
        "'first_steps': 5})",
    ),
    "trust_ratio_needs_lars": (
        BASE + 'probes = [{ name = "trust_ratio" }]\n',
        "base: probes[0] (trust_ratio): trust_ratio needs a layer-wise "
        "optimizer (lars, lamb); this run uses sgd",
    ),
    "probes_not_a_list": (
        BASE + 'probes = { name = "grad_norm" }\n',
        "base: probes: needs a list of probe tables, such as "
        "[{ name = \"grad_norm\", every = 1 }] (given {'name': 'grad_norm'})",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_study_errors_are_one_literal_line(cli, tmp_path, case):
    text, message = CASES[case]
    (tmp_path / f"{case}.toml").write_text(text)
    result = cli("show", f"{case}.toml")
    assert result.exit_code == 1
    assert result.stderr == f"Error: {case}.toml: {message}\n"
    assert result.stdout == ""


@pytest.mark.parametrize("case", ["seed_past_32_bits", "nested_past_the_parser"])
def test_a_study_refused_at_run_writes_nothing(cli, tmp_path, case):
    """What `show` refuses, `run` refuses before a store file exists."""
    text, message = CASES[case]
    (tmp_path / f"{case}.toml").write_text(text)
    result = cli("run", f"{case}.toml")
    assert (result.exit_code, result.stderr) == (1, f"Error: {case}.toml: {message}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.toml"]


def test_missing_study_file(cli):
    result = cli("run", "nope.toml")
    assert (result.exit_code, result.stderr) == (1, "Error: nope.toml: no such study file\n")


def test_bad_set_value_is_reported_at_its_key(cli, tmp_path):
    (tmp_path / "s.toml").write_text(BASE)
    result = cli("show", "s.toml", "--set", "optimizer.lr=0")
    assert result.stderr == (
        "Error: s.toml: base: optimizer.lr: Input should be greater than 0 (given 0)\n"
    )
    result = cli("show", "s.toml", "--set", "nonsense")
    assert result.stderr == (
        "Error: --set 'nonsense': expected KEY=VALUE, such as optimizer.lr=0.1\n"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gpus", "3-1"], "--gpus '3-1': range 3-1 runs backwards; write 1-3"),
        (
            ["--gpus", "x"],
            "--gpus 'x': 'x' is not a GPU index or range; use forms like 0-7, "
            "0,2,5, 0-3,6, all or none",
        ),
        (
            ["--gpus", "0"],
            "--gpus '0': GPU 0 is not present (GPUs here: none); --gpus none runs on the CPU",
        ),
        (["--per-gpu", "0"], "--per-gpu 0: needs at least 1 worker per GPU"),
        (["--workers", "0"], "--workers 0: needs at least 1 worker"),
    ],
)
def test_executor_usage_errors_exit_2_and_write_no_store(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("OPTLAB_GPU_COUNT", "0")
    (tmp_path / "s.toml").write_text(BASE)
    result = cli("run", "s.toml", *args)
    assert (result.exit_code, result.stderr) == (2, f"Error: {message}\n")
    assert not (tmp_path / "optlab.duckdb").exists()


def test_bad_study_leaves_an_existing_store_byte_for_byte(cli, tmp_path):
    import duckdb

    duckdb.connect(str(tmp_path / "optlab.duckdb")).close()
    before = hashlib.sha256((tmp_path / "optlab.duckdb").read_bytes()).hexdigest()
    (tmp_path / "s.toml").write_text(CASES["unknown_key"][0])
    assert cli("run", "s.toml").exit_code == 1
    after = hashlib.sha256((tmp_path / "optlab.duckdb").read_bytes()).hexdigest()
    assert before == after


def test_store_that_is_not_duckdb(cli, tmp_path):
    (tmp_path / "notes.duckdb").write_text("hello")
    (tmp_path / "s.toml").write_text(BASE)
    for args in (["run", "s.toml"], ["query", "select 1"], ["status"]):
        result = cli(*args, "--store", "notes.duckdb")
        assert result.exit_code == 1
        assert result.stderr == "Error: notes.duckdb: not a DuckDB database; give another --store\n"
    assert (tmp_path / "notes.duckdb").read_text() == "hello"


def test_debug_shows_the_traceback(cli, tmp_path):
    (tmp_path / "s.toml").write_text(CASES["unknown_key"][0])
    result = cli("--debug", "show", "s.toml")
    assert "Traceback" in result.stderr and result.exit_code == 1


@pytest.mark.parametrize(
    "spec,available,expected",
    [
        ("0-7", 8, ["0", "1", "2", "3", "4", "5", "6", "7"]),
        ("0,2,5", 8, ["0", "2", "5"]),
        ("0-3,6", 8, ["0", "1", "2", "3", "6"]),
        ("all", 2, ["0", "1"]),
        ("none", 2, []),
        (" 1 - 2 ", 4, ["1", "2"]),
    ],
)
def test_gpu_specs(spec, available, expected):
    assert parse_gpus(spec, [str(i) for i in range(available)]) == expected


def test_gpu_indices_map_onto_inherited_visible_devices():
    assert parse_gpus("0,1", ["4", "6"]) == ["4", "6"]
    with pytest.raises(UsageError, match="GPU 2 is not present"):
        parse_gpus("2", ["4", "6"])


def test_a_cpu_run_has_its_own_thread_count_whatever_the_workers_and_cores():
    """A run's rows depend on its thread count: on the CPU it is the same however the run
    is scheduled (3 workers on 8 cores, one alone on 2, 16 on 1); GPU workers divide the
    cores for their CPU-side work."""
    cpu = make_slots([], per_gpu=1, workers=3, cores=8)
    assert [s.threads for s in cpu] == [1, 1, 1]
    for cores in (1, 2, 8, 64):
        for workers in (None, 1, 2, 16):
            slots = make_slots([], 1, workers, cores=cores)
            assert {s.threads for s in slots} == {1}
            assert {s.env()["OMP_NUM_THREADS"] for s in slots} == {"1"}
    gpu = make_slots(["0", "1"], per_gpu=4, workers=None, cores=16)
    assert [s.gpu for s in gpu] == ["0"] * 4 + ["1"] * 4
    assert {s.threads for s in gpu} == {2}
    assert gpu[5].env()["CUDA_VISIBLE_DEVICES"] == "1"
    assert cpu[0].env()["CUDA_VISIBLE_DEVICES"] == ""


def test_cpu_runs_say_what_an_option_does_not_do_and_what_they_will_cost():
    from types import SimpleNamespace

    from optlab.execution.devices import cpu_notes

    def run(model, epochs):
        return SimpleNamespace(config={"model": {"name": model}, "epochs": epochs})

    cpu = make_slots([], per_gpu=1, workers=4, cores=2)
    notes = cpu_notes(cpu, 8, 4, [run("resnet18", 200), run("wrn", 100), run("mlp", 5)], cores=2)
    assert notes == [
        "--per-gpu 8 does nothing without a GPU; --workers sets CPU workers",
        "--workers 4 on 2 cores: the workers share cores (1 thread each), so each run is "
        "slower than with --workers 2",
        "2 runs of resnet18, wrn (up to 200 epochs) train on the CPU: expect hours an epoch; "
        "--gpus picks GPUs where there are some",
    ]
    assert cpu_notes(make_slots([], 1, 2, cores=2), 1, 2, [run("mlp", 5)], cores=2) == []
    gpu = make_slots(["0"], per_gpu=2, workers=None, cores=2)
    assert cpu_notes(gpu, 2, None, [run("resnet18", 200)], cores=2) == []
