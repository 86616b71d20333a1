"""SMART (minbert/smart.py) on a toy model: embeddings -> mean over T -> Linear."""
import math

import pytest
import torch
from torch import nn

from minbert.smart import (DEFAULTS, MomentumTeacher, _normalize, bregman_divergence, divergence,
                           smart_regularizer, symmetric_kl)

OUT_DIM = {"classification": 3, "binary": 1, "regression": 1}


class _Toy(nn.Module):
    """A siamese-capable toy: each (B, T, H) embedding is mean-pooled, the poolings are concatenated."""

    def __init__(self, kind, n_inputs=1, vocab=11, hidden=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.head = nn.Linear(hidden * n_inputs, OUT_DIM[kind])
        self.kind = kind

    def forward_from_embeds(self, embeds):
        pooled = torch.cat([torch.tanh(e).mean(dim=1) for e in embeds], dim=-1)  # (B, n*H)
        out = self.head(pooled)  # (B, C)
        return out.squeeze(-1) if self.kind != "classification" else out


def _setup(kind, n_inputs=1, seed=0):
    torch.manual_seed(seed)
    model = _Toy(kind, n_inputs)
    ids = [torch.randint(0, 11, (4, 5)) for _ in range(n_inputs)]  # (B, T) per sentence
    embeds = [model.embed(i) for i in ids]  # (B, T, H), in the graph of model.embed.weight
    return model, embeds, model.forward_from_embeds(embeds)


@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
@pytest.mark.parametrize("n_inputs", [1, 2])
def test_regularizer_nonnegative(kind, n_inputs):
    for seed in range(5):
        model, embeds, clean = _setup(kind, n_inputs, seed)
        r = smart_regularizer(model.forward_from_embeds, embeds, clean, kind, sigma=1e-2, eta=1e-2)
        assert r.dim() == 0 and r.item() >= 0.0


@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_regularizer_zero_without_perturbation(kind):
    model, embeds, clean = _setup(kind)
    r = smart_regularizer(model.forward_from_embeds, embeds, clean, kind, sigma=0.0, eta=0.0, steps=2)
    assert r.item() == 0.0


@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_gradients_reach_model_and_embeddings(kind):
    model, embeds, clean = _setup(kind, n_inputs=2)
    r = smart_regularizer(model.forward_from_embeds, embeds, clean, kind, sigma=1e-1, eta=1e-1)
    r.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    # (for regression the head bias cancels in f(x + delta) - f(x): its gradient is exactly 0)
    assert model.embed.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_ascent_step_increases_divergence(kind):
    model, embeds, clean = _setup(kind)
    f = model.forward_from_embeds
    values = []
    for steps in (0, 1, 3):
        torch.manual_seed(123)  # the same random start for every run
        values.append(smart_regularizer(f, embeds, clean, kind, sigma=1e-2, eta=1e-1, steps=steps).item())
    assert values[0] < values[1] < values[2], \
        f"smart_regularizer: each ascent step (Algorithm 1) must raise the divergence; 0, 1, 3 steps gave {values}"


def test_ascent_moves_noise_at_paper_values():
    # at sigma = 1e-5 the gradient is ~1e-7, far below eps: the step must still be eta-sized
    kw = {k: v for k, v in DEFAULTS.items() if k != "weight"}
    model, embeds, clean = _setup("classification")
    values = []
    for steps in (0, 1):
        torch.manual_seed(7)
        values.append(smart_regularizer(model.forward_from_embeds, embeds, clean, "classification",
                                        **{**kw, "steps": steps}).item())
    assert values[1] > 100 * values[0]


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_step_direction_has_unit_norm_per_example(norm):
    torch.manual_seed(0)
    g = torch.randn(3, 4, 5) * torch.tensor([1e-9, 1e-8, 1e-9])[:, None, None]  # tiny, unequal scales
    d = _normalize(g, norm, eps=1e-5).reshape(3, -1)
    size = d.abs().amax(dim=1) if norm == "inf" else d.norm(dim=1)
    assert torch.allclose(size, torch.ones(3), atol=1e-3)  # eps is relative to the batch max
    assert torch.equal(_normalize(torch.zeros(2, 3, 4), norm, eps=1e-5), torch.zeros(2, 3, 4))


def test_symmetric_kl_two_classes_by_hand():
    p_logits, q_logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = 0.0
    for pl, ql in zip(p_logits.tolist(), q_logits.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in pl) for v in pl]
        q = [math.exp(v) / sum(math.exp(u) for u in ql) for v in ql]
        expected += sum(a * math.log(a / b) + b * math.log(b / a) for a, b in zip(p, q))
    assert symmetric_kl(p_logits, q_logits).item() == pytest.approx(expected / 2, rel=1e-6)


def test_symmetric_kl_bernoulli_by_hand():
    a, b = torch.tensor([0.5, -2.0, 3.0]), torch.tensor([-1.0, -2.0, 0.0])
    expected = 0.0
    for x, y in zip(a.tolist(), b.tolist()):
        p, q = 1 / (1 + math.exp(-x)), 1 / (1 + math.exp(-y))
        expected += (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
                     + q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)))
    assert symmetric_kl(a, b).item() == pytest.approx(expected / 3, rel=1e-6)
    assert symmetric_kl(a[:, None], b[:, None]).item() == pytest.approx(expected / 3, rel=1e-6)
    # a Bernoulli logit x is the 2-class softmax over [0, x]
    two_class = symmetric_kl(torch.stack([torch.zeros(3), a], -1), torch.stack([torch.zeros(3), b], -1))
    assert two_class.item() == pytest.approx(expected / 3, rel=1e-5)


