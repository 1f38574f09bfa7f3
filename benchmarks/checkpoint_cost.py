"""Benchmark (g): what a checkpoint costs, against a plain ``torch.save`` and against an epoch.

For each seed model: the state optlab checkpoints (model, SGD-momentum or AdamW state, random
generators, counters), written the engine's way (serialise, SHA-256, write aside, fsync,
rename, fsync the folder) and the way a hand-written script does it (``torch.save`` straight
to the file, no fsync). Then the share of training time it costs: against this machine's
epoch (its dataset's training images at the throughput measured here, in the same run) when
taken every epoch, and under the default policy (every 5 minutes: at most cost / 300 s
whatever the device). The epoch time under which checkpointing every epoch would cost more
than 2% is printed too, to read against a GPU's epoch.

    python benchmarks/checkpoint_cost.py [--folder DIR] [--rounds 5] [--batches 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from optlab.plugins.registry import default_registry
from optlab.training import checkpoint as ckpt
from optlab.training.engine import rng_state

CIFAR_TRAIN = 50_000
DEFAULT_MINUTES = 5

# model table, input shape, classes, training images per epoch
MODELS = {
    "quickstart cnn [16, 32] (digits)": (
        {"name": "cnn", "channels": [16, 32]},
        (1, 8, 8),
        10,
        1347,
    ),
    "seed cnn [64, 128, 256] (CIFAR-10)": (
        {"name": "cnn", "channels": [64, 128, 256]},
        (3, 32, 32),
        10,
        CIFAR_TRAIN,
    ),
    "resnet18 (CIFAR-100)": ({"name": "resnet18"}, (3, 32, 32), 100, CIFAR_TRAIN),
    "wrn-28-10 (CIFAR-100)": (
        {"name": "wrn", "depth": 28, "width": 10},
        (3, 32, 32),
        100,
        CIFAR_TRAIN,
    ),
}
OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "adamw": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
}


def build(table, shape, classes, opt):
    reg = default_registry()
    table = dict(table)
    model = reg.create("model", table.pop("name"), table, input_shape=shape, num_classes=classes)
    o = dict(opt)
    optimizer = reg.create("optimizer", o.pop("name"), o, model=model)
    return model, optimizer


def throughput(model, optimizer, shape, classes, batches: int, batch: int = 128) -> float:
    """Training images per second on this machine (forward, backward, step)."""
    x = torch.randn(batch, *shape)
    y = torch.randint(0, classes, (batch,))
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up, and the optimizer state exists from here on
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * batch / (time.perf_counter() - t0)


def state_of(model, optimizer, gen):
    return {
        "format": ckpt.FORMAT,
        "run_id": "bench",
        "epoch": 1,
        "step": 1,
        "samples": 1,
        "lr": 0.1,
        "elapsed": 1.0,
        "threads": torch.get_num_threads(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": None,
        "rng": rng_state(torch.device("cpu"), gen),
        "probes": {},
        "best": None,
    }


def optlab_write(folder: Path, model, optimizer, gen) -> int:
    policy = ckpt.Policy(every_epochs=1, every_minutes=None, keep=2, epochs=10**6)
    _, size = policy.save(folder, 1, state_of(model, optimizer, gen))
    return size


def plain_write(folder: Path, model, optimizer, gen) -> int:
    path = folder / "plain.pt"
    torch.save(state_of(model, optimizer, gen), path)
    return path.stat().st_size


def timed(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="where to write (default: a temporary folder on this disk)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; medians of {args.rounds} writes"
    )
    print(
        "| model | optimizer | checkpoint MB | torch.save s | optlab s | ratio | "
        "CPU epoch s | share, every epoch | share, default (5 min) | "
        "every epoch < 2% needs epoch >= |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        for label, (table, shape, classes, images) in MODELS.items():
            for opt_name, opt in OPTIMIZERS.items():
                torch.manual_seed(0)
                model, optimizer = build(table, shape, classes, opt)
                ips = throughput(model, optimizer, shape, classes, args.batches)
                gen = torch.Generator().manual_seed(0)
                plain = timed(
                    lambda m=model, o=optimizer, g=gen: plain_write(folder, m, o, g), args.rounds
                )
                sizes: list[int] = []
                ours = timed(
                    lambda m=model, o=optimizer, g=gen, out=sizes: out.append(
                        optlab_write(folder, m, o, g)
                    ),
                    args.rounds,
                )
                epoch = images / ips
                every = ours / epoch
                default = ours / max(epoch, DEFAULT_MINUTES * 60)
                print(
                    f"| {label} | {opt_name} | {sizes[-1] / 2**20:.1f} | {plain:.3f} | "
                    f"{ours:.3f} | {ours / plain:.2f} | {epoch:.1f} | {100 * every:.3f}% | "
                    f"{100 * default:.3f}% | {ours / 0.02:.1f} s |",
                    flush=True,
                )
                for p in folder.iterdir():
                    p.unlink()


if __name__ == "__main__":
    main()
