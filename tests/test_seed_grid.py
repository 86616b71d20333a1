"""Tests for minbert/sweep/seed_grid.py: Dodge et al. 2020's init-seed x data-seed grid and its
variance decomposition, on grids whose answer is known."""
import json
import math

import numpy as np
import pytest

from minbert.sweep.seed_grid import SeedGrid, seed_stats, variance_decomposition, write_grid_report


def grid_of(f, init_seeds, data_seeds) -> SeedGrid:
    return SeedGrid.from_runs({(i, d): f(i, d) for i in init_seeds for d in data_seeds})


def test_grid_from_runs_puts_init_seeds_in_rows_and_data_seeds_in_columns():
    grid = SeedGrid.from_runs({(2, 10): 0.1, (1, 20): 0.2, (1, 10): 0.3, (2, 20): 0.4})
    assert grid.init_seeds == [1, 2] and grid.data_seeds == [10, 20]
    assert grid.scores == [[0.3, 0.2], [0.1, 0.4]]


def test_decomposition_recovers_additive_init_and_data_effects():
    # scores = m + a_i + b_j exactly: var_init = var(a), var_data = var(b), nothing left over
    a = {0: 0.03, 1: -0.01, 2: -0.02, 3: 0.00}  # sums to 0
    b = {10: 0.005, 11: -0.015, 12: 0.010}  # sums to 0
    v = variance_decomposition(grid_of(lambda i, d: 0.8 + a[i] + b[d], a, b))
    assert v["grand_mean"] == pytest.approx(0.8)
    assert v["init"]["variance"] == pytest.approx(np.var(list(a.values())))
    assert v["data"]["variance"] == pytest.approx(np.var(list(b.values())))
    assert v["residual"]["variance"] == pytest.approx(0.0, abs=1e-15)
    assert v["total"]["variance"] == pytest.approx(v["init"]["variance"] + v["data"]["variance"])
    assert v["init"]["share"] + v["data"]["share"] == pytest.approx(1.0)
    assert (v["init"]["df"], v["data"]["df"], v["residual"]["df"], v["total"]["df"]) == (3, 2, 6, 11)


def test_decomposition_when_only_the_init_seed_matters():
    a = {0: 0.70, 1: 0.80, 2: 0.75, 3: 0.90, 4: 0.60}
    v = variance_decomposition(grid_of(lambda i, d: a[i], a, range(4)))
    assert v["init"]["share"] == pytest.approx(1.0)
    assert v["data"]["variance"] == pytest.approx(0.0, abs=1e-15)
    assert v["residual"]["variance"] == pytest.approx(0.0, abs=1e-15)
    # only shuffles that move every column alike keep the rows apart: p ~ 1/5!^3
    assert v["init"]["p"] < 0.01
    assert v["data"]["p"] == 1.0  # every row is constant: any shuffle ties


def test_decomposition_of_a_2x2_grid_by_hand():
    # m = 3, row means 1.5, 4.5, column means 2, 4, residuals +-0.5
    v = variance_decomposition(SeedGrid([0, 1], [0, 1], [[1, 2], [3, 6]]))
    assert v["total"]["variance"] == pytest.approx(3.5)  # ((-2)^2 + 1 + 0 + 3^2) / 4
    assert [v[k]["variance"] for k in ("init", "data", "residual")] == pytest.approx([2.25, 1.0, 0.25])
    assert v["init"]["F"] == pytest.approx(9.0) and v["data"]["F"] == pytest.approx(4.0)  # 1 and 1 df


def test_permutation_p_is_large_for_pure_noise_and_reproducible():
    rng = np.random.default_rng(0)
    grid = SeedGrid(list(range(6)), list(range(6)), rng.normal(0.8, 0.02, size=(6, 6)))
    v = variance_decomposition(grid)
    assert v["init"]["p"] > 0.05 and v["data"]["p"] > 0.05
    assert variance_decomposition(grid) == v


def test_seed_stats_per_init_and_per_data_seed():
    grid = SeedGrid([7, 8], [1, 2, 3], [[0.1, 0.2, 0.6], [0.5, 0.5, 0.5]])
    by_init = seed_stats(grid, "init")
    assert by_init[0] == pytest.approx({"seed": 7, "mean": 0.3, "std": math.sqrt(0.07), "min": 0.1, "max": 0.6})
    assert by_init[1]["std"] == 0.0
    by_data = seed_stats(grid, "data")
    assert [s["seed"] for s in by_data] == [1, 2, 3]
    assert [s["mean"] for s in by_data] == pytest.approx([0.3, 0.35, 0.55])


