"""The grading tests of the exercises (minbert/exercises/registry.py): each student function
against outputs stored in tests/fixtures/exercise_refs.safetensors, on tiny seeded inputs and
a 1-layer BERT (hidden 16, 4 heads). tests/fixtures/make_exercise_refs.py wrote them from the
solution; test_reference_outputs_regenerate_unchanged keeps them in step with it.

Each test calls one exercise's code only (the layer's gets a stand-in self-attention that
returns the stored output), so an exercise passes as soon as its own code is right. Where a
result equals a stored common slip, the failure names it. Tolerances: float32 model outputs
atol 1e-5, rtol 1e-4; float64 (PCGrad, SMART, expected max) rtol 1e-9; M-FAC rtol 1e-4.
"""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import FIXTURES
from minbert import BertConfig, BertModel
from minbert.heads import make_head
from minbert.optim import MFAC, AdamW
from minbert.pcgrad import project_conflicting
from minbert.pooling import POOLERS
from minbert.smart import smart_regularizer
from minbert.sweep.seeds import expected_max

REFS = load_file(str(FIXTURES / "exercise_refs.safetensors"))
F32 = dict(atol=1e-5, rtol=1e-4)
F64 = dict(atol=1e-12, rtol=1e-9)
pytestmark = pytest.mark.usefixtures("one_thread")


def expect(got, key, what, slips=(), tol=F32):
    """Fails with `what` (function, equation, part) unless got matches REFS[key]; names the
    slip whose stored output it equals, if any."""
    want = REFS[key]
    got = torch.as_tensor(got).detach()
    assert got.shape == want.shape, f"{what}: the result has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if torch.allclose(got.to(want.dtype), want, **tol, equal_nan=False):
        return
    for slip, meaning in slips:
        if torch.allclose(got.to(want.dtype), REFS[slip], **tol):
            pytest.fail(f"{what}: your result is the one {meaning}", pytrace=False)
    diff = (got.to(want.dtype) - want).abs()
    at = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0]) if diff.numel() else ()
    pytest.fail(f"{what}: differs from the stored reference by up to {diff.max().item():.3g} at index {at} "
                f"(tolerance atol {tol['atol']:g}, rtol {tol['rtol']:g}); got {got.flatten()[:4].tolist()}..., "
                f"expected {want.flatten()[:4].tolist()}...", pytrace=False)


def tiny_model() -> BertModel:
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=32, max_position_embeddings=12, type_vocab_size=2)
    model = BertModel(config).eval()
    model.load_state_dict({k[len("model."):]: v for k, v in REFS.items() if k.startswith("model.")})
    return model


def keep():
    return REFS["in.attention_mask"].bool()[:, None, None, :]  # (B, 1, 1, T)


# ---------------------------------------------------------------- embeddings

EMB = "BertEmbeddings.forward: LayerNorm(word + position + token type embeddings) (Devlin et al. 2019, section 3.2)"


def test_embeddings_sum_three_lookups_then_layernorm():
    with torch.no_grad():
        got = tiny_model().embeddings(REFS["in.input_ids"], REFS["in.token_type_ids"])
    expect(got, "embeddings.out", EMB, [
        ("embeddings.slip.no_position", "without the position embeddings of positions 0..T-1"),
        ("embeddings.slip.no_token_type", "without the token-type (segment) embeddings"),
        ("embeddings.slip.no_layernorm", "without the LayerNorm after the sum")])


def test_embeddings_token_types_default_to_segment_zero():
    with torch.no_grad():
        got = tiny_model().embeddings(REFS["in.input_ids"])
    expect(got, "embeddings.out_no_types", EMB + ", called with token_type_ids=None: every token is in segment 0")


# ---------------------------------------------------------------- attention

ATT = "BertSelfAttention.forward: softmax(Q K^T / sqrt(d_k) + mask) V (Vaswani et al. 2017, eq. 1)"


