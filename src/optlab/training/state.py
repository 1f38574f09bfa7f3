"""What a run carries from epoch to epoch and into its checkpoints: its counters, the best
weights so far, the random generators' state; the divergence rules; saved weights."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optlab.training import checkpoint as ckpt


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

    buf = io.BytesIO()
    torch.save(weights, buf)
    path = folder / f"{which}.pt"
    ckpt.write_atomic(path, buf.getvalue())
    return path
