"""Tests for minbert/sweep/seeds.py: expected max (Dodge et al. 2019) and the
start-many-stop-early search (Dodge et al. 2020) with a fake, known run_fn."""

import json
import math

import numpy as np
import pytest

from minbert.sweep.seeds import (
    expected_max,
    expected_max_curve,
    full_training_baseline,
    start_many_stop_early,
    write_report,
)

# ---------------------------------------------------------------------------
# expected_max


EQ1 = ("E[max of n] = sum_i v_(i) P_i, P_i = (i/N)^n - ((i-1)/N)^n, with v_(1) <= ... <= v_(N) the scores "
       "sorted ascending (Dodge et al. 2019, eq. 1)")


def test_expected_max_weights_the_sorted_scores():
    """P_i is the chance that the i-th smallest score is the best of n draws, so eq. 1 needs the
    scores sorted: the same scores in any order give the same expected maximum."""
    orders = ([1, 2, 3], [3, 1, 2], [2, 3, 1])
    for n in (2, 3):
        got = [expected_max(s, n)[0] for s in orders]
        assert got == pytest.approx([got[0]] * 3), (
            f"expected_max: {EQ1}; the scores {orders} in three orders gave {[round(g, 4) for g in got]} "
            f"for n = {n}: the weights P_i must go to the sorted scores (np.sort), whatever order they came in")


def test_expected_max_by_hand():
    # P(max = v_(i)) = (i/N)^n - ((i-1)/N)^n with N = 3: P = 1/9, 3/9, 5/9 for n = 2; 1/27, 7/27, 19/27 for n = 3
    for n, expected, sums in ((1, 2.0, "(1 + 2 + 3) / 3"), (2, 22 / 9, "(1*1 + 2*3 + 3*5) / 9"),
                              (3, 72 / 27, "(1*1 + 2*7 + 3*19) / 27")):
        got = expected_max([1, 2, 3], n)[0]
        assert got == pytest.approx(expected), (
            f"expected_max([1, 2, 3], {n}): {EQ1}; by hand {sums} = {expected:.4f}, got {got:.4f}")


def test_expected_max_std_by_hand():
    # n = 1: the population std of [1, 2, 3]; n = 2: E[max^2] = (1 + 4*3 + 9*5)/9 = 58/9, var = 58/9 - (22/9)^2 = 38/81
    for n, expected, how in ((1, math.sqrt(2 / 3), "the population std, sqrt(2/3)"),
                             (2, math.sqrt(38) / 9, "sqrt(58/9 - (22/9)^2) = sqrt(38)/9")):
        got = expected_max([1, 2, 3], n)[1]
        assert got == pytest.approx(expected), (
            f"expected_max([1, 2, 3], {n}): std = sqrt(sum_i v_(i)^2 P_i - E[max]^2), by hand {how} = "
            f"{expected:.4f}; got {got:.4f}")


def test_expected_max_matches_monte_carlo():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.6, 0.9, size=7)
    for n in (1, 3, 10):
        idx = rng.integers(0, len(scores), size=(200_000, n))  # n draws with replacement
        best = scores[idx].max(axis=1)
        mean, std = expected_max(scores, n)
        assert (mean, std) == pytest.approx((best.mean(), best.std()), abs=1e-2), (
            f"expected_max: the best of {n} draws with replacement from 7 scores, simulated 200000 times, has mean "
            f"{best.mean():.4f} and std {best.std():.4f}; eq. 1 gave {mean:.4f} and {std:.4f}")


def test_expected_max_is_monotone_and_tends_to_max():
    scores = np.random.default_rng(1).normal(size=12)
    means = [c["mean"] for c in expected_max_curve(scores, ns=range(1, 60))]
    drops = [n for n, (a, b) in enumerate(zip(means, means[1:]), start=1) if b < a - 1e-12]
    assert not drops, f"expected_max: more runs can only raise the expected best; it fell after n = {drops}"
    assert means[-1] <= scores.max() + 1e-12, "expected_max: never above the best observed score"
    far = expected_max(scores, 10_000)[0]
    assert far == pytest.approx(scores.max()), (
        f"expected_max: with n = 10000 draws the best score is all but certain to be drawn; got {far}, "
        f"best score {scores.max()}")


