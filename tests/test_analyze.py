"""optlab analyze and the analysis views, on stores whose answers are known in advance."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from tests.synth import make_store

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
    text = HEAD.format(name="lrwd") + f"""
[[block]]
name = "grid"
grid = {{ "optimizer.lr" = {LRS}, "optimizer.weight_decay" = [1e-4, 1e-3, 1e-2, 0.0] }}
"""
    make_store(tmp_path, text, lambda c, s: bowl(
        c["optimizer"]["lr"], 1e-4 / max(c["optimizer"]["weight_decay"], 1e-9)) + noise(s))
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
    text = HEAD.format(name="flat") + f"""
[[block]]
name = "grid"
grid = {{ "optimizer.lr" = {LRS}, "optimizer.weight_decay" = [1e-4, 1e-3, 1e-2] }}
"""
    make_store(tmp_path, text, lambda c, s: bowl(c["optimizer"]["lr"], 0.0316) + noise(s))
    (fit,) = analyze(cli, "lr-wd")["tables"]["fit"]
    assert fit["slope"] == 0.0 and fit["consistent_with_inverse"] is False


def test_scaling_finds_the_linear_rule_per_optimizer(cli, tmp_path):
    text = HEAD.format(name="scale") + f"""
[[block]]
name = "sgd"
grid = {{ "optimizer.lr" = {LRS}, "batch_schedule.batch_size" = [32, 320, 3200] }}
[[block]]
name = "adam"
set = {{ optimizer = {{ name = "adam" }} }}
grid = {{ "optimizer.lr" = {LRS}, "batch_schedule.batch_size" = [32, 320, 3200] }}
"""

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
    text = HEAD.format(name="rank") + """
