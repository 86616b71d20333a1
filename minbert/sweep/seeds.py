"""Seed search: "start many, stop early, continue some", and expected max performance.

Two papers:
- Dodge, Ilharco, Schwartz, Farhadi, Hajishirzi, Smith (2020), "Fine-Tuning
  Pretrained Language Models: Weight Initializations, Data Orders, and Early
  Stopping". Fine-tuning the same model with different seeds gives very
  different results, and bad seeds show early. Their algorithm: start t runs,
  train each for a fraction f of the budget, continue only the best p to the
  end. Cost (t*f + p*(1-f)) * epochs, against t * epochs for training all.
  Their grid of N init seeds x M data-order seeds is in seed_grid.py.
- Dodge, Gururangan, Card, Schwartz, Smith (2019), "Show Your Work: Improved
  Reporting of Experimental Results". Expected validation performance: the
  expected best score of n runs, estimated from N observed runs.

Pure Python and numpy; the training code supplies `run_fn`, so this file never
touches torch; matplotlib draws the report's plots.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

# ---------------------------------------------------------------------------
# Expected maximum validation performance (Dodge et al. 2019)


def _as_scores(scores) -> np.ndarray:
    v = np.asarray(scores, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D list of numbers, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("scores must be finite (no NaN or inf)")
    return v


def expected_max(scores: Sequence[float], n: int) -> tuple[float, float]:
    """Expected best score, and its std, of n runs drawn with replacement from `scores`.

    With v_(1) <= ... <= v_(N) the sorted scores, the max of n draws equals
    v_(i) with probability P_i = (i/N)^n - ((i-1)/N)^n, so
        E[max]  = sum_i v_(i) P_i            (Dodge et al. 2019, eq. 1)
        std     = sqrt(sum_i v_(i)^2 P_i - E[max]^2)
    n = 1 gives the plain mean and the population std. Ties need no care:
    tied values just share their probability mass.
    """
    v = _as_scores(scores)  # (N,) float array, in the order given
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    # BEGIN EXERCISE expected_max
    v = np.sort(v)
    N = v.size
    i = np.arange(1, N + 1)
    p = (i / N) ** n - ((i - 1) / N) ** n  # (N,), sums to 1
    mean = float(np.sum(v * p))
    var = float(np.sum(v**2 * p)) - mean**2
    return mean, math.sqrt(max(var, 0.0))  # clip tiny negative rounding error
    # END EXERCISE expected_max


def expected_max_curve(scores: Sequence[float], ns: Optional[Sequence[int]] = None) -> list[dict]:
    """[{"n", "mean", "std"}, ...] for n = 1..N (or the given ns)."""
    if ns is None:
        ns = range(1, len(_as_scores(scores)) + 1)
    curve = []
    for n in ns:
        mean, std = expected_max(scores, n)
        curve.append({"n": int(n), "mean": mean, "std": std})
    return curve


def full_training_baseline(full_run_scores: Sequence[float], budget_runs: float) -> dict:
    """Expected best of k = floor(budget_runs) fully trained runs, for equal-budget comparisons.

    budget_runs is a cost in units of one full run, e.g. the search's
    t*f + p*(1-f). Returns {"k", "mean", "std"}.
    """
    k = math.floor(budget_runs + 1e-9)  # 2.9999999 from float arithmetic means 3 runs
    if k < 1:
        raise ValueError(f"budget_runs must allow at least one full run, got {budget_runs}")
    mean, std = expected_max(full_run_scores, k)
    return {"k": k, "mean": mean, "std": std}


# ---------------------------------------------------------------------------
# Start many, stop early, continue some (Dodge et al. 2020, section 6)


@dataclass
class Run:
    run_id: int
    evals: list[dict] = field(default_factory=list)  # {"fraction", "step", "score", ...}
    stopped_early: bool = False

    @property
    def latest(self) -> dict:
        return max(self.evals, key=lambda e: e["fraction"])  # first one on equal fractions

    @property
    def best(self) -> dict:
        return max(self.evals, key=lambda e: e["score"])  # earliest one on equal scores


@dataclass
class SearchResult:
    runs: list[Run]
    continued: list[int]  # run ids, best-at-f first
    best_run: int
    best_score: float
    cost_epochs: float
    t: int
    f: float
    p: int
    epochs: float

    def scores_at_f(self) -> list[float]:
        """Each run's latest score at fraction f, in run_id order: the ranking scores."""
        return [_score_at(run, self.f)["score"] for run in self.runs]

    def final_scores(self) -> list[float]:
        """Final scores of the continued runs, in `continued` order."""
        return [self.runs[i].latest["score"] for i in self.continued]


