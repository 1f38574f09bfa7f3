"""Launching studies: plan the parts of the study files asked for, check the store and the
datasets, record the studies, run what is not done on one executor under the store's writer
lock, and summarise. What `optlab run`,
`optlab train` and ``optlab.train`` share; the CLI turns the exit code into its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from optlab.errors import ConfigError, OptlabError, UsageError
from optlab.execution import executors, finals, preparing
from optlab.execution.coordinator import combine, execute, prepare
from optlab.execution.progress import describe_axes
from optlab.execution.selection import Selection, select
from optlab.states import State
from optlab.store.core import check_store, log_path, other_names
from optlab.store.liveness import writer_lock
from optlab.store.opening import reading
from optlab.study.expand import all_runs, expand, file_matrix
from optlab.study.schema import load_study


@dataclass
class Part:
    """One study of an `optlab run`: the study, its planned blocks and its file's matrix."""

    spec: Any
    plans: list[Any]
    matrix: set[str] | None


@dataclass
class Launch:
    """How `optlab run` (and `optlab train`) run what they planned."""

    gpus: str | None
    per_gpu: int
    workers: int | None
    retry_failed: bool
    data_dir: Path
    checkpoint_dir: Path | None
    stall_timeout: float
    executor_name: str
    executor_options: dict[str, Any]  # the executor's own (--executor-opt, --address)
    store: Path
    early_stop: bool = True  # False: --no-early-stop
    stop_after: float | None = None  # seconds: --stop-after (the session's end)


# `optlab run`'s exit code when --stop-after's time was up and runs are left to go on
# (EX_TEMPFAIL: the same command again carries on).
EXIT_TIME_UP = 75


def launch(parts: list[Part], how: Launch, out: Any, err: Any) -> tuple[Any, int]:
    """Check the store and the datasets, record the studies, run what is not done on one
    executor and print (on ``out`` and ``err``, consoles) the start line and the summary.
    Returns the outcome (None when nothing was left to run) and the exit code `optlab run`
    gives: 130 interrupted, 75 when --stop-after's time was up with runs left, 1 when a
    run failed, the study stopped early or runs were left without a slot, else 0."""

    store = how.store
    deadline = time.time() + how.stop_after if how.stop_after is not None else None
    runs = [r for part in parts for r in all_runs(part.plans)]
    check_store(store)
    linked = other_names(store)
    if linked:
        err.print(f"note: {linked}", markup=False)
    if how.checkpoint_dir is not None:
        check_folder(how.checkpoint_dir, "--checkpoint-dir")
    # Datasets are fetched (or found missing) before any run starts or the store is touched;
    # the workers are given the folder (not through this process's environment).
    for part in parts:
        prepare_datasets(part.spec, all_runs(part.plans), how.data_dir)
    submits = False  # the executor hands the runs to a scheduler and returns (Slurm)
    with contextlib.ExitStack() as stack:
        made: list[Any] = []

        def executor() -> Any:
            """The executor, built when first needed (Ray's connects, or starts a cluster),
            and let go of however this ends."""
            if not made:
                built = executors.create(
                    how.executor_name,
                    how.executor_options,
                    store=store,
                    stall_timeout=how.stall_timeout,
                    data_dir=how.data_dir.resolve(),
                    checkpoints_shared=how.checkpoint_dir is not None,
                    datasets=preparing.dataset_tables(runs),
                )
                made.append(stack.enter_context(contextlib.closing(built)))
            return made[0]

        if _anything_to_run(store, runs, how):
            # What cannot be had (--gpus 9 of 8) is refused before the store is touched.
            executor().make_slots(how.gpus, how.per_gpu, how.workers, None)
            submits = getattr(executor(), "submits", False)
            if submits:
                _can_submit(how)
                if any(p.early_stop is not None or p.final is not None for p in plans_of(parts)):
                    # Rounds: the last job of each goes on (decides, submits the next).
                    executor().continuation = functools.partial(go_on, parts, _anchored(how))
        outcome = _run_locked(
            parts, how, executor, len({r.run_id for r in runs}), out, err, deadline
        )
    if outcome is None or submits:
        return None, 0
    return outcome, exit_code(outcome)


