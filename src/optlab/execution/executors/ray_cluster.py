"""The Ray executor: the same study, the same store, on a Ray cluster.

Each slot is a long-lived Ray actor (:class:`SlotWorker`) that asks Ray for its share of
the cluster (``1/per_gpu`` of a GPU, or its CPU threads), prepares the study's datasets on
its node, and keeps a warm ``python -m optlab.training.worker`` process there: the same worker as
the local pool's, so a run trains identically wherever it lands. The driver's slot loops
take runs from one queue as slots free up, send each to its actor, and poll the actor for
the worker's events.

Every event comes back to this machine: it is written to the run's journal here (fsynced)
before the coordinator sees it, so the store, the journals and the run logs live only on
the driver, and no node ever opens the store.

Checkpoints are either written to a folder every node shares (``--checkpoint-dir``) or,
without one, shipped: the worker writes them on its node, the actor sends each file back
with its event, the driver keeps it beside the store, and a run resumed on another node
gets its files sent with the task. Final or best weights travel the same way.

A node that is lost (or an actor that crashes or is preempted) costs only its runs'
progress since their last checkpoint: each goes back to the front of the queue with the
epochs it had reported, and resumes on the next free slot. A run lost
:data:`MAX_LOSSES` times fails instead, so one that brings its node down cannot go round
for ever. A worker process that dies on a live node fails its run, as on the local pool.
On a node whose raylet dies, each actor stops its worker and itself (nothing else could
tell it to: the driver's ``ray.kill`` need not reach a lost node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

from optlab.errors import UsageError
from optlab.execution import devices
from optlab.execution.devices import Slot
from optlab.execution.executors import RayParams, Sink, TaskExtra
from optlab.execution.executors.pool import (
    Broken,
    note_in_log,
    pump,
    stall_message,
    worker_failed,
)
from optlab.execution.executors.relay import Relay, WorkerHost, checkpoint_epoch, checkpoint_files
from optlab.execution.executors.work import WorkQueue
from optlab.locations import journal_path, log_path
from optlab.states import Event
from optlab.study.expand import RunSpec

MAX_LOSSES = 3  # times a run may lose its slot (node, actor) before it fails
NODE_WATCH_SECONDS = 1.0  # how often an actor looks whether its node's raylet is alive
NODE_LOST_GRACE = 5.0  # seconds its worker gets to stop (SIGTERM) before SIGKILL
NOT_JOURNALED = ("heartbeat", "ready", "disk_full")
SHIPPED = ('"type":"checkpoint"', '"type":"finished"')
BATCH = 2000  # most lines one poll returns


def build(
    params: RayParams,
    *,
    store: Path,
    stall_timeout: float = 600.0,
    data_dir: Path | None = None,
    checkpoints_shared: bool = False,
    datasets: list[dict[str, Any]] | None = None,
    **_: Any,
) -> RayExecutor:
    return RayExecutor(
        params.address, store, stall_timeout, data_dir, checkpoints_shared, datasets or []
    )


# ---- on each node --------------------------------------------------------------------------


class SlotWorker(WorkerHost):
    """A :class:`~optlab.execution.executors.relay.WorkerHost` as a Ray actor: it knows its
    node from Ray, and stops its worker and itself when its node's raylet dies."""

    node_lost = False  # set by the watch below, before it stops the worker

    async def start(self) -> dict[str, Any]:
        host, node_id = socket.gethostname(), ray.get_runtime_context().get_node_id()
        info = await self.start_on(node_name(host, node_id, self.unique_hosts))
        if "error" not in info:
            self._watch = asyncio.get_running_loop().create_task(self._watch_node(os.getppid()))
        return info

    async def _watch_node(self, raylet: int) -> None:
        """End the worker and this actor once the raylet that started them is gone (this
        process is then given another parent). A node declared lost is never told to stop:
        without this its actors and workers would go on training, holding their GPUs,
        until the cluster shuts down."""
        while os.getppid() == raylet:
            await asyncio.sleep(NODE_WATCH_SECONDS)
        self.node_lost = True
        with contextlib.suppress(Exception):
            await self.stop(grace=NODE_LOST_GRACE)
        os._exit(1)

    async def exit_code(self) -> int | None:
        """The worker's exit code; an error (the driver's Lost) when this slot stopped it
        because its node is gone: that run is lost with the node and goes back to the
        queue, it has not failed."""
        if self.node_lost:
            raise RuntimeError("its node's raylet is gone; the worker was stopped with it")
        return await super().exit_code()


