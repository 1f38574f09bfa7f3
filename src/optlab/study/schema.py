"""Study files: TOML -> a validated :class:`Study` (stage 1 of the data flow).

Every error names the file, the dotted key, what was given and what is allowed.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from optlab.errors import ConfigError
from optlab.plugins.registry import default_registry
from optlab.study import plugin_files

# Run-config keys that hold a plugin table, and the registry kind of each.
PLUGIN_SLOTS: dict[str, str] = {
    "dataset": "dataset",
    "model": "model",
    "optimizer": "optimizer",
    "lr_schedule": "lr_schedule",
    "batch_schedule": "batch_schedule",
    "augmentation": "augmentation",
}
PRECISIONS = ("fp32", "bf16", "amp")
STUDY_KEYS = ("name", "description", "seeds", "base", "block", "analysis", "plugins")
DEFAULT_STUDY = Path(__file__).parents[1] / "studies" / "quickstart.toml"


class CheckpointSettings(BaseModel):
    """When a run checkpoints: at the end of every N-th epoch, and/or at the end of the first
    epoch after M minutes since the last checkpoint. The last ``keep`` are kept."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    every_epochs: Annotated[int, Field(ge=1)] | None = None
    every_minutes: Annotated[float, Field(gt=0)] | None = None
    keep: Annotated[int, Field(ge=1)] = 2


# A checkpoint costs about a second for the seed models (BENCHMARKS.md): every 5 minutes
# is under 1% of a run, and a run shorter than that never writes one.
DEFAULT_CHECKPOINT = CheckpointSettings(every_minutes=5)
WEIGHTS_AUTO_SECONDS = 180  # save_weights = "auto" keeps the final weights of longer runs


class DivergenceSettings(BaseModel):
    """When a run counts as diverged, besides a non-finite training loss (always): an epoch's
    training loss above ``loss_factor`` times the first epoch's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    loss_factor: Annotated[float, Field(gt=1)] = 100.0


# 100x the first epoch's mean training loss: far beyond the spikes of a run that recovers
# (a cross-entropy of 2.3 at chance becomes 230), and every run reported so far as "done"
# with a loss of 1e19 crosses it.
DEFAULT_DIVERGENCE = DivergenceSettings()


class LocalSGDSettings(BaseModel):
    """Local SGD (seed 003, step 3): ``workers`` simulated workers on one device, each with
    its own copy of the model and optimizer and its own shard of the training set, take
    ``local_steps`` steps of the run's batch size between averagings of their weights."""

    model_config = ConfigDict(extra="forbid")
    workers: Annotated[int, Field(ge=2)]
    local_steps: Annotated[int, Field(ge=1)]


class RunSettings(BaseModel):
    """The run config's keys that are not plugin tables."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    epochs: Annotated[int, Field(ge=1)]
    precision: Literal["fp32", "bf16", "amp"] = "fp32"
    # Scale the LR with the batch size in force: lr * (batch / reference) ** (1 or 1/2);
    # the reference defaults to the first epoch's batch size.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_reference_batch: Annotated[int, Field(ge=1)] | None = None
    # `checkpoint = false` turns checkpoints off (stored as null).
    checkpoint: CheckpointSettings | None = DEFAULT_CHECKPOINT
    # "auto": the final weights of runs longer than WEIGHTS_AUTO_SECONDS.
    save_weights: Literal["auto", "final", "best", "none"] = "auto"
    # `divergence = false` keeps only the non-finite rule (stored as null).
    divergence: DivergenceSettings | None = DEFAULT_DIVERGENCE
    # Absent from the resolved config when not given, so other runs keep their ids.
    local_sgd: LocalSGDSettings | None = None

    @field_validator("local_sgd")
    @classmethod
    def _local_precision(cls, v: Any, info: Any) -> Any:
        if v is not None and info.data.get("precision") == "amp":
            raise ValueError(
                "runs in fp32 or bf16, not amp (one loss scale would be shared by the workers)"
            )
        return v

    @field_validator("divergence", mode="before")
    @classmethod
    def _no_rule(cls, v: Any) -> Any:
        return None if v is False else DEFAULT_DIVERGENCE if v is True else v

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        if v is False:
            return None
        if v is True:
            return DEFAULT_CHECKPOINT
        return v


# Settings that change how a run is kept, not what it computes: not part of its run_id.
# `divergence` only decides when a run stops being worth training: the epochs it does run
# are the same, and changing the rule does not re-run finished runs.
NOT_IDENTITY = ("checkpoint", "save_weights", "divergence")


RUN_DEFAULTS: dict[str, Any] = {
    "precision": "fp32",
    "lr_schedule": {"name": "constant"},
    "batch_schedule": {"name": "constant"},
    "augmentation": {"name": "none"},
}
# ``probes``: a list of probe tables (each with a name), measured during training.
PROBES_KEY = "probes"
RUN_KEYS = tuple(RunSettings.model_fields) + tuple(PLUGIN_SLOTS) + (PROBES_KEY,)

# `seeds = N` means 0..N-1; more seeds than the default run limit is surely a slip (and a
# list of 10^12 seeds would not fit in memory).
MAX_SEEDS = 100_000
# A seed is stored as a 32-bit integer (runs.seed) and given to torch and numpy as it is.
MAX_SEED = 2**31 - 1


def _check_seeds(value: Any) -> Any:
    """``seeds = N`` (1..MAX_SEEDS) or a list of seeds (each 0..MAX_SEED), one clear line."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise ValueError(f"give a count from 1 to {MAX_SEEDS:,} or a list of seeds")
        return value
    if isinstance(value, list):
        for seed in value:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
                raise ValueError(f"seed {seed!r}: a seed is a whole number from 0 to {MAX_SEED}")
        return value
    raise ValueError("give a count of seeds or a list of seeds, such as [0, 1, 2]")


