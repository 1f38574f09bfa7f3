"""Checkpoints: the file format, the policy, and exact resume in the engine (CPU)."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from optlab.plugins.registry import default_registry
from optlab.training import checkpoint as ckpt
from optlab.training.engine import DataCache, train
from tests.test_engine import config

TIMING = {"seconds", "eval_seconds", "probe_seconds", "time", "elapsed"}


class Killed(Exception):
    """Stands for a kill -9 of the worker between two events."""


def run(cfg, folder, resume_upto=0, die_at=None, seed=0, deadline=None):
    """Train; ``die_at(event)`` True stops the run right there (the event is not kept);
    ``deadline``: the session's end (--stop-after), in time.time()."""
    events = []

    def emit(ev):
        if die_at is not None and die_at(ev):
            raise Killed
        events.append(ev)

    cache = DataCache(default_registry(), torch.device("cpu"))
    task = {
        "run_id": "r1",
        "seed": seed,
        "config": cfg,
        "checkpoint_dir": str(folder),
        "resume_upto": resume_upto,
        **({"deadline": deadline} if deadline is not None else {}),
    }
    with contextlib.suppress(Killed):
        train(task, emit, cache)
    return events


def results(events):
    """Epoch rows and probe values without timings, keyed by epoch."""
    keep = [
        {k: v for k, v in e.items() if k not in TIMING}
        for e in events
        if e["type"] in ("epoch", "probe")
    ]
    return sorted(keep, key=lambda e: (e["epoch"], e["type"], e.get("probe", "")))


def after(events, epoch):
    return [e for e in results(events) if e["epoch"] > epoch]


HARD = dict(
    epochs=6,
    dataset={
        "name": "synthetic",
        "classes": 3,
        "shape": [3, 8, 8],
        "train_size": 60,
        "test_size": 20,
        "noise": 1.0,
        "seed": 0,
        "val_fraction": 0.2,
    },
    model={"name": "cnn", "channels": [4, 8], "batch_norm": True},
    augmentation={"name": "sgdm_pipeline"},
    lr_schedule={"name": "cosine", "warmup_epochs": 1.0, "min_factor": 0.0},
    batch_schedule={"name": "linear_growth", "batch_size": 8, "incr_interval": 2, "coefficient": 8},
    probes=[
        {"name": "distance_from_init"},
        {"name": "grad_noise_scale", "batch": 32, "micro_batch": 8, "augment": True},
        {"name": "hessian_trace", "vectors": 2, "every": 2},
    ],
    checkpoint={"every_epochs": 1, "every_minutes": None, "keep": 2},
    save_weights="best",
)

