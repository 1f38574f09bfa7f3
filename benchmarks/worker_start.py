"""Benchmark (t): how long the pool takes to have N workers ready, forked from the warm
fork server (what `optlab run` does) against exec'd as `python -m optlab.training.worker`
each (what it did before), measured in the same run, alternating. Wall time from the first
start to the last worker's ready event, and the CPU time the workers' processes and the fork
server spent (from /proc: children are not all this process's own).

    python benchmarks/worker_start.py [--workers 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from optlab.events import decode
from optlab.execution.executors.pool import signal_group, start_worker

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process and of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


async def ready(proc) -> None:
    while True:
        line = await proc.stdout.readline()
        if not line or decode(line)["type"] == "ready":
            return


async def round_of(workers: int, warm: bool, folder: Path) -> tuple[float, float]:
    env = {**os.environ, "OPTLAB_THREADS": "1", "OPTLAB_WORKER": "bench"}
    t0 = time.perf_counter()
    procs = await asyncio.gather(
        *(
            start_worker(sys.executable, env, folder / f"w{i}.log", warm=warm)
            for i in range(workers)
        )
    )
    await asyncio.gather(*(ready(p) for p in procs))
    wall = time.perf_counter() - t0
    cpu = sum(cpu_seconds(p.pid) for p in procs)
    for p in procs:
        signal_group(p, 9)
        await p.wait()
    return wall, cpu


def server_cpu() -> float:
    """The fork server's own CPU so far (its start: the imports it makes once)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == me and "forkserver" in Path(
            stat.parent / "cmdline"
        ).read_bytes().decode(errors="replace"):
            return cpu_seconds(int(stat.parent.name))
    return 0.0


async def main(workers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results: dict[str, list[tuple[float, float]]] = {"exec": [], "forked": []}
        for r in range(rounds):
            for how in ("exec", "forked") if r % 2 == 0 else ("forked", "exec"):
                results[how].append(await round_of(workers, how == "forked", folder))
        print(f"{workers} workers ready, {rounds} rounds each (wall s, workers' CPU s):")
        for how, got in results.items():
            walls = ", ".join(f"{w:.2f}" for w, _ in got)
            cpus = ", ".join(f"{c:.2f}" for _, c in got)
            print(f"  {how:7s} wall {walls}   CPU {cpus}")
        print(f"  the fork server's own CPU (its imports, once): {server_cpu():.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.workers, args.rounds))
