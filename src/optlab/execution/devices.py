"""Where workers run: GPU specs (``0-7``, ``0,2,5``, ``all``, ``none``) and worker slots.

No torch here: GPUs are counted from the driver's /proc entries or ``nvidia-smi``, so
the coordinator starts fast. ``OPTLAB_GPU_COUNT`` overrides the count (for machines where
detection fails, and for tests of the slot environment on machines without a GPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optlab.errors import UsageError


@dataclass(frozen=True)
class Slot:
    """One worker: its label and the environment it is started with."""

    label: str
    gpu: str | None  # the CUDA_VISIBLE_DEVICES value, None on the CPU
    threads: int

    def env(self) -> dict[str, str]:
        env = {
            "OPTLAB_WORKER": self.label,
            "OPTLAB_THREADS": str(self.threads),
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "CUDA_VISIBLE_DEVICES": self.gpu if self.gpu is not None else "",
        }
        return env


def visible_gpus() -> list[str]:
    """The GPU ids a worker may be given, in order."""
    if "OPTLAB_GPU_COUNT" in os.environ:
        given = os.environ["OPTLAB_GPU_COUNT"].strip()
        if not given.isdigit():
            raise UsageError(
                f"OPTLAB_GPU_COUNT={given!r} in the environment: not a GPU count; "
                "give a whole number (0 for none) or unset it"
            )
        return [str(i) for i in range(int(given))]
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is not None:
        return [g.strip() for g in parent.split(",") if g.strip()]
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return [str(i) for i in range(len(list(proc.iterdir())))]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            return [str(i) for i, _ in enumerate(out.stdout.strip().splitlines())]
        except (OSError, subprocess.SubprocessError):
            pass
    return []


def parse_gpus(spec: str, available: list[str], where: str = "") -> list[str]:
    """``0-3,6`` -> the ids of GPUs 0, 1, 2, 3 and 6 of those available (``where``: the
    words that say where they were looked for, " in the Ray cluster")."""
    spec = spec.strip().lower()
    if spec == "none":
        return []
    if spec == "all":
        if not available:
            raise UsageError(f"--gpus all: no GPU is visible here{where}; use --gpus none")
        return list(available)
    indices: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UsageError(
                f"--gpus {spec!r}: {part.strip()!r} is not a GPU index or range; "
                "use forms like 0-7, 0,2,5, 0-3,6, all or none"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise UsageError(f"--gpus {spec!r}: range {lo}-{hi} runs backwards; write {hi}-{lo}")
        indices.extend(i for i in range(lo, hi + 1) if i not in indices)
    beyond = [i for i in indices if i >= len(available)]
    if beyond:
        have = f"0-{len(available) - 1}" if available else "none"
        hint = "" if available else "; --gpus none runs on the CPU"
        raise UsageError(
            f"--gpus {spec!r}: GPU {beyond[0]} is not present (GPUs here: {have}){where}{hint}"
        )
    return [available[i] for i in indices]


CPU_THREADS = 1  # torch threads of a run on the CPU, wherever and however it is scheduled


def make_slots(
    gpus: list[str], per_gpu: int, workers: int | None, cores: int | None = None
) -> list[Slot]:
    """``per_gpu`` workers per GPU (torch's CPU threads divided so that workers x threads
    <= cores), or ``workers`` CPU workers (default: one per core) that train each run on
    CPU_THREADS threads: a CPU run's rows depend on its thread count, which must therefore
    be the run's own, never a by-product of how many workers, cores or pending runs the
    session that trained it had (alone with --only, in a grid, resumed, on Ray)."""
    cores = cores or os.cpu_count() or 1
    if per_gpu < 1:
        raise UsageError(f"--per-gpu {per_gpu}: needs at least 1 worker per GPU")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: needs at least 1 worker")
    if gpus:
        n = len(gpus) * per_gpu
        threads = max(1, cores // n)
        return [Slot(f"gpu{g}/{k}", g, threads) for g in gpus for k in range(per_gpu)]
    n = workers if workers is not None else cores
    return [Slot(f"cpu/{k}", None, CPU_THREADS) for k in range(n)]


# Models that take hours an epoch on a CPU (the seeds' CIFAR networks).
HEAVY_MODELS = ("resnet18", "wrn")


def cpu_notes(
    slots: list[Slot], per_gpu: int, workers: int | None, runs: list[Any], cores: int | None = None
) -> list[str]:
    """What a user should hear before CPU slots start: options that do nothing here, more
    workers than cores, and CIFAR-sized networks about to train on the CPU."""
    if any(s.gpu is not None for s in slots):
        return []
    cores = cores or os.cpu_count() or 1
    notes = []
    if per_gpu != 1:
        notes.append(f"--per-gpu {per_gpu} does nothing without a GPU; --workers sets CPU workers")
    if workers is not None and workers > cores:
        notes.append(
            f"--workers {workers} on {cores} cores: the workers share cores (1 thread each), "
            f"so each run is slower than with --workers {cores}"
        )
    heavy = [r for r in runs if (r.config.get("model") or {}).get("name") in HEAVY_MODELS]
    if heavy:
        names = sorted({r.config["model"]["name"] for r in heavy})
        most = max(int(r.config.get("epochs") or 0) for r in heavy)
        notes.append(
            f"{len(heavy)} runs of {', '.join(names)} (up to {most} epochs) train on the CPU: "
            "expect hours an epoch; --gpus picks GPUs where there are some"
        )
    return notes
