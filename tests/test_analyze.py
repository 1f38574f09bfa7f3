"""optlab analyze and the analysis views, on stores whose answers are known in advance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tests.synth import make_store

ROOT = Path(__file__).resolve().parents[1]

HEAD = """
name = "{name}"
seeds = [0, 1, 2]
[base]
epochs = 3
dataset = {{ name = "synthetic", classes = 10, train_size = 50000 }}
model = {{ name = "mlp" }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
"""
BLOCK = '[[block]]\nname = "main"\n'
LRS = "[0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]"


def noise(seed: int) -> float:
    return 0.001 * (seed - 1)


def bowl(lr: float, best: float) -> float:
    """Accuracy peaking at lr = best, falling off with log distance."""
    return 0.9 - 0.05 * (math.log10(lr) - math.log10(best)) ** 2


def analyze(cli, *args):
    result = cli("analyze", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_lr_wd_finds_the_inverse_relationship(cli, tmp_path):
    text = (
        HEAD.format(name="lrwd")
        + f"""
[[block]]
name = "grid"
grid = {{ "optimizer.lr" = {LRS}, "optimizer.weight_decay" = [1e-4, 1e-3, 1e-2, 0.0] }}
"""
    )
    make_store(
        tmp_path,
        text,
        lambda c, s: (
            bowl(c["optimizer"]["lr"], 1e-4 / max(c["optimizer"]["weight_decay"], 1e-9)) + noise(s)
        ),
    )
    out = analyze(cli, "lr-wd")
    (fit,) = out["tables"]["fit"]
    assert fit["slope"] == pytest.approx(-1.0, abs=0.02)
    assert fit["consistent_with_inverse"] is True
    optima = {p["optimizer.weight_decay"]: p["optimal_lr"] for p in out["tables"]["optima"]}
    assert optima == {1e-4: 1.0, 1e-3: 0.1, 1e-2: 0.01}
    # wd = 0 has no logarithm: its 21 runs are left out, and said so.
    left = {k: v for k, v in out["left_out"][0].items() if k != "run_ids"}
    assert left == {"reason": "optimizer.weight_decay <= 0 has no logarithm", "runs": 21}


def test_lr_wd_without_a_relationship_is_not_called_inverse(cli, tmp_path):
    text = (
        HEAD.format(name="flat")
        + f"""
[[block]]
name = "grid"
grid = {{ "optimizer.lr" = {LRS}, "optimizer.weight_decay" = [1e-4, 1e-3, 1e-2] }}
"""
    )
    make_store(tmp_path, text, lambda c, s: bowl(c["optimizer"]["lr"], 0.0316) + noise(s))
    (fit,) = analyze(cli, "lr-wd")["tables"]["fit"]
    assert fit["slope"] == 0.0 and fit["consistent_with_inverse"] is False


def test_scaling_finds_the_linear_rule_per_optimizer(cli, tmp_path):
    text = (
        HEAD.format(name="scale")
        + f"""
[[block]]
name = "sgd"
grid = {{ "optimizer.lr" = {LRS}, "batch_schedule.batch_size" = [32, 320, 3200] }}
[[block]]
name = "adam"
set = {{ optimizer = {{ name = "adam" }} }}
grid = {{ "optimizer.lr" = {LRS}, "batch_schedule.batch_size" = [32, 320, 3200] }}
"""
    )

    def acc(c, s):
        bs = c["batch_schedule"]["batch_size"]
        best = 0.001 * bs / 32 if c["optimizer"]["name"] == "sgd" else 0.01  # adam: no scaling
        return bowl(c["optimizer"]["lr"], best) + noise(s)

    make_store(tmp_path, text, acc)
    fits = {f["group"]: f for f in analyze(cli, "scaling")["tables"]["fit"]}
    assert fits["optimizer=sgd"]["slope"] == pytest.approx(1.0, abs=0.01)
    assert fits["optimizer=sgd"]["consistent_with_linear_rule"] is True
    assert fits["optimizer=adam"]["slope"] == 0.0
    assert fits["optimizer=adam"]["consistent_with_linear_rule"] is False


def test_a_linear_rule_block_is_checked_as_a_rule_not_fitted(cli, tmp_path):
    """Seed 001's experiment 3: LR = 0.1 x B / 128 at five batch sizes, one nominal LR. The
    runs record the LR they trained at; scaling asks whether the metric holds across batch
    sizes (here it drops at 512), not for an optimum among one LR tried."""
    text = (
        HEAD.format(name="rule")
        + """
[[block]]
name = "linear_rule"
set = { lr_scaling = "linear", lr_reference_batch = 128 }
grid = { "batch_schedule.batch_size" = [32, 64, 128, 256, 512] }
"""
    )

    def acc(c, s):
        drop = 0.2 if c["batch_schedule"]["batch_size"] == 512 else 0.0
        return 0.7 - drop + 0.01 * (s - 1)

    make_store(tmp_path, text, acc)
    lrs = cli("query", "select distinct lr, lr_nominal from runs order by lr", "--format", "csv")
    assert lrs.stdout == "lr,lr_nominal\n0.025,0.1\n0.05,0.1\n0.1,0.1\n0.2,0.1\n0.4,0.1\n"
    out = analyze(cli, "scaling")
    assert out["tables"]["fit"] == [] and out["tables"]["optima"] == []
    rows = {r["batch_schedule.batch_size"]: r for r in out["tables"]["rule_check"]}
    assert [rows[b]["lr"] for b in sorted(rows)] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4])
    assert [b for b in sorted(rows) if rows[b]["worse"]] == [512]
    (verdict,) = [v for k, v in out["findings"].items() if k.startswith("rule_check")]
    assert verdict == (
        "linear LR scaling rule, reference batch_schedule.batch_size 128: the metric is "
        "significantly worse at 512"
    )


RULE_BLOCK = """
[[block]]
name = "linear_rule"
set = { lr_scaling = "linear", lr_reference_batch = 128 }
grid = { "batch_schedule.batch_size" = [64, 128, 256] }
"""


def rule_verdict(out):
    (verdict,) = [v for k, v in out["findings"].items() if k.startswith("rule_check ")]
    return verdict


def test_lr_wd_chooses_each_optimal_lr_on_validation_and_says_so(cli, tmp_path):
    """With a validation split the optimal LR per WD is chosen on best_val_acc (its optimum
    follows 1e-4 / WD, slope -1) although test accuracy peaks elsewhere (slope 0); without
    one the output says the test set chose."""
    text = HEAD.format(name="lrwd_val").replace(
        "train_size = 50000 }", "train_size = 50000, val_fraction = 0.1 }"
    ) + (
        f"""
[[block]]
name = "grid"
grid = {{ "optimizer.lr" = {LRS}, "optimizer.weight_decay" = [1e-4, 1e-3, 1e-2] }}
"""
    )
    make_store(
        tmp_path,
        text,
        lambda c, s: bowl(c["optimizer"]["lr"], 0.01) + noise(s),
        validation=lambda c, s: (
            bowl(c["optimizer"]["lr"], 1e-4 / c["optimizer"]["weight_decay"]) + noise(s)
        ),
    )
    out = analyze(cli, "lr-wd")
    (fit,) = out["tables"]["fit"]
    assert fit["slope"] == pytest.approx(-1.0, abs=0.02)
    assert out["findings"]["selection"].startswith(
        "each optimal optimizer.lr chosen on best_val_acc (the validation split)"
    )
    (tmp_path / "optlab.duckdb").unlink()
    make_store(tmp_path, text.replace(", val_fraction = 0.1", ""), lambda c, s: 0.5 + noise(s))
    assert analyze(cli, "lr-wd")["findings"]["selection"] == (
        "each optimal optimizer.lr chosen on best_test_acc: the study has no validation split, "
        "so the test set both chooses and reports (an optimistic estimate)"
    )


def test_a_rule_holds_only_by_an_equivalence_test_not_by_a_non_significant_drop(cli, tmp_path):
    """Seed 001's experiment 3 with 2 seeds: a drop of 2.4 points at batch 256 that Welch's
    test cannot call significant is 'not shown either way', with the smallest difference the
    study could have detected; it is not 'holds'."""
    text = HEAD.format(name="rule2").replace("[0, 1, 2]", "[0, 1]") + RULE_BLOCK
    spread = {0: -0.015, 1: 0.015}

    def acc(c, s):
        drop = 0.024 if c["batch_schedule"]["batch_size"] == 256 else 0.0
        return 0.7 - drop + spread[s] * (1 if c["batch_schedule"]["batch_size"] != 64 else 0.1)

    make_store(tmp_path, text, acc)
    out = analyze(cli, "scaling")
    rows = {r["batch_schedule.batch_size"]: r for r in out["tables"]["rule_check"]}
    # By hand: 256 against 128, Welch with equal variances s^2 = 2 x 0.015^2, n = 2 each.
    se = math.sqrt(2 * (2 * 0.015**2) / 2)
    assert rows[256]["vs_reference"] == pytest.approx(-0.024)
    assert rows[256]["p"] == pytest.approx(2 * stats.t.sf(0.024 / se, 2))
    assert rows[256]["p"] > 0.05 and not rows[256]["worse"]
    # TOST: the larger of P(T > (d + m) / se) and P(T < (d - m) / se), df 2.
    p_tost = max(stats.t.sf((-0.024 + 0.01) / se, 2), stats.t.cdf((-0.024 - 0.01) / se, 2))
    assert rows[256]["p_equivalent"] == pytest.approx(p_tost)
    assert rows[256]["equivalent"] is False
    detectable = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * se
    assert rows[256]["detectable"] == pytest.approx(detectable)
    verdict = rule_verdict(out)
    assert "holds" not in verdict
    assert verdict.startswith(
        "linear LR scaling rule, reference batch_schedule.batch_size 128: not shown either "
        "way (n too small): within ±0.01 not shown at "
    )
    assert "with 2 seeds the smallest differences this study could detect are " in verdict
    assert f"{detectable:.3g} at 256 (80% power, alpha 0.05)" in verdict
    assert out["findings"]["equivalence margin"] == (
        "±0.01, one point of accuracy (the default; --margin to change)"
    )


def test_a_rule_holds_when_every_batch_size_is_shown_equivalent(cli, tmp_path):
    """Eight seeds whose means agree within a fraction of a point: TOST shows equivalence
    within the default margin at every batch size. A margin narrower than the spread
    allows shows it nowhere."""
    text = HEAD.format(name="rule8").replace("[0, 1, 2]", "[0, 1, 2, 3, 4, 5, 6, 7]")
    text += RULE_BLOCK
    make_store(tmp_path, text, lambda c, s: 0.7 + 0.002 * ((s * 5 + c["epochs"]) % 8 - 3.5))
    out = analyze(cli, "scaling")
    assert rule_verdict(out) == (
        "linear LR scaling rule, reference batch_schedule.batch_size 128: holds within ±0.01 "
        "of the reference at every batch_schedule.batch_size (TOST equivalence test, each "
        "p < 0.05)"
    )
    narrow = analyze(cli, "scaling", "--margin", "0.0001")
    assert "not shown either way" in rule_verdict(narrow)
    assert narrow["findings"]["equivalence margin"] == "±0.0001 (--margin)"
    bad = cli("analyze", "scaling", "--margin", "0")
    assert bad.exit_code != 0 and "--margin 0: must be above 0" in bad.stderr


def test_an_optimum_among_one_value_is_not_identifiable(cli, tmp_path):
    text = HEAD.format(name="one") + BLOCK + 'grid = { "optimizer.weight_decay" = [0.0, 0.01] }\n'
    make_store(tmp_path, text, lambda c, s: 0.5 + c["optimizer"]["weight_decay"])
    (row,) = analyze(cli, "optimal", "--param", "optimizer.weight_decay")["tables"]["optimal"]
    assert row["optimum"] == 0.01 and row["values_tried"] == 2
    text = HEAD.format(name="one") + BLOCK + 'grid = { "optimizer.weight_decay" = [0.01] }\n'
    (tmp_path / "optlab.duckdb").unlink()
    make_store(tmp_path, text.replace('"one"', '"single"'), lambda c, s: 0.5)
    (row,) = analyze(cli, "optimal", "--param", "optimizer.weight_decay")["tables"]["optimal"]
    assert row["optimum"] is None and row["at_edge"] is None
    assert row["note"] == "not identifiable: one value tried (0.01)"


def test_optimal_reports_a_bootstrap_interval_and_what_it_left_out(cli, tmp_path):
    text = HEAD.format(name="opt") + BLOCK + f'grid = {{ "optimizer.lr" = {LRS} }}\n'

    def status(c, s):
        lr = c["optimizer"]["lr"]
        return {1.0: "diverged", 0.001: "failed" if s == 0 else "done"}.get(lr, "done")

    # Seeds disagree between 0.0316 and 0.1; a real interval must span both.
    def acc(c, s):
        return bowl(c["optimizer"]["lr"], 0.0316 if s < 2 else 0.1)

    make_store(tmp_path, text, acc, status=status)
    out = analyze(cli, "optimal")
    (row,) = out["tables"]["optimal"]
    assert row["optimum"] == 0.0316
    assert (row["ci_low"], row["ci_high"]) == (0.0316, 0.1)
    reasons = {item["reason"]: item["runs"] for item in out["left_out"]}
    assert reasons == {"diverged": 3, "failed": 1}
    text_out = cli("analyze", "optimal").stdout
    assert "left out: 3 run(s), diverged" in text_out
    assert "left out: 1 run(s), failed" in text_out


def test_ranking_orders_optimizers_and_tests_each_gap(cli, tmp_path):
    text = (
        HEAD.format(name="rank")
        + """
[[block]]
name = "opt"
grid = { optimizer = [{ name = "sgd" }, { name = "adam" }, { name = "adamw" }] }
"""
    )
    level = {"sgd": 0.90, "adam": 0.85, "adamw": 0.849}
    make_store(tmp_path, text, lambda c, s: level[c["optimizer"]["name"]] + 0.002 * (s - 1))
    rows = analyze(cli, "ranking")["tables"]["ranking"]
    assert [r["optimizer"] for r in rows] == ["sgd", "adam", "adamw"]
    assert [r["significant"] for r in rows] == [None, True, False]
    assert rows[1]["p_vs_next_better"] < 0.001 < rows[2]["p_vs_next_better"]


def test_ranking_of_a_study_run_in_parts_says_what_it_waits_for(cli, tmp_path):
    """Only the sgd block of a two-optimizer study is run so far: no ranking yet, said
    without an error (a study that uses one optimizer at all still gets its one line)."""
    text = (
        HEAD.format(name="rank")
        + """
[[block]]
name = "sgd"
[[block]]
name = "adam"
set = { optimizer = { name = "adam", lr = 0.001 } }
"""
    )
    make_store(tmp_path, text, lambda c, s: 0.8, blocks=["sgd"])
    out = analyze(cli, "ranking")
    assert out["tables"]["ranking"] == []
    assert out["findings"]["note"] == (
        "not answerable yet: only sgd has runs here, 3 of the study file's 6; run the rest of it"
    )


WARM = (
    HEAD.format(name="warm")
    + """
lr_schedule = { name = "cosine" }
[[block]]
name = "synthetic_sgd"
[block.grid]
"dataset.examples_per_class" = [5000, 1000, 500, 100, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "other_sgd"
set = { "dataset.classes" = 5 }
[block.grid]
"dataset.examples_per_class" = [10000, 2000, 1000, 200, 100]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "synthetic_adamw"
set = { optimizer = { name = "adamw", lr = 0.001 } }
seeds = [0, 1]
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""
)


def examples(c):
    return c["dataset"]["examples_per_class"] * c["dataset"]["classes"]


def test_warmup_finds_the_optima_the_rule_and_the_four_hypotheses(cli, tmp_path):
    # By training examples: the best warmup grows with size, and what warmup gains over no
    # warmup peaks at 5,000 examples (k is the curvature of accuracy in warmup).
    best = {50000: 10, 10000: 5, 5000: 5, 1000: 5, 500: 1}
    k = {50000: 0.0001, 10000: 0.0008, 5000: 0.003, 1000: 0.002, 500: 0.002}

    def acc(c, s):
        n, w = examples(c), c["lr_schedule"]["warmup_epochs"]
        f = 0.1 if c["optimizer"]["name"] == "adamw" else 1.0
        return 0.8 - f * k[n] * (w - best[n]) ** 2 + 0.001 * ((s * 7 + w) % 3)

    make_store(tmp_path, WARM, acc)
    out = analyze(cli, "warmup")
    assert out["findings"]["dataset_size"].startswith("training examples")
    optima = {
        (r["group"], r["examples"]): r["optimal_warmup"] for r in out["tables"]["optimal_warmup"]
    }
    assert optima[("dataset.classes=10, optimizer=sgd", 50000)] == 10
    assert optima[("dataset.classes=5, optimizer=sgd", 500)] == 1
    rule = out["tables"]["rule"][0]
    assert rule["slope"] > 0 and rule["rule"].startswith("optimal_warmup = ")
    hyp = {h["hypothesis"]: h for h in out["tables"]["hypotheses"]}
    for h in hyp.values():  # every verdict says its test, statistic, n, p and effect size
        assert h["supported"] is True and 0 <= h["p"] < 0.05, h
        assert h["test"] and h["statistic"] is not None and h["n"] > 0 and h["effect"]
    assert hyp["H1"]["effect"].startswith("curvature -")
    assert hyp["H1"]["note"].startswith("peak at 4,448 examples (95% CI ")
    assert hyp["H3"]["note"].startswith(
        "reference: block synthetic_sgd; dataset.classes=10, optimizer=sgd vs "
        "dataset.classes=5, optimizer=sgd: r=1"
    )
    assert hyp["H4"]["claim"] == "adamw is less warmup-sensitive than sgd"
    assert "geometric mean ratio 0.139" in hyp["H4"]["effect"]


def test_warmup_chooses_each_optimal_warmup_on_validation_where_there_is_a_split(cli, tmp_path):
    """Validation's best warmup is 10 everywhere, test's is 1: with a split the optima
    follow validation and the output says the test set was not read; without one it says
    the test set chose."""

    def test_side(c, s):
        return 0.8 - 0.002 * (c["lr_schedule"]["warmup_epochs"] - 1) ** 2 + 0.001 * s

    def val_side(c, s):
        return 0.7 - 0.002 * (c["lr_schedule"]["warmup_epochs"] - 10) ** 2 + 0.001 * s

    split = WARM.replace("train_size = 50000 }", "train_size = 50000, val_fraction = 0.1 }")
    make_store(tmp_path, split, test_side, validation=val_side)
    out = analyze(cli, "warmup")
    assert {r["optimal_warmup"] for r in out["tables"]["optimal_warmup"]} == {10}
    assert out["findings"]["selection"] == (
        "each optimal warmup and H1-H4 read best_val_acc (the validation split); the test "
        "set is not read"
    )
    (tmp_path / "optlab.duckdb").unlink()
    make_store(tmp_path, WARM, test_side)
    out = analyze(cli, "warmup")
    assert {r["optimal_warmup"] for r in out["tables"]["optimal_warmup"]} == {1}
    assert out["findings"]["selection"].startswith(
        "each optimal warmup (and H1's best warmup) chosen on best_test_acc: the study has "
        "no validation split"
    )


def test_h1_a_benefit_that_keeps_rising_with_size_is_not_a_peak(cli, tmp_path):
    best = {50000: 10, 10000: 5, 5000: 5, 1000: 1, 500: 1}

    def acc(c, s):
        w = c["lr_schedule"]["warmup_epochs"]
        return 0.8 - 0.002 * (w - best[examples(c)]) ** 2 + 0.001 * ((s * 7 + w) % 3)

    make_store(tmp_path, WARM.split('[[block]]\nname = "other_sgd"')[0], acc)
    h1 = analyze(cli, "warmup")["tables"]["hypotheses"][0]
    # The benefit rises monotonically: 0.002 at 500 examples up to 0.2 at 50,000.
    assert h1["supported"] is False
    assert "no interior peak" in h1["note"] or h1["note"].startswith("no peak")


def test_h1_measures_the_benefit_on_seeds_it_did_not_choose_the_warmup_on(cli, tmp_path):
    """Pure noise: warmup does nothing. Choosing the best warmup on the same runs reports a
    benefit of about half a noise unit (the winner's curse); held-out seeds report none."""
    import random
    import zlib

    regimes = [5000, 3000, 2000, 1000, 700, 500, 300, 200, 100, 50]
    warmups = [0, 1, 5, 10, 20]
    text = (
        HEAD.format(name="noise").replace("seeds = [0, 1, 2]", "seeds = 6")
        + f"""
lr_schedule = {{ name = "cosine" }}
[[block]]
name = "sgd"
[block.grid]
"dataset.examples_per_class" = {regimes}
"lr_schedule.warmup_epochs" = {warmups}
[[block]]
name = "one_seed"
seeds = [0]
set = {{ "dataset.classes" = 5 }}
[block.grid]
"dataset.examples_per_class" = [5000, 1000, 500, 100, 50]
"lr_schedule.warmup_epochs" = {warmups}
"""
    )

    def noise(regime, classes, w, s):
        key = f"{regime} {classes} {w} {s}".encode()
        return 0.01 * random.Random(zlib.crc32(key)).gauss()

    def acc(c, s):
        return 0.8 + noise(
            c["dataset"]["examples_per_class"],
            c["dataset"]["classes"],
            c["lr_schedule"]["warmup_epochs"],
            s,
        )

    make_store(tmp_path, text, acc)
    out = analyze(cli, "warmup")
    held_out = [r["benefit_mean"] for r in out["tables"]["benefit"]]
    assert len(held_out) == len(regimes)  # the one-seed group cannot hold a seed out
    assert out["findings"]["h1_left_out"] == (
        "one seed, so the best warmup cannot be chosen on other seeds: dataset.classes=5"
    )
    in_sample = []
    for regime in regimes:
        mean = np.array([[noise(regime, 10, w, s) for w in warmups] for s in range(6)]).mean(axis=0)
        in_sample.append(mean.max() - mean[0])
    assert np.mean(in_sample) > 0.003  # about 0.01 * 1.16 / sqrt(6)
    assert abs(np.mean(held_out)) < 0.5 * np.mean(in_sample)


def test_warmup_hypotheses_that_the_data_refute_or_cannot_test(cli, tmp_path):
    text = (
        HEAD.format(name="flat")
        + """
lr_schedule = { name = "cosine" }
[[block]]
name = "sgd"
[block.grid]
"dataset.examples_per_class" = [5000, 1000, 500, 100, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""
    )
    # Warmup helps most at the smallest regime: H1 and H2 are refuted, H3 and H4 untestable.
    best = {5000: 1, 1000: 1, 500: 1, 100: 5, 50: 20}

    def acc(c, s):
        w, r = c["lr_schedule"]["warmup_epochs"], c["dataset"]["examples_per_class"]
        return 0.8 - 0.001 * (w - best[r]) ** 2 + 0.0005 * s

    make_store(tmp_path, text, acc)
    hyp = {h["hypothesis"]: h for h in analyze(cli, "warmup")["tables"]["hypotheses"]}
    assert hyp["H1"]["supported"] is False and hyp["H2"]["supported"] is False
    assert hyp["H3"]["supported"] is None and hyp["H4"]["supported"] is None
    assert hyp["H4"]["note"].startswith(
        "not testable: needs adamw and sgd runs, or name the "
        "two optimizers with [analysis.warmup] compare"
    )


def test_h2_is_tested_within_each_dataset_and_ties_count_as_neither_way(cli, tmp_path):
    """Two datasets whose optimal warmup never changes with size; one has the larger sizes
    and the longer warmup. Pooled, size and warmup correlate perfectly; within each dataset
    they do not correlate at all. The third group is flat: every warmup ties."""
    text = (
        HEAD.format(name="h2")
        + """
lr_schedule = { name = "cosine" }
[[block]]
name = "big"
[block.grid]
"dataset.examples_per_class" = [5000, 2000, 1000]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10]
[[block]]
name = "small"
set = { "dataset.classes" = 5 }
[block.grid]
"dataset.examples_per_class" = [100, 50, 20]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10]
[[block]]
name = "flat"
set = { "dataset.classes" = 7 }
[block.grid]
"dataset.examples_per_class" = [1000, 100, 10]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10]
"""
    )

    def acc(c, s):
        w, classes = c["lr_schedule"]["warmup_epochs"], c["dataset"]["classes"]
        if classes == 7:
            return 0.7
        return 0.8 - 0.001 * (w - (10 if classes == 10 else 1)) ** 2

    make_store(tmp_path, text, acc)
    h2 = analyze(cli, "warmup")["tables"]["hypotheses"][1]
    assert h2["supported"] is False and h2["p"] == pytest.approx(0.5)
    assert h2["statistic"] == pytest.approx(0.0) and h2["effect"].startswith("mean rho 0 ")
    assert h2["note"].count("the optimal warmup never changes (rho 0)") == 3


def test_h3_compares_with_the_block_the_study_names(cli, tmp_path):
    best = {5000: 10, 500: 5, 50: 1}
    text = (
        HEAD.format(name="ref")
        + """
