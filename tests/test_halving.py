"""Successive halving's rule, against hand simulations of ASHA and of plain successive
halving on recorded curves: which configuration stops at which rung."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.errors import ConfigError
from optlab.execution.executors.work import WorkQueue
from optlab.execution.halving import Halving, rungs
from optlab.execution.tuning import Tuning
from optlab.study.expand import expand
from optlab.study.schema import load_study

LRS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009]
NAMES = "ABCDEFGHI"
RUNGS = "min_epochs = 1, reduction = 3"
# Recorded validation accuracy of configurations A..I at the rungs (epochs 1 and 3).
AT_1 = dict(zip(NAMES, [0.50, 0.60, 0.40, 0.70, 0.65, 0.30, 0.80, 0.55, 0.75], strict=True))
AT_3 = {"A": 0.52, "B": 0.70, "D": 0.80, "G": 0.78, "I": 0.90}


def plans_for(tmp_path: Path, kind: str, seeds: str = "[0]", extra: str = "") -> list:
    path = tmp_path / "h.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            name = "h"
            seeds = {seeds}
            [base]
            epochs = 9
            dataset = {{ name = "digits", val_fraction = 0.2 }}
            model = {{ name = "mlp" }}
            optimizer = {{ name = "sgd", lr = 0.1 }}
            [[block]]
            name = "b"
            early_stop = {{ kind = "{kind}", metric = "val_acc", mode = "max", {RUNGS} {extra} }}
            [block.grid]
            "optimizer.lr" = {LRS}
            """
        )
    )
    return expand(load_study(path))


def ids_by_name(plans: list, seed: int = 0) -> dict[str, str]:
    by_lr = {r.config["optimizer"]["lr"]: r.run_id for r in plans[0].runs if r.seed == seed}
    return {n: by_lr[lr] for n, lr in zip(NAMES, LRS, strict=True)}


def fresh(plans: list) -> Halving:
    ids = [r.run_id for p in plans for r in p.runs]
    return Halving(plans, ids, {}, {}, {}, {})


def arrive(h: Halving, run_id: str, epoch: int, value: float) -> dict[str, str]:
    """The run's row at a rung and its pause there: {run_id: decision} of what it settles."""
    h.epoch(run_id, epoch, {"val_acc": value})
    decisions, _ = h.reached(run_id, epoch)
    return {d.run_id: d.decision for d in decisions}


def test_rungs_lie_at_min_epochs_times_powers_of_the_reduction():
    assert rungs(1, 3, 9) == [1, 3]
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(2, 2, 20) == [2, 4, 8, 16]
    assert rungs(5, 3, 5) == []


def test_asha_stops_what_a_hand_simulation_stops(tmp_path):
    """Arrivals A..I at epoch 1, then the survivors at epoch 3 in order. By hand, with keep
    = max(1, n // 3) of the n arrived so far: C, E, F, H stop at 1; G at 3."""
    plans = plans_for(tmp_path, "asha")
    ids = ids_by_name(plans)
    h = fresh(plans)
    told = {}
    for name in NAMES:
        told |= {k: (1, v) for k, v in arrive(h, ids[name], 1, AT_1[name]).items()}
    for name in "ABDGI":
        assert told[ids[name]] == (1, "continue")
        assert h.stop_at(ids[name]) == 3
        told |= {k: (3, v) for k, v in arrive(h, ids[name], 3, AT_3[name]).items()}
    stops = {n: told[ids[n]][0] for n in NAMES if told[ids[n]][1] == "stop"}
    assert stops == {"C": 1, "E": 1, "F": 1, "H": 1, "G": 3}
    for name in "ABDI":  # past the last rung: trained to the end
        assert h.stop_at(ids[name]) is None


def test_asha_decisions_carry_their_rank(tmp_path):
    plans = plans_for(tmp_path, "asha")
    ids = ids_by_name(plans)
    h = fresh(plans)
    for name in "ABC":
        h.epoch(ids[name], 1, {"val_acc": AT_1[name]})
        decisions, _ = h.reached(ids[name], 1)
    (c,) = decisions
    event = c.event()
    assert (event["decision"], event["rank"], event["of"], event["keep"]) == ("stop", 3, 3, 1)
    assert "ranks 3 of 3" in event["reason"] and event["metric"] == "val_acc"