def test_defaults_match_paper():
    assert DEFAULTS == dict(weight=5.0, sigma=1e-5, eta=1e-3, eps=1e-5, steps=1)


def test_momentum_teacher_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    teacher = MomentumTeacher(model)
    old = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(model, beta=0.9)
    for t, o, p in zip(teacher.module.parameters(), old, model.parameters()):
        assert torch.allclose(t, 0.1 * p + 0.9 * o)  # theta~ <- (1 - beta) theta + beta theta~
    teacher.update(model, beta=0.0)
    for t, p in zip(teacher.module.parameters(), model.parameters()):
        assert torch.equal(t, p)


def test_teacher_gets_no_grad():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    teacher = MomentumTeacher(model)
    with torch.no_grad():
        model.weight.add_(0.5)
    x = torch.randn(5, 3)
    out = model(x)
    loss = bregman_divergence(out, teacher(x), "classification")
    loss.backward()
    assert loss.item() > 0
    assert model.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())
    # the teacher side is constant even when its output carries a graph
    t_out = teacher.module(x).requires_grad_()
    bregman_divergence(model(x), t_out, "regression").backward()
    assert t_out.grad is None


# ---------------------------------------------------------------- Algorithm 1, line by line
# Jiang et al. 2020, Algorithm 1, the inner loop of smart_regularizer (x~ is x plus the noise):
#   line 6  x~ <- x + nu, nu ~ N(0, sigma^2 I)             noise
#   line 8  g~ <- g / ||g||_inf, per example                normalisation
#   line 9  x~ <- x~ + eta g~                               ascent step (the eps-ball projection is not applied)
# The tests read the noise off the embeddings that forward_fn is called with: with one ascent
# step, the first call sees x + nu_0, the second x + nu_1. Float64 keeps (x + nu) - x exact.

def _noises(forward_fn, x, **kw):
    """Runs smart_regularizer ("regression") on x; returns x~ - x for each forward_fn call."""
    seen = []

    def recording(embeds):
        seen.append(embeds[0].detach().clone())
        return forward_fn(embeds)

    torch.manual_seed(0)
    smart_regularizer(recording, [x], forward_fn([x]), "regression", **kw)
    return [x_tilde - x for x_tilde in seen]


def _toy():
    """x (3, 5, 6) and a forward_fn whose examples' gradients differ in size: output b is
    scales[b] * sum(w * tanh(x_b)). The examples' max |g| then differ by two orders of magnitude."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    scales = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    return x, lambda embeds: scales * (w * torch.tanh(embeds[0])).sum(dim=(1, 2))  # (B,)


def test_smart_noise_is_gaussian_with_std_sigma():
    sigma = 1e-2
    x = torch.randn(16, 32, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (nu,) = _noises(lambda embeds: embeds[0].sum(dim=(1, 2)), x, sigma=sigma, steps=0)
    n = nu.numel()
    assert abs(nu.mean().item()) < 5 * sigma / n ** 0.5 and abs(nu.std().item() / sigma - 1) < 0.05, (
        f"smart_regularizer: the perturbed embeddings must start at x + nu, nu ~ N(0, sigma^2 I) "
        f"(Jiang et al. 2020, Algorithm 1 line 6): over {n} entries nu has mean {nu.mean().item():.3g} "
        f"and std {nu.std().item():.3g}, for sigma = {sigma}")


def test_smart_ascent_step_moves_noise_uphill_by_eta():
    x, f = _toy()
    nu0, nu1 = _noises(f, x, sigma=1e-3, eta=1e-2)
    nu0.requires_grad_()
    (g,) = torch.autograd.grad(divergence(f([x + nu0]), f([x]), "regression"), nu0)
    step = nu1 - nu0.detach()
    cos = torch.nn.functional.cosine_similarity(step.flatten(1), g.flatten(1), dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6), (
        f"smart_regularizer: the ascent step must move the noise along +g, the gradient of the "
        f"divergence with respect to it, x~ <- x~ + eta g~ (Jiang et al. 2020, Algorithm 1 line 9): "
        f"cosine(step, g) per example = {cos.tolist()}")
    _, nu1_twice = _noises(f, x, sigma=1e-3, eta=2e-2)
    torch.testing.assert_close(nu1_twice - nu0.detach(), 2 * step, msg=lambda e: (
        f"smart_regularizer: the ascent step is eta g~: twice eta must move the noise twice as far "
        f"(Jiang et al. 2020, Algorithm 1 line 9): {e}"))


def test_smart_normalises_ascent_by_inf_norm_per_example():
    """Examples whose gradients differ in size all move by eta in their largest entry: each
    example's gradient is divided by its own max |g| (eps, a guard relative to the batch's largest
    gradient, changes this by < 1% here)."""
    eta = 1e-2
    x, f = _toy()
    nu0, nu1 = _noises(f, x, sigma=1e-3, eta=eta)
    size = (nu1 - nu0).flatten(1).abs().amax(dim=1)  # (B,) ||step||_inf per example
    assert torch.allclose(size, torch.full_like(size, eta), rtol=1e-2, atol=0), (
        f"smart_regularizer / _normalize: the ascent direction must be g~ = g / ||g||_inf with one norm per "
        f"example (Jiang et al. 2020, Algorithm 1 line 8), so each example's step is eta = {eta} in its "
        f"largest entry: got {size.tolist()}")
