"""Expansion: a Study -> the list of RunSpec it stands for (stage 2 of the data flow).

Each block starts from the study's base, applies its own ``set``, then expands its axes:
``grid`` axes as a cartesian product, each ``zip`` table's axes varied together, the
``search`` table's drawn points (:mod:`optlab.study.search`) as one more group, seeds
outermost. ``include``/``exclude`` filters keep or drop combinations; run-level ``--set``
overrides apply last. Every plugin table is validated by its plugin's params model and
resolved (defaults filled in; :mod:`optlab.study.resolve`, once per distinct table), and the
run_id is a hash of the resolved config and seed.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from optlab.errors import ConfigError, OptlabError
from optlab.plugins.plugin import study_folder
from optlab.plugins.registry import Registry, default_registry
from optlab.study import paths, plugin_files, resolve, search
from optlab.study.schema import (
    NOT_IDENTITY,
    PLUGIN_SLOTS,
    PROBES_KEY,
    RUN_DEFAULTS,
    RUN_KEYS,
    Block,
    EarlyStop,
    FinalRuns,
    RunSettings,
    Study,
    load_study,
    seed_list,
)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    study: str
    block: str
    seed: int
    config: dict[str, Any] = field(hash=False)
    axes: dict[str, Any] = field(hash=False)  # the varied paths and their values here
    position: int = 0
    folder: str = field(default="", hash=False, compare=False)  # the study file's
    files: tuple = field(default=(), hash=False, compare=False)  # its FilePlugins

    def task(self) -> dict[str, Any]:
        """What a worker needs to train this run (with the text of its plugin files)."""
        task = {
            "run_id": self.run_id,
            "seed": self.seed,
            "config": self.config,
            "study_folder": self.folder,
        }
        if self.files:
            task["plugin_files"] = [f.entry() for f in self.files]
        return task


@dataclass
class BlockPlan:
    name: str
    axes: dict[str, list[Any]]  # path -> values, in file order
    seeds: list[int]
    runs: list[RunSpec]
    search: str = ""  # how its [block.search] points were drawn, when it has one
    points: list[dict[str, Any]] = field(default_factory=list)  # those points, in order
    early_stop: EarlyStop | None = None
    final: FinalRuns | None = None
    # The block's seeds in the study file as written, when this plan is a part of it (run
    # with ``--set seeds=...``): final runs take seeds after all of them, in every part.
    file_seeds: list[int] = field(default_factory=list)


def run_id_for(config: dict[str, Any], seed: int) -> str:
    """A hash of what the run computes: its resolved config (less how it is kept) and seed."""
    return _run_id(identity_json(config), seed)


def identity_json(config: dict[str, Any]) -> str:
    """The canonical JSON of what in ``config`` makes a run what it is: the same for every
    seed of a cell, so a cell's seeds serialise it once."""
    identity = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))


def _run_id(identity: str, seed: int) -> str:
    # json.dumps({"config": ..., "seed": seed}, sort_keys=True, separators=(",", ":")),
    # written out: "config" sorts before "seed".
    written = str(seed) if type(seed) is int else json.dumps(seed)
    canonical = f'{{"config":{identity},"seed":{written}}}'
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


MAX_RUNS = 100_000  # a larger study is refused unless the user raises the limit


def max_runs_default() -> int:
    given = os.environ.get("OPTLAB_MAX_RUNS", "").strip()
    return int(given) if given.isdigit() else MAX_RUNS