def exit_code(outcome: Any) -> int:
    """130 interrupted; 75 when --stop-after's time was up with runs left to go on; 1 when
    a run failed, the study stopped early or runs were left without a slot that could take
    them (every node the executor had could not prepare the datasets); else 0."""
    if outcome.interrupted:
        return 130
    left = len(outcome.statuses) < outcome.planned or any(
        s == State.INTERRUPTED for s in outcome.statuses.values()
    )
    if outcome.held and left:
        return EXIT_TIME_UP
    if (
        outcome.stopped
        or any(s in (State.FAILED, State.INTERRUPTED) for s in outcome.statuses.values())
        or left
    ):
        return 1
    return 0


def _anything_to_run(store: Path, runs: list[Any], how: Launch) -> bool:
    """Whether some planned run has no end in the store yet, read before an executor is
    built, so that a finished study run again says so without starting Ray. Whatever is
    unsure (no store, a store busy or damaged, runs an earlier session left running, final
    runs not chosen yet) counts as something to run, or is found so under the lock."""
    if not store.exists():
        return True
    ended = [State.DONE, State.DIVERGED]
    ended += [] if how.retry_failed else [State.FAILED]
    ended += [State.STOPPED] if how.early_stop else []
    ids = sorted({r.run_id for r in runs})
    try:
        with reading(store, timeout=5.0) as con:
            (n,) = con.execute(
                "select count(*) from run_state where run_id in (select unnest(?)) "
                "and status in (select unnest(?))",
                [ids, [str(s) for s in ended]],
            ).fetchone()
    except Exception:  # noqa: BLE001 - unsure: the locked path decides
        return True
    return n < len(ids)


def _run_locked(
    parts: list[Part],
    how: Launch,
    executor: Any,
    total: int,
    out: Any,
    err: Any,
    deadline: float | None = None,
) -> Any:
    """Under the store's writer lock: prepare each study, start the slots, run them all
    on them, summarise. ``executor()`` builds the executor when first called."""

    store = how.store
    names = [p.spec.name for p in parts]
    label = " + ".join(names)
    with writer_lock(store) as lock:
        prepared = _prepare_all(parts, how)
        lock.claim_file()  # the store exists now: a hard link to it finds this writer
        for plan in [p for part in parts for p in part.plans if p.final is not None]:
            if finals.seed_part(plan):
                err.print(
                    f"note: block {plan.name!r} runs seeds {', '.join(map(str, plan.seeds))} "
                    f"of {', '.join(map(str, plan.file_seeds))}: its final runs are chosen "
                    "once all have run (merge the parts, then run the whole study file)",
                    markup=False,
                )
        todo = prepared.todo
        if prepared.recovered:
            _report_recovery(prepared, out)
        if prepared.elsewhere:
            err.print(
                f"note: {len(prepared.elsewhere)} run(s) are training in Slurm jobs (their "
                "leases are live); they are left to them",
                markup=False,
            )
        if not todo:
            _nothing_to_do(label, total, prepared, out)
            return None
        run_on = executor()
        slots = run_on.make_slots(how.gpus, how.per_gpu, how.workers, len(todo))
        for note in run_on.notes(slots, how.per_gpu, how.workers, todo):
            err.print(f"note: {note}", markup=False)
        where = run_on.where(slots)
        resuming = sum(1 for r in todo if prepared.resume.get(r.run_id, {}).get("resume_upto"))
        if not getattr(run_on, "submits", False):
            out.print(
                f"{label}: running {len(todo)} of {total} runs "
                f"({total - len(todo)} already finished) on {len(slots)} worker(s) "
                f"[{where}, {slots[0].threads} thread(s) each]; store {store}",
                markup=False,
            )
        if resuming:
            out.print(f"  {resuming} of them resume from their last checkpoint where they have one")
        outcome = execute(store, names, prepared, slots, out, run_on, lock, deadline)
    if getattr(run_on, "submits", False):
        _submitted(label, total, prepared, run_on.submitted, store, out)
        return None
    _summary(label, todo, outcome, store, out, err)
    return outcome


