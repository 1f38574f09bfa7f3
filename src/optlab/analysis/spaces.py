"""Each block's search space, as its study file states it (the source kept in the store):
what ``compare`` prints beside each optimizer's budget, so that a reader sees whether the
optimizers were tuned over the same ranges (Choi et al. 2019: equal budgets over unequal
ranges favour the optimizer whose range was narrowed beforehand).
"""

from __future__ import annotations

import math
import tomllib
from typing import Any

from optlab.study import search
from optlab.study.expand import axis_leaves

Space = dict[str, tuple[str, float | None]]  # {path: (the range as text, its decades)}


def block_spaces(source: str | None) -> dict[str, Space]:
    """{block name: its searched dimensions}: a ``search`` table's ranges, or a ``grid``'s
    values; a block that varies nothing has none."""
    try:
        blocks = tomllib.loads(source or "").get("block", [])
    except tomllib.TOMLDecodeError:
        return {}
    out: dict[str, Space] = {}
    for i, block in enumerate(blocks if isinstance(blocks, list) else []):
        name = block.get("name") or f"block{i + 1}"
        if isinstance(block.get("search"), dict):
            try:
                ranges = search.parse(block["search"])[3]
            except search.SearchError:
                continue
            out[name] = {path: search.span(rng) for path, rng in ranges.items()}
        elif isinstance(block.get("grid"), dict):
            out[name] = {
                path: _grid_span(values)
                for path, values in axis_leaves(block["grid"]).items()
                if isinstance(values, list)
            }
    return out


def _grid_span(values: list[Any]) -> tuple[str, float | None]:
    text, _ = search.span(("choice", values, 0.0))
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    positive = [v for v in numbers if v > 0]
    if len(numbers) == len(values) and len(positive) >= 2:
        decades = math.log10(max(positive) / min(positive))
        return f"{text} ({decades:.2g} decades)", decades
    return text, None


def differences(spaces: dict[str, Space], points: dict[str, int], epochs: dict[str, Any]) -> str:
    """What differs between the groups' searches, as a sentence; '' when nothing does. A
    dimension only one group has (AdamW's betas beside SGDM's momentum) is not a
    difference of range."""
    parts = []
    paths = sorted({p for space in spaces.values() for p in space})
    for path in paths:
        texts = {name: space[path][0] for name, space in spaces.items() if path in space}
        if len(texts) > 1 and len(set(texts.values())) > 1:
            parts.append(f"{path}: " + "; ".join(f"{t} for {n}" for n, t in sorted(texts.items())))
    for what, counts in (("points", points), ("epochs", epochs)):
        if len(set(counts.values())) > 1:
            parts.append(f"{what}: " + ", ".join(f"{v} for {n}" for n, v in sorted(counts.items())))
    return " | ".join(parts)
