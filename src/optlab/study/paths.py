"""Dotted-path helpers for nested config dicts (``optimizer.lr``)."""

from __future__ import annotations

import copy
from typing import Any


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


_IMMUTABLE = {str, int, float, bool, type(None)}


def assign(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in ``tree``. A plugin table whose ``name`` changes is replaced, not
    merged, so that the old plugin's parameters do not leak into the new one."""
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise KeyError(path)
    last = parts[-1]
    old = node.get(last)
    if isinstance(value, dict) and isinstance(old, dict):
        if "name" in value and value["name"] != old.get("name"):
            node[last] = copy.deepcopy(value)
        else:
            for k, v in value.items():
                assign(node, f"{last}.{k}", v)
    elif last == "name" and old is not None and value != old:
        node.clear()
        node["name"] = value
    else:
        node[last] = value if type(value) in _IMMUTABLE else copy.deepcopy(value)


def column(path: str) -> str:
    """The store column for a config path: ``optimizer.lr`` -> ``optimizer_lr``."""
    return path.replace(".", "_")