@pytest.mark.parametrize("order", [NAMES, "IHGFEDCBA", "DAGBEHCFI"])
def test_sha_stops_the_same_whatever_the_order(tmp_path, order):
    """Plain successive halving: all nine wait at epoch 1; the best 3 (G, I, D) go on; of
    them at epoch 3 the best 1 (I). The order of arrival changes nothing."""
    plans = plans_for(tmp_path, "sha")
    ids = ids_by_name(plans)
    h = fresh(plans)
    told = {}
    for i, name in enumerate(order):
        got = arrive(h, ids[name], 1, AT_1[name])
        if i < len(order) - 1:
            assert got == {ids[name]: "wait"}
        told |= {k: (1, v) for k, v in got.items()}
    assert {n for n in NAMES if told[ids[n]][1] == "continue"} == set("GID")
    for name in [n for n in order if n in "GID"]:
        told |= {k: (3, v) for k, v in arrive(h, ids[name], 3, AT_3[name]).items()}
    stops = {n: told[ids[n]][0] for n in NAMES if told[ids[n]][1] == "stop"}
    assert stops == {"A": 1, "B": 1, "C": 1, "E": 1, "F": 1, "H": 1, "D": 3, "G": 3}


def test_a_configuration_is_its_seeds_mean_and_arrives_whole(tmp_path):
    """Two seeds a configuration: the first seed at a rung waits; the configuration's value
    is the seeds' mean; a seed that diverged before the rung makes it the worst."""
    plans = plans_for(tmp_path, "asha", seeds="[0, 1]")
    s0, s1 = ids_by_name(plans, 0), ids_by_name(plans, 1)
    h = fresh(plans)
    assert arrive(h, s0["A"], 1, 0.9) == {}  # A's other seed is still on its way
    assert arrive(h, s1["A"], 1, 0.5) == {s0["A"]: "continue", s1["A"]: "continue"}
    # B: mean 0.6 > A's 0.7? no: 0.55 < 0.7, so B ranks 2 of 2 and stops
    arrive(h, s0["B"], 1, 0.6)
    assert arrive(h, s1["B"], 1, 0.5) == {s0["B"]: "stop", s1["B"]: "stop"}
    # C: one seed diverges in epoch 1; the other's 0.99 does not save it
    arrive(h, s0["C"], 1, 0.99)
    decisions, _ = h.ended(s1["C"], "diverged")
    assert {d.run_id: d.decision for d in decisions} == {s0["C"]: "stop"}
    assert decisions[0].event()["value"] is None
    assert "a seed diverged" in decisions[0].event()["reason"]


def test_a_seed_whose_row_came_before_its_pause_is_decided_with_the_others(tmp_path):
    """Events of runs interleave: a seed's row at the rung may reach the coordinator before
    the other seeds' pauses, and its own pause after them. The configuration arrives with
    that last pause, and every seed is told."""
    plans = plans_for(tmp_path, "sha", seeds="[0, 1, 2]")
    seeds = [ids_by_name(plans, s) for s in (0, 1, 2)]
    h = fresh(plans)
    told = {}
    for name in NAMES:
        a, b, c = (seeds[i][name] for i in range(3))
        h.epoch(c, 1, {"val_acc": AT_1[name]})
        for run in (a, b):
            h.epoch(run, 1, {"val_acc": AT_1[name]})
            told |= {d.run_id: d.decision for d in h.reached(run, 1)[0]}
        told |= {d.run_id: d.decision for d in h.reached(c, 1)[0]}
    assert len(told) == 27
    goes_on = {n for n in NAMES if told[seeds[2][n]] == "continue"}
    assert goes_on == set("GID")
    assert all(told[seeds[i][n]] == told[seeds[2][n]] for i in (0, 1) for n in NAMES)


def test_group_by_halves_each_group_among_its_own(tmp_path):
    """group_by = "optimizer": an adamw configuration is not ranked against sgd's."""
    path = tmp_path / "g.toml"
    path.write_text(
        textwrap.dedent(
            """
            name = "g"
            [base]
            epochs = 3
            dataset = { name = "digits", val_fraction = 0.2 }
            model = { name = "mlp" }
            [[block]]
            name = "b"
            early_stop = { kind = "asha", group_by = "optimizer" }
            [block.grid]
            optimizer = [
                { name = "sgd", lr = 0.1 },
                { name = "sgd", lr = 0.2 },
                { name = "adamw", lr = 0.001 },
            ]
            """
        )
    )
    plans = expand(load_study(path))
    sgd1, sgd2, adamw = (r.run_id for r in plans[0].runs)
    h = fresh(plans)
    assert arrive(h, sgd1, 1, 0.9) == {sgd1: "continue"}
    assert arrive(h, sgd2, 1, 0.8) == {sgd2: "stop"}  # second of two sgd
    assert arrive(h, adamw, 1, 0.1) == {adamw: "continue"}  # first of its own group