def test_expected_max_ties_and_constant():
    assert expected_max([0.5, 0.5, 0.5], 4) == pytest.approx((0.5, 0.0)), (
        "expected_max: equal scores: the expected best is that score, with std 0")
    got = expected_max([1, 1, 2], 2)[0]
    assert got == pytest.approx((1 * 4 + 2 * 5) / 9), (
        f"expected_max([1, 1, 2], 2): tied scores share their probability mass, (1*1 + 1*3 + 2*5) / 9 = "
        f"{14 / 9:.4f}; got {got:.4f}")


def test_expected_max_curve_default_ns():
    curve = expected_max_curve([0.1, 0.4, 0.2, 0.3])
    assert [c["n"] for c in curve] == [1, 2, 3, 4]
    assert set(curve[0]) == {"n", "mean", "std"}


@pytest.mark.parametrize("scores, n", [([], 1), ([1.0, 2.0], 0), ([1.0], -1), ([1.0], 1.5),
                                       ([1.0, float("nan")], 1), ([[1.0, 2.0]], 1)])
def test_expected_max_rejects_bad_input(scores, n):
    with pytest.raises(ValueError):
        expected_max(scores, n)


def test_full_training_baseline():
    # budget 2.4 full runs buys k = 2 full runs
    assert full_training_baseline([1, 2, 3], 2.4) == pytest.approx({"k": 2, "mean": 22 / 9,
                                                                     "std": math.sqrt(38) / 9})
    assert full_training_baseline([1, 2, 3], 0.2 * 10 + 0.8)["k"] == 2  # float sum 2.8
    assert full_training_baseline([1, 2, 3], 3 * 0.05 + 3 * 0.95)["k"] == 3  # 2.9999999999999996
    with pytest.raises(ValueError):
        full_training_baseline([1, 2, 3], 0.5)


# ---------------------------------------------------------------------------
# start_many_stop_early with a fake run_fn

# Validation scores at fractions 1/8, 2/8, ..., 8/8 (two evaluations per epoch, 4 epochs).
# With f = 0.25 the ranking uses the score at 2/8: run 1 (.70) > run 2 (.65) > run 4 (.62) > ...
# Designed so that the rankings disagree:
#   run 3 starts badly but would end best of all: stopped early, never seen again;
#   run 1 leads at f and peaks at .90 mid-way, then ends at .79;
#   run 2 is second at f and has the best *final* score (.85) of the continued runs.
# Best-checkpointing therefore picks run 1 (.90); picking by final score would give run 2.
CURVES = {
    0: [.50, .55, .60, .62, .64, .66, .68, .70],
    1: [.60, .70, .72, .74, .90, .80, .78, .79],
    2: [.60, .65, .70, .75, .80, .82, .84, .85],
    3: [.40, .45, .80, .90, .95, .96, .97, .98],
    4: [.58, .62, .63, .64, .65, .66, .67, .68],
    5: [.30, .35, .40, .45, .50, .55, .60, .65],
}
GRID = [k / 8 for k in range(1, 9)]


class FakeTrainer:
    """Plays back CURVES; records every call so the test can check the segments."""

    def __init__(self, curves=CURVES, steps_per_run=800):
        self.curves, self.steps, self.calls = curves, steps_per_run, []

    def __call__(self, run_id, start, stop):
        self.calls.append((run_id, start, stop))
        return [{"fraction": x, "step": round(x * self.steps), "score": s, "seed": 100 + run_id}
                for x, s in zip(GRID, self.curves[run_id]) if start < x <= stop + 1e-9]


