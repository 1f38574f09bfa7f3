"""The training engine: one flat loop, read top to bottom.

setup -> per-epoch loop (train on device-resident data, then evaluate) -> events.
Habits from the fast CIFAR trainers: the dataset lives on the device and batches are
index slices; augmentation runs on the batch tensor; loss and accuracy accumulate on the
device and are read once per epoch; mixed precision and channels_last on CUDA.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from optlab.errors import PluginBuildError
from optlab.plugins.plugin import TensorData, current_study_folder
from optlab.plugins.registry import Registry, default_registry
from optlab.study.schema import WEIGHTS_AUTO_SECONDS
from optlab.study.steps import lr_scale
from optlab.training import checkpoint as ckpt
from optlab.training.probing import Probes

Emit = Callable[[dict[str, Any]], None]
EVAL_BATCH = 1024


class DataCache:
    """Datasets on the device, kept across the runs of one worker (a few at most)."""

    def __init__(
        self, registry: Registry, device: torch.device, keep: int = 2, data_dir: str | None = None
    ):
        self.registry, self.device, self.keep = registry, device, keep
        self.data_dir = data_dir or os.environ.get("OPTLAB_DATA") or "data"
        self._items: OrderedDict[str, TensorData] = OrderedDict()

    def get(self, table: dict[str, Any]) -> TensorData:
        # The same relative file path means another file in another study's folder.
        key = json.dumps([table, current_study_folder()], sort_keys=True)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        params = {k: v for k, v in table.items() if k != "name"}
        data = self.registry.create("dataset", table["name"], params, data_dir=self.data_dir).to(
            self.device
        )
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


def _build(registry: Registry, kind: str, table: dict[str, Any], **context: Any) -> Any:
    params = {k: v for k, v in table.items() if k != "name"}
    try:
        return registry.create(kind, table["name"], params, **context)
    except Exception as e:  # noqa: BLE001 - named, and the runs that share it are spared
        raise PluginBuildError(kind, table, e) from e


@torch.no_grad()
def evaluate(model, x, y, autocast) -> tuple[float, float]:
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
        with autocast():
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    return loss.item() / len(x), correct.item() / len(x)


def step_optimizer(
    opt: torch.optim.Optimizer,
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Any,
) -> int:
    """One optimizer step after the engine's backward pass; the gradient evaluations it took.

    An optimizer whose ``optlab_closure`` is true gets a closure: it zeroes the gradients,
    evaluates the loss on the same batch again and back-propagates
    (``closure(create_graph=True)`` leaves gradients that keep their graph, for Hessian-
    vector products; the optimizer sets them to ``p.grad.detach()`` when done), and
    returns the loss. Every call counts as a gradient evaluation (SAM: two a step).
    """
    if not getattr(opt, "optlab_closure", False):
        opt.step()
        return 1
    calls = 0

    def closure(create_graph: bool = False) -> torch.Tensor:
        nonlocal calls
        calls += 1
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            with autocast():
                again = F.cross_entropy(net(x).float(), y)
            if create_graph:
                # Gradients that can be differentiated again; the optimizer detaches them
                # when it is done (autograd.grad, not backward: no reference cycle).
                params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
                grads = torch.autograd.grad(again, params, create_graph=True, allow_unused=True)
                for p, grad in zip(params, grads, strict=True):
                    p.grad = grad
            else:
                again.backward()
        return again.detach()

    opt.step(closure)
    return 1 + calls


def weights_for(opt: torch.optim.Optimizer, mode: str) -> None:
    """Optimizers that train on one set of weights and are evaluated on another (schedule-
    free methods) have ``train()`` and ``eval()``: the engine calls ``eval()`` before each
    epoch's evaluation, epoch probes, checkpoint and saved weights, and ``train()`` before
    training. Both must do nothing when the optimizer is already in that mode."""
    switch = getattr(opt, mode, None)
    if callable(switch):
        switch()


# Seeds the fixed partition of the training set into local SGD's shards, apart from the
# run's own generators.
SHARD_SEED = 7_919


@torch.no_grad()
def average(nets: list[torch.nn.Module]) -> None:
    """Local SGD's communication round: every worker's parameters and float buffers become
    their mean over workers (integer buffers, such as BN's batch count, the first's)."""
    for tensors in zip(*(net.state_dict().values() for net in nets), strict=True):
        if tensors[0].is_floating_point():
            mean = torch.stack(tensors).mean(0)
            for t in tensors:
                t.copy_(mean)
        else:
            for t in tensors[1:]:
                t.copy_(tensors[0])


@dataclass
class Counters:
    """Where a run is: what an epoch row reports and a checkpoint carries."""

    epoch: int = 0
    step: int = 0
    samples: int = 0
    lr: float = 0.0
    elapsed: float = 0.0  # seconds of all attempts before this one
    first_loss: float | None = None  # the first epoch's training loss (divergence rule)
    sfo_full_batches: int = 0  # SFO counting each step as a whole batch (seed 004's count)
    rounds: int = 0  # communication rounds: local SGD's averagings, else one per step
    sfo: int = 0  # examples whose gradient was computed, once per gradient evaluation


class BestWeights:
    """The weights at the best evaluated epoch (validation accuracy when the dataset has a
    validation split, else test accuracy), kept on the CPU only when asked for."""

    def __init__(self, wanted: bool):
        self.wanted = wanted
        self.value, self.epoch, self.weights = -math.inf, 0, None

    def offer(self, model: torch.nn.Module, epoch: int, value: float | None) -> None:
        if self.wanted and value is not None and math.isfinite(value) and value > self.value:
            self.value, self.epoch, self.weights = value, epoch, cpu_state(model)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.epoch, self.weights = state["value"], state["epoch"], state["weights"]


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def rng_state(device: torch.device, gen: torch.Generator) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, gen: torch.Generator) -> None:
    torch.set_rng_state(state["cpu"])
    gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def divergence(config: dict[str, Any], train_loss: float, run: Counters) -> tuple[str, str] | None:
    """(rule, why) when this epoch's training loss says the run diverged, else None. The
    first epoch's loss is the reference of the relative rule (kept in the checkpoint)."""
    if not math.isfinite(train_loss):
        return "non_finite", f"training loss became {train_loss}"
    if run.first_loss is None:
        run.first_loss = train_loss
    factor = (config.get("divergence") or {}).get("loss_factor")
    if factor and run.first_loss > 0 and train_loss > factor * run.first_loss:
        return "loss_factor", (
            f"training loss {train_loss:.4g} is above {factor:g} x the "
            f"first epoch's ({run.first_loss:.4g})"
        )
    return None