Seeds = Annotated[int | list[int], BeforeValidator(_check_seeds)]


# What halving and the final selection may read: validation or training, never test (a
# comparison that selects on its test set reports a number it chose).
SELECT_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


def _group_paths(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


GroupBy = Annotated[list[str], BeforeValidator(_group_paths)]


class EarlyStop(BaseModel):
    """``early_stop = { kind = "asha", metric = "val_acc", mode = "max", min_epochs = 1,
    reduction = 3 }``: successive halving of a block's configurations (see
    :mod:`optlab.execution.halving`). ``kind`` "asha" decides each configuration when it
    reaches a rung (asynchronous); "sha" waits for the whole group at each rung (plain
    successive halving, independent of the order runs finish). ``group_by`` names config
    paths (``optimizer`` for ``optimizer.name``) whose runs are halved among themselves."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["asha", "sha"]
    metric: Literal[SELECT_METRICS] = "val_acc"  # type: ignore[valid-type]
    mode: Literal["max", "min"] | None = None  # default: the metric's (max for an accuracy)
    min_epochs: Annotated[int, Field(ge=1)] = 1
    reduction: Annotated[int, Field(ge=2)] = 3
    group_by: GroupBy = []

    @model_validator(mode="after")
    def _mode_fits(self) -> EarlyStop:
        wanted = "min" if self.metric.endswith("loss") else "max"
        if self.mode is None:
            self.mode = wanted
        elif self.mode != wanted:
            better = "smaller" if wanted == "min" else "larger"
            raise ValueError(f"{self.metric} is better {better}: give mode = {wanted!r}")
        return self


class FinalRuns(BaseModel):
    """``final = { select = "val_acc", seeds = 10 }``: once a block's search (and halving) is
    over, its best configuration of each group runs again with this many fresh seeds."""

    model_config = ConfigDict(extra="forbid")
    select: Literal[SELECT_METRICS] = "val_acc"  # type: ignore[valid-type]
    seeds: Annotated[int, Field(ge=1, le=1000)] = 10
    group_by: GroupBy | None = None  # default: the early_stop's group_by, else the block


FINAL_SUFFIX = "/final"  # a block's final runs form the block NAME/final


def final_block(name: str) -> str:
    """The name of the block of ``name``'s final runs."""
    return name + FINAL_SUFFIX


def is_final_block(name: str) -> bool:
    return name.endswith(FINAL_SUFFIX)


class Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    set: dict[str, Any] = {}
    grid: dict[str, Any] = {}
    zip: list[dict[str, Any]] = []
    seeds: Seeds | None = None
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    search: dict[str, Any] = {}  # kind, n, seed and a range per key (see optlab.study.search)
    early_stop: EarlyStop | None = None  # never part of a run: its id does not change
    final: FinalRuns | None = None

    @field_validator("zip", mode="before")
    @classmethod
    def _one_zip_table(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v


class WarmupAnalysisSettings(BaseModel):
    """What `optlab analyze warmup` compares (seed 002's H3 and H4)."""

    model_config = ConfigDict(extra="forbid")
    # H3: the block whose dataset the others must replicate (default: the first block).
    reference: str | None = None
    # H4: two optimizer plugin names, the one expected to be less warmup-sensitive first
    # (default: adamw and sgd, when the study has both).
    compare: tuple[str, str] | None = None


class AnalysisSettings(BaseModel):
    """``[analysis.NAME]``: settings of the named analyses; they never change a run."""

    model_config = ConfigDict(extra="forbid")
    warmup: WarmupAnalysisSettings = WarmupAnalysisSettings()


class StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str = ""
    seeds: Seeds = [0]
    base: dict[str, Any]
    block: list[Block] = []
    analysis: AnalysisSettings = AnalysisSettings()
    # [plugins.GROUP] NAME = "FILE.py:OBJECT": plugins from files beside the study
    plugins: dict[str, Any] = {}


class Study(BaseModel):
    """A loaded study: its source, validated shape, and run-level --set overrides."""

    name: str
    file: str
    source: str
    description: str
    seeds: list[int]
    base: dict[str, Any]
    blocks: list[Block]
    overrides: dict[str, Any] = {}
    analysis: AnalysisSettings = AnalysisSettings()
    folder: str = ""  # the study file's folder: relative file paths in it are read there
    plugins: dict[str, Any] = {}  # the [plugins] table (optlab.study.plugin_files)


def seed_list(seeds: int | list[int]) -> list[int]:
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def parse_value(text: str) -> Any:
    """A --set value: a TOML value (``0.1``, ``[1, 2]``, ``{name = "sgd"}``) or a bare string."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(_too_deep(f"--set value {text[:40]!r}")) from None
    if nesting(value) > MAX_NESTING:
        raise ConfigError(_too_deep(f"--set value {text[:40]!r}"))
    return value


def parse_sets(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, such as optimizer.lr=0.1")
        out.append((key.strip(), parse_value(value.strip())))
    return out


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a study file is TOML (UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the study file: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: TOML syntax error: {e}") from None
    except RecursionError:
        raise ConfigError(_too_deep(path)) from None
    if nesting(raw) > MAX_NESTING:
        raise ConfigError(_too_deep(path))
    return text, raw


MAX_NESTING = 32  # tables and arrays inside each other; the seeds' studies need 5


def _too_deep(where: Any) -> str:
    return (
        f"{where}: tables and arrays nested over {MAX_NESTING} levels deep; a study nests "
        f"at most {MAX_NESTING}"
    )


def nesting(value: Any) -> int:
    """How deep tables and arrays nest in ``value`` (found without recursion)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        if depth + 1 <= MAX_NESTING:
            stack.extend((child, depth + 1) for child in children)
        else:
            return depth + 1
    return deepest


def load_study(path: str | Path | None, sets: list[str] = ()) -> Study:
    """Read, apply --set, and validate the file's shape (plugins are checked by expand)."""
    path = Path(path) if path is not None else DEFAULT_STUDY
    text, raw = read_toml(path)
    overrides: dict[str, Any] = {}
    for key, value in parse_sets(list(sets)):
        if key.split(".")[0] in STUDY_KEYS:
            _set_in_file(raw, key, value, path)
        else:
            overrides[key] = value
    try:
        shape = StudyFile.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {describe_validation_error(e, StudyFile)}") from None
    label = _display_path(path)
    blocks = shape.block or [Block(name="main")]
    reference = shape.analysis.warmup.reference
    names = [b.name or f"block{i + 1}" for i, b in enumerate(blocks)]
    if reference is not None and reference not in names:
        raise ConfigError(
            f"{path}: analysis.warmup.reference: no block is named {reference!r}; "
            f"blocks: {', '.join(names)}"
        )

    # Plugins from files beside the study: loaded (and checked) now, visible from here on.
    files = plugin_files.load(shape.plugins, path.resolve().parent, str(path), default_registry())
    plugin_files.check(files, str(path))
    plugin_files.activate(files)
    return Study(
        name=shape.name or path.stem,
        file=label,
        source=text,
        description=shape.description,
        seeds=seed_list(shape.seeds),
        base=shape.base,
        blocks=blocks,
        overrides=overrides,
        analysis=shape.analysis,
        folder=str(path.resolve().parent),
        plugins=shape.plugins,
    )


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _set_in_file(raw: dict[str, Any], key: str, value: Any, path: Path) -> None:
    parts = key.split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{path}: --set {key}: no such key in the study file")
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: --set {key}: no such key in the study file")
    node[parts[-1]] = copy.deepcopy(value)


_UNION_TAG = re.compile(
    r"^(constrained-\w+|function-\w+\[.*\]|(list|dict|tuple)\[.*\]|int|"
    r"float|str|bool)$"
)


def describe_validation_error(
    err: ValidationError, model: type[BaseModel] | None = None, prefix: str = ""
) -> str:
    """One line for the first problem: ``key: what is wrong (given X)``."""
    first = err.errors()[0]
    # Drop pydantic's names of union branches ("seeds.constrained-int" -> "seeds").
    loc = ".".join(str(p) for p in first["loc"] if not _UNION_TAG.match(str(p)))
    key = f"{prefix}{loc}" if loc else prefix.rstrip(".")
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, first["loc"][:-1]) if model else []
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{hint}"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{key}: {msg} (given {first['input']!r})"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or ())]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return []
        model = nxt
    return list(model.model_fields)


# `optlab train`: single configurations, gathered as the runs of one study.
TRAIN_STUDY = "train"
TRAIN_SOURCE = "# optlab train: single configurations over a study's [base]\n"


def single_run(path: str | Path | None, sets: list[str] = (), seed: int = 0) -> Study:
    """One configuration: ``--set`` keys over a study's ``[base]`` (by default the
    quickstart's), its blocks left aside, as study ``train``. Every configuration trained so
    joins that study (it is the union of what was trained with `optlab train`)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed {seed}: a seed is a whole number from 0 to {MAX_SEED}")
    spec = load_study(path, list(sets))
    return spec.model_copy(
        update={
            "name": TRAIN_STUDY,
            "source": TRAIN_SOURCE,
            "description": f"single configurations trained with optlab train over {spec.file}",
            "seeds": [seed],
            "blocks": [Block(name="train")],
        }
    )
