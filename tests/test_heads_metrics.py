"""Metrics (minbert/metrics.py) against scipy and hand values; task heads and their losses
(minbert/heads.py); pooling that ignores padding through MultitaskBert; the training
batch stream (minbert/batches.py)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from minbert import BertConfig, BertModel
from minbert import metrics
from minbert.batches import Bucketed, Encoded, Stream, collate
from minbert.heads import HEADS, MultitaskBert, make_head

H = 8  # hidden size of the vectors fed to the heads


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- metrics

def test_accuracy_by_hand():
    assert metrics.accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    assert metrics.accuracy([3], [3]) == 1.0


def test_f1_by_hand():
    # TP = 2 (positions 0, 4), FP = 1 (1), FN = 1 (3): F1 = 2*2 / (2*2 + 1 + 1) = 2/3
    assert metrics.f1([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
    assert metrics.f1([1, 0, 1], [1, 0, 1]) == 1.0
    assert metrics.f1([0, 0, 0], [1, 1, 0]) == 0.0  # predicts no positives: TP = 0
    assert metrics.f1([1, 1, 0], [0, 0, 0]) == 0.0  # no gold positives
    assert metrics.f1([0, 0, 0], [0, 0, 0]) == 0.0  # no positives at all: 0, not a division by zero


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 40).round(1)  # rounded: ties, which Spearman must rank as averages
    pred = gold + rng.normal(0, 1.5, 40)
    pred[:5] = pred[5]  # ties in the predictions too
    assert metrics.pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0], abs=1e-12)
    assert metrics.spearmanr(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-12)
    assert metrics.pearson(list(pred), list(gold)) == metrics.pearson(pred, gold)  # lists work too
    assert metrics.pearson(-pred, gold) == pytest.approx(-metrics.pearson(pred, gold))


def test_constant_predictions_correlate_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy would warn and return NaN
        for fn in (metrics.pearson, metrics.spearmanr):
            assert fn([2.5] * 6, [0, 1, 2, 3, 4, 5]) == 0.0
            assert fn([0, 1, 2, 3, 4, 5], [1.0] * 6) == 0.0


def test_task_metrics_names():
    assert set(metrics.task_metrics("classification", 5, [0, 1], [0, 2])) == {"accuracy"}
    assert set(metrics.task_metrics("classification", 2, [0, 1], [0, 1])) == {"accuracy", "f1"}
    assert set(metrics.task_metrics("regression", 1, [0.0, 1.0, 2.0], [0.0, 1.5, 1.0])) == {"pearson", "spearmanr"}


def test_overall_is_the_cs224n_formula():
    a, b, r = 0.512, 0.731, 0.361  # the paper's baseline row: overall 0.641
    got = metrics.overall({"sst": ("accuracy", a), "quora": ("accuracy", b), "sts": ("pearson", r)})
    assert got == pytest.approx((a + b + (r + 1) / 2) / 3)
    assert round(got, 3) == 0.641
    assert metrics.overall({"sts": ("pearson", -1.0)}) == 0.0
    assert metrics.overall({"mrpc": ("f1", 0.8)}) == pytest.approx(0.8)


def test_combined_score_is_the_mean_of_a_tasks_metrics():
    assert metrics.combined_score({"accuracy": 0.7, "f1": 0.8}) == pytest.approx(0.75)
    assert metrics.combined_score({"pearson": 0.5, "spearmanr": 0.3}) == pytest.approx(0.4)


# ---------------------------------------------------------------- heads

def _vectors(n_segments, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, generator=g) for _ in range(n_segments)]


@pytest.mark.parametrize("task,head,binary_logit,shape", [
    ("sst", "linear", True, (3, 5)),
    ("quora", "concat", True, (3,)),
    ("quora", "concat", False, (3, 2)),
    ("mrpc", "linear", False, (3, 2)),
    ("mrpc", "linear", True, (3,)),
    ("sts", "concat", True, (3,)),
    ("sts", "cos-emb", True, (3,)),
    ("sts", "cos-d", True, (3,)),
    ("sts", "cos-2d1", True, (3,)),
    ("stsb", "linear", False, (3,)),
])
def test_head_output_shapes(task, head, binary_logit, shape):
    h = make_head(head, task, H, 0.1, binary_logit)
    out = h(_vectors(h.segments))
    assert out.shape == shape
    assert h.predict(out).shape == (3,)


def test_cos_emb_loss_is_cosine_embedding_loss_with_threshold():
    h = make_head("cos-emb", "sts", H, 0.0, True)
    assert list(h.parameters()) == []  # no STS linear layer
    u, v = _vectors(2, B=5)
    labels = torch.tensor([0.0, 2.5, 2.6, 5.0, 1.2])  # exactly 2.5 is not "similar"
    target = torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0])
    out = h([u, v])
    assert torch.allclose(out, F.cosine_similarity(u, v, dim=-1))
    assert torch.allclose(h.loss(out, labels, [u, v]), F.cosine_embedding_loss(u, v, target))


def test_cos_d_output_in_0_5():
    torch.manual_seed(0)
    h = make_head("cos-d", "sts", H, 0.0, True)
    u, v = _vectors(2, B=64, seed=1)
    out = h([u, v])
    assert out.min() >= 0.0 and out.max() <= 5.0
    top = 5.0 * torch.sigmoid(torch.tensor(20.0))  # cos = 1: the top of the scale, ~5
    assert torch.allclose(h([u, u]), top.expand(64))
    with torch.no_grad():
        h.proj.bias.zero_()  # then proj(-u) = -proj(u): cos = -1, the bottom, ~0
    assert torch.allclose(h([u, -u]), (5.0 - top).expand(64), atol=1e-6)
    assert torch.allclose(h.loss(out, torch.full((64,), 2.0), [u, v]), F.mse_loss(out, torch.full((64,), 2.0)))


def test_cos_2d1_input_is_u_v_cos():
    torch.manual_seed(0)
    h = make_head("cos-2d1", "sts", H, 0.0, True)
    assert h.out.in_features == 2 * H + 1 and h.out.out_features == 1
    u, v = _vectors(2)
    features = torch.cat([u, v, F.cosine_similarity(u, v, dim=-1).unsqueeze(-1)], dim=-1)  # (3, 2H+1)
    assert torch.allclose(h([u, v]), h.out(features).squeeze(-1))


def test_concat_input_width_and_losses():
    torch.manual_seed(0)
    quora, sst, sts = (make_head("concat", "quora", H, 0.0, True), make_head("linear", "sst", H, 0.0, True),
                       make_head("concat", "sts", H, 0.0, True))
    assert quora.out.in_features == 2 * H and sst.out.in_features == H
    u, v = _vectors(2)
    y = quora([u, v])
    assert torch.allclose(y, quora.out(torch.cat([u, v], -1)).squeeze(-1))
    assert torch.allclose(quora.loss(y, torch.tensor([1, 0, 1]), [u, v]),
                          F.binary_cross_entropy_with_logits(y, torch.tensor([1.0, 0.0, 1.0])))
    logits = sst([u])
    assert torch.allclose(sst.loss(logits, torch.tensor([4, 0, 2]), [u]), F.cross_entropy(logits, torch.tensor([4, 0, 2])))
    s = sts([u, v])
    assert torch.allclose(sts.loss(s, torch.tensor([0.5, 4.0, 2.0]), [u, v]), F.mse_loss(s, torch.tensor([0.5, 4.0, 2.0])))
    assert [h.smart_kind for h in (sst, quora, sts)] == ["classification", "binary", "regression"]


def test_predict_mappings():
    ce = make_head("linear", "sst", H, 0.0, True)
    assert ce.predict(torch.tensor([[0.1, 2.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 4.0]])).tolist() == [1, 4]
    bce = make_head("concat", "quora", H, 0.0, True)
    assert bce.predict(torch.tensor([-0.5, 0.0, 0.7])).tolist() == [0, 0, 1]  # logit > 0
    two = make_head("linear", "mrpc", H, 0.0, False)
    assert two.predict(torch.tensor([[0.2, 0.1], [0.0, 1.0]])).tolist() == [0, 1]
    cos = make_head("cos-emb", "sts", H, 0.0, True)
    assert cos.predict(torch.tensor([-1.0, 0.0, 0.6, 1.0])).tolist() == pytest.approx([0.0, 2.5, 4.0, 5.0])
    for head in ("concat", "cos-d", "cos-2d1"):  # scores are already on the 0..5 scale
        scores = torch.tensor([0.3, 4.2])
        assert torch.equal(make_head(head, "sts", H, 0.0, True).predict(scores), scores)


@pytest.mark.parametrize("task", ["sst", "quora", "mrpc"])
@pytest.mark.parametrize("head", ["cos-emb", "cos-d", "cos-2d1"])
def test_similarity_head_on_classification_task_is_an_error(task, head):
    with pytest.raises(ValueError, match="similarity"):
        make_head(head, task, H, 0.1, True)


def test_unknown_head_is_an_error():
    with pytest.raises(ValueError, match="unknown head 'bilinear'"):
        make_head("bilinear", "sts", H, 0.1, True)
    assert set(HEADS) == {"linear", "concat", "cos-emb", "cos-d", "cos-2d1"}


# ---------------------------------------------------------------- pooling through MultitaskBert

def _segment(rows, pad_to):
    ids = torch.zeros(len(rows), pad_to, dtype=torch.long)
    mask = torch.zeros(len(rows), pad_to, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "pooler"])
def test_multitask_bert_pooling_ignores_padding(pooling):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = MultitaskBert(BertModel(config), {"sts": "concat", "sst": "linear"}, pooling, dropout=0.1).eval()
    a = [[2, 7, 8, 9, 3], [2, 11, 3]]
    b = [[2, 12, 13, 3], [2, 14, 15, 16, 17, 3]]
    tight = {"segments": [_segment(a, 5), _segment(b, 6)]}
    padded = {"segments": [_segment(a, 9), _segment(b, 13)]}  # extra pads after every row
    with torch.no_grad():
        y, (u, v) = model("sts", tight, return_vectors=True)
        y_pad, (u_pad, v_pad) = model("sts", padded, return_vectors=True)
        s, s_pad = model("sst", {"segments": tight["segments"][:1]}), model("sst", {"segments": padded["segments"][:1]})
    assert torch.allclose(u, u_pad, atol=1e-5) and torch.allclose(v, v_pad, atol=1e-5)
    assert torch.allclose(y, y_pad, atol=1e-5) and torch.allclose(s, s_pad, atol=1e-5)
    if pooling == "mean":  # the second row of a has 3 real tokens: mean of exactly those
        hidden = model.bert.encode(model.embed("sst", tight)[0], tight["segments"][0]["attention_mask"])
        assert torch.allclose(u[1], hidden.last_hidden_state[1, :3].mean(0), atol=1e-6)


def test_collate_says_on_the_host_which_segments_are_padded(monkeypatch):
    """The encoder gets no mask for a segment without padding (SDPA's fastest kernel), and
    learns that from collate, not by asking the device (a sync per forward on a GPU)."""
    data = Encoded(["x", "y"], [[([2, 5, 3], [0, 0, 0]), ([2, 6, 7, 3], [0, 0, 0, 0])],
                                [([2, 8, 3], [0, 0, 0]), ([2, 9, 3], [0, 0, 0])]], [1, 0])
    batch = collate(data, [0, 1])
    assert [seg["padded"] for seg in batch["segments"]] == [False, True]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = MultitaskBert(BertModel(config), {"quora": "concat"}, "mean").eval()
    masks = []
    encode = model.bert.encode
    monkeypatch.setattr(model.bert, "encode", lambda e, mask: masks.append(mask) or encode(e, mask))
    with torch.no_grad():
        y = model("quora", batch)
        unflagged = {"segments": [{k: v for k, v in seg.items() if k != "padded"} for seg in batch["segments"]]}
        y_masked = model("quora", unflagged)  # without the flag: the mask always goes in
    assert masks[0] is None and masks[1] is not None and masks[2] is not None
    torch.testing.assert_close(y, y_masked, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- the batch stream

def _flat(stream, steps):
    return [i for s in range(steps) for i in stream.batch_indices(s)]


def test_stream_batch_is_a_pure_function_of_step():
    one, two = Stream(10, 4, seed=5, task_index=1), Stream(10, 4, seed=5, task_index=1)
    expected = [one.batch_indices(s) for s in range(12)]
    # out of order, repeated, and from a fresh stream: always the same batch
    for s in (7, 0, 11, 7, 3, 0):
        assert two.batch_indices(s) == expected[s]
        assert one.batch_indices(s) == expected[s]
    assert Stream(10, 4, seed=6, task_index=1).batch_indices(0) != expected[0]
    assert _flat(Stream(10, 4, seed=5, task_index=0), 5) != _flat(one, 5)  # tasks have their own orders


def test_stream_passes_are_permutations():
    stream = Stream(10, 5, seed=0, task_index=0)
    flat = _flat(stream, 8)  # 40 indices = 4 passes
    passes = [flat[k * 10:(k + 1) * 10] for k in range(4)]
    for p in passes:
        assert sorted(p) == list(range(10))
    assert len({tuple(p) for p in passes}) == 4  # each pass is shuffled anew


def _padding(batches, lengths):
    """Padded positions over real tokens, for batches padded to their longest member."""
    real = sum(lengths[i] for b in batches for i in b)
    return sum(len(b) * max(lengths[i] for i in b) for b in batches) / real - 1


@pytest.mark.parametrize("n,batch_size,window", [(100, 4, 5), (30, 8, 4), (7, 3, 2)])
def test_bucketed_stream_regroups_each_window_by_length(n, batch_size, window):
    lengths = [int(x) for x in torch.randint(5, 60, (n,), generator=torch.Generator().manual_seed(n))]
    plain = Stream(n, batch_size, seed=3, task_index=1)
    bucketed = Bucketed(Stream(n, batch_size, seed=3, task_index=1), lengths, window)
    steps = 6 * window
    got = [bucketed.batch_indices(s) for s in range(steps)]
    want = [plain.batch_indices(s) for s in range(steps)]
    for w in range(6):  # each window: the same examples as unbucketed, in full batches
        span = slice(w * window, (w + 1) * window)
        assert sorted(i for b in got[span] for i in b) == sorted(i for b in want[span] for i in b)
        assert all(len(b) == batch_size for b in got[span])
        # sorted then cut: one batch's longest is no longer than the next batch's shortest
        by_length = sorted(got[span], key=lambda b: min(lengths[i] for i in b))
        assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in zip(by_length, by_length[1:]))
    assert _padding(got, lengths) < _padding(want, lengths)
    # a pure function of the step: a fresh stream, asked out of order, gives the same batches
    fresh = Bucketed(Stream(n, batch_size, seed=3, task_index=1), lengths, window)
    for s in (steps - 1, 0, window, 1, steps - 1):
        assert fresh.batch_indices(s) == got[s]
    # and the order of the batches within a window is shuffled, not shortest first, in some window
    assert any([min(lengths[i] for i in b) for b in got[w * window:(w + 1) * window]]
               != sorted(min(lengths[i] for i in b) for b in got[w * window:(w + 1) * window]) for w in range(6))


@pytest.mark.parametrize("n,batch_size", [(10, 4), (3, 8), (7, 7)])
def test_stream_batches_straddle_passes(n, batch_size):
    """Batch s is items s*B .. s*B+B-1 of one endless sequence of permutations, across pass ends."""
    reference = _flat(Stream(n, 1, seed=3, task_index=2), 6 * batch_size)  # one item per step
    stream = Stream(n, batch_size, seed=3, task_index=2)
    for s in range(6):
        batch = stream.batch_indices(s)
        assert len(batch) == batch_size
        assert batch == reference[s * batch_size:(s + 1) * batch_size]
    for k in range(len(reference) // n):
        assert sorted(reference[k * n:(k + 1) * n]) == list(range(n))
