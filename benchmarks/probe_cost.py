"""Benchmark: the cost of each built-in probe as a multiple of one training step (forward,
backward, SGD step) at the same batch size, on the quickstart model (the digits CNN) and on
ResNet-18 (CIFAR-shaped input). Median of --repeat timings each. full_grad_norm passes over
a training set of --train-size examples, so its multiple grows with that size.

    python benchmarks/probe_cost.py [--device cpu] [--batch 64] [--resnet-batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from optlab.plugins.plugin import TensorData
from optlab.plugins.registry import default_registry
from optlab.training.probing import Probes

PROBES = [
    {"name": "grad_norm"},
    {"name": "weight_norm"},
    {"name": "distance_from_init"},
    {"name": "effective_lr"},
    {"name": "trust_ratio"},
    {"name": "grad_noise_scale", "micro_batch": 8},
    {"name": "hessian_trace", "vectors": 10},
    {"name": "top_eigenvalue", "iterations": 10},
    {"name": "full_grad_norm"},
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(
    model_table: dict,
    shape: tuple[int, ...],
    classes: int,
    batch: int,
    train_size: int,
    device: torch.device,
    repeat: int,
) -> list[tuple[str, float, float]]:
    reg = default_registry()
    torch.manual_seed(0)
    model = reg.create(
        "model",
        model_table["name"],
        {k: v for k, v in model_table.items() if k != "name"},
        input_shape=shape,
        num_classes=classes,
    ).to(device)
    # LARS, so that trust_ratio and effective_lr have something to read.
    optimizer = reg.create("optimizer", "lars", {"lr": 0.1, "momentum": 0.9}, model=model)
    x = torch.randn(train_size, *shape, device=device)
    y = torch.randint(0, classes, (train_size,), device=device)
    data = TensorData(x, y, x[:batch], y[:batch], num_classes=classes)

    def step() -> None:
        model.train()
        idx = torch.randint(0, train_size, (batch,), device=device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_s = median_time(step, device, repeat)
    rows = []
    for table in PROBES:
        table = {**table, "batch": batch if table["name"] != "full_grad_norm" else 256}
        probes = Probes(
            [table],
            reg,
            model=model,
            optimizer=optimizer,
            data=data,
            augment=lambda t, g: t,
            seed=0,
            epochs=1,
            device=device,
            channels_last=False,
        )
        seconds = median_time(lambda p=probes: p.at_epoch(1, 1), device, repeat)
        rows.append((table["name"], seconds, seconds / step_s))
    return [("training step", step_s, 1.0), *rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = [
        (
            "quickstart CNN (digits, 1x8x8)",
            {"name": "cnn", "channels": [32, 64]},
            (1, 8, 8),
            10,
            args.batch,
        ),
        ("ResNet-18 (3x32x32)", {"name": "resnet18"}, (3, 32, 32), 100, args.resnet_batch),
    ]
    print(
        f"device {device}, threads {torch.get_num_threads()}, full_grad_norm over "
        f"{args.train_size} examples"
    )
    for title, table, shape, classes, batch in cases:
        rows = bench(table, shape, classes, batch, args.train_size, device, args.repeat)
        print(f"\n{title}, batch {batch}")
        print("| probe | seconds | x one training step |")
        print("|---|---|---|")
        for name, seconds, ratio in rows:
            print(f"| {name} | {seconds:.4f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
