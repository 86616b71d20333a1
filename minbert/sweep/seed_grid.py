"""Dodge et al. (2020), "Fine-Tuning Pretrained Language Models: Weight Initializations, Data
Orders, and Early Stopping": N weight-initialisation seeds x M data-order seeds, each pair
trained once, and how much of the spread in dev scores each seed kind causes.

Pure Python and numpy (sweeps.run_grid trains the runs); matplotlib draws the report's plot.
"""
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from minbert.sweep.seeds import _fmt, expected_max_curve

# ---------------------------------------------------------------------------
# The init-seed x data-seed grid (Dodge et al. 2020, sections 3 and 5)


@dataclass
class SeedGrid:
    """Every pairing of N weight-initialisation seeds with M data-order seeds, trained once each.

    scores[i][j] is the best dev score of the run with init_seeds[i] and data_seeds[j] (its
    best checkpoint; Dodge et al. evaluate 10 times an epoch, section 4). curves[i][j], if
    given, holds that run's evaluations [{"fraction", "step", "score", ...}, ...].
    `SeedGrid.from_runs` builds one from {(init_seed, data_seed): ...} dicts.
    """
    init_seeds: list[int]
    data_seeds: list[int]
    scores: list[list[float]]  # (N, M)
    curves: Optional[list[list[list[dict]]]] = None  # (N, M) lists of evaluations

    def __post_init__(self):
        self.init_seeds, self.data_seeds = [int(s) for s in self.init_seeds], [int(s) for s in self.data_seeds]
        for kind, seeds in (("init", self.init_seeds), ("data", self.data_seeds)):
            if len(seeds) < 2 or len(set(seeds)) != len(seeds):
                raise ValueError(f"a seed grid needs at least 2 distinct {kind} seeds to tell the "
                                 f"two kinds apart, got {kind} seeds {seeds}")
        x = np.asarray(self.scores, dtype=np.float64)
        shape = (len(self.init_seeds), len(self.data_seeds))
        if x.shape != shape:
            raise ValueError(f"scores must be an (init seeds, data seeds) = {shape} matrix, got shape {x.shape}")
        bad = [(self.init_seeds[i], self.data_seeds[j]) for i, j in zip(*np.nonzero(~np.isfinite(x)))]
        if bad:
            raise ValueError(f"scores must be finite; the runs (init_seed, data_seed) {bad} are not")
        self.scores = x.tolist()
        if self.curves is not None:
            need = {"fraction", "step", "score"}
            bad = [(self.init_seeds[i], self.data_seeds[j]) for i, j in np.ndindex(*shape)
                   if not self.curves[i][j] or any(need - e.keys() for e in self.curves[i][j])]
            if bad:
                raise ValueError(f'curves must be non-empty lists of {{"fraction", "step", "score"}} dicts; '
                                 f"those of the runs (init_seed, data_seed) {bad} are not")

    @classmethod
    def from_runs(cls, scores: dict, curves: Optional[dict] = None) -> "SeedGrid":
        """scores: {(init_seed, data_seed): best dev score}; curves: the same keys -> evaluations."""
        init, data = sorted({i for i, _ in scores}), sorted({d for _, d in scores})
        missing = [(i, d) for i in init for d in data if (i, d) not in scores]
        if missing:
            raise ValueError(f"the grid lacks the runs (init_seed, data_seed) {missing}: "
                             f"every init seed needs one run with every data seed")
        if curves is not None and set(curves) != set(scores):
            raise ValueError(f"curves must have the keys of scores; they differ at "
                             f"{sorted(set(curves) ^ set(scores))}")
        return cls(init, data, [[float(scores[i, d]) for d in data] for i in init],
                   None if curves is None else [[list(curves[i, d]) for d in data] for i in init])


def seed_stats(grid: SeedGrid, kind: str) -> list[dict]:
    """Per seed of `kind` ("init" or "data"): mean, sample std, min, max of its runs over the other kind."""
    x = np.asarray(grid.scores)
    rows, seeds = {"init": (x, grid.init_seeds), "data": (x.T, grid.data_seeds)}[kind]
    return [{"seed": s, "mean": float(r.mean()), "std": float(r.std(ddof=1)),
             "min": float(r.min()), "max": float(r.max())} for s, r in zip(seeds, rows)]


