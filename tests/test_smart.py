"""SMART (minbert/smart.py) on a toy model: embeddings -> mean over T -> Linear."""
import math

import pytest
import torch
from torch import nn

from minbert.smart import (
    DEFAULTS,
    READINGS,
    MomentumTeacher,
    _library_step,
    _mtdnn_ascent_loss,
    _mtdnn_final_loss,
    _paper_step,
    bregman_divergence,
    divergence,
    smart_regularizer,
    symmetric_kl,
)

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


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
@pytest.mark.parametrize("n_inputs", [1, 2])
def test_regularizer_nonnegative(kind, n_inputs, reading):
    for seed in range(3):
        model, embeds, clean = _setup(kind, n_inputs, seed)
        r = smart_regularizer(model.forward_from_embeds, embeds, clean, kind, sigma=1e-2, eta=1e-2, reading=reading)
        assert r.dim() == 0 and r.item() >= 0.0


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_regularizer_zero_without_perturbation(kind, reading):
    model, embeds, clean = _setup(kind)
    r = smart_regularizer(model.forward_from_embeds, embeds, clean, kind, sigma=0.0, eta=0.0, steps=2, reading=reading)
    assert r.item() == 0.0


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_gradients_reach_model_and_embeddings(kind, reading):
    model, embeds, clean = _setup(kind, n_inputs=2)
    r = smart_regularizer(model.forward_from_embeds, embeds, clean, kind, sigma=1e-1, eta=1e-1, reading=reading)
    r.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    # (for regression the head bias cancels in f(x + delta) - f(x): its gradient is exactly 0)
    assert model.embed.weight.grad.abs().sum() > 0
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reading", ["paper", "library"])
@pytest.mark.parametrize("kind", ["classification", "binary", "regression"])
def test_ascent_step_increases_divergence(kind, reading):
    # paper: eps = 1, a ball that does not bind; library: eps = 1e-5, each token's |nu|_inf ~ 1 after a step
    eps = {"paper": 1.0, "library": 1e-5}[reading]
    model, embeds, clean = _setup(kind)
    f = model.forward_from_embeds
    values = []
    for steps in (0, 1, 3):
        torch.manual_seed(123)  # the same random start for every run
        values.append(smart_regularizer(f, embeds, clean, kind, sigma=1e-2, eta=1e-1, eps=eps, steps=steps,
                                        reading=reading).item())
    assert values[0] < values[1] < values[2], (
        f"smart_regularizer ({reading}): each ascent step (Algorithm 1) must raise the divergence; "
        f"0, 1, 3 steps gave {values}")


def test_library_perturbation_is_unit_size_at_paper_values():
    """smart-pytorch divides by ||nu + eta g||_inf + eps with eps = sigma = 1e-5: one step makes
    the noise ~1 in each token's largest entry, and the regulariser grows by orders of magnitude."""
    kw = {k: v for k, v in DEFAULTS.items() if k != "weight"}
    model, embeds, clean = _setup("classification")
    values = []
    for steps in (0, 1):
        torch.manual_seed(7)
        values.append(smart_regularizer(model.forward_from_embeds, embeds, clean, "classification",
                                        **{**kw, "steps": steps}, reading="library").item())
    assert values[1] > 1e4 * values[0], (
        f"smart_regularizer (library): (nu + eta g) / (||nu + eta g||_inf + eps) at sigma = eps = 1e-5 must "
        f"grow the perturbation from ~1e-5 to ~1; the regulariser went from {values[0]:.3g} to {values[1]:.3g}")


def test_library_step_normalises_each_token():
    torch.manual_seed(0)
    nu = torch.randn(3, 4, 5) * torch.tensor([1e-5, 1e-3, 1.0])[:, None, None]  # unequal scales per example
    g = torch.randn(3, 4, 5)
    step = _library_step(nu, g, eta=1e-3, eps=1e-5)
    expected = (nu + 1e-3 * g) / ((nu + 1e-3 * g).abs().amax(dim=-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(step, expected, rtol=0, atol=0, msg=lambda e: (
        f"_library_step: nu <- (nu + eta g) / (||nu + eta g||_inf + eps), one norm per token over H "
        f"(smart-pytorch 0.0.4, SMARTLoss): {e}"))
    size = step.abs().amax(dim=-1)  # (B, T) one inf-norm per token
    assert (size < 1).all() and (size > 0.5).all(), (
        f"_library_step: each token's largest entry must be ||s||_inf / (||s||_inf + eps), under 1 and "
        f"near it when ||s||_inf >~ eps; got {size.min().item():.3g} to {size.max().item():.3g}")


def test_paper_step_stays_in_the_eps_ball():
    torch.manual_seed(0)
    nu, g = torch.randn(3, 4, 5) * 1e-5, torch.randn(3, 4, 5) * torch.tensor([1e-9, 1.0, 1e3])[:, None, None]
    step = _paper_step(nu, g, eta=1e-3, eps=1e-5)
    assert step.abs().max().item() <= 1e-5, (
        f"_paper_step: Algorithm 1 line 9 projects x~ onto the eps-ball ||x~ - x||_inf <= eps; "
        f"got |nu| up to {step.abs().max().item():.3g} for eps = 1e-5")
    # an eta-sized step (1e-3) along g / ||g||_inf, clipped at +-eps: each example's largest |g| sits at +-eps
    flat, gflat = step.flatten(1), g.flatten(1)
    at_max = gflat.abs().argmax(dim=1)
    at_g_max = flat.gather(1, at_max[:, None]).squeeze(1)  # (B,) nu where |g| is largest
    assert torch.equal(at_g_max, 1e-5 * gflat.gather(1, at_max[:, None]).sign().squeeze(1)), (
        f"_paper_step: an eta-sized step along g / ||g||_inf must reach the ball's edge, eps * sign(g), where |g| "
        f"is largest (Algorithm 1 lines 8-9); got {at_g_max.tolist()}")
    assert torch.equal(_paper_step(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), 1e-3, 1e-5), torch.zeros(2, 3, 4))


def test_mtdnn_final_loss_has_the_symmetric_kl_value_and_one_sided_gradients():
    """mt-dnn's SymKlCriterion(f(x), f(x~)): KL(a||c) + KL(c||a), each half's target constant."""
    a = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, -0.5]], requires_grad=True)  # f(x~)
    c = torch.tensor([[0.0, 0.5, 1.0], [-1.0, 2.0, 0.0]], requires_grad=True)  # f(x)
    loss = _mtdnn_final_loss(a, c, "classification")
    assert loss.item() == pytest.approx(symmetric_kl(a, c).item(), rel=1e-6)
    ga, gc = torch.autograd.grad(loss, (a, c))
    # the half whose target is f(x~) moves f(x) like cross-entropy against softmax f(x~): d/dc = softmax(c) - softmax(a)
    p, q = torch.softmax(a, -1).detach(), torch.softmax(c, -1).detach()
    torch.testing.assert_close(gc, (q - p) / 2, msg=lambda e: (
        f"_mtdnn_final_loss: the clean side's gradient is that of KL(f(x~)||f(x)) with f(x~) constant: {e}"))
    torch.testing.assert_close(ga, (p - q) / 2)
    # a one-logit head is the two-class softmax on [0, x]
    x, y = torch.tensor([0.5, -2.0]), torch.tensor([-1.0, 0.0])
    assert _mtdnn_final_loss(x, y, "binary").item() == pytest.approx(symmetric_kl(x, y).item(), rel=1e-5)