def expand(
    study: Study, registry: Registry | None = None, max_runs: int | None = None
) -> list[BlockPlan]:
    """All blocks with their runs; a run already produced by an earlier block is kept there.
    A study that could expand to more than ``max_runs`` runs is refused before any is made."""
    registry = registry or default_registry()
    limit = max_runs if max_runs is not None else max_runs_default()
    bound = 0
    for index, block in enumerate(study.blocks):
        # Sizes only: a search of n = 10^12 points is refused here, not drawn.
        sizes = _Expander(study, block, index, registry).group_sizes()
        seeds = seed_list(block.seeds) if block.seeds is not None else study.seeds
        bound += math.prod(sizes) * len(seeds)
    if bound > limit:
        raise ConfigError(
            f"{study.file}: the study expands to up to {bound:,} runs, more than "
            f"the limit of {limit:,}; check its axes, or raise the limit with "
            "--max-runs (or OPTLAB_MAX_RUNS)"
        )
    seen: set[str] = set()
    plans = []
    with study_folder(study.folder), _collector_paused():
        for index, block in enumerate(study.blocks):
            plans.append(_expand_block(study, block, index, registry, seen))
    return plans


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused: expansion makes millions of small objects and no
    cycles, and each collection would walk all of them (a third of the time of a study of
    100,000 distinct cells). Refcounting frees them as ever."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def all_runs(plans: list[BlockPlan]) -> list[RunSpec]:
    return [run for plan in plans for run in plan.runs]


class _Expander:
    def __init__(self, study: Study, block: Block, index: int, registry: Registry):
        self.study, self.block, self.registry = study, block, registry
        self.name = block.name or f"block{index + 1}"
        implicit = study.blocks == [Block(name="main")]  # a file without [[block]]
        self.where = "base" if implicit else f"block '{self.name}'"
        self.prefix = f"{study.file}: {self.where}"

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.prefix}: {key}: {problem}")

    # ---- the block's starting config -------------------------------------------------
    def start_config(self) -> dict[str, Any]:
        cfg = copy.deepcopy(RUN_DEFAULTS)
        for key, value in self.study.base.items():
            self.assign(cfg, key, value, f"base.{key}")
        self.check_shape(cfg, "base")
        for key, value in self.block.set.items():
            self.check_path(f"set.{key}", key, cfg, {})
            self.assign(cfg, key, value, f"set.{key}")
        self.check_shape(cfg, "set")
        return cfg

    def assign(self, cfg: dict[str, Any], path: str, value: Any, key: str) -> None:
        resolve.assign(cfg, path, value, key, self.fail)

    def check_shape(self, cfg: dict[str, Any], where: str) -> None:
        """Plugin slots hold tables whose name is a string; probes is a list of tables."""
        for slot in PLUGIN_SLOTS:
            table = cfg.get(slot)
            if table is None:
                continue
            if not isinstance(table, dict):
                raise self.fail(
                    f"{where}.{slot}",
                    f'needs a table such as {slot} = {{ name = "..." }} (given {table!r})',
                )
            if "name" in table and not isinstance(table["name"], str):
                raise self.fail(
                    f"{where}.{slot}.name", f"a plugin name is a string (given {table['name']!r})"
                )

    # ---- axes --------------------------------------------------------------------------
    def group_sizes(self) -> list[int]:
        """How many values each axis group has, without drawing a search's points."""
        block = self.block
        if not block.search:
            return [len(g) for g in self.axis_groups()[0]]

        plain = Block(**{**block.model_dump(), "search": {}})
        sizes = [len(g) for g in _Expander(self.study, plain, 0, self.registry).axis_groups()[0]]
        try:
            _, n, _, _ = search.parse(block.search)
        except search.SearchError as e:
            raise self.fail(e.key, e.problem) from None
        return [*sizes, n]

    def axis_groups(self) -> tuple[list[list[dict[str, Any]]], dict[str, list[Any]]]:
        groups: list[list[dict[str, Any]]] = []
        axes: dict[str, list[Any]] = {}
        for path, values in axis_leaves(self.block.grid).items():
            self.check_values(f"grid.{path}", values)
            groups.append([{path: v} for v in values])
            axes[path] = values
        for i, table in enumerate(self.block.zip):
            leaves = axis_leaves(table)
            lengths = {p: len(v) if isinstance(v, list) else -1 for p, v in leaves.items()}
            for path, values in leaves.items():
                self.check_values(f"zip.{path}", values)
            if len(set(lengths.values())) > 1:
                sizes = ", ".join(f"{p} has {n}" for p, n in lengths.items())
                raise self.fail(f"zip[{i}]", f"axes varied together need equal lengths ({sizes})")
            n = next(iter(lengths.values()), 0)
            groups.append([{p: v[k] for p, v in leaves.items()} for k in range(n)])
            axes.update(leaves)
        if self.block.search:
            points = self.search_points()
            groups.append(points)
            for path in points[0]:
                seen: dict[str, Any] = {}
                for point in points:
                    seen.setdefault(json.dumps(point[path], sort_keys=True), point[path])
                axes[path] = list(seen.values())
        return groups, axes

    def search_points(self) -> list[dict[str, Any]]:

        try:
            return search.draw(self.block.search)
        except search.SearchError as e:
            raise self.fail(e.key, e.problem) from None

    def check_values(self, key: str, values: Any) -> None:
        if not isinstance(values, list):
            raise self.fail(key, f"an axis needs a list of values (given {values!r})")
        if not values:
            raise self.fail(key, "empty axis; give at least one value")

    def check_path(
        self, key: str, path: str, cfg: dict[str, Any], axes: dict[str, list[Any]]
    ) -> None:
        """An axis, filter or override path must name a key of the run config."""
        parts = path.split(".")
        head = parts[0]
        if head not in RUN_KEYS:
            raise self.fail(key, f"no such key {head!r}; a run config has: {', '.join(RUN_KEYS)}")
        if len(parts) == 1:
            return
        if head == PROBES_KEY:
            raise self.fail(key, "probes is a list of tables; give the whole list")
        if head not in PLUGIN_SLOTS:
            table = _settings_table(head)
            if table is None:
                raise self.fail(key, f"no such key; {head} is a single value")
            if len(parts) > 2 or parts[1] not in table.model_fields:
                raise self.fail(key, f"no such key; {head} takes: {', '.join(table.model_fields)}")
            return
        if len(parts) > 2 or parts[1] == "name":
            return
        names = self._possible_plugins(head, cfg, axes)
        kind = PLUGIN_SLOTS[head]
        fields: set[str] = set()
        for name in names:
            if name in self.registry.names(kind):
                fields |= set(self.registry.get(kind, name).params.model_fields)
        if fields and parts[1] not in fields:
            takes = ", ".join(sorted(fields)) or "no parameters"
            raise self.fail(key, f"no such key; {'/'.join(sorted(names))} takes: {takes}")

    def _possible_plugins(
        self, slot: str, cfg: dict[str, Any], axes: dict[str, list[Any]]
    ) -> set[str]:
        table = cfg.get(slot)
        names = [table.get("name")] if isinstance(table, dict) else []
        names += list(axes.get(f"{slot}.name", []))
        names += [v.get("name") for v in axes.get(slot, []) if isinstance(v, dict)]
        return {n for n in names if isinstance(n, str)}