lr_schedule = { name = "cosine" }
[analysis.warmup]
reference = "second"
[[block]]
name = "first"
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "second"
set = { "dataset.classes" = 5 }
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""
    )

    def acc(c, s):
        w = c["lr_schedule"]["warmup_epochs"]
        return 0.8 - 0.002 * (w - best[c["dataset"]["examples_per_class"]]) ** 2

    make_store(tmp_path, text, acc)
    h3 = analyze(cli, "warmup")["tables"]["hypotheses"][2]
    assert h3["note"].startswith(
        "reference: block second; dataset.classes=5 vs dataset.classes=10: r=1"
    )


def test_h4_compares_the_optimizers_the_study_names_whatever_their_seed_counts(cli, tmp_path):
    """Both optimizers are equally (in)sensitive: pure noise of the same size. LAMB has 2
    seeds and SGD 8; a range of means over seeds would call LAMB about twice as sensitive."""
    import random
    import zlib

    text = (
        HEAD.format(name="h4").replace("seeds = [0, 1, 2]", "seeds = 8")
        + """
lr_schedule = { name = "cosine" }
[analysis.warmup]
compare = ["lamb", "sgd"]
[[block]]
name = "sgd"
[block.grid]
"dataset.examples_per_class" = [5000, 2000, 1000, 500, 200, 100, 50, 20]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "lamb"
seeds = 2
set = { optimizer = { name = "lamb", lr = 0.01 } }
[block.grid]
"dataset.examples_per_class" = [5000, 2000, 1000, 500, 200, 100, 50, 20]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""
    )

    def acc(c, s):
        key = json.dumps(
            [c["dataset"], c["lr_schedule"], c["optimizer"]["name"], s], sort_keys=True
        )
        return 0.8 + 0.01 * random.Random(zlib.crc32(key.encode())).gauss()

    make_store(tmp_path, text, acc)
    h4 = analyze(cli, "warmup")["tables"]["hypotheses"][3]
    assert h4["claim"] == "lamb is less warmup-sensitive than sgd" and h4["n"] == 8
    ratio = float(h4["effect"].rpartition("geometric mean ratio ")[2])
    assert 0.75 < ratio < 1.33 and h4["supported"] is False


def test_warmup_settings_name_nothing_or_wait_for_what_is_not_run(cli, tmp_path):
    text = (
        HEAD.format(name="bad")
        + """
lr_schedule = { name = "cosine" }
[analysis.warmup]
{setting}
[[block]]
name = "only"
[block.grid]
"dataset.examples_per_class" = [500, 50]
"lr_schedule.warmup_epochs" = [0, 5]
"""
    )
    (tmp_path / "a.toml").write_text(text.replace("{setting}", 'reference = "nope"'))
    result = cli("show", "a.toml")
    assert result.exit_code == 1 and result.stderr == (
        "Error: a.toml: analysis.warmup.reference: no block is named 'nope'; blocks: only\n"
    )
    # A study run in parts (the AdamW block not yet run): everything but H4 is answered,
    # and H4 says what it waits for.
    make_store(tmp_path, text.replace("{setting}", 'compare = ["adamw", "sgd"]'), lambda c, s: 0.5)
    out = analyze(cli, "warmup")
    assert [row["examples_per_class"] for row in out["tables"]["optimal_warmup"]] == [50, 500]
    assert [h["hypothesis"] for h in out["tables"]["hypotheses"]] == ["H1", "H2", "H3", "H4"]
    h4 = out["tables"]["hypotheses"][3]
    assert h4["supported"] is None
    assert h4["note"] == "not testable yet: no finished runs of adamw"


def test_sfo_counts_samples_to_reach_epsilon_per_schedule(cli, tmp_path):
    text = (
        HEAD.format(name="sfo")
        + """
[[block]]
name = "const"
[[block]]
name = "grow"
set = { batch_schedule = { name = "exp_growth", batch_size = 16, rate = 2.0, incr_interval = 1 } }
"""
    )
    norms = {"constant": [1.0, 0.6, 0.4], "exp_growth": [0.8, 0.3, 0.1]}
    make_store(
        tmp_path, text, lambda c, s: 0.5, grad_norm=lambda c, s: norms[c["batch_schedule"]["name"]]
    )
    out = analyze(cli, "sfo", "--epsilon", "0.5")
    rows = {r["schedule"]: r for r in out["tables"]["sfo"]}
    assert rows["batch_schedule=exp_growth"]["sfo_mean"] == 2000
    assert rows["batch_schedule=constant"]["sfo_mean"] == 3000
    assert [r["schedule"] for r in out["tables"]["sfo"]][0] == "batch_schedule=exp_growth"
    never = analyze(cli, "sfo", "--epsilon", "0.2")
    assert {r["schedule"]: r["reached"] for r in never["tables"]["sfo"]} == {
        "batch_schedule=exp_growth": 3,
        "batch_schedule=constant": 0,
    }
    assert never["left_out"][0]["reason"].startswith("never reached epsilon = 0.2")


def test_cell_summary_gives_mean_std_n_and_a_t_interval(cli, tmp_path):
    text = HEAD.format(name="cells") + BLOCK + 'grid = { "optimizer.lr" = [0.1] }\n'
    make_store(tmp_path, text, lambda c, s: [0.5, 0.6, 0.8][s])
    row = json.loads(cli("query", "select * from cell_summary", "--format", "json").stdout)[0]
    values = [0.5, 0.6, 0.8]
    sd = stats.tstd(values)
    assert row["n"] == 3 and row["final_test_acc_mean"] == pytest.approx(sum(values) / 3)
    assert row["final_test_acc_std"] == pytest.approx(sd)
    assert row["final_test_acc_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    reach = json.loads(
        cli(
            "query",
            "select seed, epoch, samples, seconds from reach_accuracy(0.39) order by seed",
            "--format",
            "json",
        ).stdout
    )
    # Accuracy rises linearly to its final value over 3 epochs of 1000 samples and 0.5 s.
    assert [(r["epoch"], r["samples"], r["seconds"]) for r in reach] == [
        (3, 3000, 1.5),
        (2, 2000, 1.0),
        (2, 2000, 1.0),
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["scaling"],
            "analyze scaling: needs the study to vary batch_schedule.batch_size; study 'one' "
            "does not vary batch_schedule.batch_size (it varies optimizer.lr)",
        ),
        (
            ["warmup"],
            "analyze warmup: needs the study to vary lr_schedule.warmup_epochs and "
            "dataset.examples_per_class; study 'one' does not vary "
            "lr_schedule.warmup_epochs, dataset.examples_per_class (it varies "
            "optimizer.lr)",
        ),
        (
            ["ranking"],
            "analyze ranking: needs the study to use two or more optimizers; study 'one' uses sgd",
        ),
        (
            ["sfo"],
            "analyze sfo: give --epsilon, the full gradient norm to reach (a positive number)",
        ),
        (
            ["sfo", "--epsilon", "0.1"],
            "analyze sfo: study 'one' has no full_grad_norm probe "
            'values; add probes = [{ name = "full_grad_norm", every = '
            "1 }] to its base",
        ),
        (
            ["optimal", "--metric", "best_test_accuracy"],
            "--metric 'best_test_accuracy': not a "
            "metric; use REDUCER_COLUMN with REDUCER one of best, final, min, max, mean and "
            "COLUMN one "
            "of step, samples, sfo, epoch_lr, epoch_batch_size, train_loss, train_acc, test_loss, "
            "test_acc, seconds, eval_seconds, val_loss, val_acc, probe_seconds, sfo_full_batches, "
            "comm_rounds (e.g. best_test_acc, best_test_loss, best_train_loss)",
        ),
        (
            ["optimal", "--param", "optimizer.momentum"],
            "--param optimizer.momentum: the study does not vary it; it varies optimizer.lr",
        ),
        (
            ["bestest"],
            "analysis 'bestest': not an analysis; use one of optimal, lr-wd, scaling, "
            "warmup, sfo, ranking, budget, compare, profile",
        ),
    ],
)
def test_analysis_errors_are_one_line(cli, tmp_path, args, message):
    make_store(
        tmp_path,
        HEAD.format(name="one") + BLOCK + f'grid = {{ "optimizer.lr" = {LRS} }}\n',
        lambda c, s: 0.5,
    )
    result = cli("analyze", *args)
    assert (result.exit_code, result.stderr) == (1, f"Error: {message}\n")


def test_every_analysis_is_the_same_whatever_order_the_store_returns_rows(tmp_path, monkeypatch):
    """Seed 002's H3 compares each dataset with a reference one: the first block of the study
    file, not whichever group the store happens to return first."""
    import random

    from optlab.analysis import analyze as an

    best = {5000: 10, 500: 5, 50: 1}
    text = (
        HEAD.format(name="order")
        + """
lr_schedule = { name = "cosine" }
[[block]]
name = "first"
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "same_pattern"
set = { "dataset.classes" = 5 }
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "other_pattern"
set = { "dataset.classes" = 7 }
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""
    )

    def acc(c, s):
        regime = c["dataset"]["examples_per_class"]
        w = c["lr_schedule"]["warmup_epochs"]
        peak = 20 - best[regime] if c["dataset"]["classes"] == 7 else best[regime]
        return 0.8 - 0.002 * (w - peak) ** 2 + 0.001 * ((s * 7 + w) % 3)

    make_store(tmp_path, text, acc)
    store = tmp_path / "optlab.duckdb"
    original = an.load
    outputs = []
    for shuffle in range(4):

        def shuffled(con, study, metric, k=shuffle):
            runs = original(con, study, metric)
            random.Random(k).shuffle(runs)
            return runs

        monkeypatch.setattr(an, "load", shuffled)
        outputs.append(
            [
                an.run_analysis(
                    store, name, None, "best_test_acc", param="lr_schedule.warmup_epochs"
                ).to_json()
                for name in ("warmup", "optimal")
            ]
        )
    assert all(o == outputs[0] for o in outputs[1:])
    h3 = next(h for h in outputs[0][0]["tables"]["hypotheses"] if h["hypothesis"] == "H3")
    assert h3["note"].startswith(
        "reference: block first; dataset.classes=10 vs dataset.classes=5: r=1"
    )
    assert "dataset.classes=10 vs dataset.classes=7" in h3["note"]