def test_attention_probabilities_scale_mask_and_normalise_over_keys():
    attn = tiny_model().encoder.layer[0].attention.self
    with torch.no_grad():
        _, probs = attn(REFS["embeddings.out"], keep(), output_attentions=True)
    assert probs is not None, f"{ATT}: with output_attentions=True it must return the probabilities (B, nh, T, T)"
    expect(probs, "attention.probs", f"{ATT}, the probabilities softmax(Q K^T / sqrt(d_k) + mask)", [
        ("attention.slip.unscaled", "without dividing the scores by sqrt(d_k) = sqrt(head size)"),
        ("attention.slip.unmasked", "where padding keys are not masked: they must get probability 0"),
        ("attention.slip.over_queries", "of a softmax over the queries (dim -2): each row (query) must sum to 1 over the keys")])


def test_attention_output_weights_values_and_joins_heads():
    attn = tiny_model().encoder.layer[0].attention.self
    with torch.no_grad():
        y, _ = attn(REFS["embeddings.out"], keep())
    expect(y, "attention.y", f"{ATT}, the output: each head's probabilities times its V, heads side by side (B, T, H)")


def test_attention_without_padding_mask():
    attn = tiny_model().encoder.layer[0].attention.self
    with torch.no_grad():
        y, _ = attn(REFS["embeddings.out"], None)
    expect(y, "attention.y_no_mask", f"{ATT}, called with keep=None (no padding): nothing is masked")


# ---------------------------------------------------------------- layer

class StoredSelfAttention(nn.Module):
    """Stands in for BertSelfAttention: returns the stored output, so the layer is graded alone."""

    def forward(self, x, keep, output_attentions=False):
        assert torch.equal(x, REFS["embeddings.out"]), "BertAttention.forward must pass its input x to self.self"
        return REFS["attention.y"].clone(), None


LAYER = "BertLayer (Vaswani et al. 2017, section 3.1, post-LayerNorm as in BERT)"


def test_layer_attention_residual_and_layernorm():
    block = tiny_model().encoder.layer[0]
    block.attention.self = StoredSelfAttention()
    with torch.no_grad():
        h, _ = block.attention(REFS["embeddings.out"], keep())
    expect(h, "layer.attention_out", f"{LAYER}: BertAttention.forward and BertAddNorm.forward, "
           f"h = LayerNorm(x + dropout(W_o y)) with y the self-attention's output", [
               ("layer.slip.no_attention_residual", "without the residual: add the attention's input x before the LayerNorm")])


def test_layer_feed_forward_is_dense_then_gelu():
    block = tiny_model().encoder.layer[0]
    with torch.no_grad():
        got = block.intermediate(REFS["layer.attention_out"])
    expect(got, "layer.intermediate", f"{LAYER}: BertIntermediate.forward, GELU(W_1 h + b_1) (exact erf GELU; "
           f"eq. 2 with BERT's GELU for ReLU)", [("layer.slip.relu", "with ReLU; this config's hidden_act is gelu")])


def test_layer_output_adds_feed_forward_to_its_input():
    block = tiny_model().encoder.layer[0]
    block.attention.self = StoredSelfAttention()
    with torch.no_grad():
        out, _ = block(REFS["embeddings.out"], keep())
    expect(out, "layer.out", f"{LAYER}: BertLayer.forward, LayerNorm(h + dropout(W_2 GELU(W_1 h))) after the "
           f"attention block h", [("layer.slip.no_output_residual", "without the residual around the feed-forward")])


# ---------------------------------------------------------------- pooling

@pytest.mark.parametrize("name", ["cls", "mean", "max"])
def test_pooling_matches_reference(name):
    got = POOLERS[name](REFS["pooling.hidden"], REFS["in.attention_mask"])
    expect(got, f"pooling.{name}", f"pooling.{name} (Sentence-BERT section 3, {name.upper()} strategy) on a batch "
           f"whose second sentence has 5 real tokens and 3 pads", [
               ("pooling.slip.mean_over_padding", "averaged over all positions, padding included"),
               ("pooling.slip.mean_by_length", "divided by the padded length T, not the number of real tokens"),
               ("pooling.slip.max_over_padding", "a max over all positions, padding included")])


# ---------------------------------------------------------------- cosine heads