def fake_grid_runs(n_init=3, n_data=4):
    """Best scores and 10-evaluation curves whose best lies mid-way, not at the end."""
    rng = np.random.default_rng(0)
    scores, curves = {}, {}
    for i in range(n_init):
        for d in range(100, 100 + n_data):
            curve = [0.6 + 0.01 * i + 0.005 * (d - 100) + 0.02 * k - 0.003 * k * k + rng.uniform(0, 0.01)
                     for k in range(1, 11)]
            curves[i, d] = [{"fraction": k / 10, "step": 5 * k, "score": s} for k, s in enumerate(curve, 1)]
            scores[i, d] = max(curve)
    return scores, curves


def test_write_grid_report_writes_json_md_and_png(tmp_path):
    scores, curves = fake_grid_runs()
    grid = SeedGrid.from_runs(scores, curves)
    meta = {"command": "python -m minbert.sweep.sweeps grid", "device": "cpu", "date": "2026-11-24",
            "commit": "abc1234", "model": "bert-tiny", "task": "sst"}
    write_grid_report(grid, str(tmp_path), "fake grid", meta=meta)

    data = json.loads((tmp_path / "grid.json").read_text())
    again = SeedGrid(**{k: data[k] for k in ("init_seeds", "data_seeds", "scores", "curves")})
    assert again == grid  # the json holds everything needed to redraw
    assert data["meta"] == meta and len(data["per_init_seed"]) == 3 and len(data["per_data_seed"]) == 4
    assert set(data["variance"]) >= {"init", "data", "residual", "total", "grand_mean"}
    best, last = data["expected_max"]["best checkpoint"], data["expected_max"]["last checkpoint"]
    assert len(best) == 12 and best[-1]["mean"] > last[-1]["mean"]  # the peaks lie before the end

    md = (tmp_path / "grid.md").read_text()
    assert md.startswith("# fake grid\n\n- command: `python -m minbert.sweep.sweeps grid`\n- device: cpu")
    assert "| init \\ data | 100 | 101 | 102 | 103 | mean | std | min | max |" in md
    assert f"| 0 | {scores[0, 100]:.4f} |" in md
    assert "| weight initialisation (rows) |" in md and "| data order (columns) |" in md
    assert "| 12 | " in md  # expected max of all 12 runs
    png = (tmp_path / "grid.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_write_grid_report_without_curves_or_meta(tmp_path):
    scores, _ = fake_grid_runs(2, 2)
    write_grid_report(SeedGrid.from_runs(scores), str(tmp_path / "out"), "no curves")
    data = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert data["curves"] is None and list(data["expected_max"]) == ["best checkpoint"]
    assert (tmp_path / "out" / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_names_the_missing_run():
    scores = {(0, 0): 0.5, (0, 1): 0.6, (1, 0): 0.7}
    with pytest.raises(ValueError, match=r"lacks the runs \(init_seed, data_seed\) \[\(1, 1\)\]"):
        SeedGrid.from_runs(scores)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_grid_names_the_run_with_a_non_finite_score(bad):
    scores = {(0, 0): 0.5, (0, 1): 0.6, (1, 0): bad, (1, 1): 0.7}
    with pytest.raises(ValueError, match=r"finite.*\[\(1, 0\)\]"):
        SeedGrid.from_runs(scores)


@pytest.mark.parametrize("init_seeds, data_seeds, kind", [([0], [0, 1, 2], "init"), ([0, 1, 2], [5], "data")])
def test_grid_needs_two_seeds_of_each_kind(init_seeds, data_seeds, kind):
    with pytest.raises(ValueError, match=f"at least 2 distinct {kind} seeds"):
        grid_of(lambda i, d: 0.5, init_seeds, data_seeds)
    repeated = ([0, 0], [0, 1]) if kind == "init" else ([0, 1], [1, 1])  # two seeds, but one value
    with pytest.raises(ValueError, match=f"at least 2 distinct {kind} seeds"):
        SeedGrid(*repeated, [[0.1, 0.2], [0.3, 0.4]])


def test_grid_rejects_misshapen_scores_and_curves():
    with pytest.raises(ValueError, match=r"\(2, 2\) matrix"):
        SeedGrid([0, 1], [0, 1], [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    scores, curves = fake_grid_runs(2, 2)
    with pytest.raises(ValueError, match="curves must have the keys of scores"):
        SeedGrid.from_runs(scores, {k: v for k, v in curves.items() if k != (0, 100)})
    curves[1, 101] = [{"fraction": 1.0, "score": 0.5}]  # no step
    with pytest.raises(ValueError, match=r"\[\(1, 101\)\]"):
        SeedGrid.from_runs(scores, curves)
