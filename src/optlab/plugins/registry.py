"""Plugin discovery through entry points: one group per kind, names read lazily.

Built-ins are registered in optlab's own pyproject and found by the same code as
third-party plugins. Reading names imports nothing; a plugin's module is imported the
first time the plugin is asked for.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from optlab.errors import ConfigError
from optlab.plugins.plugin import Params, Plugin
from optlab.plugins.probe_params import ProbeParams
from optlab.states import Event

GROUPS: dict[str, str] = {
    "dataset": "optlab.datasets",
    "model": "optlab.models",
    "optimizer": "optlab.optimizers",
    "lr_schedule": "optlab.lr_schedules",
    "batch_schedule": "optlab.batch_schedules",
    "augmentation": "optlab.augmentations",
    "probe": "optlab.probes",
    "executor": "optlab.executors",
}


# Plugins a study gives as files beside it (optlab.study.plugin_files), by (kind, name):
# each has ``plugin`` and ``file``. While a study's are active every registry finds them
# beside the installed ones.
_files: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar(
    "optlab_file_plugins", default=None
)


def file_plugins() -> dict[tuple[str, str], Any]:
    return _files.get() or {}


def activate_files(plugins: dict[tuple[str, str], Any]) -> None:
    """Make ``plugins`` visible to every registry from here on (a command's process)."""
    _files.set(plugins)


@contextlib.contextmanager
def use_files(plugins: dict[tuple[str, str], Any]) -> Iterator[None]:
    token = _files.set(plugins)
    try:
        yield
    finally:
        _files.reset(token)


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin as `optlab plugins` lists it."""

    kind: str
    name: str
    distribution: str
    plugin: Plugin

    def param_rows(self) -> list[tuple[str, str, str, str]]:
        """(name, type, default, description) for each parameter."""
        rows = []
        for pname, fld in self.plugin.params.model_fields.items():
            default = "required" if fld.is_required() else repr(fld.get_default())
            kind = type_name(fld.annotation) + _constraints(fld.metadata)
            rows.append((pname, kind, default, fld.description or ""))
        return rows

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "description": self.plugin.description,
            "params": [
                {"name": n, "type": t, "default": d, "description": text}
                for n, t, d, text in self.param_rows()
            ],
        }


def type_name(annotation: Any) -> str:
    """``list[Annotated[int, Ge(1)]]`` -> ``list[int >= 1]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_name(args[0]) + _constraints(args[1:])
    if origin in (Union, UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "len >="))


def _constraints(metadata: Any) -> str:
    parts = []
    for item in metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        parts += [
            f"{sign} {getattr(m, attr)}"
            for m in getattr(item, "metadata", [])
            for attr, sign in _BOUNDS
            if getattr(m, attr, None) is not None
        ]
    return f" ({', '.join(parts)})" if parts else ""


class Registry:
    """Per kind: names, get (with "did you mean"), describe, create."""

    def __init__(
        self,
        plugins: dict[str, dict[str, Plugin]] | None = None,
        distribution: str | None = None,
    ):
        # An explicit mapping makes a hermetic registry (tests); None reads entry points,
        # of every installed package or only of ``distribution`` (optlab: the built-ins).
        self._explicit = plugins
        self._distribution = distribution
        self._eps: dict[str, dict[str, EntryPoint]] = {}
        self._loaded: dict[tuple[str, str], Plugin] = {}

    def _entry_points(self, kind: str) -> dict[str, EntryPoint]:
        if kind not in self._eps:
            found = entry_points(group=GROUPS[kind])
            if self._distribution is not None:
                found = [e for e in found if e.dist and e.dist.name == self._distribution]
            self._eps[kind] = {ep.name: ep for ep in sorted(found, key=lambda e: e.name)}
        return self._eps[kind]

    def installed(self, kind: str) -> list[str]:
        """Names registered by entry points (or given to a hermetic registry)."""
        if self._explicit is not None:
            return sorted(self._explicit.get(kind, {}))
        return list(self._entry_points(kind))

    def names(self, kind: str) -> list[str]:
        """Installed names and those of the active study's plugin files."""
        files = [name for (k, name) in file_plugins() if k == kind]
        return sorted({*self.installed(kind), *files}) if files else self.installed(kind)

    def get(self, kind: str, name: str) -> Plugin:
        if not isinstance(name, str):
            raise ConfigError(
                f"a {kind} name is a string (given {name!r}); registered: "
                f"{', '.join(self.names(kind))}"
            )
        from_file = file_plugins().get((kind, name))
        if from_file is not None:
            return from_file.plugin
        if (kind, name) in self._loaded:
            return self._loaded[(kind, name)]
        if name not in self.names(kind):
            raise ConfigError(unknown_name_message(kind, name, self.names(kind)))
        if self._explicit is not None:
            plugin = self._explicit[kind][name]
        else:
            ep = self._entry_points(kind)[name]
            try:
                plugin = ep.load()
            except Exception as e:  # a broken third-party package: say which, in one line
                dist = ep.dist.name if ep.dist is not None else "?"
                first = (str(e).strip().splitlines() or [""])[0]
                raise ConfigError(
                    f"{kind} plugin {name!r} ({dist}, {ep.value}) cannot be "
                    f"loaded: {type(e).__name__}: {first}"
                ) from None
            if not isinstance(plugin, Plugin):
                raise ConfigError(f"{kind} plugin {name!r} is not an optlab.plugins.plugin.Plugin")
            check_contract(kind, name, plugin)
        self._loaded[(kind, name)] = plugin
        return plugin

    def describe(self, kind: str, name: str) -> PluginInfo:
        plugin = self.get(kind, name)
        dist = "optlab"
        from_file = file_plugins().get((kind, name))
        if from_file is not None:
            return PluginInfo(kind, name, f"file {from_file.file}", plugin)
        if self._explicit is None:
            ep = self._entry_points(kind)[name]
            dist = ep.dist.name if ep.dist is not None else "?"
        return PluginInfo(kind, name, dist, plugin)

    def create(self, kind: str, name: str, params: dict[str, Any], **context: Any) -> Any:
        return self.get(kind, name).create(params, **context)


def check_contract(kind: str, name: str, plugin: Plugin) -> None:
    """What can be checked of a plugin without building it: its params model's base."""

    base = Params
    if kind == Event.PROBE:
        base = ProbeParams
    params = plugin.params
    if not (isinstance(params, type) and issubclass(params, base)):
        raise ConfigError(
            f"{kind} plugin {name!r}: its params model "
            f"{getattr(params, '__name__', params)!r} is not derived from "
            f"optlab.{base.__name__}"
        )
    if plugin.build is None:
        raise ConfigError(f"{kind} plugin {name!r}: it has no build")
    for what, target in (("build", plugin.build), ("prepare", plugin.prepare)):
        if isinstance(target, str):
            _check_target(kind, name, what, target)


def _check_target(kind: str, name: str, what: str, target: str) -> None:
    """A ``"module:function"`` build names a module that exists, found without importing it
    (which may need torch): a missing one is named here, not in every worker."""

    module, _, attr = target.partition(":")
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found or not attr:
        raise ConfigError(
            f"{kind} plugin {name!r}: its {what} {target!r} names no module "
            "that can be imported (module:function)"
        )


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(valid) if valid else "(none registered)"
    return f"unknown {kind} {name!r}{hint} Registered: {listed}"


_default: Registry | None = None


def builtin_registry() -> Registry:
    """optlab's own plugins, whatever else is installed (what the tests use by default)."""
    return Registry(distribution="optlab")


def default_registry() -> Registry:
    """The process-wide registry read from installed entry points."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
