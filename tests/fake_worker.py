"""A scripted stand-in for `python -m optlab.training.worker`: the same protocol on stdin/stdout,
no torch, no training. What it does for a run comes from OPTLAB_FAKE_SCRIPT, a JSON object
seed -> actions ("epoch", "crash", "hang", "fail", "broken", "await_deadline"; a run
with no script does 3 epochs):

    {"1": ["epoch", "crash"]}

Each event goes to the run's journal, then to stdout, as the real worker does."""

from __future__ import annotations

import json
import os
import sys
import time

from optlab.events import EPOCH_FIELDS  # no torch


def run(task: dict, script, send) -> None:
    run_id = task["run_id"]
    os.makedirs(os.path.dirname(task["journal"]), exist_ok=True)
    with open(task["journal"], "w") as journal:

        def emit(event: dict) -> None:
            event = {**event, "run_id": run_id, "time": time.time()}
            journal.write(json.dumps(event) + "\n")
            journal.flush()
            send(event)

        emit(
            {
                "type": "started",
                "config": task["config"],
                "seed": task["seed"],
                "provenance": {"worker": os.environ.get("OPTLAB_WORKER"), "pid": os.getpid()},
            }
        )
        epoch = 0
        actions = script(str(task["seed"]), ["epoch"] * 3) + ["finish"]
        deadline = task.get("deadline")  # as the engine: held at an epoch's end past it
        for n, action in enumerate(actions):
            if action == "epoch":
                epoch += 1
                emit({"type": "epoch", **dict.fromkeys(EPOCH_FIELDS, float(epoch)), "epoch": epoch})
                if deadline is not None and time.time() >= deadline and "epoch" in actions[n + 1 :]:
                    emit({"type": "held", "epoch": epoch, "elapsed": 0.0})
                    break
            elif action == "await_deadline":  # train on until the session's time is up
                while deadline is not None and time.time() < deadline:
                    time.sleep(0.01)
            elif action == "crash":
                os._exit(3)
            elif action == "hang":
                time.sleep(3600)
            elif action == "broken":  # as the worker reports a plugin build that raised
                table = task["config"]["optimizer"]
                emit(
                    {
                        "type": "failed",
                        "broken": {"kind": "optimizer", "table": table},
                        "error": f"PluginBuildError: optimizer plugin {table['name']!r} "
                        "failed to build: ValueError: scripted",
                    }
                )
                break
            elif action == "fail":
                emit({"type": "failed", "error": "ValueError: scripted"})
                break
            elif action == "finish":
                emit({"type": "finished", "elapsed": 0.0, "weights": None})
    send({"type": "idle", "run_id": run_id})


def main() -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    script = json.loads(os.environ.get("OPTLAB_FAKE_SCRIPT", "{}"))

    def send(event: dict) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    send({"type": "ready", "run_id": None, "pid": os.getpid()})
    for line in sys.stdin:
        if line.strip():
            run(json.loads(line), script.get, send)


if __name__ == "__main__":
    main()