def test_optimal_of_a_study_that_varies_nothing_says_so(cli, tmp_path):
    make_store(tmp_path, HEAD.format(name="flat") + BLOCK, lambda c, s: 0.5)
    result = cli("analyze", "optimal")
    assert result.exit_code == 1 and result.stderr == (
        "Error: analyze optimal: study 'flat' varies no numeric hyperparameter to find the best "
        "value of; it varies nothing (one configuration, seeds apart)\n"
    )


PARTS = (
    HEAD.format(name="parts")
    + f"""
probes = [{{ name = "full_grad_norm", every = 1 }}]
[[block]]
name = "sgd"
grid = {{ "optimizer.lr" = {LRS}, "batch_schedule.batch_size" = [32, 320, 3200] }}
[[block]]
name = "adam"
set = {{ optimizer = {{ name = "adam" }} }}
grid = {{ "optimizer.lr" = {LRS}, "batch_schedule.batch_size" = [32, 320, 3200] }}
"""
)


def parts_store(tmp_path, status=None, blocks=None):
    make_store(
        tmp_path,
        PARTS,
        lambda c, s: bowl(c["optimizer"]["lr"], 0.001 * c["batch_schedule"]["batch_size"] / 32),
        status=status,
        grad_norm=lambda c, s: [1.0, 0.5, 0.2],
        blocks=blocks,
    )


