"""The learning rate and batch size of every optimizer step, as the engine applies them.

Torch-free, so that exports can rebuild a run's per-step schedule from its config and its
epoch rows (how many steps each epoch took, at which batch size) without training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from optlab.plugins.registry import default_registry


def lr_scale(config: dict[str, Any], batch_size: int, reference: int) -> float:
    """The linear (Goyal et al.) or square-root scaling rule, relative to ``reference``."""
    rule = config.get("lr_scaling", "none")
    if rule == "none":
        return 1.0
    return (batch_size / reference) ** (1.0 if rule == "linear" else 0.5)


def start_lr(config: dict[str, Any]) -> float | None:
    """The LR a run starts from: the optimizer's ``lr`` under the batch scaling rule at its
    first batch size (before the schedule's warmup or decay). The engine's reference batch
    is ``lr_reference_batch``, else the first batch size itself (scale 1)."""
    lr = (config.get("optimizer") or {}).get("lr")
    if lr is None:
        return None
    first = (config.get("batch_schedule") or {}).get("batch_size")
    reference = config.get("lr_reference_batch") or first
    if not first or not reference:
        return float(lr)
    return float(lr) * lr_scale(config, int(first), int(reference))


def start_lr_sql(r: str = "r") -> str:
    """:func:`start_lr` over the store's ``runs`` view (its config JSON)."""
    first = f"try_cast(json_extract({r}.config, '$.batch_schedule.batch_size') as double)"
    reference = (
        f"coalesce(try_cast(json_extract({r}.config, '$.lr_reference_batch') as double), {first})"
    )
    return (
        f"try_cast(json_extract({r}.config, '$.optimizer.lr') as double) * "
        f"coalesce(case json_extract_string({r}.config, '$.lr_scaling') "
        f"when 'linear' then {first} / {reference} "
        f"when 'sqrt' then sqrt({first} / {reference}) end, 1.0)"
    )


def per_step(
    config: dict[str, Any], epochs: list[dict[str, Any]], registry: Any = None
) -> Iterator[tuple[int, int, float, int]]:
    """(epoch, step, lr, batch size) for every step of a run's stored epochs.

    ``epochs``: its rows in epoch order (``epoch``, ``step`` so far, ``epoch_batch_size``).
    The LR is the optimizer's base LR times the schedule's factor at that step times the
    batch scaling rule, exactly as the engine sets it before the step.
    """

    registry = registry or default_registry()
    table = config["lr_schedule"]
    factor = registry.create(
        "lr_schedule",
        table["name"],
        {k: v for k, v in table.items() if k != "name"},
        epochs=config["epochs"],
    )
    base = float(config["optimizer"]["lr"])
    reference = config.get("lr_reference_batch") or (epochs[0]["epoch_batch_size"] if epochs else 1)
    before = 0
    for row in epochs:
        steps, bs = row["step"] - before, row["epoch_batch_size"]
        scale = lr_scale(config, bs, reference)
        epoch = row["epoch"] - 1
        for i in range(steps):
            yield (
                row["epoch"],
                before + i + 1,
                base * factor(epoch + i / steps, 1 / steps, before + i) * scale,
                bs,
            )
        before = row["step"]
