"""Analysis views in the store, for SQL users and for `optlab analyze`, `plot` and `report`.

- ``run_summary``: one row per study and run: best and final test accuracy, the epoch of
  the best, epochs done, training seconds, steps, samples and SFO.
- ``cell_summary``: one row per cell of a study (its block and axis values), aggregated
  over seeds: mean, std, n and the half-width of a 95% t-interval of the final and best test
  accuracy, with counts of runs that diverged or failed. Only finished runs count.
- ``reach_accuracy(target)``: per run, the first epoch at which the test accuracy reaches
  ``target``, with the training seconds, steps, samples and SFO spent to get there.
- ``reach_grad_norm(epsilon)``: per run, the first probed epoch at which the full gradient
  norm (the ``full_grad_norm`` probe) is at most ``epsilon``, with the SFO spent so far.
- ``noise_scale``: per cell of a study and epoch, the gradient noise scale B_simple of the
  ``grad_noise_scale`` probe as McCandlish et al. aggregate it: the mean of tr(Sigma) over
  the cell's runs (and probed steps) divided by the mean of |G|^2, never a mean of per-run
  ratios (a ratio of two noisy one-shot estimates is biased).

The writer makes them part of the store; a reader of a store from an older optlab gets
them as temporary views.
"""

from __future__ import annotations

import contextlib
from typing import Any

import duckdb

T_TABLE_MAX_DF = 1000
Z975 = 1.959963984540054

RUN_SUMMARY = """
create or replace {temp} view run_summary as
select r.study, r.run_id, r.block, r.seed, r.status, r.axes,
       count(e.epoch) as epochs_done,
       max(e.test_acc) as best_test_acc,
       arg_max(e.test_acc, e.epoch) as final_test_acc,
       arg_max(e.epoch, [e.test_acc, -e.epoch]) filter (where e.test_acc is not null)
           as best_epoch,
       arg_max(e.test_loss, e.epoch) as final_test_loss,
       arg_max(e.train_loss, e.epoch) as final_train_loss,
       arg_max(e.train_acc, e.epoch) as final_train_acc,
       sum(e.seconds) as train_seconds,
       max(e.step) as steps, max(e.samples) as samples, max(e.sfo) as sfo
from runs r left join epochs e using (run_id)
group by r.study, r.run_id, r.block, r.seed, r.status, r.axes
"""

_METRICS = ("final_test_acc", "best_test_acc")
_AGG = """
        avg({m}) filter (where status = 'done') as {m}_mean,
        stddev_samp({m}) filter (where status = 'done') as {m}_std"""
_CI = "coalesce(q.t975, {z}) * {m}_std / sqrt(n) as {m}_ci95"

CELL_SUMMARY = (
    """
create or replace {temp} view cell_summary as
with g as (
    select study, block, axes::varchar as cell,
        count(*) filter (where status = 'done') as n,
        count(*) as runs,
        count(*) filter (where status = 'diverged') as diverged,
        count(*) filter (where status = 'failed') as failed,"""
    + ",".join(_AGG.format(m=m) for m in _METRICS)
    + """
    from run_summary group by study, block, axes::varchar)
select g.*, """
    + ", ".join(_CI.format(m=m, z=Z975) for m in _METRICS)
    + """
from g left join t_quantiles q on q.df = g.n - 1
"""
)

REACH_ACCURACY = """
create or replace {temp} macro reach_accuracy(target) as table
with c as (
    select run_id, epoch, test_acc, step, samples, sfo,
           sum(seconds) over (partition by run_id order by epoch) as seconds_so_far
    from epochs)
select r.study, r.run_id, r.seed, r.status,
       min(c.epoch) filter (where c.test_acc >= target) as epoch,
       arg_min(c.seconds_so_far, c.epoch) filter (where c.test_acc >= target) as seconds,
       arg_min(c.step, c.epoch) filter (where c.test_acc >= target) as steps,
       arg_min(c.samples, c.epoch) filter (where c.test_acc >= target) as samples,
       arg_min(c.sfo, c.epoch) filter (where c.test_acc >= target) as sfo
from runs r left join c using (run_id)
group by r.study, r.run_id, r.seed, r.status
"""

