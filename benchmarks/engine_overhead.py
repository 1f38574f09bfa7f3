"""Benchmark (a): optlab's engine against a hand-written minimal loop, seconds per epoch.

Same model, data, device, optimizer and LR schedule; both keep the data on the device and
accumulate the loss there. Rounds alternate the two so that drift hits both alike; the
figure is the median epoch time (first epoch of each run dropped) and the ratio
engine / hand-written (1.00 = no overhead).

    python benchmarks/engine_overhead.py [--device cpu|cuda] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from baseline_loop import minimal_epoch  # noqa: E402

from optlab.plugins.registry import default_registry  # noqa: E402
from optlab.training.engine import DataCache, train  # noqa: E402

CASES = {
    "quickstart cnn on digits (bs 64)": {
        "dataset": {"name": "digits"},
        "model": {"name": "cnn", "channels": [16, 32]},
        "batch_size": 64,
    },
    "cnn on CIFAR-shaped synthetic, 4096 images (bs 128)": {
        "dataset": {
            "name": "synthetic",
            "classes": 10,
            "shape": [3, 32, 32],
            "train_size": 4096,
            "test_size": 256,
        },
        "model": {"name": "cnn", "channels": [32, 64]},
        "batch_size": 128,
    },
}


def full_config(case, epochs):
    reg = default_registry()
    ds = case["dataset"]
    ds = {
        "name": ds["name"],
        **reg.get("dataset", ds["name"])
        .params(**{k: v for k, v in ds.items() if k != "name"})
        .model_dump(mode="json"),
    }
    return {
        "epochs": epochs,
        "precision": "fp32",
        "dataset": ds,
        "model": {**case["model"], "batch_norm": True},
        "optimizer": {
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 5e-4,
        },
        "lr_schedule": {"name": "cosine", "warmup_epochs": 1.0, "min_factor": 0.0},
        "batch_schedule": {"name": "constant", "batch_size": case["batch_size"]},
        "augmentation": {"name": "none"},
    }


def engine_epochs(cfg, cache):
    rows = []
    train(
        {"run_id": "bench", "seed": 0, "config": cfg},
        lambda e: rows.append(e["seconds"]) if e["type"] == "epoch" else None,
        cache,
    )
    return rows[1:]


def baseline_epochs(cfg, cache, device):
    import time

    from optlab.plugins.builtins._nets import build_cnn
    from optlab.plugins.builtins.models import CNNParams

    data = cache.get(cfg["dataset"])
    torch.manual_seed(0)
    model = build_cnn(
        CNNParams(channels=cfg["model"]["channels"]),
        input_shape=data.input_shape,
        num_classes=data.num_classes,
    ).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for epoch in range(cfg["epochs"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        minimal_epoch(
            model,
            opt,
            data.x_train,
            data.y_train,
            cfg["batch_schedule"]["batch_size"],
            gen,
            0.05,
            epoch,
            cfg["epochs"],
            1.0,
        )
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=6)
    a = p.parse_args()
    device = torch.device(a.device)
    cache = DataCache(default_registry(), device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"engine overhead on {device.type} ({name}), torch {torch.__version__}, "
        f"{a.rounds} rounds x {a.epochs} epochs"
    )
    print("| case | hand-written s/epoch | optlab engine s/epoch | ratio |")
    print("|---|---|---|---|")
    for label, case in CASES.items():
        cfg = full_config(case, a.epochs)
        eng, base = [], []
        engine_epochs(cfg, cache)  # warm-up: caches, allocator, kernels
        for _ in range(a.rounds):
            base += baseline_epochs(cfg, cache, device)
            eng += engine_epochs(cfg, cache)
        b, e = statistics.median(base), statistics.median(eng)
        print(f"| {label} | {b:.4f} | {e:.4f} | {e / b:.3f} |")


if __name__ == "__main__":
    main()
