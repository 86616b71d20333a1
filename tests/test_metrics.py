"""Metrics (minbert/metrics.py) against hand values and scipy, and the CS224N overall score;
each failure names the function and the formula it computes."""
import warnings

import numpy as np
import pytest
from scipy import stats

from minbert import metrics
from minbert.data import TASKS


def test_accuracy_is_the_share_of_exact_matches():
    got = metrics.accuracy([1, 0, 2, 2], [1, 1, 2, 0]), metrics.accuracy([3], [3])
    assert got == (0.5, 1.0), (f"metrics.accuracy: the share of predictions equal to the label; "
                               f"[1, 0, 2, 2] vs [1, 1, 2, 0] is 2/4 = 0.5 and [3] vs [3] is 1.0, got {got}")


@pytest.mark.parametrize("pred,gold,expected,why", [
    ([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], 2 / 3, "TP 2, FP 1, FN 1: 2*2 / (2*2 + 1 + 1)"),
    ([1, 0, 1], [1, 0, 1], 1.0, "every positive found, none invented"),
    ([0, 0, 0], [1, 1, 0], 0.0, "no positive predicted: TP = 0"),
    ([1, 1, 0], [0, 0, 0], 0.0, "no gold positive: TP = 0"),
    ([0, 0, 0], [0, 0, 0], 0.0, "no positives at all: 0, not a division by zero"),
])
def test_f1_of_the_positive_class(pred, gold, expected, why):
    got = metrics.f1(pred, gold)
    assert got == pytest.approx(expected), (f"metrics.f1: F1 = 2 TP / (2 TP + FP + FN) of class 1; for predictions "
                                            f"{pred} and labels {gold}, {why} = {expected:.4f}; got {got}")


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 40).round(1)  # rounded: ties, which Spearman must rank as averages
    pred = gold + rng.normal(0, 1.5, 40)
    pred[:5] = pred[5]  # ties in the predictions too
    for name, ours, theirs in (("pearson", metrics.pearson, stats.pearsonr), ("spearmanr", metrics.spearmanr,
                                                                               stats.spearmanr)):
        got, want = ours(pred, gold), theirs(pred, gold)[0]
        assert got == pytest.approx(want, abs=1e-12), (
            f"metrics.{name}: must equal scipy.stats.{theirs.__name__} (ties ranked as averages); "
            f"got {got}, scipy {want}")
    assert metrics.pearson(list(pred), list(gold)) == metrics.pearson(pred, gold), "metrics.pearson: lists work too"
    assert metrics.pearson(-pred, gold) == pytest.approx(-metrics.pearson(pred, gold)), (
        "metrics.pearson: negating the predictions negates r")


def test_constant_predictions_correlate_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy would warn and return NaN
        for fn in (metrics.pearson, metrics.spearmanr):
            got = fn([2.5] * 6, [0, 1, 2, 3, 4, 5]), fn([0, 1, 2, 3, 4, 5], [1.0] * 6)
            assert got == (0.0, 0.0), (f"metrics.{fn.__name__}: a constant side has no correlation; it counts as "
                                       f"0 (scipy's NaN would poison the best-checkpoint choice), got {got}")


def test_task_metrics_names():
    got = {kind: set(metrics.task_metrics(*args)) for kind, args in (
        ("5 classes", ("classification", 5, [0, 1], [0, 2])), ("2 classes", ("classification", 2, [0, 1], [0, 1])),
        ("regression", ("regression", 1, [0.0, 1.0, 2.0], [0.0, 1.5, 1.0])))}
    expected = {"5 classes": {"accuracy"}, "2 classes": {"accuracy", "f1"}, "regression": {"pearson", "spearmanr"}}
    assert got == expected, f"metrics.task_metrics: run_glue's metric names per kind of task; expected {expected}, got {got}"


def test_overall_score_is_the_cs224n_formula():
    """overall = (SST accuracy + QQP accuracy + (STS Pearson r + 1) / 2) / 3: the correlation,
    in [-1, 1], is mapped to [0, 1] like the accuracies before the three are averaged."""
    sst, qqp, r = 0.5, 0.75, -0.2  # a negative r: forgetting the mapping or half of it shows
    got = metrics.overall({"sst": ("accuracy", sst), "quora": ("accuracy", qqp), "sts": ("pearson", r)})
    assert got == pytest.approx((sst + qqp + (r + 1) / 2) / 3), (
        f"metrics.overall: the CS224N score is (SST acc + QQP acc + (STS pearson + 1) / 2) / 3 = "
        f"{(sst + qqp + (r + 1) / 2) / 3:.4f} for SST {sst}, QQP {qqp}, STS r {r}; got {got:.4f}")
    paper = metrics.overall({"sst": ("accuracy", 0.512), "quora": ("accuracy", 0.731), "sts": ("pearson", 0.361)})
    assert round(paper, 3) == 0.641, (f"metrics.overall: the student paper's baseline row (0.512, 0.731, 0.361) "
                                      f"has overall 0.641; got {paper:.4f}")
    alone = metrics.overall({"sts": ("pearson", -1.0)}), metrics.overall({"mrpc": ("f1", 0.8)})
    assert alone == pytest.approx((0.0, 0.8)), (f"metrics.overall: one task alone is its normalized main metric: "
                                                f"r = -1 -> 0, F1 0.8 -> 0.8; got {alone}")
    mains = {t: TASKS[t].metric for t in ("sst", "quora", "sts")}
    assert mains == {"sst": "accuracy", "quora": "accuracy", "sts": "pearson"}, (
        f"data.TASKS: the CS224N overall score reads SST and QQP accuracy and STS Pearson r; "
        f"the tasks' main metrics are {mains}")


def test_combined_score_is_the_mean_of_a_tasks_metrics():
    got = metrics.combined_score({"accuracy": 0.7, "f1": 0.8}), metrics.combined_score({"pearson": 0.5,
                                                                                          "spearmanr": 0.3})
    assert got == pytest.approx((0.75, 0.4)), (f"metrics.combined_score: run_glue's eval_combined_score, the mean of "
                                               f"a task's metrics; (0.7 + 0.8) / 2 and (0.5 + 0.3) / 2, got {got}")