def head(name):
    h = make_head(name, "sts", 16).eval()
    key = name.replace("-", "_")
    h.load_state_dict({k: REFS[f"cosine_heads.{key}.{k}"] for k in h.state_dict()})
    return h


UV = [REFS["cosine_heads.u"], REFS["cosine_heads.v"]]
HEADS = "the CS224N student paper, section 4.3"


def test_cosine_heads_cos_emb_output_and_loss():
    h = head("cos-emb")
    with torch.no_grad():
        out = h(UV)
        expect(out, "cosine_heads.cos_emb.out", f"CosEmb.forward: cos(u, v) per pair ({HEADS}, 2a)")
        loss = h.loss(out, REFS["cosine_heads.labels"], UV)
    expect(loss, "cosine_heads.cos_emb.loss", f"CosEmb.loss: CosineEmbeddingLoss(u, v, +1 if score > 2.5 else -1) "
           f"({HEADS}, 2a), on scores 0, 1.5, 2.5, 3, 5")


def test_cosine_heads_cos_d_output():
    with torch.no_grad():
        out = head("cos-d")(UV)
    expect(out, "cosine_heads.cos_d.out", f"CosD.forward: 5 sigmoid(20 cos(W u + b, W v + b)) ({HEADS}, 2bi)",
           [("cosine_heads.slip.cos_d_scale_1", "without the scale 20 inside the sigmoid")])


def test_cosine_heads_cos_2d1_output():
    with torch.no_grad():
        out = head("cos-2d1")(UV)
    expect(out, "cosine_heads.cos_2d1.out", f"Cos2d1.forward: Linear(2H + 1, 1) on [u; v; cos(u, v)], in that "
           f"order, one score per pair ({HEADS}, 2bii)")


# ---------------------------------------------------------------- AdamW

def test_adamw_three_steps_match_algorithm_2():
    params = [nn.Parameter(REFS[f"adamw.start.{i}"].clone()) for i in range(2)]
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for t in range(3):
        for i, p in enumerate(params):
            p.grad = REFS[f"adamw.grad.{t}.{i}"].clone()
        opt.step()
    what = "AdamW._update after 3 steps (lr 1e-2, betas (0.9, 0.99), weight decay 0.1; Loshchilov & Hutter Alg. 2)"
    for i, p in enumerate(params):
        expect(opt.state[p]["exp_avg"], f"adamw.exp_avg.{i}", f"{what}: the first moment m_t = beta1 m_(t-1) + (1 - beta1) g_t (line 7), "
               f"kept in state['exp_avg']")
        expect(opt.state[p]["exp_avg_sq"], f"adamw.exp_avg_sq.{i}", f"{what}: the second moment v_t = beta2 v_(t-1) + "
               f"(1 - beta2) g_t^2 (line 8), kept in state['exp_avg_sq']")
        expect(p, f"adamw.param.{i}", f"{what}: the weights", [
            (f"adamw.slip.no_bias_correction.{i}", "without the bias corrections m_t / (1 - beta1^t), v_t / (1 - beta2^t) (lines 9-10)"),
            (f"adamw.slip.l2_decay.{i}", "of L2 decay added to the gradient; AdamW shrinks the weights instead, p <- p - lr wd p (line 12)")])


# ---------------------------------------------------------------- PCGrad

def test_pcgrad_projection_matches_reference():
    got = project_conflicting(REFS["pcgrad.G"].clone(), torch.Generator().manual_seed(0))
    expect(got, "pcgrad.projected", "project_conflicting on 4 tasks (tasks 0 and 1 conflict), generator seed 0: "
           "g_i^PC <- g_i - (g_i^PC . g_j) / ||g_j||^2 g_j where g_i^PC . g_j < 0, against the original g_j in "
           "torch.randperm order (Yu et al. 2020, Algorithm 1 lines 2-7)", [
               ("pcgrad.slip.agreeing", "of projecting where g_i^PC . g_j > 0: only conflicting gradients (< 0) are projected (line 5)"),
               ("pcgrad.slip.against_projected", "of projecting against the already projected g_j^PC; project against the original g_j")],
           tol=F64)