[[block]]
name = "opt"
grid = { optimizer = [{ name = "sgd" }, { name = "adam" }, { name = "adamw" }] }
"""
    level = {"sgd": 0.90, "adam": 0.85, "adamw": 0.849}
    make_store(tmp_path, text, lambda c, s: level[c["optimizer"]["name"]] + 0.002 * (s - 1))
    rows = analyze(cli, "ranking")["tables"]["ranking"]
    assert [r["optimizer"] for r in rows] == ["sgd", "adam", "adamw"]
    assert [r["significant"] for r in rows] == [None, True, False]
    assert rows[1]["p_vs_next_better"] < 0.001 < rows[2]["p_vs_next_better"]


def test_warmup_finds_the_optima_the_rule_and_the_four_hypotheses(cli, tmp_path):
    best = {5000: 10, 1000: 5, 500: 5, 100: 1, 50: 1}
    text = HEAD.format(name="warm") + """
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
"dataset.examples_per_class" = [5000, 1000, 500, 100, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
[[block]]
name = "synthetic_adamw"
set = { optimizer = { name = "adamw", lr = 0.001 } }
[block.grid]
"dataset.examples_per_class" = [5000, 500, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""

    def acc(c, s):
        regime = c["dataset"]["examples_per_class"]
        w = c["lr_schedule"]["warmup_epochs"]
        k = 0.0002 if c["optimizer"]["name"] == "adamw" else 0.002
        return 0.8 - k * (w - best[regime]) ** 2 + 0.001 * ((s * 7 + w) % 3)

    make_store(tmp_path, text, acc)
    out = analyze(cli, "warmup")
    optima = {(r["group"], r["examples_per_class"]): r["optimal_warmup"]
              for r in out["tables"]["optimal_warmup"]}
    assert optima[("dataset.classes=10, optimizer=sgd", 5000)] == 10
    assert optima[("dataset.classes=10, optimizer=sgd", 50)] == 1
    rule = out["tables"]["rule"][0]
    assert rule["slope"] > 0 and rule["rule"].startswith("optimal_warmup = ")
    hyp = {h["hypothesis"]: h for h in out["tables"]["hypotheses"]}
    assert all(hyp[h]["supported"] is True for h in ("H1", "H2", "H3", "H4")), hyp
    assert all(0 <= hyp[h]["p"] < 0.05 for h in ("H1", "H2", "H3", "H4"))
    # The second dataset (5 classes) has the same pattern; H3 names the pair it compared.
    assert hyp["H3"]["note"].startswith("dataset.classes=10, optimizer=sgd vs "
                                        "dataset.classes=5, optimizer=sgd: r=1")


def test_warmup_hypotheses_that_the_data_refute_or_cannot_test(cli, tmp_path):
    text = HEAD.format(name="flat") + """
lr_schedule = { name = "cosine" }
[[block]]
name = "sgd"
[block.grid]
"dataset.examples_per_class" = [5000, 1000, 500, 100, 50]
"lr_schedule.warmup_epochs" = [0, 1, 5, 10, 20]
"""
    # Warmup helps most at the smallest regime: H1 and H2 are refuted, H3 and H4 untestable.
    best = {5000: 1, 1000: 1, 500: 1, 100: 5, 50: 20}

    def acc(c, s):
        w, r = c["lr_schedule"]["warmup_epochs"], c["dataset"]["examples_per_class"]
        return 0.8 - 0.001 * (w - best[r]) ** 2 + 0.0005 * s

    make_store(tmp_path, text, acc)
    hyp = {h["hypothesis"]: h for h in analyze(cli, "warmup")["tables"]["hypotheses"]}
    assert hyp["H1"]["supported"] is False and hyp["H2"]["supported"] is False
    assert hyp["H3"]["supported"] is None and hyp["H4"]["supported"] is None
    assert hyp["H4"]["note"].startswith("not testable: needs AdamW and SGD")


def test_sfo_counts_samples_to_reach_epsilon_per_schedule(cli, tmp_path):
    text = HEAD.format(name="sfo") + """
[[block]]
name = "const"
[[block]]
name = "grow"
set = { batch_schedule = { name = "exp_growth", batch_size = 16, rate = 2.0, incr_interval = 1 } }
"""
    norms = {"constant": [1.0, 0.6, 0.4], "exp_growth": [0.8, 0.3, 0.1]}
    make_store(tmp_path, text, lambda c, s: 0.5,
               grad_norm=lambda c, s: norms[c["batch_schedule"]["name"]])
    out = analyze(cli, "sfo", "--epsilon", "0.5")
    rows = {r["schedule"]: r for r in out["tables"]["sfo"]}
    assert rows["batch_schedule=exp_growth"]["sfo_mean"] == 2000
    assert rows["batch_schedule=constant"]["sfo_mean"] == 3000
    assert [r["schedule"] for r in out["tables"]["sfo"]][0] == "batch_schedule=exp_growth"
    never = analyze(cli, "sfo", "--epsilon", "0.2")
    assert {r["schedule"]: r["reached"] for r in never["tables"]["sfo"]} == {
        "batch_schedule=exp_growth": 3, "batch_schedule=constant": 0}
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
    reach = json.loads(cli("query", "select seed, epoch, samples, seconds from "
                           "reach_accuracy(0.39) order by seed", "--format", "json").stdout)
    # Accuracy rises linearly to its final value over 3 epochs of 1000 samples and 0.5 s.
    assert [(r["epoch"], r["samples"], r["seconds"]) for r in reach] == [
        (3, 3000, 1.5), (2, 2000, 1.0), (2, 2000, 1.0)]


@pytest.mark.parametrize(("args", "message"), [
    (["scaling"], "analyze scaling: needs the study to vary optimizer.lr and "
                  "batch_schedule.batch_size; study 'one' does not vary "
                  "batch_schedule.batch_size (it varies optimizer.lr)"),
    (["warmup"], "analyze warmup: needs the study to vary lr_schedule.warmup_epochs and "
                 "dataset.examples_per_class; study 'one' does not vary "
                 "lr_schedule.warmup_epochs, dataset.examples_per_class (it varies "
                 "optimizer.lr)"),
    (["ranking"], "analyze ranking: needs the study to use two or more optimizers; study "
                  "'one' uses sgd"),
    (["sfo"], "analyze sfo: give --epsilon, the full gradient norm to reach (a positive "
              "number)"),
    (["sfo", "--epsilon", "0.1"], "analyze sfo: study 'one' has no full_grad_norm probe "
                                  "values; add probes = [{ name = \"full_grad_norm\", every = "
                                  "1 }] to its base"),
    (["optimal", "--metric", "best_test_accuracy"], "--metric 'best_test_accuracy': not a "
     "metric; use REDUCER_COLUMN with REDUCER one of best, final, min, max, mean and COLUMN one "
     "of step, samples, sfo, epoch_lr, epoch_batch_size, train_loss, train_acc, test_loss, "
     "test_acc, seconds, eval_seconds, val_loss, val_acc, probe_seconds (e.g. best_test_acc, "
     "best_test_loss, best_train_loss)"),
    (["optimal", "--param", "optimizer.momentum"], "--param optimizer.momentum: the study does "
     "not vary it; it varies optimizer.lr"),
    (["bestest"], "analysis 'bestest': not an analysis; use one of optimal, lr-wd, scaling, "
                  "warmup, sfo, ranking"),
])
def test_analysis_errors_are_one_line(cli, tmp_path, args, message):
    make_store(tmp_path, HEAD.format(name="one") + BLOCK + f'grid = {{ "optimizer.lr" = {LRS} }}\n',
               lambda c, s: 0.5)
    result = cli("analyze", *args)
    assert (result.exit_code, result.stderr) == (1, f"Error: {message}\n")


def test_every_analysis_is_the_same_whatever_order_the_store_returns_rows(tmp_path,
                                                                          monkeypatch):
    """Seed 002's H3 compares each dataset with a reference one: the first block of the study
    file, not whichever group the store happens to return first."""
    import random

    from optlab import analyze as an

    best = {5000: 10, 500: 5, 50: 1}
    text = HEAD.format(name="order") + """
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
        outputs.append([an.run_analysis(store, name, None, "best_test_acc",
                                        param="lr_schedule.warmup_epochs").to_json()
                        for name in ("warmup", "optimal")])
    assert all(o == outputs[0] for o in outputs[1:])
    h3 = next(h for h in outputs[0][0]["tables"]["hypotheses"] if h["hypothesis"] == "H3")
    assert h3["note"].startswith("dataset.classes=10 vs dataset.classes=5: r=1")
    assert "dataset.classes=10 vs dataset.classes=7" in h3["note"]
