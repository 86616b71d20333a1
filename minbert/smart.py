"""SMART: "Robust and Efficient Fine-Tuning for Pre-trained Natural Language Models
through Principled Regularized Optimization" (Jiang et al., ACL 2020).

Two pieces, both model-agnostic:
- smoothness-inducing adversarial regularization R(theta) (eq. 2-3, Algorithm 1):
  perturb the embedding-layer output, push the perturbation uphill on the output
  divergence, and penalise the divergence the model shows there;
- the Bregman proximal point term (eq. 4-5) against a momentum ("mean") teacher.

The caller applies the weights: loss = task_loss + lambda * smart_regularizer(...)
(+ mu * bregman_divergence(...)); lambda is DEFAULTS["weight"].

forward_fn maps a list of embedding-layer outputs, one (B, T, H) tensor per
sentence (two for siamese pair tasks), to the task output: (B, C) logits for
"classification", (B,) or (B, 1) logit for "binary", (B,) or (B, 1) score for
"regression". With dropout on, each forward_fn call draws its own mask.
"""
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The student paper's values (from the reference implementation): lambda 5, eta 1e-3, eps 1e-5, sigma 1e-5.
DEFAULTS = dict(weight=5.0, sigma=1e-5, eta=1e-3, eps=1e-5, steps=1)
KINDS = ("classification", "binary", "regression")


def _bernoulli_symmetric_kl(a: Tensor, b: Tensor) -> Tensor:
    # with p = sigmoid(a), q = sigmoid(b):
    # KL(p||q) + KL(q||p) = (p - q)(log p - log q) + (q - p)(log(1-p) - log(1-q)) = (p - q)(a - b),
    # because log sigmoid(x) - log sigmoid(-x) = x
    a, b = a.reshape(-1).float(), b.reshape(-1).float()  # (B,)
    return ((torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)).mean()


def _categorical_symmetric_kl(a: Tensor, b: Tensor) -> Tensor:
    # KL(p||q) + KL(q||p) = sum_c (p_c - q_c)(log p_c - log q_c); every term is >= 0
    log_p, log_q = F.log_softmax(a.float(), dim=-1), F.log_softmax(b.float(), dim=-1)  # (B, C)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1).mean()


def symmetric_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Batch mean of KL(p||q) + KL(q||p). Logits (B, C) are a softmax distribution;
    a single logit, (B,) or (B, 1), is a Bernoulli."""
    if p_logits.dim() == 1 or p_logits.shape[-1] == 1:
        return _bernoulli_symmetric_kl(p_logits, q_logits)
    return _categorical_symmetric_kl(p_logits, q_logits)


def divergence(p: Tensor, q: Tensor, kind: str) -> Tensor:
    """l_s of the paper: symmetric KL for classifiers, squared error for regression."""
    if kind == "classification":
        return _categorical_symmetric_kl(p, q)
    if kind == "binary":
        return _bernoulli_symmetric_kl(p, q)
    if kind == "regression":
        return F.mse_loss(p.reshape(-1).float(), q.reshape(-1).float())
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _normalize(g: Tensor, norm: str, eps: float) -> Tensor:
    """g / (||g|| + eps), one norm per example over all its (T, H) entries."""
    # The divergence is flat at delta = 0, so g scales with sigma (~1e-7 at sigma = 1e-5):
    # an absolute eps would swamp ||g||. Rescale g by its batch max first, which leaves every
    # example's direction unchanged and makes eps a guard relative to the largest gradient.
    g = g / g.abs().amax().clamp_min(torch.finfo(g.dtype).tiny)
    flat = g.reshape(g.shape[0], -1)  # (B, T*H)
    if norm == "inf":
        size = flat.abs().amax(dim=1)
    elif norm == "l2":
        size = flat.norm(dim=1)
    else:
        raise ValueError(f"norm must be 'inf' or 'l2', got {norm!r}")
    return g / (size.view(-1, *[1] * (g.dim() - 1)) + eps)  # (B, 1, 1) broadcast


def smart_regularizer(forward_fn, embeds: list[Tensor], clean_output: Tensor, kind: str,
                      sigma: float = 1e-5, eta: float = 1e-3, eps: float = 1e-5,
                      steps: int = 1, norm: str = "inf") -> Tensor:
    """R_s(theta) of eq. 3 for one batch: l_s(f(x + delta), f(x)) at an adversarial delta.

    clean_output = forward_fn(embeds), already computed by the caller for the task loss.
    Step size eta and the per-example normalisation follow Algorithm 1
    (x~ <- x~ + eta g / ||g||_inf); eps only guards the division, as in the reference
    code (see _normalize): the paper's projection onto the eps-ball is not applied.
    """
    # embeds: one (B, T, H) tensor per sentence; forward_fn(list of them) -> like clean_output
    # BEGIN EXERCISE smart
    # Algorithm 1: x~ <- x + nu, nu ~ N(0, sigma^2 I)
    noises = [torch.randn_like(e) * sigma for e in embeds]  # each (B, T, H)
    clean_const = clean_output.detach()
    for _ in range(steps):
        # the inner ascent moves the noise only: embeddings and clean output are constants here
        noises = [n.requires_grad_() for n in noises]
        adv = forward_fn([e.detach() + n for e, n in zip(embeds, noises)])
        d = divergence(adv, clean_const, kind)
        grads = torch.autograd.grad(d, noises)  # g~ = grad_{x~} l_s(f(x~), f(x)); no .grad is touched
        # x~ <- x~ + eta * g~ / ||g~||
        noises = [(n + eta * _normalize(g, norm, eps)).detach() for n, g in zip(noises, grads)]
    # Final term: gradients flow into both sides, f(x + delta) and f(x), i.e. into the encoder
    # and, through the non-detached embeds, into the embedding layer; delta itself is a constant.
    adv = forward_fn([e + n for e, n in zip(embeds, noises)])
    return divergence(adv, clean_output, kind)
    # END EXERCISE smart


class MomentumTeacher:
    """Bregman proximal point (eq. 4-5): a frozen copy theta~ of the model, updated as
    theta~ <- (1 - beta) theta + beta theta~ (the paper's momentum, beta = 0.99).

    Use: loss += mu * bregman_divergence(model_output, teacher(...), kind), then after
    optimizer.step(): teacher.update(model, beta). The teacher keeps the mode
    (train/eval) the model had when it was copied; call teacher.module.eval() to
    switch its dropout off.
    """

    def __init__(self, model: nn.Module):
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        pairs = zip(self.module.named_parameters(), model.named_parameters(), strict=True)
        for (name_t, p_t), (name, p) in pairs:
            assert name_t == name, f"teacher and model differ: {name_t} vs {name}"
            p_t.mul_(beta).add_(p, alpha=1.0 - beta)  # theta~ <- beta theta~ + (1 - beta) theta

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def bregman_divergence(student_output: Tensor, teacher_output: Tensor, kind: str) -> Tensor:
    """D_Breg of eq. 5 for one batch: l_s(f(x; theta), f(x; theta~)), teacher side constant."""
    return divergence(student_output, teacher_output.detach(), kind)
