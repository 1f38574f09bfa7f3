"""Expansion: a Study -> the list of RunSpec it stands for (stage 2 of the data flow).

Each block starts from the study's base, applies its own ``set``, then expands its axes:
``grid`` axes as a cartesian product, each ``zip`` table's axes varied together, the
``search`` table's drawn points (:mod:`optlab.search`) as one more group, seeds
outermost. ``include``/``exclude`` filters keep or drop combinations; run-level ``--set``
overrides apply last. Every plugin table is validated by its plugin's params model and
resolved (defaults filled in), and the run_id is a hash of the resolved config and seed.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from optlab import paths, plugin_files
from optlab.errors import ConfigError
from optlab.plugin import study_folder
from optlab.registry import Registry, default_registry
from optlab.study import (
    NOT_IDENTITY,
    PLUGIN_SLOTS,
    PROBES_KEY,
    RUN_DEFAULTS,
    RUN_KEYS,
    Block,
    RunSettings,
    Study,
    describe_validation_error,
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
    canonical = f'{{"config":{identity},"seed":{json.dumps(seed)}}}'
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
    with study_folder(study.folder):
        for index, block in enumerate(study.blocks):
            plans.append(_expand_block(study, block, index, registry, seen))
    return plans


def all_runs(plans: list[BlockPlan]) -> list[RunSpec]:
    return [run for plan in plans for run in plan.runs]


# Optimizers that train on one set of weights and are evaluated on another (train()/eval()).
TWO_WEIGHTS = {"schedulefree_adamw"}


class _Expander:
    def __init__(self, study: Study, block: Block, index: int, registry: Registry):
        self.study, self.block, self.registry = study, block, registry
        self.name = block.name or f"block{index + 1}"
        implicit = study.blocks == [Block(name="main")]  # a file without [[block]]
        self.where = "base" if implicit else f"block '{self.name}'"
        self.prefix = f"{study.file}: {self.where}"
        self._cache: dict[Any, Any] = {}  # see _once
        self._by_id: dict[tuple[str, int], Any] = {}
        self.shared: dict[int, tuple[Any]] = {}  # id -> (the base's table,), kept alive

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
        try:
            paths.assign(cfg, path, value)
        except KeyError:
            raise self.fail(
                key, f"{path.rsplit('.', 1)[0]} is a single value, not a table"
            ) from None

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
        from optlab import search

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
        for path, values in _axis_leaves(self.block.grid).items():
            self.check_values(f"grid.{path}", values)
            groups.append([{path: v} for v in values])
            axes[path] = values
        for i, table in enumerate(self.block.zip):
            leaves = _axis_leaves(table)
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
        from optlab import search

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

    # ---- one run -------------------------------------------------------------------------
    def resolve(self, cfg: dict[str, Any]) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        models: dict[str, Any] = {}
        for slot, kind in PLUGIN_SLOTS.items():
            table = cfg.get(slot)
            if not isinstance(table, dict) or not isinstance(table.get("name"), str):
                raise self.fail(
                    slot,
                    f"needs a table with a name, such as {slot} = "
                    f'{{ name = "..." }}; registered: '
                    f"{', '.join(self.registry.names(kind))}",
                )
            plugin, model, dumped = self.validated(kind, slot, table)
            resolved[slot] = {"name": table["name"], **dumped}
            models[slot] = (plugin, model, table["name"])
        settings = {k: v for k, v in cfg.items() if k not in PLUGIN_SLOTS and k != PROBES_KEY}
        resolved.update(self.settings(settings))
        if resolved.get("local_sgd") is None:
            resolved.pop("local_sgd", None)
        probes = self.resolve_probes(cfg.get(PROBES_KEY))
        if probes:  # absent when empty, so that run ids of runs without probes stay put
            resolved[PROBES_KEY] = [table for table, _ in probes]
        self.check(models, resolved["epochs"], probes, resolved.get("local_sgd"))
        return dict(sorted(resolved.items()))

    def settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The run settings validated and in JSON form (cached: most cells share them)."""

        def validate() -> dict[str, Any]:
            try:
                return RunSettings.model_validate(settings).model_dump(mode="json")
            except ValidationError as e:
                raise ConfigError(
                    f"{self.prefix}: {describe_validation_error(e, RunSettings)}"
                ) from None

        return self._once("settings", settings, validate)

    def validated(self, kind: str, key: str, table: dict[str, Any]) -> tuple[Any, Any, dict]:
        """:meth:`validate`, with the params in JSON form. Cached by the table's value: the
        cells of a grid share most of their tables, and validating one is most of the cost
        of a run's expansion. What it returns is shared, and read-only."""

        def validate() -> tuple[Any, Any, dict]:
            plugin, params = self.validate(kind, key, table)
            return plugin, params, params.model_dump(mode="json")

        return self._once(kind, table, validate)

    def _once(self, what: str, value: Any, compute: Any) -> Any:
        """``compute()``, remembered by ``what`` and ``value`` (only successes: an error
        names its key). A table the cell shares with the block's base (see _expand_block)
        is found by identity first: most of a cell's tables are, and never change."""
        shared = self.shared.get(id(value))
        if shared is not None and shared[0] is value and (what, id(value)) in self._by_id:
            return self._by_id[(what, id(value))]
        frozen = _frozen_text(value)
        if frozen is None:
            return compute()
        key = (what, frozen)
        if key not in self._cache:
            self._cache[key] = compute()
        if shared is not None and shared[0] is value:
            self._by_id[(what, id(value))] = self._cache[key]
        return self._cache[key]

    def validate(self, kind: str, key: str, table: dict[str, Any]) -> tuple[Any, Any]:
        """The plugin a table names and its validated params; errors name ``key``."""
        try:
            plugin = self.registry.get(kind, table["name"])
        except ConfigError as e:
            raise self.fail(f"{key}.name", str(e)) from None
        try:
            params = plugin.params.model_validate({k: v for k, v in table.items() if k != "name"})
            # What the worker will validate is the JSON form: it must pass there too.
            plugin.params.model_validate(params.model_dump(mode="json"))
        except ValidationError as e:
            raise ConfigError(
                f"{self.prefix}: "
                + describe_validation_error(e, plugin.params, prefix=f"{key}.").replace(
                    "unknown key; allowed:", f"unknown key; {table['name']} takes:"
                )
            ) from None
        return plugin, params

    def resolve_probes(self, tables: Any) -> list[tuple[dict[str, Any], Any]]:
        if tables is None:
            return []
        example = '[{ name = "grad_norm", every = 1 }]'
        if not isinstance(tables, list):
            raise self.fail(
                PROBES_KEY, f"needs a list of probe tables, such as {example} (given {tables!r})"
            )
        out = []
        for i, table in enumerate(tables):
            key = f"{PROBES_KEY}[{i}]"
            if not isinstance(table, dict) or not isinstance(table.get("name"), str):
                raise self.fail(
                    key,
                    f"needs a table with a name, such as {example}; "
                    f"registered: {', '.join(self.registry.names('probe'))}",
                )
            plugin, params, dumped = self.validated("probe", key, table)
            out.append(({"name": table["name"], **dumped}, (plugin, params)))
        return out

    def check(
        self,
        models: dict[str, Any],
        epochs: int,
        probes: list[tuple[dict[str, Any], Any]],
        local: dict[str, Any] | None = None,
    ) -> None:
        """Cross-checks that need more than one table (a batch past the training set, a
        probe scheduled after the last epoch)."""
        plugin, params, _ = models["dataset"]
        facts: dict[str, Any] = {"epochs": epochs, "train_size": None}
        if plugin.info is not None:
            try:
                facts.update(plugin.info(params))
            except ValueError as e:
                raise self.fail("dataset", str(e)) from None
        optimizer = models["optimizer"][1]
        two_weights = {models["optimizer"][2], getattr(optimizer, "base", None)} & TWO_WEIGHTS
        if local and two_weights:
            raise self.fail(
                "local_sgd",
                f"not with {', '.join(sorted(two_weights))}: its workers' evaluation weights "
                "(x) and iterates (z) would not be averaged, only the weights it trains on; "
                "use another optimizer, or no local_sgd",
            )
        if local and facts["train_size"] is not None:
            # Local SGD: each worker's batches come from its own shard.
            if facts["train_size"] < local["workers"]:
                raise self.fail(
                    "local_sgd.workers",
                    f"{local['workers']} workers need at "
                    f"least one training example each (there are "
                    f"{facts['train_size']})",
                )
            facts["train_size"] //= local["workers"]
        for slot, (plugin, params, _) in models.items():
            if plugin.check is None:
                continue
            try:
                plugin.check(params, **facts)
            except ValueError as e:
                where = f" of a worker's shard ({local['workers']} workers)" if local else ""
                raise self.fail(slot, f"{e}{where}") from None
        facts["optimizer"] = models["optimizer"][2]
        for i, (table, (plugin, params)) in enumerate(probes):
            if plugin.check is None:
                continue
            try:
                plugin.check(params, **facts)
            except ValueError as e:
                raise self.fail(f"{PROBES_KEY}[{i}] ({table['name']})", str(e)) from None


