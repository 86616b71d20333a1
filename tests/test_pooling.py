"""Pooling (minbert/pooling.py): one test per way of making a sentence vector, each on a
batch whose padding holds vectors that would show if they leaked in; then every pooling
through MultitaskBert, where extra padding must change nothing."""
import pytest
import torch

from minbert import BertConfig, BertModel, pooling
from minbert.multitask import MultitaskBert

PAD = 100.0  # what the padding positions hold: far above any real value


def batch():
    """(B=2, T=4, H=2): sentence 0 has 4 real tokens, sentence 1 has 2 and then 2 pads.
    Real values are negative in the second unit, so a pad read as 0 would win a max too."""
    hidden = torch.tensor([[[1.0, -1.0], [3.0, -5.0], [-2.0, -3.0], [2.0, -4.0]],
                           [[4.0, -2.0], [0.0, -6.0], [PAD, 0.0], [PAD, 0.0]]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return hidden, mask


def test_cls_pooling_takes_the_first_token():
    hidden, mask = batch()
    got = pooling.pool("cls", hidden, mask)
    assert torch.equal(got, hidden[:, 0]), (
        f"pooling.cls: the sentence vector is the [CLS] token's, position 0 (Devlin et al. 2019, "
        f"section 3; Sentence-BERT section 3, CLS strategy): got {got.tolist()}")


def test_mean_pooling_averages_real_tokens_only():
    hidden, mask = batch()
    got = pooling.pool("mean", hidden, mask)
    expected = torch.tensor([[(1 + 3 - 2 + 2) / 4, (-1 - 5 - 3 - 4) / 4],  # 4 real tokens
                             [(4 + 0) / 2, (-2 - 6) / 2]])  # 2 real tokens: pads neither added nor counted
    assert torch.equal(got, expected), (
        f"pooling.mean: the sum of the real tokens' vectors divided by the number of real tokens, "
        f"sum_t mask_t h_t / sum_t mask_t (Sentence-BERT section 3, MEAN strategy): got {got.tolist()}, "
        f"expected {expected.tolist()}")


def test_max_pooling_ignores_padding():
    hidden, mask = batch()
    got = pooling.pool("max", hidden, mask)
    expected = torch.tensor([[3.0, -1.0], [4.0, -2.0]])
    assert torch.equal(got, expected), (
        f"pooling.max: the element-wise max over the real tokens only; a pad position must never "
        f"win, even where the real values are negative (Sentence-BERT section 3, MAX strategy): "
        f"got {got.tolist()}, expected {expected.tolist()}")


def test_pooler_pooling_is_tanh_dense_of_cls():
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=10, hidden_size=2, num_hidden_layers=1, num_attention_heads=1,
                                intermediate_size=4, max_position_embeddings=8, initializer_range=0.5))
    hidden, mask = batch()
    with torch.no_grad():
        got = pooling.pool("pooler", hidden, mask, bert)
        expected = torch.tanh(hidden[:, 0] @ bert.pooler.dense.weight.T + bert.pooler.dense.bias)
    torch.testing.assert_close(got, expected, msg=lambda e: (
        f"pooling.pooler: BERT's pooler, tanh(W h_[CLS] + b) with the encoder's pooler.dense "
        f"weights, on position 0 only (Devlin et al. 2019, the next-sentence-prediction vector): {e}"))


def _segment(rows, pad_to):
    ids = torch.zeros(len(rows), pad_to, dtype=torch.long)
    mask = torch.zeros(len(rows), pad_to, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}


@pytest.mark.parametrize("way", ["mean", "cls", "max", "pooler"])
def test_multitask_bert_pooling_ignores_padding(way):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = MultitaskBert(BertModel(config), {"sts": "concat", "sst": "linear"}, way, dropout=0.1).eval()
    a = [[2, 7, 8, 9, 3], [2, 11, 3]]
    b = [[2, 12, 13, 3], [2, 14, 15, 16, 17, 3]]
    tight = {"segments": [_segment(a, 5), _segment(b, 6)]}
    padded = {"segments": [_segment(a, 9), _segment(b, 13)]}  # extra pads after every row
    with torch.no_grad():
        y, (u, v) = model("sts", tight, return_vectors=True)
        y_pad, (u_pad, v_pad) = model("sts", padded, return_vectors=True)
        s, s_pad = model("sst", {"segments": tight["segments"][:1]}), model("sst", {"segments": padded["segments"][:1]})
    for name, a_, b_ in (("sentence vectors u", u, u_pad), ("sentence vectors v", v, v_pad), ("STS scores", y, y_pad),
                         ("SST logits", s, s_pad)):
        torch.testing.assert_close(a_, b_, atol=1e-5, rtol=1e-5, msg=(
            f"MultitaskBert with pooling={way}: extra padding changed the {name} by "
            f"{(a_ - b_).abs().max().item():.3g}; padded positions must not count (attention mask, pooling mask)"))
    if way == "mean":  # the second row of a has 3 real tokens: mean of exactly those
        hidden = model.bert.encode(model.embed("sst", tight)[0], tight["segments"][0]["attention_mask"])
        torch.testing.assert_close(u[1], hidden.last_hidden_state[1, :3].mean(0), atol=1e-6, rtol=1e-6,
                                   msg="pooling.mean through MultitaskBert: the mean of exactly the 3 real tokens")