def _permutation_p(x: np.ndarray, permutations: int, rng: np.random.Generator) -> float:
    """P(variance of row means >= the observed one) when the scores are shuffled within each column."""
    observed = x.mean(axis=1).var()
    shuffled = rng.permuted(np.broadcast_to(x, (permutations, *x.shape)), axis=1)  # (P, N, M)
    hits = np.sum(shuffled.mean(axis=2).var(axis=1) >= observed * (1 - 1e-9))  # ties despite rounding
    return float((1 + hits) / (1 + permutations))


def variance_decomposition(grid: SeedGrid, permutations: int = 9999, rng_seed: int = 0) -> dict:
    """How much of the spread of scores each seed kind explains: two-way ANOVA, one run per cell.

    x_ij: score of init seed i (N of them) and data seed j (M); m: grand mean; r_i, c_j: row
    (init) and column (data) means. x_ij - m = (r_i - m) + (c_j - m) + (x_ij - r_i - c_j + m):
    init, data, and a residual that holds interaction and run-to-run noise (one run per cell
    cannot tell them apart). The parts are orthogonal, so the population variance splits exactly:
        var_total = mean_ij (x_ij - m)^2 = var_init + var_data + var_residual,
        var_init = mean_i (r_i - m)^2,  var_data = mean_j (c_j - m)^2,  share = var / var_total.
    A row mean still carries the noise of its M runs, so var_init > 0 even when the init seed does
    not matter; F and p measure against that noise:
        F = (SS_kind / df_kind) / (SS_res / df_res), SS = N*M*var, df = N-1, M-1, (N-1)(M-1).
    p: a permutation test, not the F table, since fine-tuning scores are far from normal (bimodal
    on small data, Dodge et al. Figure 3). Shuffling within each data-seed column keeps the data
    effect and breaks any init effect; p = (1 + #shuffles whose var_init >= the observed one) /
    (1 + permutations). Column sums stay fixed, so var_init orders shuffles as F would. Rows
    likewise for the data seeds. A small grid cannot give a small p: there are only N!^(M-1)
    distinct shuffles of the init labels (36 for 3 x 3), so p >= about 1/N!^(M-1).

    Dodge et al. 2020, section 5, find that WI and DO "contribute comparably to the variance"
    (abstract): they plot the score distributions of the best and the worst WI and DO seeds
    (Figure 3), and an ANOVA test says the best and the worst differ in mean. Two seeds picked
    after looking overstate the evidence; here every seed enters, and the other kind's effect is
    taken out instead of being counted as noise.
    """
    x = np.asarray(grid.scores)
    N, M = x.shape
    m, r, c = x.mean(), x.mean(axis=1), x.mean(axis=0)
    var = {"init": float(np.mean((r - m) ** 2)), "data": float(np.mean((c - m) ** 2)),
           "residual": float(np.mean((x - r[:, None] - c[None, :] + m) ** 2))}
    total = float(np.mean((x - m) ** 2))
    df = {"init": N - 1, "data": M - 1, "residual": (N - 1) * (M - 1)}
    ms_res = N * M * var["residual"] / df["residual"]
    rng = np.random.default_rng(rng_seed)
    p = {"init": _permutation_p(x, permutations, rng), "data": _permutation_p(x.T, permutations, rng)}
    out = {"grand_mean": float(m), "total": {"variance": total, "df": N * M - 1}, "permutations": permutations}
    for kind in ("init", "data", "residual"):
        out[kind] = {"variance": var[kind], "share": var[kind] / total if total > 0 else 0.0, "df": df[kind]}
        if kind != "residual":
            ms = N * M * var[kind] / df[kind]
            out[kind].update(F=ms / ms_res if ms_res > 0 else None, p=p[kind])
    return out