def test_mtdnn_ascent_loss_by_hand():
    """stable_kl(f(x~), f(x), reduce=False): sum over the batch of 2 sum_c p_c (r(p_c) - r(y_c)),
    r(q) = log(q / (1 - q))."""
    adv, clean = torch.tensor([[0.2, 1.0], [-0.5, 0.5]]), torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    expected = 0.0
    for ra, rc in zip(adv.tolist(), clean.tolist()):
        p = [math.exp(v) / sum(math.exp(u) for u in ra) for v in ra]
        y = [math.exp(v) / sum(math.exp(u) for u in rc) for v in rc]
        expected += 2 * sum(pc * (math.log(pc / (1 - pc)) - math.log(yc / (1 - yc))) for pc, yc in zip(p, y))
    assert _mtdnn_ascent_loss(adv, clean, "classification").item() == pytest.approx(expected, rel=1e-4)
    assert _mtdnn_ascent_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), "regression").item() == 5.0


def test_unknown_reading_is_one_clear_error():
    model, embeds, clean = _setup("binary")
    with pytest.raises(ValueError, match="reading must be one of library, paper, mt-dnn, got 'lib'"):
        smart_regularizer(model.forward_from_embeds, embeds, clean, "binary", reading="lib")


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
#   line 9  x~ <- Pi(x~ + eta g~)                           ascent step, Pi onto the eps-ball
# (the "paper" reading, with eps = 1 so that Pi does not bind), and the library's step
# nu <- (nu + eta g) / (||nu + eta g||_inf + eps), the default reading.
# The tests read the noise off the embeddings that forward_fn is called with: with one ascent
# step, the first call sees x + nu_0, the second x + nu_1. Float64 keeps (x + nu) - x exact.

def _noises(forward_fn, x, **kw):
    """Runs smart_regularizer ("regression", the paper's reading with an eps-ball that does not
    bind unless kw says otherwise) on x; returns x~ - x for each forward_fn call."""
    kw = {"reading": "paper", "eps": 1.0, **kw}
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
    example's gradient is divided by its own max |g|."""
    eta = 1e-2
    x, f = _toy()
    nu0, nu1 = _noises(f, x, sigma=1e-3, eta=eta)
    size = (nu1 - nu0).flatten(1).abs().amax(dim=1)  # (B,) ||step||_inf per example
    assert torch.allclose(size, torch.full_like(size, eta), rtol=1e-9, atol=0), (
        f"smart_regularizer / _paper_step: the ascent direction must be g~ = g / ||g||_inf with one norm per "
        f"example (Jiang et al. 2020, Algorithm 1 line 8), so each example's step is eta = {eta} in its "
        f"largest entry: got {size.tolist()}")


def test_library_ascent_adds_eta_g_then_normalises_each_token():
    """smart-pytorch's step (the default reading): nu_1 = (nu_0 + eta g) / (||nu_0 + eta g||_inf + eps),
    g the gradient of the divergence at nu_0, the norm over H per token."""
    eta, eps = 1.0, 1e-5
    x, f = _toy()
    nu0, nu1 = _noises(f, x, sigma=1e-3, eta=eta, eps=eps, reading="library")
    nu0.requires_grad_()
    (g,) = torch.autograd.grad(divergence(f([x + nu0]), f([x]), "regression"), nu0)
    s = nu0.detach() + eta * g
    torch.testing.assert_close(nu1, s / (s.abs().amax(dim=-1, keepdim=True) + eps), msg=lambda e: (
        f"smart_regularizer (library): the ascent must add eta g, the gradient of the divergence with respect to "
        f"the noise, then divide each token by its largest entry plus eps (smart-pytorch 0.0.4, SMARTLoss): {e}"))