def test_search_continues_the_right_runs():
    fake = FakeTrainer()
    res = start_many_stop_early(fake, t=6, f=0.25, p=2, epochs=4)

    assert res.continued == [1, 2]  # best at f first
    assert [r.stopped_early for r in res.runs] == [True, False, False, True, True, True]
    # every run started from 0 to f in run_id order, then the chosen ones f -> 1
    assert fake.calls == [(i, 0.0, 0.25) for i in range(6)] + [(1, 0.25, 1.0), (2, 0.25, 1.0)]
    assert res.scores_at_f() == [.55, .70, .65, .45, .62, .35]
    assert res.final_scores() == [.79, .85]
    assert [len(r.evals) for r in res.runs] == [2, 8, 8, 2, 2, 2]

    # the chosen model is run 1's best checkpoint, not run 2's final score
    assert res.best_run == 1 and res.best_score == pytest.approx(0.90)
    # cost (t*f + p*(1-f)) * epochs = (1.5 + 1.5) * 4
    assert res.cost_epochs == pytest.approx((6 * 0.25 + 2 * 0.75) * 4)


def test_search_breaks_ties_by_run_id():
    flat = {i: [0.5] * 8 for i in range(4)}
    res = start_many_stop_early(FakeTrainer(flat), t=4, f=0.5, p=2, epochs=1)
    assert res.continued == [0, 1]
    assert res.best_run == 0


def test_search_ranks_by_latest_not_best_score_at_f():
    # run 0 peaks before f and falls back; run 1 is lower early but higher at f
    curves = {0: [.9, .5, .5, .5, .5, .5, .5, .5], 1: [.6, .7, .7, .7, .7, .7, .7, .7]}
    res = start_many_stop_early(FakeTrainer(curves), t=2, f=0.25, p=1, epochs=1)
    assert res.continued == [1]


def test_search_with_f_one_trains_everything_once():
    fake = FakeTrainer()
    res = start_many_stop_early(fake, t=3, f=1.0, p=1, epochs=2)
    assert fake.calls == [(0, 0.0, 1.0), (1, 0.0, 1.0), (2, 0.0, 1.0)]
    assert not any(r.stopped_early for r in res.runs)
    assert res.continued == [2] and res.cost_epochs == pytest.approx(6.0)


@pytest.mark.parametrize("t, f, p", [(4, 0.0, 2), (4, 1.5, 2), (4, -0.2, 1),
                                     (4, 0.5, 0), (2, 0.5, 3), (0, 0.5, 0)])
def test_search_rejects_bad_parameters(t, f, p):
    with pytest.raises(ValueError):
        start_many_stop_early(FakeTrainer(), t=t, f=f, p=p, epochs=1)


def test_search_rejects_bad_run_fn_output():
    with pytest.raises(ValueError, match="no evaluations"):
        start_many_stop_early(lambda i, a, b: [], t=2, f=0.5, p=1, epochs=1)
    too_far = lambda i, a, b: [{"fraction": 1.0, "step": 10, "score": 0.5}]  # noqa: E731
    with pytest.raises(ValueError, match="outside its segment"):
        start_many_stop_early(too_far, t=2, f=0.5, p=1, epochs=1)


# ---------------------------------------------------------------------------
# write_report


def test_write_report(tmp_path):
    res = start_many_stop_early(FakeTrainer(), t=6, f=0.25, p=2, epochs=4)
    full = [CURVES[i][-1] for i in range(6)]  # what training all six to the end would give
    write_report(res, str(tmp_path), "fake search", full_run_scores=full)

    data = json.loads((tmp_path / "runs.json").read_text())
    assert data["continued"] == [1, 2] and data["best_run"] == 1
    assert len(data["runs"]) == 6 and data["runs"][1]["evals"][-1]["score"] == 0.79
    assert data["t"] == 6 and data["f"] == 0.25 and data["p"] == 2 and data["epochs"] == 4
    assert data["equal_budget_baseline"]["k"] == 3  # cost 12 epochs = 3 full runs

    table = (tmp_path / "table.md").read_text()
    assert "| run | seed | score at f |" in table and "| 103 |" in table
    assert "12 epochs" in table and "best of 3 full runs" in table
    for name in ("expected_max.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_write_report_without_baseline(tmp_path):
    res = start_many_stop_early(FakeTrainer(), t=3, f=1.0, p=1, epochs=1)
    write_report(res, str(tmp_path / "out"), "no baseline")
    data = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert data["equal_budget_baseline"] is None
    assert (tmp_path / "out" / "curves.png").exists()


# ---------------------------------------------------------------------------
# The init-seed x data-seed grid
