"""One test per head formula (minbert/heads.py; the CS224N student paper's section 4.3), each
failing with a message that names the head class and its formula; then the shapes, the
predictions and the errors every head shares."""
import pytest
import torch
import torch.nn.functional as F

from minbert.heads import COS_D_SCALE, COS_EMB_THRESHOLD, HEADS, Concat, Cos2d1, CosD, CosEmb, Linear, make_head

H, B = 8, 5


def vectors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)


def test_linear_head_is_a_linear_map_of_the_pooled_vector():
    head = make_head("linear", "sst", H, dropout=0.0)
    u, _ = vectors()
    assert isinstance(head, Linear)
    torch.testing.assert_close(head([u]), u @ head.out.weight.T + head.out.bias,
                               msg="Linear.forward: y = W u + b on the one segment's pooled vector")


def test_concat_head_reads_u_then_v():
    head = make_head("concat", "quora", H, dropout=0.0)
    u, v = vectors()
    assert isinstance(head, Concat) and head.out.in_features == 2 * H
    expected = (torch.cat([u, v], -1) @ head.out.weight.T + head.out.bias).squeeze(-1)
    torch.testing.assert_close(head([u, v]), expected, msg="Concat.forward: y = W [u; v] + b (one logit for Quora)")


def test_cos_emb_head_is_the_cosine_trained_with_a_thresholded_label():
    head = make_head("cos-emb", "sts", H)
    u, v = vectors()
    assert isinstance(head, CosEmb) and list(head.parameters()) == []
    out = head([u, v])
    torch.testing.assert_close(out, F.cosine_similarity(u, v, dim=-1), msg="CosEmb.forward: y = cos(u, v)")
    labels = torch.tensor([0.0, COS_EMB_THRESHOLD, 2.6, 5.0, 1.0])  # exactly 2.5 is not "similar"
    target = torch.tensor([-1.0, -1.0, 1.0, 1.0, -1.0])
    torch.testing.assert_close(head.loss(out, labels, [u, v]), F.cosine_embedding_loss(u, v, target),
                               msg="CosEmb.loss: CosineEmbeddingLoss with target +1 where the score > 2.5, else -1")
    torch.testing.assert_close(head.predict(torch.tensor([-1.0, 1.0])), torch.tensor([0.0, 5.0]),
                               msg="CosEmb.predict: cos in [-1, 1] mapped to the 0..5 scale, (y + 1) * 2.5")


def test_cos_d_head_is_five_sigmoid_of_scaled_cosine_of_projections():
    torch.manual_seed(0)
    head = make_head("cos-d", "sts", H)
    u, v = vectors()
    assert isinstance(head, CosD)
    pu, pv = head.proj(u), head.proj(v)  # one d-wide Linear shared by both sentences
    assert COS_D_SCALE == 20.0, "heads.COS_D_SCALE: the paper scales the cosine by 20 before the sigmoid"
    assert COS_EMB_THRESHOLD == 2.5, "heads.COS_EMB_THRESHOLD: the paper thresholds STS labels at 2.5"
    expected = 5.0 * torch.sigmoid(20.0 * F.cosine_similarity(pu, pv, dim=-1))
    torch.testing.assert_close(head([u, v]), expected,
                               msg="CosD.forward: y = 5 * sigmoid(20 * cos(W u + b, W v + b))")
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5])
    torch.testing.assert_close(head.loss(expected, scores, [u, v]), F.mse_loss(expected, scores),
                               msg="CosD: trained with MSE against the 0..5 score")


def test_cos_2d1_head_reads_u_v_and_their_cosine():
    torch.manual_seed(0)
    head = make_head("cos-2d1", "sts", H, dropout=0.0)
    u, v = vectors()
    assert isinstance(head, Cos2d1) and head.out.in_features == 2 * H + 1
    features = torch.cat([u, v, F.cosine_similarity(u, v, dim=-1).unsqueeze(-1)], dim=-1)  # (B, 2H + 1)
    torch.testing.assert_close(head([u, v]), (features @ head.out.weight.T + head.out.bias).squeeze(-1),
                               msg="Cos2d1.forward: y = W [u; v; cos(u, v)] + b")


def test_task_losses_follow_the_task_kind():
    """Cross-entropy for SST's 5 classes, BCE on one logit for Quora, MSE for STS (paper, section 3)."""
    sst, quora, sts = make_head("linear", "sst", H), make_head("concat", "quora", H), make_head("concat", "sts", H)
    logits, logit, score = torch.randn(B, 5), torch.randn(B), torch.randn(B)
    torch.testing.assert_close(sst.loss(logits, torch.tensor([0, 1, 2, 3, 4]), []),
                               F.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4])), msg="TaskHead.loss: SST is CE")
    y = torch.tensor([1, 0, 1, 0, 1])
    torch.testing.assert_close(quora.loss(logit, y, []), F.binary_cross_entropy_with_logits(logit, y.float()),
                               msg="TaskHead.loss: Quora is BCE on one logit")
    s = torch.tensor([0.0, 1.0, 2.5, 4.0, 5.0])
    torch.testing.assert_close(sts.loss(score, s, []), F.mse_loss(score, s), msg="TaskHead.loss: STS is MSE")