def _settings_table(key: str) -> Any:
    """The model of a run setting that is a table (checkpoint, divergence, local_sgd)."""
    from pydantic import BaseModel

    field = RunSettings.model_fields.get(key)
    for t in (field.annotation, *getattr(field.annotation, "__args__", ())) if field else ():
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _axis_leaves(table: dict[str, Any]) -> dict[str, Any]:
    """Axis tables may be written with quoted dotted keys or as nested tables."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and not _is_plugin_table(value):
            out.update({f"{key}.{k}": v for k, v in _axis_leaves(value).items()})
        else:
            out[key] = value
    return out


_KEY_ENCODER = json.JSONEncoder(sort_keys=True)


def _frozen_text(value: Any) -> str | None:
    """A stand-in for a TOML value that tells apart what validation could (1, 1.0 and true;
    key order aside), by the C JSON encoder; None for what it cannot encode."""
    try:
        return _KEY_ENCODER.encode(value)
    except (TypeError, ValueError):
        return None


def _plain_copy(value: Any) -> Any:
    """A copy of a config (tables, arrays and immutable scalars, as TOML gives them)."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    return value


def _is_plugin_table(value: dict[str, Any]) -> bool:
    return "name" in value and not isinstance(value["name"], list)


def _matches(cfg: dict[str, Any], condition: dict[str, Any]) -> bool:
    for path, wanted in _axis_leaves(condition).items():
        try:
            have = paths.get(cfg, path)
        except (KeyError, TypeError):
            return False
        options = wanted if isinstance(wanted, list) else [wanted]
        if have not in options:
            return False
    return True