RemoteSlot = ray.remote(max_restarts=0)(SlotWorker)


def node_name(host: str, node_id: str, unique_hosts: bool) -> str:
    """The host name; with the node id's start where a host runs several nodes."""
    return host if unique_hosts else f"{host}-{node_id[:6]}"


# ---- on the driver -------------------------------------------------------------------------


class Lost(Exception):
    """The slot's actor is gone (its node died, it crashed or was preempted)."""


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        address: str | None,
        store: Path,
        stall_timeout: float,
        data_dir: Path | None,
        checkpoints_shared: bool,
        datasets: list[dict[str, Any]],
    ):
        self.store, self.stall_timeout = store, stall_timeout
        self.data_dir = str(data_dir) if data_dir else None
        self.ship, self.datasets = not checkpoints_shared, datasets
        self.session = uuid.uuid4().hex[:8]
        self.stopping = False
        self.work = WorkQueue()
        self.actors: set[Any] = set()
        self.placed: dict[str, str] = {}  # slot label -> node name
        self.bad_nodes: dict[str, str] = {}  # node name -> why it gets no runs
        self.reached: dict[str, int] = {}  # run_id -> the last epoch it reported
        self.losses: Counter[str] = Counter()
        self.broken = Broken()
        self._connect(address)

    # -- the cluster ---------------------------------------------------------------------

    def _connect(self, address: str | None) -> None:
        options = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address not in (None, "auto"):
            _reachable(address)
        try:
            # "local" starts a Ray of its own even where one runs already
            ray.init(address=address or "local", **options)
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds; one line for each
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = f"--address {address}" if address else "starting Ray on this machine"
            raise UsageError(f"--executor ray: {where}: {first}") from None
        alive = [n for n in ray.nodes() if n.get("Alive")]
        hosts = Counter(n["NodeManagerHostname"] for n in alive)
        self.unique_hosts = all(c == 1 for c in hosts.values())
        self.resources = ray.cluster_resources()
        self.node_cpus = max((n["Resources"].get("CPU", 0) for n in alive), default=0)

    def make_slots(
        self, gpus: str | None, per_gpu: int, workers: int | None, runs: int | None
    ) -> list[Slot]:
        total_gpus = int(self.resources.get("GPU", 0))
        cpus = int(self.resources.get("CPU", 0))
        # On a cluster, --gpus counts GPUs: 0-7 is eight of them, wherever they are.
        available = [str(i) for i in range(total_gpus)]
        chosen = devices.parse_gpus(
            gpus if gpus is not None else ("all" if available else "none"),
            available,
            " in the Ray cluster",
        )
        if workers is None and runs is not None and not chosen:
            workers = max(1, min(cpus, runs))
        slots = devices.make_slots(chosen, per_gpu, workers, cores=max(cpus, 1))
        if not chosen:
            if cpus < 1:
                raise UsageError("--executor ray: the cluster has no CPU to run on")
            # A slot's threads must fit on one node.
            cap = max(1, int(self.node_cpus))
            slots = [Slot(s.label, None, min(s.threads, cap)) for s in slots]
        self.per_gpu = per_gpu
        return slots

    def where(self, slots: list[Slot]) -> str:
        gpus = len({s.gpu for s in slots if s.gpu is not None})
        kind = f"{gpus} GPU(s) x {len(slots) // gpus}" if gpus else "CPU"
        return f"ray, {kind}, {int(self.resources.get('CPU', 0))} CPUs in the cluster"

    def notes(
        self, slots: list[Slot], per_gpu: int, workers: int | None, runs: list[RunSpec]
    ) -> list[str]:
        return []  # what a node can do is told when it is placed (a node that cannot prepare)

    def nodes(self) -> dict[str, int]:
        return dict(Counter(self.placed.values()))

    def halt(self) -> None:
        self.stopping = True
        self.work.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            ray.shutdown()

    # -- the queue -----------------------------------------------------------------------

    async def run(
        self, work: WorkQueue, slots: list[Slot], sink: Sink, task_extra: TaskExtra
    ) -> None:
        self.work = work
        if self.stopping:
            self.work.close()
        try:
            await asyncio.gather(*(self._slot_loop(slot, sink, task_extra) for slot in slots))
            if self.work and not self.stopping:
                sink(
                    {
                        "type": "note",
                        "text": f"{len(self.work)} run(s) not started: no slot "
                        "could take them (see the notes above)",
                    }
                )
        finally:
            await self._stop_actors()

    def _all_done(self) -> bool:
        return self.stopping or self.work.done()

    async def _take(self) -> RunSpec | None:
        spec = await self.work.take()
        if spec is not None and self.stopping:
            self.work.release()
            return None
        return spec

    async def _release(self, spec: RunSpec | None = None) -> None:
        """A run is over (or, with ``spec``, goes back to the front of the queue)."""
        self.work.release(spec)

    async def _until_done(self) -> None:
        await self.work.drained()

    # -- a slot --------------------------------------------------------------------------

    async def _place(self, slot: Slot, sink: Sink) -> Any | None:
        """An actor for ``slot`` on a node that can run the study, or None when there is
        no more to do (or the node it landed on cannot prepare the datasets)."""
        resources = (
            {"num_gpus": 1 / self.per_gpu, "num_cpus": 0}
            if slot.gpu is not None
            else {"num_cpus": slot.threads}
        )
        while not self._all_done():
            actor = RemoteSlot.options(**resources).remote(
                slot.label,
                slot.threads,
                slot.gpu is not None,
                self.data_dir,
                self.datasets,
                self.session,
                self.ship,
                self.unique_hosts,
            )
            self.actors.add(actor)
            started = asyncio.ensure_future(_result(actor.start.remote()))
            done = asyncio.ensure_future(self._until_done())
            await asyncio.wait([started, done], return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            if not started.done():
                started.cancel()
                return None
            try:
                info = started.result()
            except RayError:
                self._forget(actor)
                await asyncio.sleep(1.0)  # its node went before it started; place it again
                continue
            node = info["node"]
            if "error" in info:
                # It keeps its share of the node, so no other slot lands there either.
                if node not in self.bad_nodes:
                    self.bad_nodes[node] = info["error"]
                    sink({"type": "note", "text": f"node {node} gets no runs: {info['error']}"})
                return None
            self.placed[slot.label] = node
            return actor
        return None

    def _forget(self, actor: Any) -> None:
        self.actors.discard(actor)
        with contextlib.suppress(Exception):
            ray.kill(actor)

    async def _slot_loop(self, slot: Slot, sink: Sink, task_extra: TaskExtra) -> None:
        actor = None
        while not self.stopping:
            if actor is None:
                actor = await self._place(slot, sink)
                if actor is None:
                    return
            spec = await self._take()
            if spec is None:
                return
            try:
                ended = await self._one_run(actor, slot, spec, sink, task_extra)
            except Lost as e:
                node = self.placed.pop(slot.label, "?")
                self._forget(actor)
                actor = None
                self.losses[spec.run_id] += 1
                why = f"slot {slot.label} on node {node} was lost ({e})"
                note_in_log(log_path(self.store, spec.run_id), why)
                if self.losses[spec.run_id] >= MAX_LOSSES:
                    sink(
                        {
                            "type": Event.FAILED,
                            "run_id": spec.run_id,
                            "time": time.time(),
                            "origin": "pool",
                            "error": f"{why}, the {MAX_LOSSES}th time for this run",
                        }
                    )
                    await self._release()
                else:
                    sink(
                        {
                            "type": "note",
                            "text": f"{why}; run {spec.run_id} goes back to "
                            "the queue and resumes from its last "
                            "checkpoint",
                        }
                    )
                    await self._release(spec)
                continue
            await self._release()
            if ended == "disk_full":
                self.stopping = True

    async def _one_run(
        self, actor: Any, slot: Slot, spec: RunSpec, sink: Sink, task_extra: TaskExtra
    ) -> str:
        if self.broken.skip(sink, spec):
            return "ended"
        task = {
            **spec.task(),
            "journal": str(journal_path(self.store, spec.run_id)),
            "log": str(log_path(self.store, spec.run_id)),
            **task_extra(spec, slot),
        }
        if spec.run_id in self.reached:  # lost before: resume from what it reported
            task["resume_upto"] = self.reached[spec.run_id]
        folder = Path(task["checkpoint_dir"]) if task.get("checkpoint_dir") else None
        files = {}
        if self.ship and folder is not None and task.get("resume_upto"):
            files = {
                p.name: p.read_bytes()
                for p in checkpoint_files(folder)
                if checkpoint_epoch(p) <= task["resume_upto"]
            }
        keep = (spec.config.get("checkpoint") or {}).get("keep", 2)
        relay = Relay(
            self.store,
            spec.run_id,
            folder,
            keep,
            self.ship,
            self.reached,
            poll=lambda timeout: _call(actor.poll.remote(timeout)),
            take_log=lambda run_id: _log_of(actor, run_id),
        )
        sink({"type": "assigned", "run_id": spec.run_id, "worker": slot.label, "time": time.time()})
        await _call(actor.submit.remote(task, files))
        ended = await pump(
            relay.read, self.broken.watch(sink, spec), slot.label, spec.run_id, self.stall_timeout
        )
        if ended in ("ended", "disk_full"):
            await relay.fetch_log()
            return ended
        if ended == "stalled":
            await _call(actor.kill_worker.remote())
        code = await _call(actor.exit_code.remote())
        await relay.fetch_log()
        why = stall_message(
            f"{slot.label} on {self.placed.get(slot.label)}", ended, code, self.stall_timeout
        )
        worker_failed(sink, self.store, spec.run_id, why, "the run's log")
        return ended

    async def _stop_actors(self, grace: float = 5.0) -> None:
        """Stop every worker (SIGTERM, then SIGKILL), then the actors."""
        actors = list(self.actors)
        if actors:
            stops = [asyncio.ensure_future(_result(a.stop.remote(grace))) for a in actors]
            await asyncio.wait(stops, timeout=grace + 5)
            for s in stops:
                s.cancel()
            for actor in actors:
                self._forget(actor)
        self.placed.clear()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT that takes connections, else one line (Ray itself would retry for
    minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"--address {address!r}: give auto or HOST:PORT of the Ray head "
            "(ray start --head prints it)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(
            f"--address {address}: no Ray head answers there "
            f"({e.strerror or e}); is `ray start --head` running?"
        ) from None


async def _log_of(actor: Any, run_id: str) -> bytes:
    """The run's log from its actor's node (nothing when the actor is gone)."""
    try:
        return await _call(actor.take_log.remote(run_id))
    except Lost:
        return b""


async def _result(ref: Any) -> Any:
    return await ref


async def _call(ref: Any) -> Any:
    """A remote call's result; Lost when the actor is gone."""
    try:
        return await ref
    except RayError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise Lost(f"{type(e).__name__}: {first}") from None