def test_cos_d_scores_stay_on_the_0_5_scale_and_reach_both_ends():
    """5 sigmoid(20 cos): in (0, 5) for any input, ~5 for the same sentence twice and ~0 for
    opposite vectors; the paper's "large scalar" 20 is what lets it reach the ends."""
    torch.manual_seed(0)
    head = make_head("cos-d", "sts", H, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(64, H, generator=g), torch.randn(64, H, generator=g)
    low, high = head([u, v]).aminmax()
    assert 0.0 <= low.item() and high.item() <= 5.0, (
        f"CosD.forward: 5 * sigmoid(20 * cos(W u + b, W v + b)) must lie in [0, 5], the STS scale; "
        f"got scores from {low.item():.3f} to {high.item():.3f}")
    top = 5.0 * torch.sigmoid(torch.tensor(COS_D_SCALE))  # cos = 1
    same = head([u, u])
    torch.testing.assert_close(same, top.expand(64), msg=(
        f"CosD.forward: the same sentence twice has cos = 1, so the score must be 5 * sigmoid(20) = {top:.6f}; "
        f"got {same[0].item():.6f} (5 * sigmoid(1) = 3.655 means the cosine was not scaled by 20)"))
    with torch.no_grad():
        head.proj.bias.zero_()  # then proj(-u) = -proj(u): cos = -1
    opposite = head([u, -u])
    torch.testing.assert_close(opposite, (5.0 - top).expand(64), atol=1e-6, rtol=0, msg=(
        f"CosD.forward: opposite projections have cos = -1, so the score must be 5 * sigmoid(-20) = "
        f"{5.0 - top:.2e}; got {opposite[0].item():.2e}"))


@pytest.mark.parametrize("task,head,binary_logit,shape", [
    ("sst", "linear", True, (B, 5)),
    ("quora", "concat", True, (B,)),
    ("quora", "concat", False, (B, 2)),
    ("mrpc", "linear", False, (B, 2)),
    ("mrpc", "linear", True, (B,)),
    ("sts", "concat", True, (B,)),
    ("sts", "cos-emb", True, (B,)),
    ("sts", "cos-d", True, (B,)),
    ("sts", "cos-2d1", True, (B,)),
    ("stsb", "linear", False, (B,)),
])
def test_head_output_shapes(task, head, binary_logit, shape):
    """5 logits for SST's classes; one logit for a binary task (BCE), two with binary_logit=False
    (CE, as run_glue); one score for similarity. predict gives one value per example."""
    h = make_head(head, task, H, 0.1, binary_logit)
    out = h(list(vectors())[:h.segments])
    assert out.shape == shape, (f"{type(h).__name__}.forward for {task} (binary_logit={binary_logit}): "
                                f"expected output shape {shape} for a batch of {B}, got {tuple(out.shape)}")
    assert h.predict(out).shape == (B,), (f"{type(h).__name__}.predict: one prediction per example, shape ({B},); "
                                          f"got {tuple(h.predict(out).shape)}")


def test_predictions_are_class_ids_or_scores_on_the_0_5_scale():
    cases = [  # (head, task, binary_logit, output, expected prediction, the rule)
        ("linear", "sst", True, [[0.1, 2.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 4.0]], [1, 4],
         "the class with the largest logit (argmax)"),
        ("concat", "quora", True, [-0.5, 0.0, 0.7], [0, 0, 1], "1 where the one logit is > 0 (sigmoid > 0.5)"),
        ("linear", "mrpc", False, [[0.2, 0.1], [0.0, 1.0]], [0, 1], "the larger of the two logits"),
        ("cos-emb", "sts", True, [-1.0, 0.0, 0.6, 1.0], [0.0, 2.5, 4.0, 5.0], "cos in [-1, 1] -> (cos + 1) * 2.5"),
        ("concat", "sts", True, [0.3, 4.2], [0.3, 4.2], "the score itself (already on the 0..5 scale)"),
        ("cos-d", "sts", True, [0.3, 4.2], [0.3, 4.2], "the score itself (already on the 0..5 scale)"),
        ("cos-2d1", "sts", True, [0.3, 4.2], [0.3, 4.2], "the score itself (already on the 0..5 scale)"),
    ]
    for name, task, binary_logit, output, expected, rule in cases:
        h = make_head(name, task, H, 0.0, binary_logit)
        got = h.predict(torch.tensor(output)).tolist()
        assert got == pytest.approx(expected), (
            f"{type(h).__name__}.predict for {task}: {rule}; for outputs {output} expected {expected}, got {got}")


def test_smart_kind_follows_the_task():
    """SMART's divergence (smart.divergence) is symmetric KL of the class distributions, of Bernoullis for one
    logit, squared error for scores: each head says which by its task."""
    kinds = {(n, t): make_head(n, t, H, 0.0, True).smart_kind for n, t in (("linear", "sst"), ("concat", "quora"),
                                                                          ("concat", "sts"), ("cos-d", "sts"))}
    expected = {("linear", "sst"): "classification", ("concat", "quora"): "binary", ("concat", "sts"): "regression",
                ("cos-d", "sts"): "regression"}
    assert kinds == expected, f"TaskHead.smart_kind: expected {expected}, got {kinds}"


@pytest.mark.parametrize("task", ["sst", "quora", "mrpc"])
@pytest.mark.parametrize("head", ["cos-emb", "cos-d", "cos-2d1"])
def test_similarity_head_on_classification_task_is_an_error(task, head):
    with pytest.raises(ValueError, match="serves regression tasks; task"):
        make_head(head, task, H, 0.1, True)


def test_unknown_head_is_an_error():
    with pytest.raises(ValueError, match="unknown head 'bilinear'"):
        make_head("bilinear", "sts", H, 0.1, True)
    assert set(HEADS) == {"linear", "concat", "cos-emb", "cos-d", "cos-2d1"}, (
        f"heads.HEADS: the five heads of the paper's experiments; got {sorted(HEADS)}")