def test_a_study_that_grew_lets_a_configuration_stopped_before_go_on(tmp_path):
    """A configuration stopped in an earlier session is looked at again when a new one
    arrives at its rung: among the best max(1, n // 3) of all there now, it goes on.

    Earlier: A (0.5), B (0.6), C (0.55) arrived at epoch 1 in that order; C ranked 2 of 3
    and stopped. The study grew by D, E, F, all worse: at D (n 4, keep 1) and E (n 5, keep
    1) C still ranks 2; at F (n 6, keep 2) it goes on, from its checkpoint at epoch 1."""
    plans = plans_for(tmp_path, "asha")
    ids = ids_by_name(plans)
    values = {(ids[n], 1): v for n, v in (("A", 0.5), ("B", 0.6), ("C", 0.55))}
    states = {ids["A"]: "running", ids["B"]: "running", ids["C"]: "stopped"}
    decided = {(ids["A"], 1): "continue", (ids["B"], 1): "continue", (ids["C"], 1): "stop"}
    coming = [ids[n] for n in "DEF"]
    h = Halving(plans, coming, states, {ids["C"]: 1}, values, decided)
    assert h.stop_at(ids["C"]) == 1
    for name, value in (("D", 0.1), ("E", 0.2)):
        h.epoch(ids[name], 1, {"val_acc": value})
        decisions, again = h.reached(ids[name], 1)
        assert {d.run_id: d.decision for d in decisions} == {ids[name]: "stop"}
        assert again == []
    h.epoch(ids["F"], 1, {"val_acc": 0.3})
    decisions, again = h.reached(ids["F"], 1)
    assert {d.run_id: d.decision for d in decisions} == {ids["F"]: "stop", ids["C"]: "continue"}
    assert [r.run_id for r in again] == [ids["C"]]
    assert h.stop_at(ids["C"]) == 3


def test_early_stop_errors_name_the_key(tmp_path):
    path = tmp_path / "e.toml"
    base = """
        name = "e"
        [base]
        epochs = 3
        dataset = {{ name = "digits"{val} }}
        model = {{ name = "mlp" }}
        optimizer = {{ name = "sgd", lr = 0.1 }}
        [[block]]
        early_stop = {{ {table} }}
        [block.grid]
        "optimizer.lr" = [0.1, 0.2]
        """
    cases = [
        ('kind = "hyperband"', ", val_fraction = 0.1", "early_stop.kind"),
        ('kind = "asha", metric = "test_acc"', ", val_fraction = 0.1", "early_stop.metric"),
        (
            'kind = "asha", metric = "val_loss", mode = "max"',
            ", val_fraction = 0.1",
            "mode = 'min'",
        ),
        ('kind = "asha", reduction = 1', ", val_fraction = 0.1", "early_stop.reduction"),
        ('kind = "asha"', "", "val_fraction"),
        ('kind = "asha", group_by = "optimiser"', ", val_fraction = 0.1", "early_stop.group_by"),
    ]
    for table, val, wanted in cases:
        path.write_text(textwrap.dedent(base.format(table=table, val=val)))
        with pytest.raises(ConfigError) as e:
            expand(load_study(path))
        assert wanted in str(e.value), (table, str(e.value))
        assert "\n" not in str(e.value)


def test_halving_does_not_touch_a_runs_identity(tmp_path):
    """early_stop and final are how a block is run, not what a run computes."""
    with_it = {r.run_id for p in plans_for(tmp_path, "asha") for r in p.runs}
    without = plans_for(tmp_path, "sha")
    assert with_it == {r.run_id for p in without for r in p.runs}
    assert list(itertools.islice(with_it, 1))


def test_a_search_run_ending_during_a_write_is_asked_about_in_the_next(tmp_path):
    """The queue is held (no slot gives up) once a group's last search run has ended, until
    a write that holds its events has asked the store for its final runs: a group that
    ends while a write is on its way keeps it held for the next one."""
    path = tmp_path / "f.toml"
    path.write_text(
        textwrap.dedent(
            """
            name = "f"
            [base]
            epochs = 2
            dataset = { name = "digits", val_fraction = 0.2 }
            model = { name = "mlp" }
            optimizer = { name = "sgd", lr = 0.1 }
            [[block]]
            name = "a"
            final = { select = "val_acc", seeds = 2 }
            grid = { "optimizer.lr" = [0.1, 0.2] }
            [[block]]
            name = "b"
            final = { select = "val_acc", seeds = 2 }
            grid = { "optimizer.lr" = [0.3] }
            """
        )
    )
    plans = expand(load_study(path))
    (a1, a2), (b1,) = ([r.run_id for r in p.runs] for p in plans)
    work = WorkQueue()
    tuning = Tuning(tmp_path / "optlab.duckdb", None, plans, work, {}, tmp_path)
    tuning.see({"type": "finished", "run_id": a1})
    assert work.held == 0  # a2 is still to come
    tuning.see({"type": "diverged", "run_id": a2})
    assert work.held == 1 and not work.done()
    tuning.taking_batch()  # a write starts with block a's events
    tuning.see({"type": "finished", "run_id": b1})  # block b's search ends meanwhile
    tuning.after_write(lambda runs: None)
    assert work.held == 1  # b's events are not in the store yet
    tuning.taking_batch()
    tuning.after_write(lambda runs: None)
    assert work.held == 0 and work.done()