def test_analyses_of_a_study_half_run_name_the_groups_still_to_come(cli, tmp_path):
    """The adam block is registered and not run yet: the sgd groups are labelled as the
    whole study will label them (optimizer=sgd, not "all runs"), and the adam ones named
    as waiting, in every analysis."""
    parts_store(
        tmp_path, status=lambda c, s: "done" if c["optimizer"]["name"] == "sgd" else "pending"
    )
    scaling = analyze(cli, "scaling")
    assert [f["group"] for f in scaling["tables"]["fit"]] == ["optimizer=sgd"]
    assert scaling["tables"]["fit"][0]["slope"] == pytest.approx(1.0, abs=0.01)
    assert scaling["findings"]["not_yet"] == "no finished runs yet in optimizer=adam (63 runs)"
    optimal = analyze(cli, "optimal")
    assert optimal["findings"]["not_yet"] == "no finished runs yet in " + "; ".join(
        f"batch_schedule.batch_size={b}, optimizer=adam (21 runs)" for b in (32, 320, 3200)
    )
    ranking = analyze(cli, "ranking")
    assert [r["optimizer"] for r in ranking["tables"]["ranking"]] == ["sgd"]
    assert ranking["findings"]["not_yet"] == "no finished runs yet of adam (63 runs)"
    # sfo compares every cell: five are named, the rest counted.
    assert analyze(cli, "sfo", "--epsilon", "0.3")["findings"]["not_yet"] == (
        "no finished runs yet in "
        + "; ".join(
            f"batch_schedule.batch_size={b}, optimizer=adam, optimizer.lr={lr} (3 runs)"
            for b, lr in [(32, 0.001), (32, 0.00316), (32, 0.01), (32, 0.0316), (32, 0.1)]
        )
        + "; 16 more groups (48 runs)"
    )


