"""The training engine: one flat loop, read top to bottom.

setup -> per-epoch loop (train on device-resident data, then evaluate) -> events.
Habits from the fast CIFAR trainers: the dataset lives on the device and batches are
index slices; augmentation runs on the batch tensor; loss and accuracy accumulate on the
device and are read once per epoch; mixed precision on CUDA; images in channels_last on
every device (on the CPU too, where max-pooling is several times faster in it).
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
from optlab.states import Event
from optlab.study.schema import WEIGHTS_AUTO_SECONDS
from optlab.study.steps import lr_scale
from optlab.training import checkpoint as ckpt
from optlab.training.probing import Probes
from optlab.training.state import (
    BestWeights,
    Counters,
    cpu_state,
    divergence,
    rng_state,
    save_weights,
    set_rng_state,
)
from optlab.training.stepping import step_optimizer, weights_for

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

    def get(self, table: dict[str, Any], data_dir: str | None = None) -> TensorData:
        """The dataset ``table`` names, from ``data_dir`` (the run's task says where; else
        this worker's $OPTLAB_DATA, else ./data)."""
        data_dir = data_dir or self.data_dir
        # The same relative file path means another file in another study's folder.
        key = json.dumps([table, current_study_folder(), data_dir], sort_keys=True)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        params = {k: v for k, v in table.items() if k != "name"}
        data = self.registry.create("dataset", table["name"], params, data_dir=data_dir).to(
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


def train(
    task: dict[str, Any],
    emit: Emit,
    cache: DataCache,
    registry: Registry | None = None,
    tick: Callable[[], None] | None = None,
) -> None:
    """Train one run (``task``: its run id, seed and config), reporting its events through
    ``emit``: started or resumed, an epoch row per epoch with the probes' values, the
    checkpoints, and finished or diverged. ``tick`` is called often (a heartbeat)."""
    run = Run(task, emit, cache, registry or default_registry(), tick or (lambda: None))
    run.resume_or_start()
    run.add_local_workers()
    # Successive halving hands the run back at its next rung, checkpointed there.
    stop_at = task.get("stop_at")
    until = run.epochs if stop_at is None else min(int(stop_at), run.epochs)
    deadline = task.get("deadline")  # the session's end (--stop-after), in time.time()
    hold = task.get("hold_file")  # made by a job at its time limit or preemption (Slurm)
    for epoch in range(run.counters.epoch, until):
        if not run.epoch(epoch):
            return  # diverged
        if epoch + 1 < until and time_is_up(deadline, hold):
            run.pause(Event.HELD)  # the next safe point: this epoch's end, checkpointed
            return
    if until < run.epochs:
        run.pause()
        return
    run.finish()


def time_is_up(deadline: float | None, hold: str | None) -> bool:
    """Whether the run is to hold at this epoch's end: the session's deadline has passed, or
    the run's job made its hold file (its time limit or a preemption is near)."""
    if deadline is not None and time.time() >= deadline:
        return True
    return hold is not None and os.path.exists(hold)


class Run:
    """One run's training, in the order it happens: setup (here), resume or start, local
    SGD's extra workers, the epochs (each a pass over the data, then evaluation, the epoch
    row and the checkpoint policy), and the end."""

    def __init__(
        self,
        task: dict[str, Any],
        emit: Emit,
        cache: DataCache,
        registry: Registry,
        tick: Callable[[], None],
    ):
        self.task, self.emit, self.registry, self.tick = task, emit, registry, tick
        config, seed = task["config"], task["seed"]
        self.config, self.seed, self.run_id = config, seed, task["run_id"]
        self.device = device = cache.device
        self.attempt_start = time.monotonic()
        self.data = data = cache.get(config["dataset"], task.get("data_dir"))
        self.n, self.epochs = len(data.x_train), config["epochs"]
        torch.manual_seed(seed)  # model init; CPU and CUDA generators alike
        model = _build(
            registry,
            "model",
            config["model"],
            input_shape=data.input_shape,
            num_classes=data.num_classes,
        ).to(device)
        self.images = data.x_train.dim() == 4
        if self.images:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = _build(registry, "optimizer", config["optimizer"], model=model)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.lr_factor = _build(registry, "lr_schedule", config["lr_schedule"], epochs=self.epochs)
        self.batch_size_at = _build(
            registry,
            "batch_schedule",
            config["batch_schedule"],
            epochs=self.epochs,
            train_size=self.n,
        )
        self.augment = _build(
            registry,
            "augmentation",
            config["augmentation"],
            input_shape=data.input_shape,
            mean=data.mean,
            std=data.std,
        )
        self.used_precision, self.autocast, self.scaler = precision_for(config["precision"], device)
        if self.scaler is not None and getattr(self.optimizer, "optlab_closure", False):
            raise ValueError(
                f"optimizer {config['optimizer']['name']} re-evaluates the loss in "
                "its step (a closure), which amp's gradient scaler cannot do: use "
                'precision = "fp32" or "bf16"'
            )
        # One generator for data order and augmentation, seeded from the run's seed.
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.probes = Probes(
            config.get("probes", []),
            registry,
            model=model,
            optimizer=self.optimizer,
            data=data,
            augment=self.augment,
            seed=seed,
            epochs=self.epochs,
            device=device,
            channels_last=self.images,
        )
        folder = Path(task["checkpoint_dir"]) if task.get("checkpoint_dir") else None
        self.folder = folder
        self.policy = (
            ckpt.Policy.from_config(config) if config.get("checkpoint") and folder else None
        )
        self.weights_mode = config.get("save_weights", "none")
        self.best = BestWeights(self.weights_mode == "best")
        self.counters = Counters(lr=self.base_lrs[0])
        self.workers = [(model, self.optimizer)]
        self.local = config.get("local_sgd")
        self.found: Any = None
        self.saved_epoch: int | None = None  # the epoch of this attempt's last checkpoint
        self.reference: int | None = None

    def report(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self.emit({**ev, "run_id": self.run_id})

    def elapsed(self) -> float:
        return self.counters.elapsed + time.monotonic() - self.attempt_start

    # ---- resume from the last good checkpoint, or start --------------------------------
    def resume_or_start(self) -> None:
        folder, task = self.folder, self.task
        shape = {
            "input_shape": list(self.data.input_shape),
            "num_classes": self.data.num_classes,
            "checkpoint_dir": str(folder) if folder else None,
        }
        found = ckpt.latest(folder, self.run_id, task.get("resume_upto", 0)) if folder else None
        self.found = found
        for why in found.skipped if found else []:  # the run's log says it too
            print(f"checkpoint {why}; not used", flush=True)
        if found is None or found.state is None:
            if folder is not None:
                ckpt.clear(folder)
            self.emit(
                {
                    "type": Event.STARTED,
                    "run_id": self.run_id,
                    "precision_used": self.used_precision,
                    "config": self.config,
                    "seed": self.seed,
                    "skipped": found.skipped if found else [],
                    **shape,
                }
            )
            if self.probes:
                self.report(self.probes.at_epoch(0, 0)[0])
            return
        self._load(found.state)
        ckpt.clear(folder, keep_upto=self.counters.epoch)
        self.emit(
            {
                "type": Event.RESUMED,
                "run_id": self.run_id,
                "epoch": self.counters.epoch,
                "past_rung": bool(task.get("past_rung")),
                "step": self.counters.step,
                "checkpoint": str(found.path),
                "skipped": found.skipped,
                "precision_used": self.used_precision,
                "config": self.config,
                "seed": self.seed,
                **shape,
            }
        )

    def _load(self, state: dict[str, Any]) -> None:
        if self.device.type == "cpu" and state["threads"] != torch.get_num_threads():
            torch.set_num_threads(state["threads"])  # the run's own count, for exact rows
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device, self.gen)
        self.probes.load_state_dict(state["probes"])
        self.best.load_state_dict(state["best"])
        self.counters = Counters(
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

    # ---- local SGD: more simulated workers, each on its own shard ---------------------
    def add_local_workers(self) -> None:
        local = self.local
        if not local:
            return
        for k in range(1, local["workers"]):
            replica = copy.deepcopy(self.model)
            opt = _build(self.registry, "optimizer", self.config["optimizer"], model=replica)
            if self.found is not None and self.found.state is not None:
                opt.load_state_dict(self.found.state["local_optimizers"][k - 1])
            self.workers.append((replica, opt))
        # A fixed partition of the training set, drawn once from the run's seed.
        split = torch.Generator().manual_seed(self.seed + SHARD_SEED)
        order = torch.randperm(self.n, generator=split).to(self.device)
        self.shards = list(order.tensor_split(local["workers"]))
        self.shard_size = min(len(s) for s in self.shards)

    # ---- an epoch ----------------------------------------------------------------------
    def epoch(self, epoch: int) -> bool:
        """Train one epoch, evaluate, report its row and checkpoint when due; False when
        the run diverged (reported, and its checkpoints gone)."""
        limit = self.shard_size if self.local else self.n
        reference = self.config.get("lr_reference_batch") or min(int(self.batch_size_at(0)), limit)
        bs = min(int(self.batch_size_at(epoch)), limit)
        done = self._pass(epoch, bs, lr_scale(self.config, bs, reference))
        run = self.counters
        run.lr = self.base_lrs[0] * done.factor
        run.step += done.steps
        run.samples += self.n
        run.sfo += done.sfo
        run.sfo_full_batches += done.full
        if not self.local:
            run.rounds = run.step  # data-parallel training: one gradient all-reduce a step
        run.epoch = epoch + 1
        train_loss = done.loss_sum.item() / self.n  # the epoch's one read of the device
        seconds = time.perf_counter() - done.started - done.probe_seconds
        return self._after(bs, train_loss, done.correct.item() / self.n, seconds, done)

    def _pass(self, epoch: int, bs: int, scale: float) -> _Pass:
        """One pass over the training data (each local SGD worker over its shard)."""
        device, gen, data, workers = self.device, self.gen, self.data, self.workers
        local, augment, autocast, scaler = self.local, self.augment, self.autocast, self.scaler
        channels_last = self.images
        if local:  # each worker passes over its own shard once per epoch
            orders = [s[torch.randperm(len(s), device=device, generator=gen)] for s in self.shards]
        else:
            orders = [torch.randperm(self.n, device=device, generator=gen)]
        # The last partial batch is used and counted as its size.
        counts = [math.ceil(len(order) / bs) for order in orders]
        done = _Pass(steps=max(counts))
        done.loss_sum = torch.zeros((), device=device)
        done.correct = torch.zeros((), device=device, dtype=torch.int64)
        for net, opt in workers:
            net.train()
            weights_for(opt, "train")
        if device.type == "cuda":
            torch.cuda.synchronize()
        done.started = time.perf_counter()
        step, steps = self.counters.step, done.steps
        for i in range(steps):
            done.factor = self.lr_factor(epoch + i / steps, 1 / steps, step + i) * scale
            for (net, opt), order, count in zip(workers, orders, counts, strict=True):
                if i >= count:
                    continue
                idx = order[i * bs : (i + 1) * bs]
                x, y = augment(data.x_train[idx], gen), data.y_train[idx]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for group, base in zip(opt.param_groups, self.base_lrs, strict=True):
                    group["lr"] = base * done.factor
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
                done.sfo += len(idx) * evals
                done.full += bs * evals
                # Accumulate on the device: no host synchronisation per step.
                done.loss_sum += loss.detach() * len(idx)
                done.correct += (out.argmax(1) == y).sum()
            if local and ((i + 1) % local["local_steps"] == 0 or i == steps - 1):
                average([net for net, _ in workers])  # a communication round
                self.counters.rounds += 1
            self.tick()
            if step + i < self.probes.max_step:  # every-step probes, for the first K steps
                events, spent = self.probes.at_step(epoch + 1, step + i + 1)
                self.report(events)
                done.probe_seconds += spent
        return done

    def _after(
        self, bs: int, train_loss: float, train_acc: float, seconds: float, done: _Pass
    ) -> bool:
        """Evaluate, probe and report the epoch; stop a diverged run; keep the best weights
        and the checkpoint when due."""
        run, data, model, autocast = self.counters, self.data, self.model, self.autocast
        finite = math.isfinite(train_loss)
        for _, opt in self.workers:  # evaluation, epoch probes and checkpoints see these
            weights_for(opt, "eval")
        probe_seconds = done.probe_seconds
        if self.probes and finite:
            events, spent = self.probes.at_epoch(run.epoch, run.step)
            self.report(events)
            probe_seconds += spent
        t1 = time.perf_counter()
        nan = (float("nan"), float("nan"))
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, autocast) if finite else nan
        val_loss, val_acc = (
            (None, None)
            if data.x_val is None
            else (evaluate(model, data.x_val, data.y_val, autocast) if finite else nan)
        )
        self.tick()
        self.emit(
            {
                "type": Event.EPOCH,
                "run_id": self.run_id,
                "epoch": run.epoch,
                "step": run.step,
                "samples": run.samples,
                "sfo": run.sfo,
                "epoch_lr": run.lr,
                "epoch_batch_size": bs,
                "train_loss": train_loss,
                "train_acc": train_acc,
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
        diverged = divergence(self.config, train_loss, run)
        if diverged is not None:
            rule, why = diverged
            self.emit(
                {
                    "type": Event.DIVERGED,
                    "run_id": self.run_id,
                    "elapsed": self.elapsed(),
                    "rule": rule,
                    "error": f"{why} in epoch {run.epoch}",
                }
            )
            if self.folder is not None:
                ckpt.clear(self.folder)
            return False
        self.best.offer(model, run.epoch, val_acc if data.x_val is not None else test_acc)
        if self.policy is not None and self.policy.due(run.epoch):
            self.checkpoint()
        return True

    # ---- the checkpoint policy -----------------------------------------------------------
    def checkpoint(self) -> None:
        run, c0 = self.counters, time.perf_counter()
        self.saved_epoch = run.epoch
        path, size = self.policy.save(
            self.folder,
            run.epoch,
            {
                "format": ckpt.FORMAT,
                "run_id": self.run_id,
                "epoch": run.epoch,
                "step": run.step,
                "samples": run.samples,
                "lr": run.lr,
                "elapsed": self.elapsed(),
                "first_loss": run.first_loss,
                "sfo_full_batches": run.sfo_full_batches,
                "rounds": run.rounds,
                "sfo": run.sfo,
                "local_optimizers": [opt.state_dict() for _, opt in self.workers[1:]],
                "threads": torch.get_num_threads(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(self.device, self.gen),
                "probes": self.probes.state_dict(),
                "best": self.best.state_dict(),
            },
        )
        self.emit(
            {
                "type": Event.CHECKPOINT,
                "run_id": self.run_id,
                "epoch": run.epoch,
                "path": str(path),
                "bytes": size,
                "seconds": time.perf_counter() - c0,
            }
        )

    def pause(self, kind: Event = Event.PAUSED) -> None:
        """At a rung (``paused``), or at the session's end (``held``): checkpoint (whatever
        the policy) and hand the run back."""
        if self.folder is None:
            raise ValueError("handing a run back to go on later needs its checkpoint folder")
        if self.policy is None:
            self.policy = ckpt.Policy(None, None, keep=2, epochs=self.epochs)
        if self.saved_epoch != self.counters.epoch:
            self.checkpoint()
        self.emit(
            {
                "type": kind,
                "run_id": self.run_id,
                "epoch": self.counters.epoch,
                "elapsed": self.elapsed(),
            }
        )

    # ---- the end: weights, then the checkpoints go -------------------------------------
    def finish(self) -> None:
        kept, folder, mode = None, self.folder, self.weights_mode
        if folder is not None:
            if mode == "best" and self.best.weights is not None:
                kept = save_weights(folder, "best", self.best.weights)
            elif mode == "final" or (mode == "auto" and self.elapsed() >= WEIGHTS_AUTO_SECONDS):
                kept = save_weights(folder, "final", cpu_state(self.model))
        self.emit(
            {
                "type": Event.FINISHED,
                "run_id": self.run_id,
                "elapsed": self.elapsed(),
                "weights": str(kept) if kept else None,
                "best_epoch": self.best.epoch if mode == "best" else None,
            }
        )
        if folder is not None:
            ckpt.clear(folder)


@dataclass
class _Pass:
    """What one pass over the data adds up (on the device where it can)."""

    steps: int
    factor: float = 1.0  # the LR factor of its last step
    sfo: int = 0  # examples x gradient evaluations
    full: int = 0  # whole batches x gradient evaluations (seed 004's count)
    probe_seconds: float = 0.0
    started: float = 0.0  # when its first step began (perf_counter)
    loss_sum: Any = None
    correct: Any = None
