"""The Ray executor against real Ray clusters on this machine: one node started by optlab,
and two-node clusters from Ray's own test utility (each node its own raylet and one CPU).
Every epoch row and probe value must equal the local executor's, bit for bit on the CPU,
whatever happens to the nodes."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

import duckdb
import pytest

from tests.conftest import optlab, write_study
from tests.test_cli_e2e import start, wait_for
from tests.test_survival import EPOCHS, events_in_journals, results, statuses, study

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs optlab[ray]"),
]


def new_cluster(**head_node_args):
    """A Ray test cluster whose head node has ``head_node_args``. Ray is imported here, when
    a test runs, so that collecting the fast tests does not pay for it."""
    from ray import cluster_utils

    return cluster_utils.Cluster(initialize_head=True, head_node_args=head_node_args)


@pytest.fixture
def cluster(monkeypatch):
    """A head node with one CPU; tests add nodes. No OPTLAB_DATA leaks into the nodes."""
    monkeypatch.delenv("OPTLAB_DATA", raising=False)
    c = new_cluster(num_cpus=1)
    yield c
    c.shutdown()


def journals(folder: Path) -> dict[str, list[dict]]:
    out = {}
    for path in (folder / "optlab.runs").glob("*/events.jsonl"):
        events = []
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
        out[path.parent.name] = events
    return out


def query(folder: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def processes() -> dict[int, tuple[str, int]]:
    """Each live process's state and parent, from /proc (a zombie is not live)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state != "Z":
            out[int(stat.parent.name)] = (state, int(parent))
    return out


def optlab_processes_below(pid: int) -> set[int]:
    """optlab's processes under ``pid``: Ray's actors of SlotWorker, and optlab workers."""
    table, found, todo = processes(), set(), [pid]
    while todo:
        here = todo.pop()
        kids = {p for p, (_, parent) in table.items() if parent == here} - found
        todo += kids
        found |= kids
    ours = set()
    for p in found:
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"SlotWorker" in cmdline or b"optlab.training.worker" in cmdline:
            ours.add(p)
    return ours