def test_a_study_with_nothing_finished_gets_answers_that_say_so(cli, tmp_path):
    """sfo and the report on a study whose probed runs are all still to run: what is missing
    is said (the sfo analysis said to add a probe the study has)."""
    parts_store(tmp_path, status=lambda c, s: "pending")
    sfo = analyze(cli, "sfo")
    assert sfo["tables"]["sfo"] == [] and sfo["findings"]["note"] == (
        "not answerable yet: no full_grad_norm values so far (0 of the 126 runs that probe "
        "it finished); run the rest of it"
    )
    for name in ("optimal", "scaling", "ranking"):
        assert analyze(cli, name)["findings"]["note"] == (
            "not answerable yet: none of the 126 runs in this store has finished (126 "
            "pending); run them"
        )
    report = cli("report", "--out", "r.html")
    assert report.exit_code == 0, report.stderr
    page = (tmp_path / "r.html").read_text()
    assert "probe full_grad_norm: no values yet (0 of the 126 runs that probe it finished)" in page
    assert "<h3>sfo</h3>" in page and "not answerable yet: no full_grad_norm values" in page


def test_a_study_run_in_parts_says_how_much_of_the_file_its_answers_cover(cli, tmp_path):
    parts_store(tmp_path, blocks=["sgd"])
    for name in ("optimal", "scaling"):
        out = analyze(cli, name)
        assert out["findings"]["partial"] == (
            "63 of the study file's 126 runs are in this store (a study run in parts): this "
            "answer covers those"
        )
    assert analyze(cli, "sfo", "--epsilon", "0.3")["findings"]["partial"].startswith("63 of")


def test_an_analysis_added_as_one_row_reaches_the_cli_the_api_and_the_report(
    cli, tmp_path, monkeypatch
):
    from optlab import open_store
    from optlab.analysis import analyze as an
    from optlab.analysis.core import Analysis, usable
    from optlab.charts.report import build_report

    def spread(result, runs, axes, rng, asked):
        values = [r.value for r in usable(runs, result)]
        result.findings["spread"] = max(values) - min(values)

    monkeypatch.setitem(
        an.ANALYSES, "spread", Analysis("spread", "max - min", spread, ("optimizer.lr",))
    )
    make_store(
        tmp_path,
        HEAD.format(name="lr") + BLOCK + f'grid = {{ "optimizer.lr" = {LRS} }}\n',
        lambda c, s: bowl(c["optimizer"]["lr"], 0.1),
    )
    expected = 0.9 - bowl(0.001, 0.1)
    assert analyze(cli, "spread")["findings"]["spread"] == pytest.approx(expected)
    assert open_store(tmp_path / "optlab.duckdb").analyze("spread").findings[
        "spread"
    ] == pytest.approx(expected)
    page, _, _ = build_report(tmp_path / "optlab.duckdb", None, tmp_path / "r.html")
    assert "<h3>spread</h3>" in page.read_text()

    # The axes it declares are checked once for all: a study that does not vary them is told
    # so, and its report leaves the analysis out.
    other = tmp_path / "other"
    other.mkdir()
    make_store(
        other,
        HEAD.format(name="wd") + BLOCK + 'grid = { "optimizer.weight_decay" = [0.0, 0.1] }\n',
        lambda c, s: 0.5,
    )
    with pytest.raises(
        Exception, match="analyze spread: needs the study to vary optimizer.lr; study 'wd' does not"
    ):
        open_store(other / "optlab.duckdb").analyze("spread")
    page, _, _ = build_report(other / "optlab.duckdb", None, other / "r.html")
    assert "<h3>spread</h3>" not in page.read_text() and "<h3>optimal</h3>" in page.read_text()


# ---- budget -----------------------------------------------------------------------------


def _enumerated(values, tests, k):
    """Every sequence of k draws (with replacement) of runs ranked worst to best: the mean
    and standard deviation of the best value drawn, and the mean test value of that run."""
    import itertools

    best, chosen = [], []
    for draw in itertools.product(range(len(values)), repeat=k):
        top = max(values[i] for i in draw)
        tied = [i for i in draw if values[i] == top]  # selection cannot tell these apart
        best.append(top)
        chosen.append(sum(tests[i] for i in tied) / len(tied))  # each as likely
    mean = sum(best) / len(best)
    std = math.sqrt(sum((b - mean) ** 2 for b in best) / len(best))
    return mean, std, sum(chosen) / len(chosen)


@pytest.mark.parametrize(
    "values, tests",
    [
        ([0.1, 0.4, 0.5, 0.9], [0.2, 0.1, 0.7, 0.8]),
        ([0.3, 0.3, 0.6, 0.6, 0.61], [0.9, 0.1, 0.2, 0.5, 0.4]),  # ties share equally
        ([0.5, 0.5, 0.5, 0.7], [0.1, 0.6, 0.2, 0.3]),  # three tied below the best
        ([-2.0, -1.5, -1.5, -0.4], [0.0, 1.0, 0.2, 1.0]),  # a loss, negated: worst first
    ],
)
def test_expected_best_of_k_is_the_mean_over_every_possible_draw(values, tests):
    """The order-statistics formula against every draw of k written out, a draw's tied
    best runs each as likely to be the one selected."""
    from optlab.analysis.budget import expected_best, tie_shared

    for k in range(1, 5):
        got = expected_best(values, tie_shared(values, tests), k)
        assert got == pytest.approx(_enumerated(values, tests, k), abs=1e-12), k
        # whichever way the tied runs come (their ids, the store's order)
        tied_reversed = [*reversed(tests[:2]), *tests[2:]] if values[0] == values[1] else tests
        again = expected_best(values, tie_shared(values, tied_reversed), k)
        assert again == pytest.approx(got, abs=1e-15), k


BUDGET = """
name = "budget"
seeds = [0, 1, 2]
[base]
epochs = 3
dataset = { name = "synthetic", classes = 10, train_size = 50000, val_fraction = 0.1 }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
[[block]]
name = "adamw"
set = { optimizer = { name = "adamw", lr = 0.001 } }
grid = { "optimizer.lr" = [1, 2, 3, 4, 5, 6, 7, 8] }
[[block]]
name = "sgd"
grid = { "optimizer.lr" = [1, 2, 3, 4, 5, 6, 7, 8] }
"""


def _budget_store(tmp_path):
    """adamw: every point good (validation 0.80 to 0.807); sgd: one great point (0.95), the
    rest poor. sgd's third point is the best on test (0.99) and poor on validation."""

    def val(c, s):
        i = c["optimizer"]["lr"]
        if c["optimizer"]["name"] == "adamw":
            return 0.80 + 0.001 * i + 0.0001 * s
        return 0.95 if i == 8 else 0.40 + 0.02 * i + 0.0001 * s

    def test(c, s):
        if c["optimizer"]["name"] == "sgd" and c["optimizer"]["lr"] == 3:
            return 0.99
        return val(c, s) - 0.01

    make_store(tmp_path, BUDGET, test, validation=val)


