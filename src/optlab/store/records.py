"""The study records beside the journals (``optlab.runs/studies/NAME.json``): the study as
registered, its source, blocks, axes and every run's config. With the journals they are what
`optlab rebuild` makes a store from. A study run in parts keeps the union of its runs here,
as the store does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optlab.store.core import studies_record_dir, write_json_atomic


def save_study_record(
    store: Path, study: Any, plans: list[Any], carried: set[str] | None = None
) -> None:
    """The study as registered (its source, blocks, axes and every run's config), beside the
    journals: with them, `optlab rebuild` makes the store again if it is lost or damaged.

    Each distinct config is written once, in ``configs``, and a run names its own by index
    (``cell``): the seeds of a cell share one (a record of 100,000 runs in 2,500 cells is
    17 MB instead of 92). Records that give each run its ``config`` are read too."""
    configs: list[dict[str, Any]] = []
    index: dict[int, int] = {}

    def cell(config: dict[str, Any]) -> int:
        i = index.get(id(config))
        if i is None:
            i = index[id(config)] = len(configs)
            configs.append(config)
        return i

    blocks = [
        {
            "name": p.name,
            "axes": p.axes,
            "seeds": p.seeds,
            "runs": [
                {
                    "run_id": r.run_id,
                    "seed": r.seed,
                    "position": r.position,
                    "axes": r.axes,
                    "cell": cell(r.config),
                }
                for r in p.runs
            ],
        }
        for p in plans
    ]
    record = {
        "study": study.name,
        "file": study.file,
        "description": study.description,
        "source": study.source,
        "configs": configs,
        "blocks": blocks,
    }
    folder = studies_record_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study.name}.json"
    old = read_record(path) if carried else None
    write_json_atomic(path, union_records(record, old, carried))


def read_record(path: Path) -> dict[str, Any] | None:
    """A study record, or None when there is none (or it cannot be read: it is replaced)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def union_records(
    new: dict[str, Any], old: dict[str, Any] | None, only: set[str] | None = None
) -> dict[str, Any]:
    """``new`` with the runs of ``old`` it lacks (those in ``only``, if given), when both come
    from the same file text (the study is the union of what was run under its name); else
    ``new`` alone."""
    if not old or old.get("source") != new.get("source"):
        return new
    have = {r["run_id"] for b in new["blocks"] for r in b["runs"]}
    if only is not None:
        have |= {r["run_id"] for b in old.get("blocks", []) for r in b["runs"]} - only
    configs = list(new.get("configs") or [])
    blocks = {b["name"]: b for b in new["blocks"]}
    moved: dict[int, int] = {}  # old cell index -> new
    for block in old.get("blocks", []):
        extra = [r for r in block.get("runs", []) if r["run_id"] not in have]
        if not extra:
            continue
        target = blocks.get(block["name"])
        if target is None:
            target = blocks[block["name"]] = {**block, "runs": []}
        for run in extra:
            run = dict(run)
            if "cell" in run:
                cell = run["cell"]
                if cell not in moved:
                    moved[cell] = len(configs)
                    configs.append(old["configs"][cell])
                run["cell"] = moved[cell]
            target["runs"].append(run)
            have.add(run["run_id"])
    return {**new, "configs": configs, "blocks": list(blocks.values())}


def record_block(con: Any, store: Path, study: str, block: str, axes: dict[str, Any]) -> None:
    """Write ``block`` of ``study``'s record as the store now has it (its members, with
    their configs): for the blocks a running study adds to itself (``NAME/final``), which
    the record written when the study was registered could not hold. Without this, a
    `rebuild` would leave them out."""
    path = studies_record_dir(store) / f"{study}.json"
    record = read_record(path)
    if record is None:
        return
    rows = con.execute(
        "select m.run_id, r.seed, m.position, m.axes, r.config from memberships m "
        "join run_state r using (run_id) where m.study = ? and m.block = ? "
        "order by m.position",
        [study, block],
    ).fetchall()
    configs = list(record.get("configs") or [])
    runs = []
    for run_id, seed, position, run_axes, config in rows:
        configs.append(json.loads(config))
        runs.append(
            {
                "run_id": run_id,
                "seed": seed,
                "position": position,
                "axes": json.loads(run_axes or "{}"),
                "cell": len(configs) - 1,
            }
        )
    entry = {"name": block, "axes": axes, "seeds": sorted({r["seed"] for r in runs}), "runs": runs}
    blocks = [b for b in record.get("blocks", []) if b.get("name") != block]
    write_json_atomic(path, _compact({**record, "configs": configs, "blocks": [*blocks, entry]}))


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    """The record with only the configs its runs name (a block written again leaves its
    earlier configs unnamed)."""
    old, configs, moved = record.get("configs") or [], [], {}
    blocks = []
    for block in record.get("blocks", []):
        runs = []
        for run in block.get("runs", []):
            if "cell" in run:
                if run["cell"] not in moved:
                    moved[run["cell"]] = len(configs)
                    configs.append(old[run["cell"]])
                run = {**run, "cell": moved[run["cell"]]}
            runs.append(run)
        blocks.append({**block, "runs": runs})
    return {**record, "configs": configs, "blocks": blocks}
