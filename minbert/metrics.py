"""Evaluation metrics, named as Hugging Face's run_glue names them (accuracy, f1, pearson,
spearmanr), and the CS224N overall score: the mean of the tasks' main metrics with a
correlation r mapped to (r + 1) / 2 so that every term lies in [0, 1]."""
from __future__ import annotations

import numpy as np
from scipy import stats


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean())


def f1(pred, gold, positive=1) -> float:
    """F1 of the positive class: 2 TP / (2 TP + FP + FN); 0 when there are no positives at all."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = float((pred & gold).sum())
    denom = 2 * tp + float((pred & ~gold).sum()) + float((~pred & gold).sum())
    return 2 * tp / denom if denom else 0.0


def _correlation(fn, pred, gold) -> float:
    pred, gold = np.asarray(pred, dtype=float), np.asarray(gold, dtype=float)
    if np.ptp(pred) == 0 or np.ptp(gold) == 0:
        # Constant predictions (a saturated head, say) have no correlation; scipy would
        # return NaN, which would also poison best-checkpoint selection. Count it as 0.
        return 0.0
    return float(fn(pred, gold)[0])


def pearson(pred, gold) -> float:
    return _correlation(stats.pearsonr, pred, gold)


def spearmanr(pred, gold) -> float:
    return _correlation(stats.spearmanr, pred, gold)


def task_metrics(kind: str, num_labels: int, pred, gold) -> dict[str, float]:
    """The metrics a task of this kind reports."""
    if kind == "regression":
        return {"pearson": pearson(pred, gold), "spearmanr": spearmanr(pred, gold)}
    out = {"accuracy": accuracy(pred, gold)}
    if num_labels == 2:
        out["f1"] = f1(pred, gold)
    return out


def normalized(metric: str, value: float) -> float:
    """Maps a correlation from [-1, 1] to [0, 1]; accuracy and F1 already are."""
    return (value + 1) / 2 if metric in ("pearson", "spearmanr") else value


def overall(main_metrics: dict[str, tuple[str, float]]) -> float:
    """{task: (metric name, value)} -> mean normalized score; CS224N: (SST + QQP + (STS+1)/2) / 3."""
    return float(np.mean([normalized(m, v) for m, v in main_metrics.values()]))


def combined_score(metrics: dict[str, float]) -> float:
    """run_glue's eval_combined_score: the mean of a task's metrics (MRPC: accuracy and F1)."""
    return float(np.mean(list(metrics.values())))