# The training code: run_fn(run_id, start_fraction, stop_fraction) -> evals made in that segment.
RunFn = Callable[[int, float, float], list[dict]]


def _score_at(run: Run, f: float) -> dict:
    upto = [e for e in run.evals if e["fraction"] <= f + 1e-9]
    return max(upto, key=lambda e: e["fraction"])


def _segment(run_fn: RunFn, run: Run, start: float, stop: float) -> None:
    evals = [dict(e) for e in run_fn(run.run_id, start, stop)]
    if not evals:
        raise ValueError(f"run_fn returned no evaluations for run {run.run_id} "
                         f"on [{start}, {stop}]; evaluate at least once, at the end of the segment")
    for e in evals:
        missing = {"fraction", "step", "score"} - e.keys()
        if missing:
            raise ValueError(f"evaluation {e} of run {run.run_id} lacks {sorted(missing)}")
        if not start - 1e-9 <= e["fraction"] <= stop + 1e-9:
            raise ValueError(f"evaluation at fraction {e['fraction']} of run {run.run_id} "
                             f"lies outside its segment [{start}, {stop}]")
    run.evals.extend(evals)


def check_search(t: int, f: float, p: int):
    """t runs started, stopped at fraction f, p continued: 1 <= p <= t, 0 < f <= 1."""
    if not (isinstance(t, int) and isinstance(p, int) and 1 <= p <= t):
        raise ValueError(f"need integers 1 <= p <= t, got t={t!r}, p={p!r}")
    if not 0.0 < f <= 1.0:
        raise ValueError(f"f is a fraction of the training budget, need 0 < f <= 1, got {f}")


def start_many_stop_early(run_fn: RunFn, t: int, f: float, p: int, epochs: float) -> SearchResult:
    """Start t runs, train each to fraction f, continue the best p to the end.

    Choices (the paper leaves them open):
    - ranking at f uses each run's *latest* evaluation at or before f, i.e. the
      state we would continue from, not its best so far; ties go to the lower
      run_id. run_fn should therefore evaluate at the end of each segment.
    - the chosen model is the best score seen anywhere on a continued run's
      curve, which is what keeping the best checkpoint gives you and why
      evaluating often pays (Dodge et al. 2020, section 4). Ties go to the run
      ranked higher at f.
    - runs are started in run_id order 0..t-1, then continued best-at-f first.
    """
    check_search(t, f, p)
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")

    # 1. start many: every run trains from 0 to f
    runs = [Run(run_id=i) for i in range(t)]
    for run in runs:
        _segment(run_fn, run, 0.0, f)

    # 2. stop early: rank by the latest score at f, keep the best p
    ranked = sorted(runs, key=lambda r: (-_score_at(r, f)["score"], r.run_id))
    continued = [r.run_id for r in ranked[:p]]
    for r in ranked[p:]:
        r.stopped_early = f < 1.0  # with f == 1 every run already finished

    # 3. continue some: the chosen p train from f to the end
    if f < 1.0:
        for i in continued:
            _segment(run_fn, runs[i], f, 1.0)

    best_run = max(continued, key=lambda i: runs[i].best["score"])  # max keeps the first on ties
    return SearchResult(
        runs=runs, continued=continued, best_run=best_run,
        best_score=float(runs[best_run].best["score"]),
        cost_epochs=(t * f + p * (1.0 - f)) * epochs,
        t=t, f=f, p=p, epochs=epochs,
    )


# ---------------------------------------------------------------------------
# Reporting: runs.json, table.md, expected_max.png, curves.png


def _fmt(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.4f}"


def _curve_table(name: str, curve: list[dict]) -> list[str]:
    lines = [f"Expected max, {name}:", "", "| n | expected max ± std |", "|---|---|"]
    lines += [f"| {c['n']} | {c['mean']:.4f} ± {c['std']:.4f} |" for c in curve]
    return lines + [""]