def _name_first(combo: dict[str, Any]) -> list[tuple[str, Any]]:
    # A plugin's name must land before its parameters: changing it clears the table.
    return sorted(
        combo.items(), key=lambda kv: not (kv[0].endswith(".name") or kv[0] in PLUGIN_SLOTS)
    )


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
            for path in _axis_leaves(cond):
                ex.check_path(f"{kind}.{path}", path, base, axes)
    for path in study.overrides:
        ex.check_path(f"--set {path}", path, base, axes)
    seeds = seed_list(block.seeds) if block.seeds is not None else study.seeds
    # A cell's config does not depend on its seed: each is resolved once, and its seeds'
    # runs share it (a RunSpec is read-only).
    cells: list[tuple[dict[str, Any], dict[str, Any], tuple, str]] = []
    overridden = {p.split(".")[0] for p in study.overrides}
    ex.shared = {id(v): (v,) for v in base.values() if isinstance(v, dict | list)}
    for parts in itertools.product(*groups) if seeds else ():
        combo = {k: v for part in parts for k, v in part.items()}
        # The base is copied where the cell's axes and the --set keys change it; the rest
        # is shared with it (assign replaces or copies what it sets, and resolve only reads).
        cfg = dict(base)
        for top in overridden | {p.split(".")[0] for p in combo}:
            if top in cfg:
                cfg[top] = _plain_copy(cfg[top])
        for path, value in _name_first(combo):
            ex.assign(cfg, path, value, f"axis {path}")
        if block.include and not any(_matches(cfg, c) for c in block.include):
            continue
        if any(_matches(cfg, c) for c in block.exclude):
            continue
        for path, value in _name_first(study.overrides):
            ex.assign(cfg, path, value, f"--set {path}")
        config = ex.resolve(cfg)
        files = plugin_files.used_by(config, plugin_files.active())
        if files:  # the files' hashes are part of what the run is
            config[plugin_files.CONFIG_KEY] = [f.label() for f in files]
        cells.append((combo, config, tuple(files), identity_json(config)))
    runs: list[RunSpec] = []
    for seed in seeds:
        for combo, config, files, identity in cells:
            run_id = _run_id(identity, seed)
            if run_id in seen:
                continue
            seen.add(run_id)
            runs.append(
                RunSpec(
                    run_id,
                    study.name,
                    ex.name,
                    seed,
                    config,
                    combo,
                    len(seen) - 1,
                    study.folder,
                    files,
                )
            )
    if block.search:
        from optlab import search

        return BlockPlan(
            ex.name, axes, seeds, runs, search.describe(block.search), ex.search_points()
        )
    return BlockPlan(ex.name, axes, seeds, runs)


def file_matrix(
    path: Any, sets: list[str], plans: list[BlockPlan], max_runs: int | None = None
) -> set[str] | None:
    """The run ids of the study file as written, without ``--set``: what `optlab status`
    counts a study's progress against, and what a part run with ``--set`` adds to. None
    when the whole file cannot be expanded (more runs than ``max_runs``, say)."""
    if not sets:
        return {r.run_id for r in all_runs(plans)}
    from optlab.errors import OptlabError
    from optlab.study import load_study

    try:
        return {r.run_id for r in all_runs(expand(load_study(path), max_runs=max_runs))}
    except OptlabError:
        return None
