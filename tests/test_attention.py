"""Self-attention (minbert/model.py, BertSelfAttention), one idea per test, through BertModel.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V      (Vaswani et al. 2017, eq. 1)

with d_k the head size, BERT's padding as a mask on the keys, and the heads of section 3.2.2:
head i uses hidden units i*d_k .. (i+1)*d_k - 1 of the query, key and value projections, and
the heads' outputs are concatenated in that order. A hook reads layer 0's self-attention
input x and output y; `reference` computes the same from the module's weights, head by head.
"""
import math

import pytest
import torch

from minbert import BertConfig, BertModel

pytestmark = pytest.mark.usefixtures("one_thread")

H, NH = 32, 4
HS = H // NH  # d_k, the head size


def tiny_bert(attn="math"):
    """One layer, hidden 32, 4 heads. Weights ~N(0, 0.2^2), ten times BERT's, so that the
    attention is peaked: scaling or masking slips then change the output visibly."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=H, num_hidden_layers=1, num_attention_heads=NH,
                        intermediate_size=64, max_position_embeddings=16, initializer_range=0.2,
                        attn_implementation=attn)
    return BertModel(config).eval()


def attention_io(model, ids, mask=None):
    """Runs the model; returns layer 0's self-attention input x and output y, both (B, T, H),
    and the model's output."""
    seen = {}

    def hook(module, args, output):  # BertAddNorm.forward(y, residual): residual is the attention's input x
        seen["y"], seen["x"] = args

    handle = model.encoder.layer[0].attention.output.register_forward_hook(hook)
    with torch.no_grad():
        out = model(ids, mask)
    handle.remove()
    return seen["x"], seen["y"], out


@torch.no_grad()
def reference(attn, x, mask=None, scale=1 / math.sqrt(HS)):
    """Eq. 1 for each head on its own hidden units, the heads' outputs side by side: (B, T, H)."""
    q, k, v = attn.query(x), attn.key(x), attn.value(x)  # (B, T, H)
    heads = []
    for i in range(NH):
        units = slice(i * HS, (i + 1) * HS)  # head i's share of the projections
        scores = q[..., units] @ k[..., units].transpose(1, 2) * scale  # (B, T, T): query rows, key columns
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))  # padding keys
        heads.append(scores.softmax(dim=-1) @ v[..., units])  # (B, T, HS)
    return torch.cat(heads, dim=-1)


def padded_batch():
    """Two sentences of 8 positions; the second has 4 real tokens and 4 pads."""
    ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


def test_attention_scales_scores_by_sqrt_head_dim():
    model = tiny_bert()
    ids, _ = padded_batch()
    x, y, _ = attention_io(model, ids)  # no padding here: only the scale and the softmax matter
    attn = model.encoder.layer[0].attention.self
    scales = {"1/sqrt(d_k), d_k = head size": 1 / math.sqrt(HS), "1 (no scaling)": 1.0,
              "1/sqrt(hidden size)": 1 / math.sqrt(H), "1/d_k": 1 / HS}
    fits = [name for name, s in scales.items() if torch.allclose(y, reference(attn, x, scale=s), atol=1e-5)]
    fit = fits[0] if fits else f"none of {', '.join(scales)}: something else differs (see the other attention tests)"
    assert fits[:1] == ["1/sqrt(d_k), d_k = head size"], (
        f"BertSelfAttention.forward: the scores Q K^T must be divided by sqrt(d_k) = sqrt(head size) "
        f"= sqrt({HS}) before the softmax (Vaswani et al. eq. 1). The output fits a scale of {fit}")