def test_budget_says_which_optimizer_wins_at_which_budget(cli, tmp_path):
    _budget_store(tmp_path)
    out = analyze(cli, "budget")
    rows = out["tables"]["budget"]
    curve = {(r["optimizer"], r["k"]): r["expected_best_best_val_acc"] for r in rows}
    assert {r["optimizer"] for r in rows} == {"adamw", "sgd"}
    assert sorted(k for o, k in curve if o == "sgd") == list(range(1, 25))  # 8 points x 3 seeds
    cross = next(k for k in range(1, 25) if curve["sgd", k] > curve["adamw", k])
    assert curve["adamw", 1] > curve["sgd", 1] and cross > 1
    assert out["findings"]["budget"] == (
        f"adamw wins below {cross} trials, sgd from {cross} on (compared up to 24 trials, "
        "the fewest any optimizer has)"
    )
    assert "every point of its search space and every seed" in out["findings"]["trials"]


def test_budget_selects_on_validation_only(cli, tmp_path):
    from optlab.analysis.core import load
    from optlab.store.core import reading

    _budget_store(tmp_path)
    out = analyze(cli, "budget")
    with reading(tmp_path / "optlab.duckdb") as con:
        val = {r.run_id: r for r in load(con, "budget", "best_val_acc")}
        test = {r.run_id: r.value for r in load(con, "budget", "best_test_acc")}
    sgd = sorted(
        (r for r in val.values() if r.get("optimizer") == "sgd"), key=lambda r: (r.value, r.run_id)
    )
    by_val = _enumerated([r.value for r in sgd], [test[r.run_id] for r in sgd], 3)[2]
    by_test_order = sorted(sgd, key=lambda r: (test[r.run_id], r.run_id))
    by_test = _enumerated(
        [test[r.run_id] for r in by_test_order], [test[r.run_id] for r in by_test_order], 3
    )[2]
    got = next(
        r["best_test_acc_of_selected"]
        for r in out["tables"]["budget"]
        if r["optimizer"] == "sgd" and r["k"] == 3
    )
    assert got == pytest.approx(by_val, abs=1e-12)
    assert by_test > by_val + 0.05  # choosing on test would have looked better: it does not


def test_budget_runs_tied_on_validation_share_the_selection_and_best_test_is_flagged(cli, tmp_path):
    """Two points tie on validation and differ on test: the budget's test value is their
    mean, not the one with the smaller run id; best_test_acc is said to read test epochs."""
    text = BUDGET.replace("[1, 2, 3, 4, 5, 6, 7, 8]", "[1, 2]").replace("[0, 1, 2]", "[0]")

    def val(c, s):
        return 0.9 if c["optimizer"]["name"] == "sgd" else 0.8 + 0.01 * c["optimizer"]["lr"]

    def test(c, s):
        if c["optimizer"]["name"] == "sgd":
            return 0.7 if c["optimizer"]["lr"] == 1 else 0.5
        return 0.6

    make_store(tmp_path, text, test, validation=val)
    out = analyze(cli, "budget")
    sgd = {
        r["k"]: r["best_test_acc_of_selected"]
        for r in out["tables"]["budget"]
        if r["optimizer"] == "sgd"
    }
    assert sgd == {1: pytest.approx(0.6, abs=1e-12), 2: pytest.approx(0.6, abs=1e-12)}
    assert out["findings"]["caution"] == (
        "best_test_acc takes each selected run's best epoch on the test set; final_test_acc "
        "(its last epoch) reads nothing chosen on test"
    )
    final = analyze(cli, "budget", "--metric", "final_test_acc")
    assert "caution" not in final["findings"]


def test_budget_counts_diverged_runs_as_trials_with_what_they_reached(cli, tmp_path):
    """sgd's two largest learning rates diverge (validation 0.1 when they did): they were
    trials, so sgd's expected best of one trial is the mean over all 24 of its runs, not
    over the 18 that converged, and the output says how many diverged and how they count."""

    def status(c, s):
        big = c["optimizer"]["name"] == "sgd" and c["optimizer"]["lr"] >= 7
        return "diverged" if big else "done"

    def val(c, s):
        if status(c, s) == "diverged":
            return 0.1
        if c["optimizer"]["name"] == "adamw":
            return 0.80 + 0.001 * c["optimizer"]["lr"] + 0.0001 * s
        return 0.40 + 0.05 * c["optimizer"]["lr"] + 0.0001 * s

    make_store(tmp_path, BUDGET, lambda c, s: val(c, s) - 0.01, status=status, validation=val)
    out = analyze(cli, "budget")
    curve = {
        (r["optimizer"], r["k"]): r["expected_best_best_val_acc"] for r in out["tables"]["budget"]
    }
    every = [
        val({"optimizer": {"name": "sgd", "lr": lr}}, s) for lr in range(1, 9) for s in range(3)
    ]
    assert len(every) == 24 and sorted(k for o, k in curve if o == "sgd") == list(range(1, 25))
    assert curve["sgd", 1] == pytest.approx(sum(every) / 24, abs=1e-12)
    converged = [v for v in every if v != 0.1]
    assert curve["sgd", 1] < sum(converged) / len(converged) - 0.05  # what leaving out gave
    assert out["findings"]["trials"].endswith(
        "; diverged runs are trials too (adamw 0 of 24, sgd 6 of 24), each counted with what "
        "it reached before diverging: its best_val_acc over the epochs it recorded"
    )
    assert out["left_out"] == []  # (diverged runs were left out before)


def test_budget_needs_a_test_metric_and_a_validation_split(cli, tmp_path):
    _budget_store(tmp_path)
    result = cli("analyze", "budget", "--metric", "best_val_acc")
    assert result.exit_code == 1
    assert "give a test metric (such as best_test_acc)" in result.stderr


def test_plot_budget_draws_the_analysis_curves(cli, tmp_path):
    _budget_store(tmp_path)
    result = cli("plot", "budget", "--out", "b.html")
    assert result.exit_code == 0, result.output
    assert "budget chart of 48 rows written to b.html" in result.stdout  # 24 k x 2
    rows = json.loads(
        cli("query", (tmp_path / "b.html.sql").read_text(), "--format", "json").stdout
    )
    assert len(rows) == 48 and {"best_val_acc", "best_test_acc"} <= set(rows[0])
    table = analyze(cli, "budget")
    html = (tmp_path / "b.html").read_text()
    assert table["findings"]["budget"] in html  # the chart says who wins where


# ---- profile ----------------------------------------------------------------------------

PROFILE = """
name = "profile"
seeds = [0, 1, 2]
[base]
epochs = 10
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
[[block]]
name = "w1_sgd"
grid = { "optimizer.lr" = [0.01, 0.1] }
[[block]]
name = "w1_adamw"
set = { optimizer = { name = "adamw", lr = 0.001 } }
[[block]]
name = "w2_sgd"
set = { model = { name = "cnn" } }
[[block]]
name = "w2_adamw"
set = { model = { name = "cnn" }, optimizer = { name = "adamw", lr = 0.001 } }
[[block]]
name = "w3_sgd"
set = { dataset = { name = "digits" } }
[[block]]
name = "w3_adamw"
set = { dataset = { name = "digits" }, optimizer = { name = "adamw", lr = 0.001 } }
"""


def _final(c, seed):
    """Accuracy rises linearly to this over 10 epochs (step = 10 x epoch): it reaches 0.5
    at epoch ceil(5 / final)."""
    workload = (c["dataset"]["name"], c["model"]["name"])
    sgd = c["optimizer"]["name"] == "sgd"
    if workload == ("synthetic", "mlp"):  # sgd's best lr: epoch 5; adamw: epoch 7
        return (1.0 if c["optimizer"]["lr"] == 0.1 else 0.5) if sgd else 0.8
    if workload == ("synthetic", "cnn"):  # sgd never; adamw epoch 5
        return 0.4 if sgd else 1.0
    return [1.0, 0.5, 0.3][seed] if sgd else 0.55  # sgd: median of 50, 100, never; adamw 100


