"""Plugins from a file next to the study, with no packaging:

    [plugins.optimizers]
    signsgd = "my_optimizers.py:signsgd"   # path relative to the study file : Plugin object

The keys are the entry-point groups less ``optlab.`` (``datasets``, ``models``,
``optimizers``, ``lr_schedules``, ``batch_schedules``, ``augmentations``, ``probes``). The
file is read once, when the study is loaded; its SHA-256 goes into the config of every run
that uses one of its plugins (``plugin_files``), so a changed file makes new run ids, and the
text itself travels with each task, so a worker (on this machine or a Ray node) runs exactly
the code the run id names. While a study's file plugins are active (:func:`activate`,
:func:`use`), every registry finds them beside the installed ones.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optlab.errors import ConfigError
from optlab.plugins.plugin import Plugin
from optlab.plugins.registry import activate_files as activate
from optlab.plugins.registry import check_contract
from optlab.plugins.registry import file_plugins as active
from optlab.plugins.registry import use_files as use

KINDS: dict[str, str] = {  # study-file group -> registry kind
    "datasets": "dataset",
    "models": "model",
    "optimizers": "optimizer",
    "lr_schedules": "lr_schedule",
    "batch_schedules": "batch_schedule",
    "augmentations": "augmentation",
    "probes": "probe",
}
__all__ = [
    "CONFIG_KEY",
    "KINDS",
    "Active",
    "FilePlugin",
    "activate",
    "active",
    "check",
    "from_task",
    "load",
    "use",
]
TARGET = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_]\w*)$")
CONFIG_KEY = "plugin_files"  # in a run's config: ["KIND NAME FILE:OBJECT sha256=HEX", ...]


@dataclass(frozen=True)
class FilePlugin:
    kind: str
    name: str
    file: str  # as the study names it, for messages
    attr: str
    sha256: str
    source: str
    plugin: Plugin

    def label(self) -> str:
        """How a run's config names it (and so its run id): the file's hash included."""
        return f"{self.kind} {self.name} {self.file}:{self.attr} sha256={self.sha256}"

    def entry(self) -> dict[str, str]:
        """What a task carries to rebuild it elsewhere."""
        return {
            "kind": self.kind,
            "name": self.name,
            "file": self.file,
            "attr": self.attr,
            "sha256": self.sha256,
            "source": self.source,
        }


Active = dict[tuple[str, str], FilePlugin]
_modules: dict[str, types.ModuleType] = {}  # sha256 -> module, per process


def load(table: dict[str, Any], folder: str | Path, where: str, installed: Any = None) -> Active:
    """The ``[plugins]`` table of a study in ``folder``; ConfigError (one line, naming the
    key) for anything that cannot be used."""
    out: Active = {}
    for group, names in table.items():
        key = f"{where}: plugins.{group}"
        if group not in KINDS:
            raise ConfigError(f"{key}: not a plugin group; groups: {', '.join(KINDS)}")
        if not isinstance(names, dict):
            raise ConfigError(f'{key}: give a table of NAME = "FILE.py:OBJECT"')
        kind = KINDS[group]
        for name, target in names.items():
            here = f"{key}.{name}"
            m = TARGET.match(target) if isinstance(target, str) else None
            if m is None:
                raise ConfigError(
                    f'{here}: {target!r} is not "FILE.py:OBJECT" (a path '
                    "relative to the study file, then the Plugin's name in it)"
                )
            if installed is not None and name in installed.installed(kind):
                raise ConfigError(
                    f"{here}: an installed {kind} plugin is called {name!r}; "
                    "give this one another name"
                )
            path = Path(folder) / m["path"]
            try:
                source = path.read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(
                    f"{here}: {m['path']}: cannot read it ({e.strerror or e})"
                ) from None
            digest = hashlib.sha256(source.encode()).hexdigest()
            plugin = _plugin_from(source, digest, m["path"], m["attr"], str(path), here)
            out[(kind, name)] = FilePlugin(kind, name, m["path"], m["attr"], digest, source, plugin)
    return out


def from_task(entries: list[dict[str, str]]) -> Active:
    """A worker's file plugins, from the texts its task carries."""
    out: Active = {}
    for e in entries:
        if hashlib.sha256(e["source"].encode()).hexdigest() != e["sha256"]:
            raise ValueError(f"plugin file {e['file']}: its text does not match its hash")
        plugin = _plugin_from(
            e["source"], e["sha256"], e["file"], e["attr"], e["file"], f"plugin file {e['file']}"
        )
        out[(e["kind"], e["name"])] = FilePlugin(
            e["kind"], e["name"], e["file"], e["attr"], e["sha256"], e["source"], plugin
        )
    return out


def _plugin_from(source: str, digest: str, file: str, attr: str, path: str, where: str) -> Plugin:
    module = _modules.get(digest)
    if module is None:
        name = f"optlab_file_plugin_{digest[:16]}"
        module = types.ModuleType(name)
        module.__file__ = path
        sys.modules[name] = module  # dataclasses and pickling look their module up
        try:
            exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the user's file
        except Exception as e:  # noqa: BLE001 - one line, naming the file
            sys.modules.pop(name, None)
            first = (str(e).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"{where}: {file} cannot be loaded: {type(e).__name__}: {first}"
            ) from None
        _modules[digest] = module
    plugin = getattr(module, attr, None)
    if plugin is None:
        raise ConfigError(f"{where}: {file} has no {attr!r}")
    if not isinstance(plugin, Plugin):
        raise ConfigError(
            f"{where}: {file}:{attr} is a {type(plugin).__name__}, not an "
            "optlab Plugin(description, params, build)"
        )
    return plugin


def check(plugins: Active, where: str) -> None:
    for (kind, name), found in plugins.items():
        try:
            check_contract(kind, name, found.plugin)
        except ConfigError as e:
            raise ConfigError(f"{where}: plugins.{kind}s.{name}: {found.file}: {e}") from None
