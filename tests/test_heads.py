"""One test per head formula (minbert/heads.py; the CS224N student paper's section 4.3), each
failing with a message that names the head class and its formula."""
import torch
import torch.nn.functional as F

from minbert.heads import COS_D_SCALE, COS_EMB_THRESHOLD, Concat, Cos2d1, CosD, CosEmb, Linear, make_head

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