def test_configurations_decided_before_a_crash_still_count_at_their_rung(tmp_path):
    """After a crash, a configuration that went on past epoch 1 resumes in the new session
    without pausing there again: its value at epoch 1 still counts for those that arrive
    now. Before: A (0.5) and B (0.6) went on, C (0.55) stopped; A and B are to resume."""
    plans = plans_for(tmp_path, "asha")
    ids = ids_by_name(plans)
    values = {(ids[n], 1): v for n, v in (("A", 0.5), ("B", 0.6), ("C", 0.55))}
    decided = {(ids["A"], 1): "continue", (ids["B"], 1): "continue", (ids["C"], 1): "stop"}
    states = {ids["A"]: "interrupted", ids["B"]: "interrupted", ids["C"]: "stopped"}
    coming = [ids[n] for n in "ABD"]
    h = Halving(plans, coming, states, {}, values, decided)
    assert h.stop_at(ids["A"]) == 3
    h.epoch(ids["D"], 1, {"val_acc": 0.58})
    (d,) = h.reached(ids["D"], 1)[0]
    # four at the rung (A, B, C, D): keep 1, and D ranks 2 (after B)
    assert (d.decision, d.rank, d.of, d.keep) == ("stop", 2, 4, 1)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.8]), min_size=len(NAMES), max_size=len(NAMES)
    ),
    order=st.permutations(list(NAMES)),
)
def test_asha_matches_the_rule_written_plainly(tmp_path_factory, values, order):
    """Against the rule as the issue states it, computed from scratch at each arrival:
    go on if among the best max(1, n // 3) of the n arrived so far (ties by key)."""
    plans = plans_for(tmp_path_factory.mktemp("p"), "asha")
    ids = ids_by_name(plans)
    h = fresh(plans)
    value = dict(zip(NAMES, values, strict=True))
    arrived: list[str] = []
    for name in order:
        arrived.append(name)
        key = {n: h.unit_of[ids[n]] for n in arrived}
        ranked = sorted(arrived, key=lambda n: (-value[n], key[n]))
        expected = "continue" if ranked.index(name) < max(1, len(arrived) // 3) else "stop"
        assert arrive(h, ids[name], 1, value[name]) == {ids[name]: expected}


def test_a_seed_run_again_at_a_rung_its_configuration_stopped_at_stops_too(tmp_path):
    """Seed 1 of B failed before epoch 1; B arrived with seed 0 alone and was stopped. Run
    again (--retry-failed), seed 1 reaches epoch 1 and is told to stop as well: its
    configuration's decision there stands (and the seed stopped before is not told
    twice)."""
    plans = plans_for(tmp_path, "asha", seeds="[0, 1]")
    s0, s1 = ids_by_name(plans, 0), ids_by_name(plans, 1)
    values = {(s0["A"], 1): 0.9, (s1["A"], 1): 0.9, (s0["B"], 1): 0.5}
    states = {s0["A"]: "done", s1["A"]: "done", s0["B"]: "stopped", s1["B"]: "failed"}
    decided = {(s0["A"], 1): "continue", (s1["A"], 1): "continue", (s0["B"], 1): "stop"}
    h = Halving(plans, [s1["B"]], states, {s0["B"]: 1}, values, decided)
    assert h.stop_at(s1["B"]) == 1
    assert arrive(h, s1["B"], 1, 0.4) == {s1["B"]: "stop"}


def test_sha_decides_the_rung_when_the_last_awaited_configuration_fails(tmp_path):
    """Eight configurations wait at epoch 1; the ninth's only run fails before it. With that
    failure the rung is complete: the best two of the eight go on (G and I)."""
    plans = plans_for(tmp_path, "sha")
    ids = ids_by_name(plans)
    h = fresh(plans)
    for name in NAMES.replace("C", ""):
        assert arrive(h, ids[name], 1, AT_1[name]) == {ids[name]: "wait"}
    decisions, _ = h.ended(ids["C"], "failed")
    told = {d.run_id: d.decision for d in decisions}
    assert len(told) == 8
    assert {n for n in NAMES if told.get(ids[n]) == "continue"} == {"G", "I"}
