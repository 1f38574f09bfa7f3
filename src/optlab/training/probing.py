"""Probes in the training loop (worker side): when each runs, on what, and in which mode.

Each probe gets a fixed probe batch drawn once from the training set with its own generator,
so probes neither consume nor shift the run's data order, augmentation or dropout streams
(the global RNG state is forked around each measurement). Normalisation layers are put in
the probe's declared mode and their running statistics restored afterwards, and gradients
are taken with ``torch.autograd.grad``, never into ``.grad``: a run with probes trains
exactly like the run without them. Measurements are in fp32.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from optlab.errors import PluginBuildError
from optlab.plugins.contract import ProbeContext
from optlab.plugins.plugin import TensorData
from optlab.plugins.registry import Registry
from optlab.states import Event

_SEED_STRIDE = 1_000_003


@dataclass
class _Entry:
    name: str
    params: Any
    measure: Callable[[ProbeContext], dict[str, Any]]
    at_epoch: Callable[[int], bool]  # whether it runs after an epoch
    first_steps: int
    index: torch.Tensor  # probe batch indices into the training set
    generator: torch.Generator


class Probes:
    def __init__(
        self,
        tables: list[dict[str, Any]],
        registry: Registry,
        *,
        model,
        optimizer,
        data: TensorData,
        augment: Callable,
        seed: int,
        epochs: int,
        device: torch.device,
        channels_last: bool,
    ):
        self.model, self.optimizer, self.data = model, optimizer, data
        self.augment, self.device, self.channels_last = augment, device, channels_last
        self.entries: list[_Entry] = []
        n = len(data.x_train)
        for i, table in enumerate(tables):
            kind = registry.get("probe", table["name"])
            params = kind.params(**{k: v for k, v in table.items() if k != "name"})
            try:
                measure = kind.create(params, model=model, optimizer=optimizer)
            except Exception as e:  # noqa: BLE001 - see errors.PluginBuildError
                raise PluginBuildError("probe", table, e) from e
            pick = torch.Generator().manual_seed(seed + _SEED_STRIDE * (i + 1))
            index = torch.randperm(n, generator=pick)[: min(params.batch, n)].to(device)
            gen = torch.Generator(device=device).manual_seed(seed + _SEED_STRIDE * (i + 1))
            self.entries.append(
                _Entry(
                    table["name"],
                    params,
                    measure,
                    params.runs_at,
                    params.first_steps or 0,
                    index,
                    gen,
                )
            )
        self.max_step = max((e.first_steps for e in self.entries), default=0)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def state_dict(self) -> list[dict[str, Any]]:
        """For checkpoints: each probe's generator and, when it has one, its own state (the
        initial weights of ``distance_from_init``, say)."""
        return [
            {
                "generator": e.generator.get_state(),
                "measure": e.measure.state_dict() if hasattr(e.measure, "state_dict") else None,
            }
            for e in self.entries
        ]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        if len(state) != len(self.entries):
            raise ValueError(
                f"the checkpoint has {len(state)} probes; the run has {len(self.entries)}"
            )
        for entry, saved in zip(self.entries, state, strict=True):
            entry.generator.set_state(saved["generator"])
            if saved["measure"] is not None and hasattr(entry.measure, "load_state_dict"):
                entry.measure.load_state_dict(saved["measure"])

    def at_epoch(self, epoch: int, step: int) -> tuple[list[dict[str, Any]], float]:
        """Probes due after ``epoch`` (0 = before training); (events, seconds spent)."""
        return self._run([e for e in self.entries if e.at_epoch(epoch)], epoch, step)

    def at_step(self, epoch: int, step: int) -> tuple[list[dict[str, Any]], float]:
        """Probes due after optimizer step ``step`` (1-based) of ``epoch``."""
        if step > self.max_step:
            return [], 0.0
        return self._run([e for e in self.entries if step <= e.first_steps], epoch, step)

    def _run(self, due: list[_Entry], epoch: int, step: int) -> tuple[list[dict[str, Any]], float]:
        if not due:
            return [], 0.0
        self._sync()
        t0 = time.perf_counter()
        was_training = self.model.training
        buffers = [b.detach().clone() for b in self.model.buffers()]
        results = []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            for entry in due:
                self.model.train(entry.params.mode == "train")
                with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                    values = entry.measure(self._context(entry))
                results.append((entry.name, values))
                for saved, live in zip(buffers, self.model.buffers(), strict=True):
                    live.copy_(saved)
        finally:
            self.model.train(was_training)
        events = [
            {"type": Event.PROBE, "epoch": epoch, "step": step, "probe": name, "values": values}
            for name, values in _read(results)
        ]
        self._sync()
        return events, time.perf_counter() - t0

    def _context(self, entry: _Entry) -> ProbeContext:
        def prepare(x: torch.Tensor) -> torch.Tensor:
            if entry.params.augment:
                x = self.augment(x, entry.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x

        x = prepare(self.data.x_train[entry.index])
        return ProbeContext(
            self.model,
            self.optimizer,
            self.data,
            x,
            self.data.y_train[entry.index],
            entry.generator,
            prepare,
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def _read(results: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, float]]]:
    """Tensor values to floats with one read of the device for all of them."""
    tensors = [
        v.detach().reshape(()).double()
        for _, values in results
        for v in values.values()
        if torch.is_tensor(v)
    ]
    numbers = iter(torch.stack(tensors).cpu().tolist() if tensors else [])
    return [
        (name, {k: next(numbers) if torch.is_tensor(v) else float(v) for k, v in values.items()})
        for name, values in results
    ]