def _settings_table(key: str) -> Any:
    """The model of a run setting that is a table (checkpoint, divergence, local_sgd)."""

    field = RunSettings.model_fields.get(key)
    for t in (field.annotation, *getattr(field.annotation, "__args__", ())) if field else ():
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def axis_leaves(table: dict[str, Any]) -> dict[str, Any]:
    """Axis tables may be written with quoted dotted keys or as nested tables."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and not _is_plugin_table(value):
            out.update({f"{key}.{k}": v for k, v in axis_leaves(value).items()})
        else:
            out[key] = value
    return out


def _is_plugin_table(value: dict[str, Any]) -> bool:
    return "name" in value and not isinstance(value["name"], list)


def _matches(cfg: dict[str, Any], condition: dict[str, Any]) -> bool:
    for path, wanted in axis_leaves(condition).items():
        try:
            have = paths.get(cfg, path)
        except (KeyError, TypeError):
            return False
        options = wanted if isinstance(wanted, list) else [wanted]
        if have not in options:
            return False
    return True


def _expand_block(
    study: Study, block: Block, index: int, registry: Registry, seen: set[str]
) -> BlockPlan:
    ex = _Expander(study, block, index, registry)
    base = ex.start_config()
    groups, axes = ex.axis_groups()
    for path in axes:
        ex.check_path(f"axis {path}", path, base, axes)
    for kind, conditions in (("include", block.include), ("exclude", block.exclude)):
        for cond in conditions:
            for path in axis_leaves(cond):
                ex.check_path(f"{kind}.{path}", path, base, axes)
    for path in study.overrides:
        ex.check_path(f"--set {path}", path, base, axes)
    seeds = seed_list(block.seeds) if block.seeds is not None else study.seeds
    # A cell's config does not depend on its seed: each is resolved once, and its seeds'
    # runs share it (a RunSpec is read-only).
    cells: list[tuple[dict[str, Any], resolve.Cell]] = []
    resolver = resolve.Resolver(ex.prefix, registry, base, study.overrides, plugin_files.active())
    for parts in itertools.product(*groups) if seeds else ():
        combo = {k: v for part in parts for k, v in part.items()}
        if (block.include or block.exclude) and not _kept(ex, block, base, combo):
            continue
        cells.append((combo, resolver.cell(combo)))
    runs: list[RunSpec] = []
    for seed in seeds:
        for combo, cell in cells:
            run_id = _run_id(cell.identity, seed)
            if run_id in seen:
                continue
            seen.add(run_id)
            runs.append(
                RunSpec(
                    run_id,
                    study.name,
                    ex.name,
                    seed,
                    cell.config,
                    combo,
                    len(seen) - 1,
                    study.folder,
                    cell.files,
                )
            )
    _check_selection(ex, block, base, axes, runs)
    plan = BlockPlan(ex.name, axes, seeds, runs, early_stop=block.early_stop, final=block.final)
    if block.search:
        plan.search, plan.points = search.describe(block.search), ex.search_points()
    return plan


def group_paths(paths_given: list[str]) -> list[str]:
    """``group_by`` paths as config paths: a plugin slot alone means its plugin's name."""
    return [f"{p}.name" if p in PLUGIN_SLOTS else p for p in paths_given]


