"""Search spaces beyond grids: ``[block.search]`` draws ``n`` points, quasi-randomly
(``sobol``, scrambled, as AlgoPerf tunes) or at random (``random``), from a range per key::

    [block.search]
    kind = "sobol"          # or "random"
    n = 16
    seed = 0                # optional: which scrambling / random stream (default 0)
    "optimizer.lr" = { log_uniform = [1e-4, 1.0] }
    "optimizer.momentum" = { uniform = [0.8, 0.99] }
    "optimizer.weight_decay" = { choice = [0.0, 5e-4] }
    # or: a log range with exactly 0 drawn a share of the time (1 in 5 here)
    "optimizer.weight_decay" = { log_uniform = [1e-6, 5e-4], zero = 0.2 }

The points depend only on the file: the same kind, seed, keys (in file order) and ranges
give the same points on every machine, and the first ``n`` points stay the same when ``n``
is raised, so a grown search keeps its finished runs. Drawn numbers are rounded to 6
significant digits, so that the last bit of a logarithm cannot change a run's id.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

KINDS = ("sobol", "random")
RANGES = ("log_uniform", "uniform", "choice")
DIGITS = 6


class SearchError(ValueError):
    """(key, problem): the caller names the file and block."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


Range = tuple[str, Any, float]  # (range kind, its values, the share of draws that are 0)


def parse(table: dict[str, Any]) -> tuple[str, int, int, dict[str, Range]]:
    """(kind, n, seed, {path: (range kind, its values, zero share)}), checked."""
    kind = table.get("kind", "sobol")
    if kind not in KINDS:
        raise SearchError("search.kind", f"use {' or '.join(KINDS)} (given {kind!r})")
    n = table.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SearchError("search.n", f"how many points to draw, a whole number >= 1 (given {n!r})")
    seed = table.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SearchError("search.seed", f"a whole number >= 0 (given {seed!r})")
    ranges: dict[str, Range] = {}
    for path, spec in _leaves(
        {k: v for k, v in table.items() if k not in ("kind", "n", "seed")}
    ).items():
        key = f"search.{path}"
        ranges[path] = _range(key, spec)
    if not ranges:
        raise SearchError(
            "search",
            "give at least one key to search, such as "
            '"optimizer.lr" = { log_uniform = [1e-4, 1.0] }',
        )
    return kind, n, seed, ranges


def _range(key: str, spec: Any) -> Range:
    example = "{ log_uniform = [1e-4, 1.0] }, { uniform = [0.8, 0.99] } or { choice = [0.0, 5e-4] }"
    zero = spec.get("zero", 0.0) if isinstance(spec, dict) else 0.0
    kinds = [k for k in spec if k != "zero"] if isinstance(spec, dict) else []
    if len(kinds) != 1 or kinds[0] not in RANGES:
        raise SearchError(key, f"give one range: {example} (given {spec!r})")
    how = kinds[0]
    values = spec[how]
    if "zero" in spec and (how != "log_uniform" or not _number(zero) or not 0 < zero < 1):
        raise SearchError(
            key,
            "zero is the share of draws that are exactly 0 beside a log_uniform range, a "
            f"number between 0 and 1 exclusive (given {spec!r})",
        )
    if how == "choice":
        if not isinstance(values, list) or not values:
            raise SearchError(key, f"choice needs a list of values (given {values!r})")
    else:
        if not (
            isinstance(values, list)
            and len(values) == 2
            and all(_number(v) for v in values)
            and values[0] < values[1]
        ):
            raise SearchError(key, f"{how} needs [low, high] with low < high (given {values!r})")
        if how == "log_uniform" and values[0] <= 0:
            raise SearchError(key, f"log_uniform needs low > 0 (given {values!r})")
    return how, values, float(zero)


def _leaves(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``optimizer.lr = {...}`` written as nested tables, flattened to dotted paths."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and not set(value) & set(RANGES)
            and all(isinstance(v, dict) for v in value.values())
        ):
            out.update(_leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def describe(table: dict[str, Any]) -> str:
    kind, n, seed, _ = parse(table)
    return f"{kind}, n = {n}, seed {seed}"


def unit_points(kind: str, n: int, dims: int, seed: int) -> list[list[float]]:
    """``n`` points in [0, 1)^dims; the first k of n are the k points drawn alone."""

    if kind == "random":
        return np.random.default_rng(seed).random((n, dims)).tolist()
    from scipy.stats import qmc  # scipy: a second to import, so only when a search draws

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # n not a power of 2: still valid
        return qmc.Sobol(d=dims, scramble=True, seed=seed).random(n).tolist()


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def draw(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The search's points, each {path: value}, in draw order."""
    kind, n, seed, ranges = parse(table)
    points = []
    for u in unit_points(kind, n, len(ranges), seed):
        point = {}
        for (path, (how, values, zero)), ui in zip(ranges.items(), u, strict=True):
            if how == "choice":
                point[path] = values[min(int(ui * len(values)), len(values) - 1)]
            elif how == "uniform":
                point[path] = _round(values[0] + ui * (values[1] - values[0]))
            elif ui < zero:  # the first share of the unit interval draws exactly 0
                point[path] = 0.0
            else:
                ui = (ui - zero) / (1 - zero)
                lo, hi = math.log(values[0]), math.log(values[1])
                point[path] = _round(math.exp(lo + ui * (hi - lo)))
        points.append(point)
    return points


def span(rng: Range) -> tuple[str, float | None]:
    """A range as a reader compares ranges: its text, and the decades it spans (a log or
    positive uniform range; None for a choice)."""
    how, values, zero = rng
    if how == "choice":
        return f"one of {', '.join(map(_text, values))}", None
    lo, hi = values
    decades = math.log10(hi / lo) if lo > 0 else None
    text = f"{'log ' if how == 'log_uniform' else ''}[{_text(lo)}, {_text(hi)}]"
    if decades is not None:
        text += f" ({decades:.2g} decades)"
    if zero:
        text += f", or 0 in {zero:.0%} of draws"
    return text, decades


def _text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