def test_profile_times_each_optimizer_to_the_target_and_scores_them(cli, tmp_path):
    make_store(tmp_path, PROFILE, _final, epochs=10)
    out = analyze(cli, "profile", "--target", "test_acc=0.5")
    times = {(r["workload"], r["optimizer"]): r["steps_to_target"] for r in out["tables"]["times"]}
    assert times == {
        ("digits x mlp", "adamw"): 100,
        ("digits x mlp", "sgd"): 100,
        ("synthetic x cnn", "adamw"): 50,
        ("synthetic x cnn", "sgd"): None,  # never: infinite
        ("synthetic x mlp", "adamw"): 70,
        ("synthetic x mlp", "sgd"): 50,
    }
    profile = {(r["optimizer"], r["tau"]): r["fraction"] for r in out["tables"]["profile"]}
    assert profile == pytest.approx(
        {("adamw", 1.0): 2 / 3, ("adamw", 1.4): 1.0, ("sgd", 1.0): 2 / 3, ("sgd", 1.4): 2 / 3}
    )
    seconds = analyze(cli, "profile", "--target", "test_acc=0.5", "--time", "seconds")
    by = {
        (r["workload"], r["optimizer"]): r["seconds_to_target"] for r in seconds["tables"]["times"]
    }
    assert by[("synthetic x mlp", "adamw")] == pytest.approx(7 * 0.6)  # 0.5 s + 0.1 s each


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "analyze profile: --target None: give COLUMN=VALUE, such as val_acc=0.9"),
        (["--target", "accuracy=0.9"], "--target 'accuracy=0.9': give COLUMN=VALUE"),
        (
            ["--target", "val_acc=0.9", "--time", "hours"],
            "--time 'hours': use steps, sfo or seconds",
        ),
    ],
)
def test_profile_input_errors_are_one_line(cli, tmp_path, args, message):
    make_store(tmp_path, PROFILE, _final, epochs=10)
    result = cli("analyze", "profile", *args)
    assert result.exit_code == 1 and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_plot_profile_draws_the_profiles(cli, tmp_path):
    make_store(tmp_path, PROFILE, _final, epochs=10)
    result = cli("plot", "profile", "--target", "test_acc=0.5", "--out", "p.html")
    assert result.exit_code == 0, result.output
    assert "profile chart of 4 rows written to p.html" in result.stdout  # 2 optimizers x 2 tau
    sql = (tmp_path / "p.html.sql").read_text()
    rows = json.loads(cli("query", sql, "--format", "json").stdout)
    reached = [r["time_to_target"] for r in rows if r["time_to_target"] is not None]
    assert len(rows) == 21 and min(reached) == 50  # 7 configurations x 3 seeds


@pytest.mark.parametrize("name", ["budget", "compare"])
def test_budget_by_an_axis_the_study_does_not_vary_is_one_line(cli, tmp_path, name):
    _budget_store(tmp_path)
    result = cli("analyze", name, "--by", "optimizer.momentum")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: analyze {name}: --by optimizer.momentum: the study does not vary it; it "
        "varies optimizer.lr\n"
    )


TWO_SEARCHES = """
name = "two_searches"
seeds = [0, 1, 2]
[base]
epochs = 2
dataset = { name = "synthetic", val_fraction = 0.2 }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "x"
grid = { "optimizer.lr" = [0.1, 0.2] }
[[block]]
name = "x/final"
set = { "optimizer.lr" = 0.1 }
seeds = [3, 4, 5]
[[block]]
name = "y"
grid = { "optimizer.lr" = [0.3, 0.4] }
[[block]]
name = "y/final"
set = { "optimizer.lr" = 0.4 }
seeds = [3, 4, 5]
[[block]]
name = "z"
set = { optimizer = { name = "adamw", lr = 0.001 } }
"""


def test_one_optimizer_tuned_in_two_blocks_is_two_groups_in_compare_and_said_in_budget(
    cli, tmp_path
):
    """sgd searched in blocks x and y (as seed 003's blocks search one optimizer each):
    compare keeps their confirmations apart, and budget says it pools their trials."""
    make_store(
        tmp_path,
        TWO_SEARCHES,
        lambda c, s: 0.5 + c["optimizer"]["lr"],
        validation=lambda c, s: 0.5 + c["optimizer"]["lr"] + 0.01 * s,
    )
    out = analyze(cli, "compare")
    groups = [r["optimizer"] for r in out["tables"]["compare"]]
    assert groups == ["sgd in x/final", "sgd in y/final"]
    assert [r["configurations"] for r in out["tables"]["compare"]] == [2, 2]
    assert (
        "sgd pools blocks x/final, y/final: each block is its own group"
        in (out["findings"]["blocks"])
    )
    budget = analyze(cli, "budget")
    assert budget["findings"]["pooled"] == (
        "sgd pools blocks x, y: each optimizer's trials are its runs in every block"
    )


SPACES = """
name = "spaces"
seeds = [0, 1]
[base]
epochs = 2
dataset = { name = "synthetic", val_fraction = 0.2 }
model = { name = "mlp" }
optimizer = { name = "adamw", lr = 0.001 }
[[block]]
name = "adamw"
[block.search]
n = 4
"optimizer.lr" = { log_uniform = [ADAMW_LR] }
"optimizer.weight_decay" = { log_uniform = [1e-6, 5e-4], zero = 0.25 }
[[block]]
name = "adamw/final"
set = { "optimizer.lr" = 0.001 }
seeds = [3, 4, 5]
[[block]]
name = "sgdm"
set = { optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 } }
[block.search]
n = 4
"optimizer.lr" = { log_uniform = [5e-4, 0.1] }
"optimizer.weight_decay" = { log_uniform = [1e-6, 5e-4], zero = 0.25 }
[[block]]
name = "sgdm/final"
set = { optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 } }
seeds = [3, 4, 5]
"""


@pytest.mark.parametrize("adamw_lr", ["5e-4, 0.1", "5e-4, 1e-3"])
def test_compare_prints_each_optimizer_s_search_space_and_warns_when_they_differ(
    cli, tmp_path, adamw_lr
):
    """Choi et al.'s bias: equal point counts over unequal ranges. compare states each
    optimizer's ranges (decades), points and epochs; a narrower AdamW LR range is warned of."""
    make_store(
        tmp_path,
        SPACES.replace("ADAMW_LR", adamw_lr),
        lambda c, s: 0.5,
        validation=lambda c, s: 0.5 + 0.01 * s,
    )
    out = analyze(cli, "compare")
    spaces = {(r["optimizer"], r["dimension"]): r for r in out["tables"]["search_spaces"]}
    assert spaces[("sgd", "optimizer.lr")]["range"] == "log [0.0005, 0.1] (2.3 decades)"
    assert spaces[("sgd", "optimizer.weight_decay")]["range"] == (
        "log [1e-06, 0.0005] (2.7 decades), or 0 in 25% of draws"
    )
    assert spaces[("sgd", "optimizer.lr")]["decades"] == pytest.approx(math.log10(200))
    said = out["findings"]["search spaces"]
    assert said.startswith("adamw: 4 points of up to 2 epochs over optimizer.lr log [0.0005, ")
    assert "sgd: 4 points of up to 2 epochs over optimizer.lr log [0.0005, 0.1]" in said
    if adamw_lr == "5e-4, 0.1":
        assert "warning" not in out["findings"]
    else:
        assert spaces[("adamw", "optimizer.lr")]["range"] == "log [0.0005, 0.001] (0.3 decades)"
        assert out["findings"]["warning"].startswith(
            "the search spaces differ (optimizer.lr: log [0.0005, 0.001] (0.3 decades) for "
            "adamw; log [0.0005, 0.1] (2.3 decades) for sgd): equal budgets over unequal "
            "ranges favour the optimizer whose range was narrowed beforehand"
        )


def test_seed_003s_tuned_study_searches_both_optimizers_over_the_same_ranges():
    """One rule for both (every value the seed tried or suggests for either optimizer, on
    a log scale, 0 weight decay drawable), the same points and epochs: nothing differs
    but the optimizer's own momentum parameter."""
    from optlab.analysis.spaces import block_spaces, differences

    source = (ROOT / "studies" / "adamw_vs_sgdm_tuned.toml").read_text()
    spaces = block_spaces(source)
    adamw, sgdm = spaces["adamw"], spaces["sgdm"]
    assert differences({"adamw": adamw, "sgdm": sgdm}, {"a": 64, "s": 64}, {}) == ""
    assert adamw["optimizer.lr"] == sgdm["optimizer.lr"]
    assert adamw["optimizer.lr"][1] == pytest.approx(math.log10(0.1 / 5e-4))
    # The seed's best SGDM weight decay (4e-4) and AdamW's 0 (L1) are both drawable.
    wd = adamw["optimizer.weight_decay"][0]
    assert wd == sgdm["optimizer.weight_decay"][0] and "0.0005]" in wd and "or 0 in" in wd
    assert set(adamw) - set(sgdm) == {"optimizer.betas"}
    assert set(sgdm) - set(adamw) == {"optimizer.momentum"}


def test_h3_with_a_flat_pattern_is_not_testable_and_says_why(tmp_path, cli):
    """A dataset whose metric does not move with warmup within a size has no pattern to
    correlate: H3 says so and gives no verdict, instead of r=nan, p=nan."""
    text = (
        HEAD.format(name="flat")
        + """
lr_schedule = { name = "cosine" }
[[block]]
name = "first"
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 5, 20]
[[block]]
name = "flat"
set = { "dataset.classes" = 5 }
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 5, 20]
"""
    )

    def acc(c, s):
        regime = c["dataset"]["examples_per_class"]
        if c["dataset"]["classes"] == 5:  # warmup changes nothing: only the size does
            return 0.5 + regime / 1e5
        return 0.8 - 0.001 * (c["lr_schedule"]["warmup_epochs"] - 5) ** 2 + 0.001 * s

    make_store(tmp_path, text, acc)
    result = cli("analyze", "warmup", "--json")
    assert result.exit_code == 0, result.stderr
    (h3,) = [
        h for h in json.loads(result.stdout)["tables"]["hypotheses"] if h["hypothesis"] == "H3"
    ]
    assert h3["supported"] is None and h3["p"] is None and h3["statistic"] is None
    assert h3["note"].startswith("not testable: reference: block first; ")
    assert "(dataset.classes=5 is flat): its metric does not move with warmup" in h3["note"]
    assert "nan" not in json.dumps(h3)