def _check_selection(
    ex: _Expander, block: Block, base: dict[str, Any], axes: dict[str, list[Any]], runs: list
) -> None:
    """``early_stop`` and ``final`` read a metric the runs have, grouped by paths they have."""
    for key, table in (("early_stop", block.early_stop), ("final", block.final)):
        if table is None:
            continue
        for path in group_paths(table.group_by or []):
            ex.check_path(f"{key}.group_by", path, base, axes)
        metric = table.metric if key == "early_stop" else table.select
        if not metric.startswith("val_"):
            continue
        for run in runs:
            if run.config["dataset"].get("val_fraction", 1) == 0:
                raise ex.fail(
                    f"{key}.{'metric' if key == 'early_stop' else 'select'}",
                    f"{metric} needs a validation split, and dataset "
                    f"{run.config['dataset']['name']!r} holds none out: set "
                    "dataset.val_fraction (such as 0.1)",
                )


def _kept(ex: _Expander, block: Block, base: dict[str, Any], combo: dict[str, Any]) -> bool:
    """Whether the block's include and exclude filters keep a cell (read before --set)."""
    cfg = dict(base)
    for top in {p.split(".")[0] for p in combo}:
        if top in cfg:
            cfg[top] = resolve.plain_copy(cfg[top])
    for path, value in resolve.name_first(combo):
        ex.assign(cfg, path, value, f"axis {path}")
    if block.include and not any(_matches(cfg, c) for c in block.include):
        return False
    return not any(_matches(cfg, c) for c in block.exclude)


def file_matrix(
    path: Any, sets: list[str], plans: list[BlockPlan], max_runs: int | None = None
) -> set[str] | None:
    """The run ids of the study file as written, without ``--set``: what `optlab status`
    counts a study's progress against, and what a part run with ``--set`` adds to. None
    when the whole file cannot be expanded (more runs than ``max_runs``, say). Each of
    ``plans`` learns its block's seeds in the file (``file_seeds``)."""
    if not sets:
        return {r.run_id for r in all_runs(plans)}

    try:
        whole = expand(load_study(path), max_runs=max_runs)
    except OptlabError:
        return None
    seeds = {p.name: p.seeds for p in whole}
    for plan in plans:  # a part's final runs take seeds after the whole file's
        plan.file_seeds = seeds.get(plan.name, [])
    return {r.run_id for r in all_runs(whole)}