def _nothing_to_do(label: str, total: int, prepared: Any, out: Any) -> None:
    if prepared.elsewhere:
        out.print(
            f"Nothing to run here: the runs of {label} not finished are training in "
            f"Slurm jobs ({len(prepared.elsewhere)}); `optlab status` follows them."
        )
        return
    failed = sum(1 for s in prepared.states.values() if s == State.FAILED)
    hint = f"; {failed} failed (run again with --retry-failed)" if failed else ""
    out.print(f"Nothing to run: all {total} runs of {label} are finished{hint}.")


def _submitted(
    label: str, total: int, prepared: Any, submitted: Any, store: Path, out: Any
) -> None:
    """What a submitting executor did: the jobs it queued, and how to follow them."""
    busy = f"; {len(prepared.elsewhere)} training in jobs already" if prepared.elsewhere else ""
    if submitted is None:
        out.print(
            f"Nothing to submit now: the runs of {label} left wait at a rung for the rest "
            f"of their group{busy}; run this again once those have arrived there."
        )
        return
    submission, jobs, n = submitted
    shown = ", ".join(jobs[:4]) + (" ..." if len(jobs) > 4 else "")
    out.print(
        f"{label}: submitted {n} of {total} runs ({total - len(prepared.todo)} finished"
        f"{busy}) as {len(jobs)} job(s) {shown} (submission {submission}); store {store}",
        markup=False,
    )
    out.print(
        "  Nothing needs to stay running here. Follow the study with `optlab status` from "
        "any machine that sees the store's folder; jobs at their time limit are requeued "
        "with their runs checkpointed.",
        markup=False,
    )


def _prepare_all(parts: list[Part], how: Launch) -> Any:
    """Each study recorded, the journals recovered, the runs to do planned: as one plan."""
    root = how.checkpoint_dir.resolve() if how.checkpoint_dir else None
    return combine(
        [
            prepare(
                how.store,
                part.spec,
                part.plans,
                how.retry_failed,
                root,
                part.matrix,
                how.early_stop,
            )
            for part in parts
        ]
    )


def plans_of(parts: list[Part]) -> list[Any]:
    return [plan for part in parts for plan in part.plans]


def _anchored(how: Launch) -> Launch:
    """``how`` with its folders absolute: a job goes on from wherever it runs."""
    folder = how.checkpoint_dir.resolve() if how.checkpoint_dir else None
    return dataclasses.replace(
        how, store=how.store.absolute(), data_dir=how.data_dir.resolve(), checkpoint_dir=folder
    )


def go_on(parts: list[Part], how: Launch) -> None:
    """In the last job of a submission: `optlab run` again, as the user gave it (its study
    as expanded then), printing to the job's log. It folds in what the jobs did, decides at
    the rungs they reached, and submits the runs that go on (or the final runs)."""
    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        launch(parts, how, out, err)
    except OptlabError as e:  # said in the job's log; `optlab status` shows what is left
        err.print(f"optlab: could not go on: {e}", markup=False)


def _can_submit(how: Launch) -> None:
    """What a submitting executor (Slurm) cannot do, refused before the store is touched."""
    if how.stop_after is not None:
        raise UsageError(
            f"--stop-after: the jobs of --executor {how.executor_name} stop at their own time "
            "limit (--executor-opt time=...); give one of the two"
        )