def save_weights(folder: Path, which: str, weights: dict[str, torch.Tensor]) -> Path:
    """A plain ``state_dict`` file: ``model.load_state_dict(torch.load(path))``."""
    import io

    buf = io.BytesIO()
    torch.save(weights, buf)
    path = folder / f"{which}.pt"
    ckpt.write_atomic(path, buf.getvalue())
    return path


def train(
    task: dict[str, Any],
    emit: Emit,
    cache: DataCache,
    registry: Registry | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    registry = registry or default_registry()
    config, seed, run_id = task["config"], task["seed"], task["run_id"]
    device = cache.device
    tick = tick or (lambda: None)
    attempt_start = time.monotonic()

    # ---- setup ------------------------------------------------------------------------
    data = cache.get(config["dataset"])
    n, epochs = len(data.x_train), config["epochs"]
    torch.manual_seed(seed)  # model init; CPU and CUDA generators alike
    model = _build(
        registry,
        "model",
        config["model"],
        input_shape=data.input_shape,
        num_classes=data.num_classes,
    ).to(device)
    images = data.x_train.dim() == 4
    if device.type == "cuda" and images:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _build(registry, "optimizer", config["optimizer"], model=model)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    lr_factor = _build(registry, "lr_schedule", config["lr_schedule"], epochs=epochs)
    batch_size_at = _build(
        registry, "batch_schedule", config["batch_schedule"], epochs=epochs, train_size=n
    )
    augment = _build(
        registry,
        "augmentation",
        config["augmentation"],
        input_shape=data.input_shape,
        mean=data.mean,
        std=data.std,
    )
    used_precision, autocast, scaler = precision_for(config["precision"], device)
    if scaler is not None and getattr(optimizer, "optlab_closure", False):
        raise ValueError(
            f"optimizer {config['optimizer']['name']} re-evaluates the loss in "
            "its step (a closure), which amp's gradient scaler cannot do: use "
            'precision = "fp32" or "bf16"'
        )
    # One generator for data order and augmentation, seeded from the run's seed.
    gen = torch.Generator(device=device).manual_seed(seed)
    probes = Probes(
        config.get("probes", []),
        registry,
        model=model,
        optimizer=optimizer,
        data=data,
        augment=augment,
        seed=seed,
        epochs=epochs,
        device=device,
        channels_last=device.type == "cuda" and images,
    )
    folder = Path(task["checkpoint_dir"]) if task.get("checkpoint_dir") else None
    policy = ckpt.Policy.from_config(config) if config.get("checkpoint") and folder else None
    weights_mode = config.get("save_weights", "none")
    best = BestWeights(weights_mode == "best")
    run = Counters(lr=base_lrs[0])
    shape = {
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "checkpoint_dir": str(folder) if folder else None,
    }

    def report(events: list[dict[str, Any]]) -> None:
        for ev in events:
            emit({**ev, "run_id": run_id})

    def elapsed() -> float:
        return run.elapsed + time.monotonic() - attempt_start

    # ---- resume from the last good checkpoint, or start ------------------------------
    found = ckpt.latest(folder, run_id, task.get("resume_upto", 0)) if folder else None
    for why in found.skipped if found else []:  # the run's log says it too
        print(f"checkpoint {why}; not used", flush=True)
    if found is not None and found.state is not None:
        state = found.state
        if device.type == "cpu" and state["threads"] != torch.get_num_threads():
            torch.set_num_threads(state["threads"])  # the run's own count, for exact rows
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], device, gen)
        probes.load_state_dict(state["probes"])
        best.load_state_dict(state["best"])
        run = Counters(
            state["epoch"],
            state["step"],
            state["samples"],
            state["lr"],
            state["elapsed"],
            state.get("first_loss"),
            state.get("sfo_full_batches", state["samples"]),
            state.get("rounds", state["step"]),
            state.get("sfo", state["samples"]),
        )
        ckpt.clear(folder, keep_upto=run.epoch)
        emit(
            {
                "type": "resumed",
                "run_id": run_id,
                "epoch": run.epoch,
                "step": run.step,
                "checkpoint": str(found.path),
                "skipped": found.skipped,
                "precision_used": used_precision,
                "config": config,
                "seed": seed,
                **shape,
            }
        )
    else:
        if folder is not None:
            ckpt.clear(folder)
        emit(
            {
                "type": "started",
                "run_id": run_id,
                "precision_used": used_precision,
                "config": config,
                "seed": seed,
                "skipped": found.skipped if found else [],
                **shape,
            }
        )
        if probes:
            report(probes.at_epoch(0, 0)[0])

    # ---- local SGD: more simulated workers, each on its own shard -------------------
    workers = [(model, optimizer)]
    local = config.get("local_sgd")
    if local:
        for k in range(1, local["workers"]):
            replica = copy.deepcopy(model)
            opt = _build(registry, "optimizer", config["optimizer"], model=replica)
            if found is not None and found.state is not None:
                opt.load_state_dict(found.state["local_optimizers"][k - 1])
            workers.append((replica, opt))
        # A fixed partition of the training set, drawn once from the run's seed.
        split = torch.Generator().manual_seed(seed + SHARD_SEED)
        shards = list(torch.randperm(n, generator=split).to(device).tensor_split(local["workers"]))
        shard_size = min(len(s) for s in shards)

    # ---- epochs -----------------------------------------------------------------------
    reference = config.get("lr_reference_batch") or min(
        int(batch_size_at(0)), shard_size if local else n
    )
    for epoch in range(run.epoch, epochs):
        bs = min(int(batch_size_at(epoch)), shard_size if local else n)
        scale = lr_scale(config, bs, reference)
        if local:  # each worker passes over its own shard once per epoch
            orders = [s[torch.randperm(len(s), device=device, generator=gen)] for s in shards]
        else:
            orders = [torch.randperm(n, device=device, generator=gen)]
        # The last partial batch is used and counted as its size.
        counts = [math.ceil(len(order) / bs) for order in orders]
        steps = max(counts)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for net, opt in workers:
            net.train()
            weights_for(opt, "train")
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probe_seconds = 0.0
        step = run.step
        evaluations = sfo = full = 0  # gradient evaluations, and the epoch's two SFOs
        for i in range(steps):
            factor = lr_factor(epoch + i / steps, 1 / steps, step + i) * scale
            for (net, opt), order, count in zip(workers, orders, counts, strict=True):
                if i >= count:
                    continue
                idx = order[i * bs : (i + 1) * bs]
                x, y = augment(data.x_train[idx], gen), data.y_train[idx]
                if device.type == "cuda" and images:
                    x = x.contiguous(memory_format=torch.channels_last)
                for group, base in zip(opt.param_groups, base_lrs, strict=True):
                    group["lr"] = base * factor
                with autocast():
                    out = net(x)
                    loss = F.cross_entropy(out.float(), y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    evals = 1
                else:
                    loss.backward()
                    evals = step_optimizer(opt, net, x, y, autocast)
                evaluations += evals
                sfo += len(idx) * evals
                full += bs * evals
                # Accumulate on the device: no host synchronisation per step.
                loss_sum += loss.detach() * len(idx)
                correct += (out.argmax(1) == y).sum()
            if local and ((i + 1) % local["local_steps"] == 0 or i == steps - 1):
                average([net for net, _ in workers])  # a communication round
                run.rounds += 1
            tick()
            if step + i < probes.max_step:  # every-step probes, for the first K steps
                events, spent = probes.at_step(epoch + 1, step + i + 1)
                report(events)
                probe_seconds += spent
        run.lr = base_lrs[0] * factor
        run.step += steps
        run.samples += n
        run.sfo += sfo
        run.sfo_full_batches += full
        if not local:
            run.rounds = run.step  # data-parallel training: one gradient all-reduce a step
        run.epoch = epoch + 1
        train_loss = loss_sum.item() / n  # the epoch's one read of the device
        seconds = time.perf_counter() - t0 - probe_seconds

        finite = math.isfinite(train_loss)
        for _, opt in workers:  # evaluation, epoch probes and checkpoints see these weights
            weights_for(opt, "eval")
        if probes and finite:
            events, spent = probes.at_epoch(epoch + 1, run.step)
            report(events)
            probe_seconds += spent

        t1 = time.perf_counter()
        nan = (float("nan"), float("nan"))
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, autocast) if finite else nan
        val_loss, val_acc = (
            (None, None)
            if data.x_val is None
            else (evaluate(model, data.x_val, data.y_val, autocast) if finite else nan)
        )
        tick()
        emit(
            {
                "type": "epoch",
                "run_id": run_id,
                "epoch": run.epoch,
                "step": run.step,
                "samples": run.samples,
                "sfo": run.sfo,
                "epoch_lr": run.lr,
                "epoch_batch_size": bs,
                "train_loss": train_loss,
                "train_acc": correct.item() / n,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "seconds": seconds,
                "eval_seconds": time.perf_counter() - t1,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "probe_seconds": probe_seconds,
                "sfo_full_batches": run.sfo_full_batches,
                "comm_rounds": run.rounds,
            }
        )
        diverged = divergence(config, train_loss, run)
        if diverged is not None:
            rule, why = diverged
            emit(
                {
                    "type": "diverged",
                    "run_id": run_id,
                    "elapsed": elapsed(),
                    "rule": rule,
                    "error": f"{why} in epoch {run.epoch}",
                }
            )
            if folder is not None:
                ckpt.clear(folder)
            return
        best.offer(model, run.epoch, val_acc if data.x_val is not None else test_acc)

        # ---- checkpoint ---------------------------------------------------------------
        if policy is not None and policy.due(run.epoch):
            c0 = time.perf_counter()
            path, size = policy.save(
                folder,
                run.epoch,
                {
                    "format": ckpt.FORMAT,
                    "run_id": run_id,
                    "epoch": run.epoch,
                    "step": run.step,
                    "samples": run.samples,
                    "lr": run.lr,
                    "elapsed": elapsed(),
                    "first_loss": run.first_loss,
                    "sfo_full_batches": run.sfo_full_batches,
                    "rounds": run.rounds,
                    "sfo": run.sfo,
                    "local_optimizers": [opt.state_dict() for _, opt in workers[1:]],
                    "threads": torch.get_num_threads(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": rng_state(device, gen),
                    "probes": probes.state_dict(),
                    "best": best.state_dict(),
                },
            )
            emit(
                {
                    "type": "checkpoint",
                    "run_id": run_id,
                    "epoch": run.epoch,
                    "path": str(path),
                    "bytes": size,
                    "seconds": time.perf_counter() - c0,
                }
            )

    # ---- the end: weights, then the checkpoints go ------------------------------------
    kept = None
    if folder is not None:
        if weights_mode == "best" and best.weights is not None:
            kept = save_weights(folder, "best", best.weights)
        elif weights_mode == "final" or (
            weights_mode == "auto" and elapsed() >= WEIGHTS_AUTO_SECONDS
        ):
            kept = save_weights(folder, "final", cpu_state(model))
    emit(
        {
            "type": "finished",
            "run_id": run_id,
            "elapsed": elapsed(),
            "weights": str(kept) if kept else None,
            "best_epoch": best.epoch if weights_mode == "best" else None,
        }
    )
    if folder is not None:
        ckpt.clear(folder)