OPTIMIZERS = {
    "sgd_nesterov": {
        "name": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
    },
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    "lars": {"name": "lars", "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-4},
    "lamb": {"name": "lamb", "lr": 1e-2, "weight_decay": 0.01},
    "lion": {"name": "lion", "lr": 1e-3, "weight_decay": 0.1},
    "sam": {"name": "sam", "rho": 0.05, "base": "sgd", "lr": 0.05, "momentum": 0.9},
    # checkpointed in eval mode (x in the parameters), trained in train mode (y)
    "schedulefree_adamw": {
        "name": "schedulefree_adamw",
        "lr": 1e-2,
        "weight_decay": 0.01,
        "warmup_steps": 5,
    },
}


# The fast tests take plain SGD and the one whose checkpoint holds other weights than it
# trains on; the others come with the slow tests (each trains seven runs).
FAST = {"sgd_nesterov", "schedulefree_adamw"}


@pytest.mark.parametrize(
    "optimizer",
    [pytest.param(o, marks=[] if o in FAST else pytest.mark.slow) for o in sorted(OPTIMIZERS)],
)
def test_a_run_killed_after_any_epoch_resumes_bit_for_bit(tmp_path, optimizer):
    cfg = config(**HARD, optimizer=OPTIMIZERS[optimizer])
    reference = run(cfg, tmp_path / "ref")
    assert reference[-1]["type"] == "finished"
    assert [e["epoch"] for e in reference if e["type"] == "checkpoint"] == [1, 2, 3, 4, 5]
    # Dies as epoch kill + 1 reports its row, or amid its probes (after the first one):
    # what it reported of that epoch is dropped on resume, from the checkpoint of `kill`.
    # Where the kill falls is the engine's matter, the same for every optimizer: plain SGD
    # is killed at each of three points; every other optimizer at one (its own state
    # resumed mid-run, amid the probes).
    points = ((1, "epoch"), (3, "probe"), (5, "epoch"))
    for kill, during in points if optimizer == "sgd_nesterov" else points[1:2]:
        folder = tmp_path / f"kill{kill}"
        first = run(
            cfg,
            folder,
            die_at=lambda e, k=kill, t=during: (
                e["type"] == t
                and e["epoch"] == k + 1
                and (t == "epoch" or e["probe"] != "distance_from_init")
            ),
        )
        assert [e["epoch"] for e in first if e["type"] == "checkpoint"][-1] == kill
        assert not any(e["type"] == "epoch" and e["epoch"] > kill for e in first)
        second = run(cfg, folder, resume_upto=kill)
        assert second[0]["type"] == "resumed" and second[0]["epoch"] == kill
        assert after(second, kill) == after(reference, kill)
        assert (
            second[-1]["type"] == "finished"
            and second[-1]["best_epoch"] == reference[-1]["best_epoch"]
        )
        saved = torch.load(second[-1]["weights"])
        assert all(
            torch.equal(saved[k], v) for k, v in torch.load(reference[-1]["weights"]).items()
        )
        assert not list(folder.glob("*.ckpt")), "an ended run keeps no checkpoints"


@pytest.mark.slow  # four short trainings: kept out of the quick tier's 90 s
def test_past_the_session_s_end_a_run_holds_at_its_epoch_end_and_goes_on_bit_for_bit(tmp_path):
    """--stop-after: past the deadline a run stops at the end of the epoch in progress,
    checkpointed there whatever its policy (every 3 epochs here), and says so (held);
    resumed, its rows are an uninterrupted run's."""
    light = {**HARD, "epochs": 3, "probes": [{"name": "distance_from_init"}]}
    cfg = config(
        **{**light, "checkpoint": {"every_epochs": 3, "every_minutes": None, "keep": 2}},
        optimizer=OPTIMIZERS["sgd_nesterov"],
    )
    reference = run(cfg, tmp_path / "ref")
    held = run(cfg, tmp_path / "held", deadline=0.0)  # the time was up as it began
    assert [e["type"] for e in held][-2:] == ["checkpoint", "held"]
    assert held[-1]["epoch"] == 1 and held[-2]["epoch"] == 1
    assert [e["epoch"] for e in held if e["type"] == "epoch"] == [1]
    second = run(cfg, tmp_path / "held", resume_upto=1)
    assert second[0]["type"] == "resumed" and second[0]["epoch"] == 1
    assert after(second, 1) == after(reference, 1)
    assert second[-1]["type"] == "finished"
    # A run in its last epoch at the deadline finishes rather than hold.
    last = run(
        config(**{**light, "epochs": 1}, optimizer=OPTIMIZERS["sgd_nesterov"]),
        tmp_path / "last",
        deadline=0.0,
    )
    assert last[-1]["type"] == "finished"


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_and_says_so(tmp_path, capsys):
    cfg = config(**HARD, optimizer=OPTIMIZERS["sgd_nesterov"])
    reference = run(cfg, tmp_path / "ref")
    for damage in ("truncate", "flip"):
        folder = tmp_path / damage
        run(cfg, folder, die_at=lambda e: e["type"] == "epoch" and e["epoch"] == 5)
        assert [p.name for _, p in ckpt.listed(folder)] == [
            "epoch-000004.ckpt",
            "epoch-000003.ckpt",
        ]
        latest = folder / "epoch-000004.ckpt"
        data = bytearray(latest.read_bytes())
        if damage == "truncate":
            latest.write_bytes(data[: len(data) // 2])
        else:
            data[-100] ^= 0xFF
            latest.write_bytes(bytes(data))
        (folder / ".epoch-000005.ckpt.tmp-99").write_bytes(b"torn")  # a write cut short
        assert ckpt.newest_intact(folder, 4) == 3  # what `optlab status` gives, without torch
        capsys.readouterr()
        second = run(cfg, folder, resume_upto=4)
        assert second[0]["type"] == "resumed" and second[0]["epoch"] == 3
        why = "truncated" if damage == "truncate" else "corrupt"
        assert any(s.startswith("epoch-000004.ckpt: " + why) for s in second[0]["skipped"])
        # The worker's output is the run's log.txt: the skipped file is named there too.
        assert f"checkpoint epoch-000004.ckpt: {why}" in capsys.readouterr().out
        assert after(second, 3) == after(reference, 3)
        assert not (folder / ".epoch-000005.ckpt.tmp-99").exists()


def test_with_no_good_checkpoint_the_run_starts_over(tmp_path):
    cfg = config(**HARD, optimizer=OPTIMIZERS["adamw"])
    folder = tmp_path / "c"
    run(cfg, folder, die_at=lambda e: e["type"] == "epoch" and e["epoch"] == 3)
    for _, path in ckpt.listed(folder):
        path.write_bytes(b"garbage")
    second = run(cfg, folder, resume_upto=2)
    assert second[0]["type"] == "started" and len(second[0]["skipped"]) == 2
    assert results(second) == results(run(cfg, tmp_path / "ref"))


def test_a_checkpoint_after_the_stored_epochs_is_not_used(tmp_path):
    # The store lost the last epoch rows (they were not written yet): resuming after them
    # would leave a hole, so an earlier checkpoint is used.
    cfg = config(**HARD, optimizer=OPTIMIZERS["lamb"])
    folder = tmp_path / "c"
    run(cfg, folder, die_at=lambda e: e["type"] == "epoch" and e["epoch"] == 4)
    second = run(cfg, folder, resume_upto=2)
    assert second[0]["epoch"] == 2
    assert second[0]["skipped"] == ["epoch-000003.ckpt: after the last recorded epoch (2)"]


def test_the_thread_count_of_the_checkpoint_is_used_on_resume(tmp_path):
    cfg = config(**HARD, optimizer=OPTIMIZERS["sgd_nesterov"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = run(cfg, tmp_path / "ref")
        run(cfg, tmp_path / "c", die_at=lambda e: e["type"] == "epoch" and e["epoch"] == 3)
        torch.set_num_threads(2)
        second = run(cfg, tmp_path / "c", resume_upto=2)
        assert torch.get_num_threads() == 1
        assert after(second, 2) == after(reference, 2)
    finally:
        torch.set_num_threads(before)


def test_the_format_detects_truncation_corruption_and_foreign_files(tmp_path):
    state = {"epoch": 3, "run_id": "x", "w": torch.arange(10.0)}
    data = ckpt.encode(state)
    assert torch.equal(ckpt.decode(data)["w"], state["w"])
    cases = {
        "truncated": data[:-1],
        "corrupt": data[:-1] + bytes([data[-1] ^ 1]),
        "not an optlab checkpoint": b"PK\x03\x04" + data[4:],
    }
    for why, bad in cases.items():
        with pytest.raises(ckpt.CheckpointError, match=why):
            ckpt.decode(bad)


def test_policy_every_epochs_every_minutes_never_at_the_end_keeps_k(tmp_path, monkeypatch):
    policy = ckpt.Policy(every_epochs=2, every_minutes=None, keep=2, epochs=7)
    assert [e for e in range(1, 8) if policy.due(e)] == [2, 4, 6]
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    timed = ckpt.Policy(every_epochs=None, every_minutes=5, keep=2, epochs=10)
    assert not timed.due(1)
    clock[0] += 299
    assert not timed.due(2)
    clock[0] += 2
    assert timed.due(3)
    for epoch in (3, 4, 5):
        timed.save(tmp_path, epoch, {"epoch": epoch, "run_id": "r"})
    assert not timed.due(6)  # the clock restarts at each checkpoint
    clock[0] += 600
    assert not timed.due(10)  # after the last epoch the run ends: no checkpoint
    assert [e for e, _ in ckpt.listed(tmp_path)] == [5, 4]
    ckpt.clear(tmp_path, keep_upto=4)
    assert [e for e, _ in ckpt.listed(tmp_path)] == [4]


def test_default_checkpointing_protects_long_runs_and_skips_short_ones():
    from optlab.study.schema import RunSettings

    default = RunSettings(epochs=1).checkpoint
    assert default is not None and default.every_minutes == 5 and default.every_epochs is None
    assert RunSettings(epochs=1, checkpoint=False).checkpoint is None