def _peeking_store(tmp_path):
    """The BUDGET study (a validation split): on validation sgd is best at lr 8 and adamw at
    lr 8; on test, sgd's lr 3 is best (0.99) and so is adamw's lr 1 (0.98). Choosing on test
    would pick those, and report 0.99 and 0.98."""

    def val(c, s):
        i = c["optimizer"]["lr"]
        base = 0.80 if c["optimizer"]["name"] == "adamw" else 0.70
        return base + 0.01 * i + 0.0001 * s

    def test(c, s):
        name, i = c["optimizer"]["name"], c["optimizer"]["lr"]
        if (name, i) in (("sgd", 3), ("adamw", 1)):
            return 0.99 if name == "sgd" else 0.98
        return val(c, s) - 0.05

    make_store(tmp_path, BUDGET, test, validation=val)
    return val, test


def test_optimal_and_ranking_choose_on_validation_and_report_test_for_the_choice(cli, tmp_path):
    val, test = _peeking_store(tmp_path)
    out = analyze(cli, "optimal")
    rows = {r["group"].removeprefix("optimizer="): r for r in out["tables"]["optimal"]}
    assert {g: r["optimum"] for g, r in rows.items()} == {"adamw": 8, "sgd": 8}
    for name, row in rows.items():
        seeds = [{"optimizer": {"name": name, "lr": 8}} for _ in range(3)]
        assert row["best_val_acc_mean"] == pytest.approx(
            sum(val(c, s) for s, c in enumerate(seeds)) / 3, abs=1e-12
        )
        assert row["best_test_acc_at_optimum"] == pytest.approx(
            sum(test(c, s) for s, c in enumerate(seeds)) / 3, abs=1e-12
        )
    assert out["findings"]["selection"] == (
        "each group's best optimizer.lr chosen on best_val_acc (the validation split), and "
        "best_test_acc reported for what it chose: the test set never chooses"
    )
    ranking = analyze(cli, "ranking")
    cells = {r["optimizer"]: r for r in ranking["tables"]["ranking"]}
    # adamw's lr 8 and sgd's lr 8 are chosen; ranked on their test metric
    assert [r["optimizer"] for r in ranking["tables"]["ranking"]] == ["adamw", "sgd"]
    assert cells["sgd"]["mean"] == pytest.approx(0.70 + 0.08 + 0.0001 - 0.05, abs=1e-12)
    assert cells["adamw"]["mean"] == pytest.approx(0.80 + 0.08 + 0.0001 - 0.05, abs=1e-12)
    assert "chosen on best_val_acc" in ranking["findings"]["selection"]


def test_without_a_validation_split_the_output_says_test_chose(cli, tmp_path):
    text = HEAD.format(name="opt") + BLOCK + f'grid = {{ "optimizer.lr" = {LRS} }}\n'
    make_store(tmp_path, text, lambda c, s: bowl(c["optimizer"]["lr"], 0.0316))
    out = analyze(cli, "optimal")
    assert out["tables"]["optimal"][0]["optimum"] == 0.0316
    assert "metric_mean" in out["tables"]["optimal"][0]
    assert out["findings"]["selection"] == (
        "each group's best optimizer.lr chosen on best_test_acc: the study has no validation "
        "split, so the test set both chooses and reports (an optimistic estimate)"
    )


def test_profile_keeps_workloads_that_differ_in_a_setting_apart(cli, tmp_path):
    """mlp with hidden = [32] and with hidden = [] are two workloads: sgd is faster on one,
    adamw on the other. Pooled as one "synthetic x mlp", each optimizer would take its best
    over both and tie at ratio 1 everywhere (rho 1.0 each)."""
    text = """
name = "widths"
seeds = [0, 1]
[base]
epochs = 10
dataset = { name = "synthetic" }
model = { name = "mlp", hidden = [32] }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
[[block]]
name = "wide_sgd"
[[block]]
name = "wide_adamw"
set = { optimizer = { name = "adamw", lr = 0.001 } }
[[block]]
name = "linear_sgd"
set = { model = { name = "mlp", hidden = [] } }
[[block]]
name = "linear_adamw"
set = { model = { name = "mlp", hidden = [] }, optimizer = { name = "adamw", lr = 0.001 } }
"""

    def final(c, seed):  # reaches 0.5 at epoch 5 (1.0) or 10 (0.5)
        fast = (c["model"]["hidden"] == [32]) == (c["optimizer"]["name"] == "sgd")
        return 1.0 if fast else 0.5

    make_store(tmp_path, text, final, epochs=10)
    out = analyze(cli, "profile", "--target", "test_acc=0.5")
    times = {(r["workload"], r["optimizer"]): r["steps_to_target"] for r in out["tables"]["times"]}
    assert times == {
        ("synthetic x mlp hidden=[32]", "sgd"): 50,
        ("synthetic x mlp hidden=[32]", "adamw"): 100,
        ("synthetic x mlp hidden=[]", "sgd"): 100,
        ("synthetic x mlp hidden=[]", "adamw"): 50,
    }
    profile = {(r["optimizer"], r["tau"]): r["fraction"] for r in out["tables"]["profile"]}
    assert profile[("sgd", 1.0)] == profile[("adamw", 1.0)] == pytest.approx(0.5)


def test_a_target_no_run_reaches_gives_infinite_times_fractions_of_0_and_says_so(cli, tmp_path):
    make_store(tmp_path, PROFILE, _final, epochs=10)
    out = analyze(cli, "profile", "--target", "test_acc=1.5")
    assert all(r["steps_to_target"] is None and r["ratio"] is None for r in out["tables"]["times"])
    assert out["tables"]["profile"] == [
        {"optimizer": "adamw", "tau": 1.0, "fraction": 0.0},
        {"optimizer": "sgd", "tau": 1.0, "fraction": 0.0},
    ]
    assert out["findings"]["note"] == (
        "no run reached test_acc >= 1.5: every time is infinite, and every optimizer's "
        "fraction of workloads is 0 at every tau"
    )
    result = cli("plot", "profile", "--target", "test_acc=1.5", "--out", "p.html")
    assert result.exit_code == 0, result.output
    assert "profile chart of 2 rows written to p.html" in result.stdout
    assert "no run reached test_acc" in (tmp_path / "p.html").read_text()


def test_profile_states_its_order_of_reductions_and_offers_algoperfs(cli, tmp_path):
    """sgd's two learning rates each reach the target on one seed of three, not the same
    one: the median over seeds of either is "never", but the best configuration of seeds 0
    and 1 reaches it at step 50. median-then-best says sgd never gets there; AlgoPerf's
    best-then-median, 50 steps."""
    text = """
name = "orders"
seeds = [0, 1, 2]
[base]
epochs = 10
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
[[block]]
name = "sgd"
grid = { "optimizer.lr" = [0.01, 0.1] }
[[block]]
name = "adamw"
set = { optimizer = { name = "adamw", lr = 0.001 } }
"""

    def final(c, seed):  # 1.0 reaches 0.5 at step 50, 0.5 at step 100, 0.4 never
        if c["optimizer"]["name"] == "adamw":
            return 0.5
        lucky = 0 if c["optimizer"]["lr"] == 0.01 else 1
        return 1.0 if seed == lucky else 0.4

    make_store(tmp_path, text, final, epochs=10)

    def times(*order):
        out = analyze(cli, "profile", "--target", "test_acc=0.5", *order)
        got = {r["optimizer"]: r["steps_to_target"] for r in out["tables"]["times"]}
        return got, out["findings"]["rule"]

    default, rule = times()
    assert default == {"sgd": None, "adamw": 100}
    assert rule.startswith("a configuration's time is the median over its seeds, then an ")
    assert "best-then-median, is --order best-then-median" in rule
    algoperf, rule = times("--order", "best-then-median")
    assert algoperf == {"sgd": 50, "adamw": 100}
    assert "(best, then median: AlgoPerf's order, Dahl et al. 2023)" in rule
    for order, says in [
        ("median-then-best", "(median, then best)"),
        ("best-then-median", "(best, then median"),
    ]:
        drawn = cli(
            "plot", "profile", "--target", "test_acc=0.5", "--order", order, "--out", "p.html"
        )
        assert drawn.exit_code == 0, drawn.output
        assert says in (tmp_path / "p.html").read_text()  # the chart states its order
    bad = cli("analyze", "profile", "--target", "test_acc=0.5", "--order", "mean")
    assert bad.exit_code == 1
    assert bad.stderr == (
        "Error: analyze profile: --order 'mean': use median-then-best or best-then-median\n"
    )