REACH_GRAD_NORM = """
create or replace {temp} macro reach_grad_norm(epsilon) as table
with g as (
    select p.run_id, p.epoch, p.value, e.sfo, e.samples, e.step
    from probes p join epochs e on e.run_id = p.run_id and e.epoch = p.epoch
    where p.probe = 'full_grad_norm' and p.key = 'global')
select r.study, r.run_id, r.seed, r.status,
       count(g.epoch) as probed_epochs,
       min(g.value) as min_grad_norm,
       min(g.epoch) filter (where g.value <= epsilon) as epoch,
       arg_min(g.sfo, g.epoch) filter (where g.value <= epsilon) as sfo,
       arg_min(g.step, g.epoch) filter (where g.value <= epsilon) as steps
from runs r left join g using (run_id)
group by r.study, r.run_id, r.seed, r.status
"""

NOISE_SCALE = """
create or replace {temp} view noise_scale as
with parts as (
    select m.study, m.block, m.axes::varchar as cell, p.run_id, p.epoch, p.step,
           avg(p.value) filter (where p.key = 'trace_sigma') as trace_sigma,
           avg(p.value) filter (where p.key = 'grad_sq') as grad_sq
    from probes p join memberships m using (run_id)
    where p.probe = 'grad_noise_scale' and p.key in ('trace_sigma', 'grad_sq')
    group by m.study, m.block, m.axes::varchar, p.run_id, p.epoch, p.step)
select study, block, cell, epoch, avg(trace_sigma) as trace_sigma, avg(grad_sq) as grad_sq,
       avg(trace_sigma) / avg(grad_sq) as b_simple, count(distinct run_id) as runs,
       count(*) as measurements
from parts where isfinite(trace_sigma) and isfinite(grad_sq)
group by study, block, cell, epoch
"""

VIEWS = (RUN_SUMMARY, CELL_SUMMARY, REACH_ACCURACY, REACH_GRAD_NORM, NOISE_SCALE)


def t_quantiles() -> list[tuple[int, float]]:
    """The 97.5% quantile of Student's t for 1..1000 degrees of freedom.

    ``scipy.special.stdtrit`` is what ``scipy.stats.t.ppf`` computes, to the bit, without
    importing ``scipy.stats`` (about 1.5 s, paid by every new store).
    """
    from scipy.special import stdtrit  # scipy: a second to import, so only when a view is made

    dfs = list(range(1, T_TABLE_MAX_DF + 1))
    return list(zip(dfs, (float(v) for v in stdtrit(dfs, 0.975)), strict=True))


def create(con: Any, temp: bool = False) -> None:
    """(Re)create the analysis views; ``temp`` for a read-only connection."""
    kind = "temp" if temp else ""
    exists = con.execute(
        "select count(*) from duckdb_tables() where table_name = 't_quantiles' "
        "and database_name = current_database()"
    ).fetchone()[0]
    if not exists:
        con.execute(f"create {kind} table t_quantiles (df integer primary key, t975 double)")
        dfs, values = zip(*t_quantiles(), strict=True)
        con.execute(
            "insert into t_quantiles select unnest(?::integer[]), unnest(?::double[])",
            [list(dfs), list(values)],
        )
    for sql in VIEWS:
        con.execute(sql.format(temp=kind))


def ensure_readable(con: Any) -> None:
    """Give a read-only connection the views if its store predates them."""

    have = con.execute(
        "select count(*) from duckdb_views() where view_name = 'noise_scale'"
    ).fetchone()[0]
    if not have:
        # Not an optlab store: its own SQL errors will say so.
        with contextlib.suppress(duckdb.Error):
            create(con, temp=True)