@pytest.mark.parametrize("attn", ["math", "sdpa"])
def test_attention_masks_padding_keys(attn):
    """The real tokens' outputs must not depend on the padding: not on how much of it there
    is, nor on which ids sit in it."""
    model = tiny_bert(attn)
    ids, mask = padded_batch()
    _, y_short, out_short = attention_io(model, ids[1:, :4])  # sentence 2 alone, no padding
    junk = ids.clone()
    junk[1, 4:] = torch.tensor([7, 8, 9, 10])  # ids in the padding, not [PAD]: the mask alone must hide them
    _, y_long, out_long = attention_io(model, junk, mask)
    where = f"BertSelfAttention.forward ({attn})"
    torch.testing.assert_close(y_long[1:, :4], y_short, atol=1e-5, rtol=0, msg=lambda e: (
        f"{where}: padding keys must get zero attention weight: set the scores of keys whose "
        f"attention_mask is 0 to -inf (a large negative number) before the softmax, softmax(Q K^T / "
        f"sqrt(d_k) + mask) V (Vaswani et al. eq. 1 with BERT's padding mask on the keys): {e}"))
    torch.testing.assert_close(out_long.last_hidden_state[1:, :4], out_short.last_hidden_state, atol=1e-5, rtol=0,
                               msg=lambda e: f"{where}: padding changed the real tokens' hidden states: {e}")


def test_attention_softmax_is_over_keys():
    """With every value vector equal to c, each output is c times the sum of its query's
    weights: c exactly when the softmax runs over the keys, each query's weights summing to 1."""
    model = tiny_bert()
    attn = model.encoder.layer[0].attention.self
    with torch.no_grad():
        attn.value.weight.zero_()
        attn.value.bias.fill_(0.7)  # v_j = c = (0.7, ..., 0.7) for every token j
    ids, mask = padded_batch()
    _, y, _ = attention_io(model, ids, mask)
    torch.testing.assert_close(y, torch.full_like(y, 0.7), msg=lambda e: (
        f"BertSelfAttention.forward: the softmax must run over the keys, the last dim of the "
        f"(B, heads, queries, keys) scores, so that each query's weights sum to 1 (Vaswani et al. eq. 1); "
        f"with every value vector equal to c the outputs are then c: {e}"))


def test_attention_splits_and_merges_heads():
    """Head i owns hidden units i*d_k .. (i+1)*d_k - 1 of Q, K and V, and its output lands in
    the same units of y (Vaswani et al. section 3.2.2: head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    Concat(head_1, ..., head_h)). So changing head 1's weights changes y in head 1's units only."""
    model = tiny_bert()
    ids, mask = padded_batch()
    _, before, _ = attention_io(model, ids, mask)
    attn = model.encoder.layer[0].attention.self
    head1 = slice(HS, 2 * HS)
    with torch.no_grad():
        for linear in (attn.query, attn.key, attn.value):
            linear.weight[head1] += 0.3 * torch.randn(HS, H, generator=torch.Generator().manual_seed(2))
    _, after, _ = attention_io(model, ids, mask)
    changed = [i for i in range(NH) if not torch.allclose(after[..., i * HS:(i + 1) * HS],
                                                         before[..., i * HS:(i + 1) * HS], atol=1e-6)]
    assert changed == [1], (
        f"BertSelfAttention.forward: changing head 1's query, key and value weights (output units "
        f"{HS}..{2 * HS - 1}) changed the output units of head(s) {changed}, not of head 1 alone. Split with "
        f"view(B, T, heads, d_k).transpose(1, 2) and merge back with transpose(1, 2).reshape(B, T, H) "
        f"(Vaswani et al. section 3.2.2: heads side by side)")


def test_attention_equals_eq1_reference():
    """Everything together: a padded batch against the head-by-head reference."""
    model = tiny_bert()
    ids, mask = padded_batch()
    x, y, _ = attention_io(model, ids, mask)
    expected = reference(model.encoder.layer[0].attention.self, x, mask)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0, msg=lambda e: (
        f"BertSelfAttention.forward: differs from softmax(Q K^T / sqrt(d_k) + mask) V computed head "
        f"by head (Vaswani et al. eq. 1 and section 3.2.2): {e}"))


def test_sdpa_attention_agrees_with_math():
    model = tiny_bert("math")
    ids, mask = padded_batch()
    _, y_math, _ = attention_io(model, ids, mask)
    model.set_attn_implementation("sdpa")
    _, y_sdpa, _ = attention_io(model, ids, mask)
    torch.testing.assert_close(y_sdpa, y_math, atol=1e-5, rtol=0, msg=lambda e: (
        f"BertSelfAttention.forward: the fused torch.nn.functional.scaled_dot_product_attention path "
        f"(attn_implementation='sdpa') differs from the math path: {e}"))
