"""Resolving the cells of a block: a cell's axis values -> its run config and identity.

A cell's config is the block's starting config with the cell's axis values and the
``--set`` keys assigned, each plugin table validated by its plugin's params model (defaults
filled in) and the run settings by :class:`~optlab.study.schema.RunSettings`.

It is put together from parts, one per plugin slot, one for the run settings and one for
the probes. What a part comes out as depends only on the axis values that fall in it (the
starting config and the ``--set`` keys are the block's), so each part is resolved once per
distinct set of those values: a grid of 100 x 100 x 10 optimizer values validates 100,000
optimizer tables, and its dataset, model and settings once each. The cross-checks that
need more than one table run once per distinct set of the parts they read. Each part also
keeps the JSON text of its keys, so that a cell's identity (what its run id hashes) is
joined from them rather than serialised whole.

Imports only the study, the registry and the plugins from files (all below it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from optlab.errors import ConfigError
from optlab.plugins.registry import Registry
from optlab.study import paths, plugin_files
from optlab.study.schema import (
    NOT_IDENTITY,
    PLUGIN_SLOTS,
    PROBES_KEY,
    RunSettings,
    describe_validation_error,
)

# Optimizers that train on one set of weights and are evaluated on another (train()/eval()).
TWO_WEIGHTS = {"schedulefree_adamw"}
SETTINGS = "settings"  # the part that holds the run settings (every other top-level key)
PARTS = (*PLUGIN_SLOTS, SETTINGS, PROBES_KEY)  # in the order they are resolved


def part_of(path: str) -> str:
    """Which part a config path falls in."""
    top = path.partition(".")[0]
    return top if top in PLUGIN_SLOTS or top == PROBES_KEY else SETTINGS


@dataclass
class Part:
    name: str  # a plugin slot, SETTINGS or PROBES_KEY
    config: dict[str, Any]  # top-level key -> resolved value, shared by the cells that use it
    pieces: list[tuple[str, str]]  # (key, '"key":JSON') for the keys that make the identity
    models: Any = None  # a slot's (plugin, params, name); the probes' [(table, (plugin, params))]
    check_key: Any = None  # what the cross-checks read of it


@dataclass
class _Layout:
    number: int
    touched: list[tuple[str, list[str]]]  # the parts the axes touch, with their paths
    fixed: list[Part]  # the others
    config: dict[str, Any] = field(init=False)
    pieces: list[tuple[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.config = {k: v for part in self.fixed for k, v in part.config.items()}
        self.pieces = [piece for part in self.fixed for piece in part.pieces]


@dataclass
class Cell:
    config: dict[str, Any]
    identity: str  # identity_json(config), joined from the parts' pieces
    files: tuple = field(default=())  # the plugin files it uses


class Resolver:
    """Resolves the cells of one block. ``base`` is the block's starting config, ``prefix``
    what errors start with (the study file and the block)."""

    def __init__(
        self,
        prefix: str,
        registry: Registry,
        base: dict[str, Any],
        overrides: dict[str, Any],
        active: plugin_files.Active,
    ):
        self.prefix, self.registry, self.base, self.active = prefix, registry, base, active
        self.overrides: dict[str, list[tuple[str, Any]]] = {}
        for path, value in name_first(overrides):
            self.overrides.setdefault(part_of(path), []).append((path, value))
        self._parts: dict[tuple[str, tuple], Part] = {}
        self._layouts: dict[tuple[str, ...], _Layout] = {}
        self._checked: set[Any] = set()
        self._files: dict[tuple, tuple] = {}

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.prefix}: {key}: {problem}")

    def assign(self, cfg: dict[str, Any], path: str, value: Any, key: str) -> None:
        assign(cfg, path, value, key, self.fail)

    # ---- a cell ------------------------------------------------------------------------
    def cell(self, combo: dict[str, Any]) -> Cell:
        """The run config of the cell whose axes take the values ``combo`` (path -> value)."""
        layout = self._layout(combo)
        touched = []
        for name, paths_ in layout.touched:
            key = (name, tuple([_value_key(combo[p]) for p in paths_]))
            part = self._parts.get(key)
            if part is None:
                part = self._make(name, [(p, combo[p]) for p in paths_])
                if not any(isinstance(v, _Uncached) for v in key[1]):
                    self._parts[key] = part
            touched.append(part)
        self._check(layout, touched)
        config = dict(layout.config)
        pieces = list(layout.pieces)
        for part in touched:
            config.update(part.config)
            pieces += part.pieces
        files = self._plugin_files(config)
        if files:  # the files' hashes are part of what the run is
            labels = [f.label() for f in files]
            config[plugin_files.CONFIG_KEY] = labels
            pieces.append(_piece(plugin_files.CONFIG_KEY, labels))
        pieces.sort()
        identity = "{" + ",".join([text for _, text in pieces]) + "}"
        return Cell(dict(sorted(config.items())), identity, files)

    def _layout(self, combo: dict[str, Any]) -> _Layout:
        """Which parts the cell's axes touch, and the parts they do not, resolved: the same
        for every cell whose axes are the same paths (every cell of most blocks)."""
        paths_ = tuple(combo)
        layout = self._layouts.get(paths_)
        if layout is None:
            touched: dict[str, list[str]] = {}
            for path, _ in name_first(combo):
                touched.setdefault(part_of(path), []).append(path)
            fixed = [self._fixed(name) for name in PARTS if name not in touched]
            layout = _Layout(len(self._layouts), list(touched.items()), fixed)
            self._layouts[paths_] = layout
        return layout

    def _fixed(self, name: str) -> Part:
        if (name, ()) not in self._parts:
            self._parts[(name, ())] = self._make(name, [])
        return self._parts[(name, ())]

    def _make(self, name: str, given: list[tuple[str, Any]]) -> Part:
        """A part from the starting config, the cell's values in it and the --set keys."""
        if name == SETTINGS:
            holder = {k: v for k, v in self.base.items() if part_of(k) == SETTINGS}
        else:
            holder = {name: self.base[name]} if name in self.base else {}
        assigned = given + self.overrides.get(name, [])
        for top in {p.partition(".")[0] for p, _ in assigned}:
            if top in holder:
                holder[top] = plain_copy(holder[top])
        for path, value in given:
            self.assign(holder, path, value, f"axis {path}")
        for path, value in self.overrides.get(name, []):
            self.assign(holder, path, value, f"--set {path}")
        if name == SETTINGS:
            return self._settings(holder)
        if name == PROBES_KEY:
            probes = self.resolve_probes(holder.get(PROBES_KEY))
            if not probes:  # absent when empty, so that run ids of runs without probes stay
                return Part(PROBES_KEY, {}, [], probes, ())
            tables = [table for table, _ in probes]
            check_key = _frozen_text(tables) or object()
            pieces = [_piece(PROBES_KEY, tables)]
            return Part(PROBES_KEY, {PROBES_KEY: tables}, pieces, probes, check_key)
        return self._slot(name, holder.get(name))

    def _slot(self, slot: str, table: Any) -> Part:
        kind = PLUGIN_SLOTS[slot]
        if not isinstance(table, dict) or not isinstance(table.get("name"), str):
            raise self.fail(
                slot,
                f"needs a table with a name, such as {slot} = "
                f'{{ name = "..." }}; registered: '
                f"{', '.join(self.registry.names(kind))}",
            )
        plugin, params, dumped = self.validate(kind, slot, table)
        resolved = {"name": table["name"], **dumped}
        # The cross-checks read a table whose plugin checks or describes it; of the rest,
        # only the optimizer's name (and a wrapper's base).
        reads = plugin.check is not None or plugin.info is not None
        base = dumped.get("base")  # a wrapper's (sam's); not read through pydantic: slow
        return Part(
            slot,
            {slot: resolved},
            [_piece(slot, resolved)],
            (plugin, params, table["name"]),
            (_frozen_text(resolved) or object()) if reads else (table["name"], repr(base)),
        )

    def _settings(self, settings: dict[str, Any]) -> Part:
        try:
            dumped = RunSettings.model_validate(settings).model_dump(mode="json")
        except ValidationError as e:
            raise ConfigError(
                f"{self.prefix}: {describe_validation_error(e, RunSettings)}"
            ) from None
        if dumped.get("local_sgd") is None:
            dumped.pop("local_sgd", None)
        pieces = [_piece(k, v) for k, v in dumped.items() if k not in NOT_IDENTITY]
        local = dumped.get("local_sgd")
        return Part(SETTINGS, dumped, pieces, None, (dumped["epochs"], _frozen_text(local)))

    def _check(self, layout: _Layout, touched: list[Part]) -> None:
        key = (layout.number, *[part.check_key for part in touched])
        if key in self._checked:
            return
        parts = {part.name: part for part in [*layout.fixed, *touched]}
        models = {slot: parts[slot].models for slot in PLUGIN_SLOTS}
        settings = parts[SETTINGS].config
        self.check(models, settings["epochs"], parts[PROBES_KEY].models, settings.get("local_sgd"))
        self._checked.add(key)

    def _plugin_files(self, config: dict[str, Any]) -> tuple:
        if not self.active:
            return ()
        names = tuple(
            (slot, config[slot]["name"], config[slot].get("base")) for slot in PLUGIN_SLOTS
        ) + tuple(t["name"] for t in config.get(PROBES_KEY, ()))
        if names not in self._files:
            self._files[names] = tuple(_used_by(config, self.active))
        return self._files[names]

    # ---- one table -----------------------------------------------------------------------
    def validate(self, kind: str, key: str, table: dict[str, Any]) -> tuple[Any, Any, dict]:
        """The plugin a table names, its validated params and their JSON form; errors
        name ``key``."""
        try:
            plugin = self.registry.get(kind, table["name"])
        except ConfigError as e:
            raise self.fail(f"{key}.name", str(e)) from None
        try:
            params = plugin.params.model_validate({k: v for k, v in table.items() if k != "name"})
            # What the worker will validate is the JSON form: it must pass there too.
            dumped = params.model_dump(mode="json")
            plugin.params.model_validate(dumped)
        except ValidationError as e:
            raise ConfigError(
                f"{self.prefix}: "
                + describe_validation_error(e, plugin.params, prefix=f"{key}.").replace(
                    "unknown key; allowed:", f"unknown key; {table['name']} takes:"
                )
            ) from None
        return plugin, params, dumped

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
            plugin, params, dumped = self.validate("probe", key, table)
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