def test_a_node_lost_mid_study_loses_nothing_and_leaves_nothing_running(
    tmp_path, reference, cluster
):
    """The second node's raylet is killed (SIGKILL) while it trains a run: the run resumes
    on the node that is left, and what optlab started on the lost node (its actor and the
    worker under it) stops, rather than train on until the cluster shuts down."""
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    study(tmp_path)
    proc = start(
        ["run", "long.toml", "--executor", "ray", "--address", cluster.address, "--workers", "2"],
        tmp_path,
    )
    suffix = second.node_id[:6]

    def checkpointed_on_second() -> str | None:
        for run_id, events in journals(tmp_path).items():
            starts = [e for e in events if e["type"] in ("started", "resumed")]
            if (
                starts
                and starts[-1]["provenance"]["worker"].endswith(suffix)
                and events[-1]["type"] == "checkpoint"
                and events[-1]["epoch"] <= EPOCHS - 2  # epochs left to lose
            ):
                return run_id
        return None

    def started_on_second() -> bool:
        return any(
            e["type"] == "started" and e["provenance"]["worker"].endswith(suffix)
            for events in journals(tmp_path).values()
            for e in events
        )

    wait_for(started_on_second, timeout=120, every=0.05)
    # While it runs, status names the executor and both nodes (asked before the victim is
    # chosen, so that the victim's epochs left are not spent waiting on it).
    status = optlab("status", cwd=tmp_path).stdout
    assert "(ray: " in status and suffix in status
    victim = wait_for(checkpointed_on_second, timeout=120, every=0.05)
    raylet = second.all_processes["raylet"][0].process.pid
    ours = optlab_processes_below(raylet)
    assert len(ours) >= 2  # the slot's actor and its optlab worker
    os.kill(raylet, signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    assert "was lost" in out and victim in out
    assert results(tmp_path) == reference  # nothing lost, nothing twice
    ((attempts, resumed),) = query(
        tmp_path, f"select attempts, resumed_from from runs where run_id = '{victim}'"
    )
    assert attempts == 2 and resumed >= 1
    # the resumed attempt ran on the node that is left
    last = [e for e in journals(tmp_path)[victim] if e["type"] == "resumed"][-1]
    assert not last["provenance"]["worker"].endswith(suffix)
    # They are gone too (they would train on, holding their GPUs, until the cluster ends).
    wait_for(lambda: not ours & set(processes()), timeout=20)


def test_a_slot_whose_raylet_dies_stops_itself_and_its_worker(cluster, tmp_path):
    """No one can tell a node declared lost to stop (the driver's ray.kill may not reach
    it): the slot's actor sees its raylet go, as it is given another parent, and ends its
    optlab worker and itself. Both went on running, holding their GPUs, until the cluster
    shut down."""
    import ray

    from optlab.execution.executors.ray_cluster import RemoteSlot

    second = cluster.add_node(num_cpus=1, resources={"second": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        actor = RemoteSlot.options(resources={"second": 1}, num_cpus=0).remote(
            "slot", 1, False, str(tmp_path), [], "lost", False
        )
        assert "error" not in ray.get(actor.start.remote(), timeout=120)
        raylet = second.all_processes["raylet"][0].process.pid
        ours = optlab_processes_below(raylet)
        assert len(ours) == 2  # the actor and its optlab worker
        os.kill(raylet, signal.SIGKILL)
        wait_for(lambda: not ours & set(processes()), timeout=20)
    finally:
        ray.shutdown()


@pytest.mark.parametrize("first,then", [("ray", "local"), ("local", "ray")])
def test_ctrl_c_leaves_runs_that_the_other_executor_finishes(
    tmp_path, reference, first, then, ray_head
):
    """Interrupted on one executor, finished on the other: the same run ids, store and
    checkpoints, and every row equal to the local executor's uninterrupted. Ray first: a
    Ray of optlab's own (no --address), checkpoints in a folder every node reaches. Ray
    second: a running cluster joined, its checkpoints and weights shipped to this machine."""
    study(tmp_path)
    scratch = set(Path("/tmp").glob("optlab-*/cpu-*"))
    # a folder every node reaches: the Ray executor writes there instead of shipping
    shared = ["--checkpoint-dir", str(tmp_path / "shared")] if first == "ray" else []
    on = {"ray": ["--executor", "ray"], "local": []}
    if then == "ray":
        on["ray"] += ["--address", ray_head]
    proc = start(["run", "long.toml", *on[first], "--workers", "2", *shared], tmp_path)
    wait_for(
        lambda: events_in_journals(tmp_path, "checkpoint") >= 2, timeout=120, every=0.02, proc=proc
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    before = statuses(tmp_path)
    assert "running" not in before.values() and "interrupted" in before.values()
    assert set(Path("/tmp").glob("optlab-*/cpu-*")) <= scratch, "the slots' scratch was left"
    finish = optlab("run", "long.toml", *on[then], "--workers", "2", *shared, cwd=tmp_path)
    assert finish.returncode == 0 and "Traceback" not in finish.stderr, finish.stderr
    assert results(tmp_path) == reference
    resumed = query(tmp_path, "select count(*) from runs where resumed_from >= 1")[0][0]
    assert resumed >= 1
    if first == "ray":
        weights = [Path(w) for (w,) in query(tmp_path, "select weights_path from runs")]
        assert all(w.parent.parent == tmp_path / "shared" and w.is_file() for w in weights)
        assert not (tmp_path / "optlab.checkpoints").exists()
        return
    # Shipped to this machine: the final weights beside the store, the logs, the journals.
    for run_id, weights, log, worker in query(
        tmp_path, "select run_id, weights_path, log_path, worker from runs"
    ):
        # recorded relative to the store's folders (optlab.checkpoints/, optlab.runs/)
        assert (weights, log) == (f"checkpoints/{run_id}/final.pt", f"runs/{run_id}/log.txt")
        assert (tmp_path / "optlab.checkpoints" / run_id / "final.pt").stat().st_size > 0
        assert f"run {run_id}" in (tmp_path / "optlab.runs" / run_id / "log.txt").read_text()
        assert worker.startswith("cpu/") and "@" in worker
    assert all(e[-1]["type"] == "finished" for e in journals(tmp_path).values())
    again = optlab("run", "long.toml", *on["ray"], cwd=tmp_path, check=True)
    assert "Nothing to run" in again.stdout


CIFAR_STUDY = """
name = "c"
seeds = [0, 1, 2]
[base]
epochs = 2
dataset = { name = "cifar10" }
model = { name = "mlp", hidden = [8] }
optimizer = { name = "sgd", lr = 0.01 }
batch_schedule = { name = "constant", batch_size = 20 }
"""


def test_a_node_that_cannot_prepare_the_data_is_named_once_and_gets_no_runs(tmp_path, cluster):
    from tests import fake_data

    fake_data.make_cifar10(tmp_path / "data")
    cluster.add_node(num_cpus=1, env_vars={"OPTLAB_DATA": "/dev/null/data"})
    cluster.wait_for_nodes()
    write_study(tmp_path, text=CIFAR_STUDY, name="c.toml")
    proc = optlab(
        "run",
        "c.toml",
        "--executor",
        "ray",
        "--address",
        cluster.address,
        "--workers",
        "2",
        cwd=tmp_path,
        check=True,
    )
    assert proc.stdout.count("gets no runs: cannot prepare the datasets in /dev/null/data") == 1, (
        proc.stdout
    )
    assert statuses(tmp_path) and set(statuses(tmp_path).values()) == {"done"}
    assert len({w for (w,) in query(tmp_path, "select worker from runs")}) == 1


def test_when_no_node_can_prepare_the_data_the_runs_wait_and_the_exit_says_so(
    tmp_path, monkeypatch
):
    from tests import fake_data

    monkeypatch.delenv("OPTLAB_DATA", raising=False)
    fake_data.make_cifar10(tmp_path / "data")  # here, on the driver, but on no node
    write_study(tmp_path, text=CIFAR_STUDY, name="c.toml")
    cluster = new_cluster(num_cpus=1, env_vars={"OPTLAB_DATA": "/dev/null/data"})
    try:
        proc = optlab(
            "run", "c.toml", "--executor", "ray", "--address", cluster.address, cwd=tmp_path
        )
    finally:
        cluster.shutdown()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gets no runs" in proc.stdout and "3 run(s) not started" in proc.stdout
    assert set(statuses(tmp_path).values()) == {"pending"}


def test_bad_cluster_options_are_one_line(tmp_path, ray_head):
    study(tmp_path)
    for args, message in [
        (
            ["--address", "127.0.0.1:1"],
            "Error: --address 127.0.0.1:1: no Ray head answers there (Connection refused)",
        ),
        (["--address", "nohost"], "Error: --address 'nohost': give auto or HOST:PORT"),
        (
            ["--address", ray_head, "--gpus", "0-3"],
            "Error: --gpus '0-3': GPU 0 is not present (GPUs here: none) in the Ray cluster; "
            "--gpus none runs on the CPU",
        ),
    ]:
        proc = optlab("run", "long.toml", "--executor", "ray", *args, cwd=tmp_path)
        assert proc.returncode != 0
        assert proc.stderr.splitlines()[-1].startswith(message), proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "optlab.duckdb").exists()
    proc = optlab("run", "long.toml", "--address", "auto", cwd=tmp_path)
    assert proc.stderr == "Error: --address: not an option of --executor local\n"


def test_without_ray_the_executor_names_the_extra(tmp_path, monkeypatch, cli):
    import sys

    study(tmp_path)
    for name in [
        m
        for m in sys.modules
        if m == "ray" or m.startswith(("ray.", "optlab.execution.executors.ray_"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    result = cli("run", "long.toml", "--executor", "ray")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --executor ray needs ray, which is not installed: pip install 'optlab[ray]'\n"
    )
    assert not (tmp_path / "optlab.duckdb").exists()