# ---------------------------------------------------------------- SMART

@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_smart_regularizer_value_and_gradient(kind):
    x, w, w3 = REFS["smart.x"], REFS["smart.w"], REFS["smart.w3"]
    f = {"regression": lambda e: (w * torch.tanh(e[0])).sum(dim=(1, 2)),
         "classification": lambda e: torch.tanh(e[0]).mean(1) @ w3}[kind]
    e = x.clone().requires_grad_()
    torch.manual_seed(0)
    r = smart_regularizer(f, [e], f([e]), kind, sigma=1e-2, eta=1e-1, eps=1e-5, steps=2)
    what = (f"smart_regularizer ({kind}, sigma 1e-2, eta 1e-1, 2 ascent steps, torch.manual_seed(0) before the call): "
            f"R_s = l_s(f(x + delta), f(x)) (Jiang et al. 2020, eq. 3), delta from nu ~ N(0, sigma^2 I) "
            f"(torch.randn_like) and the library reading's ascent nu <- (nu + eta g) / (||nu + eta g||_inf + eps), "
            f"one inf-norm per token over the hidden size (_library_step)")
    expect(r, f"smart.{kind}.value", f"{what}: the value", [
        (f"smart.slip.descent.{kind}", "of a descent step nu <- nu - eta g: the ascent must move the noise uphill, +eta g"),
        (f"smart.slip.per_example.{kind}", "of one inf-norm per example (over T and H): the library takes one per "
                                           "token, amax over the last dimension only")],
        tol=F64)
    (grad,) = torch.autograd.grad(r, e)
    expect(grad, f"smart.{kind}.grad", f"{what}: its gradient with respect to the embeddings x, which flows "
           f"through both f(x + delta) and f(x), delta held constant", tol=F64)


# ---------------------------------------------------------------- expected max

def test_expected_max_matches_reference():
    scores = REFS["expected_max.scores"].tolist()
    got = torch.tensor([expected_max(scores, n) for n in range(1, 7)], dtype=torch.float64)
    expect(got, "expected_max.mean_std", f"expected_max(scores, n) for n = 1..6 on the unsorted scores {scores}: "
           f"(E[max], std) with E[max] = sum_i v_(i) ((i/N)^n - ((i-1)/N)^n) over the SORTED scores v_(1) <= ... "
           f"(Dodge et al. 2019, eq. 1)", tol=F64)


def test_expected_max_sorts_the_scores():
    scores = REFS["expected_max.scores"].tolist()
    got = torch.tensor([expected_max(scores, n)[0] for n in range(1, 7)], dtype=torch.float64)
    want = REFS["expected_max.mean_std"][:, 0]
    if not torch.allclose(got, want, **F64):
        unsorted = REFS["expected_max.slip.unsorted"]
        hint = ("it equals eq. 1 on the scores as given: sort them first, v_(1) <= ... <= v_(N)"
                if torch.allclose(got, unsorted, **F64) else f"got {got.tolist()}, expected {want.tolist()}")
        pytest.fail(f"expected_max: E[max] of n draws from {scores} (Dodge et al. 2019, eq. 1): {hint}", pytrace=False)


# ---------------------------------------------------------------- M-FAC

def test_mfac_six_steps_match_reference():
    params = [nn.Parameter(REFS[f"mfac.start.{i}"].clone()) for i in range(2)]
    opt = MFAC(params, lr=1e-1, num_grads=4, damp=1e-2, check_memory=False)
    for t in range(6):
        for i, p in enumerate(params):
            p.grad = REFS[f"mfac.grad.{t}.{i}"].clone()
        opt.step()
    for i, p in enumerate(params):
        expect(p, f"mfac.param.{i}", "MFAC.step, 6 steps (m = 4 gradients, damp 1e-2, lr 0.1): the update "
               "F^-1 g = m G^T x with (m damp I + G G^T) x = e_j (the module docstring's Woodbury form)",
               [(f"mfac.slip.no_factor_m.{i}", "without the factor m in F^-1 g = m G^T x: m times too small")],
               tol=dict(atol=1e-6, rtol=1e-4))
