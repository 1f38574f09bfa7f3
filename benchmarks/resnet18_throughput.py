"""Benchmark: CIFAR ResNet-18 training images per second, optlab's engine against a
hand-written loop with the same settings (data on the device, SGD momentum 0.9, batch 128,
and on CUDA bf16 autocast and channels_last), on CIFAR-shaped synthetic data.

    python benchmarks/resnet18_throughput.py [--device cpu|cuda] [--images 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from optlab.plugins.builtins._nets import build_resnet18
from optlab.plugins.builtins.models import ResNet18Params
from optlab.plugins.registry import default_registry
from optlab.training.engine import DataCache, train


def config(images: int, precision: str, epochs: int) -> dict:
    return {
        "epochs": epochs,
        "precision": precision,
        "lr_scaling": "none",
        "lr_reference_batch": None,
        "dataset": {
            "name": "synthetic",
            "classes": 10,
            "shape": [3, 32, 32],
            "train_size": images,
            "test_size": 128,
            "noise": 1.0,
            "seed": 0,
            "examples_per_class": None,
            "val_fraction": 0.0,
            "data_seed": 0,
        },
        "model": {"name": "resnet18", "width": 64},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "lr_schedule": {"name": "constant"},
        "batch_schedule": {"name": "constant", "batch_size": 128},
        "augmentation": {"name": "none"},
    }


def engine_rate(cfg, cache) -> float:
    secs = []
    train(
        {"run_id": "bench", "seed": 0, "config": cfg},
        lambda e: secs.append(e["seconds"]) if e["type"] == "epoch" else None,
        cache,
    )
    return cfg["dataset"]["train_size"] / statistics.median(secs[1:])


def hand_rate(cfg, cache, device) -> float:
    data = cache.get(cfg["dataset"])
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    model = build_resnet18(ResNet18Params(), input_shape=(3, 32, 32), num_classes=10).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if cfg["precision"] == "bf16"
        else nullcontext
    )
    bs, n = 128, len(x)
    rates = []
    for _ in range(cfg["epochs"]):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        model.train()
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            xb = x[idx].contiguous(memory_format=torch.channels_last) if cuda else x[idx]
            with autocast():
                loss = F.cross_entropy(model(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        total.item()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    device = torch.device(a.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    cache = DataCache(default_registry(), device)
    cfg = config(a.images, precision, a.epochs)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    eng, hand = [], []
    for _ in range(a.rounds):
        hand.append(hand_rate(cfg, cache, device))
        eng.append(engine_rate(cfg, cache))
    h, e = statistics.median(hand), statistics.median(eng)
    print(
        f"ResNet-18 (CIFAR form), batch 128, {precision}"
        f"{', channels_last' if device.type == 'cuda' else ''}, {a.images} images, "
        f"{device.type} ({name}), torch {torch.__version__}"
    )
    print("| hand-written loop (img/s) | optlab engine (img/s) | ratio |")
    print("|---|---|---|")
    print(f"| {h:.1f} | {e:.1f} | {e / h:.3f} |")


if __name__ == "__main__":
    main()
