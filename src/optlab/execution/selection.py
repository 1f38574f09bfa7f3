"""A part of a study's run matrix, chosen on the command line without editing the file:
``--block NAME`` (repeatable), ``--only RUN_ID`` (an id or a unique prefix, repeatable) and
``--where CONDITION`` (one SQL condition over the matrix's columns, named as in the store's
``runs`` view: ``seed``, ``block``, ``optimizer_lr`` or ``lr``, ...). `optlab show` and `optlab
run` take the same options, so what a part holds is seen before it runs. A part run into a
store adds to what was run of the same file before (see ``store.register_study``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from optlab.errors import OptlabError, UsageError
from optlab.store.core import ALIASES, config_columns
from optlab.store.query import check_reads_only, one_line
from optlab.study.expand import BlockPlan, all_runs
from optlab.study.steps import start_lr

MIN_PREFIX = 4


@dataclass
class Selection:
    blocks: list[str] = field(default_factory=list)
    only: list[str] = field(default_factory=list)
    where: str | None = None

    def __bool__(self) -> bool:
        return bool(self.blocks or self.only or self.where is not None)

    def describe(self) -> str:
        parts = [f"--block {b}" for b in self.blocks] + [f"--only {o}" for o in self.only]
        if self.where is not None:
            parts.append(f"--where {self.where!r}")
        return " ".join(parts)


def select(plans: list[BlockPlan], chosen: Selection) -> list[BlockPlan]:
    """The plans with only the chosen runs (blocks left with none are dropped); one line
    for a block, id or condition that matches nothing or cannot be read."""
    if not chosen:
        return plans
    names = [p.name for p in plans]
    for block in chosen.blocks:
        if block not in names:
            raise UsageError(f"--block {block!r}: no such block; the study's: {', '.join(names)}")
    keep = {r.run_id for r in all_runs(plans)}
    if chosen.blocks:
        keep &= {r.run_id for p in plans if p.name in chosen.blocks for r in p.runs}
    if chosen.only:
        keep &= _by_id(plans, chosen.only)
    if chosen.where is not None:
        keep &= _by_condition(plans, chosen.where)
    parts = [dataclasses.replace(p, runs=[r for r in p.runs if r.run_id in keep]) for p in plans]
    parts = [p for p in parts if p.runs]
    if not parts:
        raise UsageError(f"{chosen.describe()}: no run of the study matches")
    return parts


def _by_id(plans: list[BlockPlan], given: list[str]) -> set[str]:
    ids = sorted({r.run_id for r in all_runs(plans)})
    found = set()
    for text in given:
        key = text.strip().lower()
        if len(key) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in key):
            raise UsageError(
                f"--only {text!r}: give a run id (12 hex digits) or at least its first {MIN_PREFIX}"
            )
        matches = [r for r in ids if r.startswith(key)]
        if not matches:
            raise UsageError(f"--only {text!r}: no run of the study has that id")
        if len(matches) > 1:
            raise UsageError(
                f"--only {text!r}: matches {len(matches)} runs ({', '.join(matches[:3])}...); "
                "give more of it"
            )
        found.add(matches[0])
    return found


def _by_condition(plans: list[BlockPlan], condition: str) -> set[str]:
    """The runs for which ``condition`` holds, evaluated by DuckDB over a table of the matrix
    (in memory; it reads and writes nothing else)."""

    columns, rows = matrix_table(plans)
    sql = f"select run_id from matrix where ({condition}\n)"
    con = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        data = _arrays(columns, rows)
        con.register("matrix_rows", data)
        aliases = "".join(
            f', "{source}" as {alias}'
            for alias, source in ALIASES.items()
            if source in columns and alias not in columns and alias != "lr"
        )
        con.execute(f"create table matrix as select *{aliases} from matrix_rows")
        try:
            check_reads_only(sql)
            if len(duckdb.extract_statements(sql)) != 1:
                raise UsageError("not one condition")
            return {r for (r,) in con.execute(sql).fetchall()}
        except (OptlabError, duckdb.Error) as e:
            fixed = ("run_id", "block", "seed", "lr")
            varied = [
                c for c in columns if c not in fixed and len({str(r.get(c)) for r in rows}) > 1
            ]
            shown = ", ".join(["block", "seed", *varied])
            raise UsageError(
                f"--where {condition!r}: give one SQL condition over the study's columns "
                f"(those that vary: {shown}; and every config value, as in the runs view): "
                f"{one_line(str(e)).removeprefix('SQL: ')}"
            ) from None
    finally:
        con.close()


def matrix_table(plans: list[BlockPlan]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row a run: its id, block and seed and every config value, named as the store
    names them."""
    flat: dict[int, dict[str, Any]] = {}
    rows = []
    for plan in plans:
        for run in plan.runs:
            if id(run.config) not in flat:  # the seeds of a cell share its config
                flat[id(run.config)] = config_columns(run.config)
            rows.append(
                {
                    "run_id": run.run_id,
                    "block": plan.name,
                    "seed": run.seed,
                    **flat[id(run.config)],
                    "lr": start_lr(run.config),  # as the runs view has it
                }
            )
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return columns, rows


def _arrays(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Column arrays of one type each: whole numbers, numbers, booleans, else text."""

    out = {}
    for c in columns:
        values = [row.get(c) for row in rows]
        present = [v for v in values if v is not None]
        if all(isinstance(v, bool) for v in present):
            kind: Any = bool
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            kind = int
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            kind = float
        else:
            kind = str
        out[c] = np.array([None if v is None else kind(v) for v in values], dtype=object)
    return out