def assign(cfg: dict[str, Any], path: str, value: Any, key: str, fail: Callable) -> None:
    """``paths.assign``; a path through a single value fails as ``fail(key, problem)``."""
    try:
        paths.assign(cfg, path, value)
    except KeyError:
        raise fail(key, f"{path.rsplit('.', 1)[0]} is a single value, not a table") from None


def name_first(combo: dict[str, Any]) -> list[tuple[str, Any]]:
    # A plugin's name must land before its parameters: changing it clears the table.
    return sorted(
        combo.items(), key=lambda kv: not (kv[0].endswith(".name") or kv[0] in PLUGIN_SLOTS)
    )


_IDENTITY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # as identity_json's


def _piece(key: str, value: Any) -> tuple[str, str]:
    """``"key":JSON`` as ``identity_json`` writes it inside its object."""
    return (key, f"{_IDENTITY.encode(key)}:{_IDENTITY.encode(value)}")


_SCALARS = {float, int, str, bool}


class _Uncached:
    """Stands in for a value that cannot be told apart from others by a key."""


def _value_key(value: Any) -> Any:
    """A key for an axis value that tells apart what validation could (1, 1.0 and true)."""
    if type(value) in _SCALARS:
        return (type(value), value)
    if isinstance(value, dict | list):
        return _frozen_text(value) or _Uncached()
    try:
        hash(value)
    except TypeError:
        return _Uncached()
    return (type(value), value)


_KEY_ENCODER = json.JSONEncoder(sort_keys=True)


def _frozen_text(value: Any) -> str | None:
    """A stand-in for a TOML value that tells apart what validation could (1, 1.0 and true;
    key order aside), by the C JSON encoder; None for what it cannot encode."""
    try:
        return _KEY_ENCODER.encode(value)
    except (TypeError, ValueError):
        return None


def plain_copy(value: Any) -> Any:
    """A copy of a config (tables, arrays and immutable scalars, as TOML gives them)."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value


def _used_by(config: dict[str, Any], plugins: plugin_files.Active) -> list[Any]:
    """The file plugins a resolved run config names, in a fixed order."""
    wanted = []
    for slot, kind in PLUGIN_SLOTS.items():
        table = config.get(slot)
        if isinstance(table, dict):
            wanted.append((kind, table.get("name")))
            if slot == "optimizer" and isinstance(table.get("base"), str):
                wanted.append(("optimizer", table["base"]))  # a wrapper's base (sam)
    wanted += [("probe", t.get("name")) for t in config.get(PROBES_KEY) or []]
    found = {plugins[w] for w in wanted if w in plugins}
    return sorted(found, key=lambda p: (p.kind, p.name))