def write_grid_report(grid: SeedGrid, out_dir: str, title: str, meta: Optional[dict] = None) -> None:
    """Write grid.json (everything to redraw), grid.md (tables) and grid.png into out_dir.

    meta: {"command", "device", "date", "commit", "model", "task", ...}, listed atop grid.md.
    """
    os.makedirs(out_dir, exist_ok=True)
    x = np.asarray(grid.scores)
    N, M = x.shape
    stats = {kind: seed_stats(grid, kind) for kind in ("init", "data")}
    var = variance_decomposition(grid)
    curves = {"best checkpoint": expected_max_curve(x.ravel())}
    if grid.curves is not None:  # as the article's Figure 1: evaluating only at the end misses peaks
        last = [max(ev, key=lambda e: e["fraction"])["score"] for row in grid.curves for ev in row]
        curves["last checkpoint"] = expected_max_curve(last)

    summary = asdict(grid)
    summary.update(title=title, meta=meta or {}, per_init_seed=stats["init"],
                   per_data_seed=stats["data"], variance=var, expected_max=curves)
    with open(os.path.join(out_dir, "grid.json"), "w") as fh:
        json.dump(summary, fh, indent=2)

    # grid.md: meta, the N x M matrix with per-seed statistics, the variance table, expected max
    def row(*cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    lines = [f"# {title}", ""]
    lines += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in (meta or {}).items()]
    lines += ["", f"Best dev score of each of the {N} x {M} runs; rows: weight-initialisation seed, "
              "columns: data-order seed; std: sample std (n-1).", "",
              row("init \\ data", *grid.data_seeds, "mean", "std", "min", "max"), "|---" * (M + 5) + "|"]
    keys = ("mean", "std", "min", "max")
    lines += [row(seed, *map(_fmt, xs), *(_fmt(s[k]) for k in keys))
              for seed, xs, s in zip(grid.init_seeds, x, stats["init"])]
    lines += [row(k, *(_fmt(s[k]) for s in stats["data"]), f"**{var['grand_mean']:.4f}**" if k == "mean" else "",
                  "", "", "") for k in keys]
    lines += ["", "Variance of the scores by seed kind: two-way ANOVA with one run per cell "
              "(formulas: `variance_decomposition` in minbert/sweep/seed_grid.py).", "",
              row("source", "variance", "std", "share", "df", "F", f"p ({var['permutations']} permutations)"),
              "|---" * 7 + "|"]
    names = {"init": "weight initialisation (rows)", "data": "data order (columns)",
             "residual": "residual: interaction + noise", "total": "total"}
    for kind, name in names.items():
        v = var[kind]
        F, p = v.get("F"), v.get("p")
        lines.append(row(name, f"{v['variance']:.3g}", f"{math.sqrt(v['variance']):.4f}",
                         f"{v.get('share', 1.0):.0%}", v["df"], "–" if F is None else f"{F:.2f}",
                         "–" if p is None else f"{p:.4f}"))
    lines += ["", f"Expected best dev score of n runs drawn from the {N * M} (Dodge et al. 2019):", "",
              row("n", *curves), "|---" * (len(curves) + 1) + "|"]
    for n in [n for n in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if n < N * M] + [N * M]:
        lines.append(row(n, *(f"{c[n - 1]['mean']:.4f} ± {c[n - 1]['std']:.4f}" for c in curves.values())))
    with open(os.path.join(out_dir, "grid.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


    # grid.png: the runs of each init seed, of each data seed, and the expected max of n runs
    widths = [max(N, 4), max(M, 4), 0.6 * max(N, M, 5)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": widths})
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=x.shape)  # (N, M), spreads the points
    panels = ((axes[0], "init", x, jitter, grid.init_seeds, "weight-initialisation seed"),
              (axes[1], "data", x.T, jitter.T, grid.data_seeds, "data-order seed"))
    for ax, kind, xs, dx, seeds, what in panels:  # xs: (seeds, runs per seed)
        pos = np.arange(len(seeds))
        ax.boxplot(xs.T, positions=pos, widths=0.5, showfliers=False, medianprops={"color": "black"})
        ax.scatter((pos[:, None] + dx).ravel(), xs.ravel(), s=14, alpha=0.7, color="tab:blue", zorder=3)
        ax.axhline(var["grand_mean"], color="grey", ls=":", lw=1, label="mean of all runs")
        ax.set_xticks(pos, [str(s) for s in seeds], rotation=90 if len(seeds) > 12 else 0)
        ax.set(xlabel=what, ylabel="best dev score",
               title=f"per {what}: {var[kind]['share']:.0%} of variance (p = {var[kind]['p']:.2g})")
    axes[0].legend(fontsize="small")
    axes[1].sharey(axes[0])
    ax = axes[2]
    for name, curve in curves.items():
        n = [c["n"] for c in curve]
        mean, std = np.array([c["mean"] for c in curve]), np.array([c["std"] for c in curve])
        ax.plot(n, mean, label=name)
        ax.fill_between(n, mean - std, mean + std, alpha=0.2)
    if N * M > 20:
        ax.set_xscale("log")
    else:
        ax.locator_params(axis="x", integer=True)
    ax.set(xlabel="number of runs n", ylabel="expected best dev score", title=f"expected max of n of {N * M} runs")
    ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "grid.png"), dpi=120)
    plt.close(fig)