def check_folder(folder: Path, option: str) -> None:
    """A folder the runs will write to: it exists (or can be made) and is writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{option} {folder}: cannot create it: {e.strerror or e}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {folder}: not a folder this user can write to")


def prepare_datasets(spec, runs, data_dir: Path) -> None:
    try:
        preparing.prepare(preparing.dataset_tables(runs), data_dir)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{spec.file}: dataset {e}") from None


def _report_recovery(prepared: Any, out: Any) -> None:
    counts: dict[str, int] = {}
    for status in prepared.recovered.values():
        counts[status] = counts.get(status, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.print(
        f"Recovered {len(prepared.recovered)} run(s) an earlier session left unfinished "
        f"({prepared.recovered_epochs} epochs from their journals): {states}; "
        "interrupted runs run again."
    )


def _summary(study: str, todo: Any, outcome: Any, store: Path, out: Any, err: Any) -> None:
    counts: dict[str, int] = {}
    for status in outcome.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    not_run = outcome.planned - len(outcome.statuses)
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    if not_run:
        parts.append(f"{not_run} not started")
    minutes, seconds = divmod(int(outcome.seconds), 60)
    head = (
        "interrupted"
        if outcome.interrupted
        else "stopped"
        if outcome.stopped
        else "time up"
        if outcome.held and (not_run or counts.get(State.INTERRUPTED))
        else "finished"
    )
    out.print(f"{study}: {head} in {minutes}m{seconds:02d}s: {', '.join(parts) or 'nothing'}")
    by_id = {r.run_id: r for r in todo} | outcome.runs
    for run_id, status in outcome.statuses.items():
        if status in (State.FAILED, State.DIVERGED):
            r = by_id[run_id]
            err.print(
                f"  {status} {run_id} {describe_axes(r.axes, r.seed)}: "
                f"{outcome.errors.get(run_id, '')}",
                markup=False,
            )
            if status == State.FAILED:
                err.print(f"    log: {log_path(store, run_id)}", markup=False)
    if counts.get("stopped"):
        out.print(
            f"  {counts['stopped']} stopped at a rung by successive halving (a result; "
            "--no-early-stop trains them on from there)"
        )
    if outcome.stopped:
        err.print(
            f"Stopped: {outcome.stopped}. Free space, then run the same command again: "
            "the runs resume from their last checkpoints.",
            markup=False,
        )
    if outcome.unwritten:
        err.print(
            f"{outcome.unwritten} events could not be written to {store}; they are in the "
            "run journals and the next optlab run on this store writes them.",
            markup=False,
        )
    if outcome.interrupted:
        out.print("Interrupted runs are resumable: run the same command again.")
    elif head == "time up":
        out.print(
            "Time is up (--stop-after): to go on, run the same command again (here, or where "
            "the store is moved), or carry the study elsewhere with `optlab export --format "
            "bundle` and `optlab merge`."
        )


def _halving_needs_every_seed(study: Path | None, plans: list[Any]) -> None:
    """Halving decides a configuration on the mean of all its seeds: a part of the file's
    seeds would stop other configurations than the whole study, and parts run apart could
    never be merged into one answer. Refused before anything runs."""
    for plan in plans:
        if plan.early_stop is not None and finals.seed_part(plan):
            ours = ", ".join(map(str, plan.seeds))
            theirs = ", ".join(map(str, plan.file_seeds))
            raise UsageError(
                f"{study}: block {plan.name!r} halves its configurations on the mean of all "
                f"their seeds ({theirs}); a part with seeds {ours} would stop others than "
                "the whole study does, and such parts cannot be merged into one answer: "
                "run the block's seeds together (parts by block are fine)"
            )


def plan_parts(
    files: list[Path | None], sets: list[str], max_runs: int | None, chosen: Selection
) -> list[Part]:
    """Each study file loaded and expanded (the part ``chosen`` selects, if any), with its
    file's whole matrix; one line for what cannot be run together."""

    if len(files) > 1 and chosen:
        raise UsageError(
            f"{chosen.describe()}: selects part of one study; give one study file with it"
        )
    parts = []
    for study in files:
        spec = load_study(study, sets)
        plans = expand(spec, max_runs=max_runs)
        matrix = file_matrix(study, sets, plans, max_runs)
        _halving_needs_every_seed(study, plans)
        parts.append(Part(spec, select(plans, chosen), matrix))  # a part of it, if asked
    names = [p.spec.name for p in parts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"study {twice[0]!r} is given twice; give each study once")
    return parts
