"""The training engine: one flat loop, read top to bottom.

setup -> per-epoch loop (train on device-resident data, then evaluate) -> events.
Habits from the fast CIFAR trainers: the dataset lives on the device and batches are
index slices; augmentation runs on the batch tensor; loss and accuracy accumulate on the
device and are read once per epoch; mixed precision and channels_last on CUDA.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from optlab.plugin import TensorData
from optlab.probing import Probes
from optlab.registry import Registry, default_registry

Emit = Callable[[dict[str, Any]], None]
EVAL_BATCH = 1024


class DataCache:
    """Datasets on the device, kept across the runs of one worker (a few at most)."""

    def __init__(self, registry: Registry, device: torch.device, keep: int = 2,
                 data_dir: str | None = None):
        self.registry, self.device, self.keep = registry, device, keep
        self.data_dir = data_dir or os.environ.get("OPTLAB_DATA") or "data"
        self._items: OrderedDict[str, TensorData] = OrderedDict()

    def get(self, table: dict[str, Any]) -> TensorData:
        key = json.dumps(table, sort_keys=True)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        params = {k: v for k, v in table.items() if k != "name"}
        data = self.registry.create("dataset", table["name"], params,
                                    data_dir=self.data_dir).to(self.device)
        self._items[key] = data
        while len(self._items) > self.keep:
            self._items.popitem(last=False)
        return data


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision_for(mode: str, device: torch.device) -> tuple[str, Any, Any]:
    """(mode actually used, autocast context factory, grad scaler or None)."""
    if mode == "fp32":
        return "fp32", nullcontext, None
    if mode == "bf16" and (device.type == "cpu" or torch.cuda.is_bf16_supported()):
        return "bf16", lambda: torch.autocast(device.type, dtype=torch.bfloat16), None
    if mode == "amp" and device.type == "cuda":
        scaler = torch.amp.GradScaler("cuda")
        return "amp", lambda: torch.autocast("cuda", dtype=torch.float16), scaler
    warnings.warn(f"precision {mode!r} cannot run on {device.type}; using fp32", stacklevel=2)
    return "fp32", nullcontext, None


def lr_scale(config: dict[str, Any], batch_size: int, reference: int) -> float:
    """The linear (Goyal et al.) or square-root scaling rule, relative to ``reference``."""
    rule = config.get("lr_scaling", "none")
    if rule == "none":
        return 1.0
    return (batch_size / reference) ** (1.0 if rule == "linear" else 0.5)


def _build(registry: Registry, kind: str, table: dict[str, Any], **context: Any) -> Any:
    params = {k: v for k, v in table.items() if k != "name"}
    return registry.create(kind, table["name"], params, **context)


@torch.no_grad()
def evaluate(model, x, y, autocast) -> tuple[float, float]:
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
        with autocast():
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    return loss.item() / len(x), correct.item() / len(x)


def train(task: dict[str, Any], emit: Emit, cache: DataCache,
          registry: Registry | None = None) -> None:
    registry = registry or default_registry()
    config, seed, run_id = task["config"], task["seed"], task["run_id"]
    device = cache.device

    # ---- setup ------------------------------------------------------------------------
    data = cache.get(config["dataset"])
    n, epochs = len(data.x_train), config["epochs"]
    torch.manual_seed(seed)  # model init; CPU and CUDA generators alike
    model = _build(registry, "model", config["model"], input_shape=data.input_shape,
                   num_classes=data.num_classes).to(device)
    images = data.x_train.dim() == 4
    if device.type == "cuda" and images:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _build(registry, "optimizer", config["optimizer"], model=model)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    lr_factor = _build(registry, "lr_schedule", config["lr_schedule"], epochs=epochs)
    batch_size_at = _build(registry, "batch_schedule", config["batch_schedule"], epochs=epochs,
                           train_size=n)
    augment = _build(registry, "augmentation", config["augmentation"],
                     input_shape=data.input_shape, mean=data.mean, std=data.std)
    used_precision, autocast, scaler = precision_for(config["precision"], device)
    # One generator for data order and augmentation, seeded from the run's seed.
    gen = torch.Generator(device=device).manual_seed(seed)
    probes = Probes(config.get("probes", []), registry, model=model, optimizer=optimizer,
                    data=data, augment=augment, seed=seed, epochs=epochs, device=device,
                    channels_last=device.type == "cuda" and images)
    emit({"type": "started", "run_id": run_id, "precision_used": used_precision})

    def report(events: list[dict[str, Any]]) -> None:
        for ev in events:
            emit({**ev, "run_id": run_id})

    if probes:
        report(probes.at_epoch(0, 0)[0])

    # ---- epochs -----------------------------------------------------------------------
    reference = config.get("lr_reference_batch") or min(int(batch_size_at(0)), n)
    step = samples = 0
    lr = base_lrs[0]
    for epoch in range(epochs):
        bs = min(int(batch_size_at(epoch)), n)
        scale = lr_scale(config, bs, reference)
        steps = math.ceil(n / bs)  # the last partial batch is used and counted as its size
        order = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probe_seconds = 0.0
        for i in range(steps):
            idx = order[i * bs:(i + 1) * bs]
            x, y = augment(data.x_train[idx], gen), data.y_train[idx]
            if device.type == "cuda" and images:
                x = x.contiguous(memory_format=torch.channels_last)
            factor = lr_factor(epoch + i / steps, 1 / steps, step + i) * scale
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            with autocast():
                out = model(x)
                loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            # Accumulate on the device: no host synchronisation per step.
            loss_sum += loss.detach() * len(idx)
            correct += (out.argmax(1) == y).sum()
            if step + i < probes.max_step:  # every-step probes, for the first K steps
                events, spent = probes.at_step(epoch + 1, step + i + 1)
                report(events)
                probe_seconds += spent
        lr = base_lrs[0] * factor
        step += steps
        samples += n
        train_loss = loss_sum.item() / n  # the epoch's one read of the device
        seconds = time.perf_counter() - t0 - probe_seconds

        finite = math.isfinite(train_loss)
        if probes and finite:
            events, spent = probes.at_epoch(epoch + 1, step)
            report(events)
            probe_seconds += spent

        t1 = time.perf_counter()
        nan = (float("nan"), float("nan"))
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, autocast) if finite \
            else nan
        val_loss, val_acc = (None, None) if data.x_val is None else (
            evaluate(model, data.x_val, data.y_val, autocast) if finite else nan)
        emit({
            "type": "epoch", "run_id": run_id, "epoch": epoch + 1, "step": step,
            "samples": samples, "sfo": samples, "epoch_lr": lr, "epoch_batch_size": bs,
            "train_loss": train_loss, "train_acc": correct.item() / n,
            "test_loss": test_loss, "test_acc": test_acc,
            "seconds": seconds, "eval_seconds": time.perf_counter() - t1,
            "val_loss": val_loss, "val_acc": val_acc, "probe_seconds": probe_seconds,
        })
        if not math.isfinite(train_loss):
            emit({"type": "diverged", "run_id": run_id,
                  "error": f"training loss became {train_loss} in epoch {epoch + 1}"})
            return
    emit({"type": "finished", "run_id": run_id})