def write_report(result: SearchResult, out_dir: str, title: str,
                 full_run_scores: Optional[Sequence[float]] = None) -> None:
    """Write runs.json, table.md, expected_max.png and curves.png into out_dir.

    full_run_scores, if given, holds one score per run trained to the end
    without stopping; measure them as the search measures best_score (the best
    checkpoint of each run) so the equal-budget comparison is fair.
    """
    os.makedirs(out_dir, exist_ok=True)
    at_f = result.scores_at_f()
    curves = {f"all {result.t} runs at f={result.f:g}": expected_max_curve(at_f)}
    if result.f < 1.0:
        curves[f"{result.p} continued runs, final"] = expected_max_curve(result.final_scores())
    baseline = None
    if full_run_scores is not None:
        curves[f"{len(full_run_scores)} full runs"] = expected_max_curve(full_run_scores)
        baseline = full_training_baseline(full_run_scores, result.cost_epochs / result.epochs)

    # runs.json: everything needed to redraw the table and the plots
    full = None if full_run_scores is None else [float(s) for s in full_run_scores]
    summary = asdict(result)
    summary.update(title=title, expected_max=curves, full_run_scores=full,
                   equal_budget_baseline=baseline)
    with open(os.path.join(out_dir, "runs.json"), "w") as fh:
        json.dump(summary, fh, indent=2)

    # table.md
    has_seed = any("seed" in e for run in result.runs for e in run.evals)
    head = ["run"] + (["seed"] if has_seed else [])
    head += ["score at f", "final score", "best score", "continued"]
    lines = [f"# {title}", "",
             f"t={result.t} runs started, f={result.f:g}, p={result.p} continued, "
             f"{result.epochs:g} epochs per full run.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, s_f in zip(result.runs, at_f):
        kept = run.run_id in result.continued
        row = [str(run.run_id)]
        if has_seed:
            row.append(str(next((e["seed"] for e in run.evals if "seed" in e), "–")))
        row += [_fmt(s_f), _fmt(None if run.stopped_early else run.latest["score"]),
                _fmt(run.best["score"]), "yes" if kept else "no"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Chosen model: run {result.best_run}, best validation score "
              f"{result.best_score:.4f} (best checkpoint of a continued run).", ""]
    for name, curve in curves.items():
        lines += _curve_table(name, curve)
    lines.append(f"Cost: (t*f + p*(1-f)) * epochs = ({result.t}*{result.f:g} + {result.p}*"
                 f"{1 - result.f:g}) * {result.epochs:g} = {result.cost_epochs:g} epochs.")
    if baseline is not None:
        lines.append(f"At equal budget, start-many-stop-early gives {result.best_score:.4f} vs "
                     f"{baseline['mean']:.4f} ± {baseline['std']:.4f} expected for the best of "
                     f"{baseline['k']} full runs.")
    with open(os.path.join(out_dir, "table.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


    # expected_max.png: E[max of n] with a ±std band, one line per score set
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        n = [c["n"] for c in curve]
        mean = np.array([c["mean"] for c in curve])
        std = np.array([c["std"] for c in curve])
        ax.plot(n, mean, marker="o", label=name)
        ax.fill_between(n, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="number of runs n", ylabel="expected max validation score", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "expected_max.png"), dpi=120)
    plt.close(fig)

    # curves.png: every run's validation curve, stopped runs dashed grey
    fig, ax = plt.subplots(figsize=(6, 4))
    stopped_label = "stopped early"  # labelled once, on the first stopped run
    for run in result.runs:
        ev = sorted(run.evals, key=lambda e: e["fraction"])
        x, y = [e["fraction"] for e in ev], [e["score"] for e in ev]
        if run.run_id in result.continued:
            ax.plot(x, y, "-", lw=1.5, label=f"run {run.run_id}")
        else:
            ax.plot(x, y, "--", color="grey", lw=1, alpha=0.7, label=stopped_label)
            stopped_label = None
    ax.axvline(result.f, color="black", lw=1, ls=":", label=f"f = {result.f:g}")
    ax.set(xlabel="fraction of training", ylabel="validation score", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "curves.png"), dpi=120)
    plt.close(fig)
