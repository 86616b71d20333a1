"""The CS224N overall score (minbert/metrics.py, metrics.overall)."""
import pytest

from minbert import metrics
from minbert.data import TASKS


def test_overall_score_is_the_cs224n_formula():
    """overall = (SST accuracy + QQP accuracy + (STS Pearson r + 1) / 2) / 3: the correlation,
    in [-1, 1], is mapped to [0, 1] like the accuracies before the three are averaged."""
    sst, qqp, r = 0.5, 0.75, -0.2  # a negative r: forgetting the mapping or half of it shows
    got = metrics.overall({"sst": ("accuracy", sst), "quora": ("accuracy", qqp), "sts": ("pearson", r)})
    assert got == pytest.approx((sst + qqp + (r + 1) / 2) / 3), (
        f"metrics.overall: the CS224N score is (SST acc + QQP acc + (STS pearson + 1) / 2) / 3 = "
        f"{(sst + qqp + (r + 1) / 2) / 3:.4f} for SST {sst}, QQP {qqp}, STS r {r}; got {got:.4f}")
    mains = {t: TASKS[t].metric for t in ("sst", "quora", "sts")}
    assert mains == {"sst": "accuracy", "quora": "accuracy", "sts": "pearson"}, (
        f"data.TASKS: the CS224N overall score reads SST and QQP accuracy and STS Pearson r; "
        f"the tasks' main metrics are {mains}")
