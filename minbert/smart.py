"""SMART: "Robust and Efficient Fine-Tuning for Pre-trained Natural Language Models
through Principled Regularized Optimization" (Jiang et al., ACL 2020).

Two pieces, both model-agnostic; the caller weighs them:
    loss = task_loss + lambda * smart_regularizer(...) + mu * bregman_term(...)
- the smoothness-inducing adversarial regularizer R(theta) (eq. 2-3, Algorithm 1): perturb
  the embedding-layer output x, push the perturbation nu uphill on the output divergence,
  and penalise the divergence the model shows there;
- the Bregman proximal-point term (eq. 4-5) against a momentum ("mean") teacher.

Every reading of the perturbation (READINGS, `--smart_reading`) starts from
x~ = x + nu, nu ~ N(0, sigma^2 I) (Algorithm 1 line 6), takes `steps` ascent steps with
g = grad_nu l_s(f(x + nu), f(x)) (f(x) held constant), and returns l_s(f(x + nu), f(x)):

  library  nu <- (nu + eta g) / (||nu + eta g||_inf + eps), the norm per token (over H):
           smart-pytorch 0.0.4's SMARTLoss (archinetai/smart-pytorch), whose four settings
           the CS224N student paper gives (its noise_var is sigma). eps only guards the
           division, so nu ends near 1 in each token's largest entry, against |x| ~ 0.2.
  paper    nu <- Pi(nu + eta g / ||g||_inf), the norm per example (over T, H), Pi the
           projection onto the eps-ball ||x~ - x||_inf <= eps (Algorithm 1 lines 8-9).
           At eps = 1e-5, |nu| <= 1e-5.
  mt-dnn   the SMART authors' code (namisan/mt-dnn: mt_dnn/perturbation.py, mt_dnn/loss.py):
           the library's update, per token; the ascent climbs the batch *sum* of a one-sided
           KL with the log-odds held constant (MSE summed for regression); the final term is
           the symmetric KL(f(x~)||f(x)) + KL(f(x)||f(x~)), each half with its target held
           constant. A one-logit head is the two-class softmax on [0, x].

MomentumTeacher and bregman_term follow the paper (eq. 4-5): neither code base above has
the Bregman term.

bf16 autocast: rounded to bf16, a 1e-5 perturbation of x ~ 0.2 vanishes, and so does
f(x + nu) - f(x). Under autocast smart_regularizer therefore runs its passes (the clean one
included) and the divergence in float32, and bregman_term its two passes (float32=False
measures what autocast alone gives; docs/SMART.md has the figures).

forward_fn maps a list of embedding-layer outputs, one (B, T, H) tensor per
sentence (two for siamese pair tasks), to the task output: (B, C) logits for
"classification", (B,) or (B, 1) logit for "binary", (B,) or (B, 1) score for
"regression". With dropout on, each forward_fn call draws its own mask (as in both
sources), and at the paper's values R then mostly measures the dropout (docs/SMART.md).
"""
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The student paper's values, the four settings of smart-pytorch (weight, step_size, epsilon,
# noise_var): lambda 5, eta 1e-3, eps 1e-5, sigma 1e-5.
DEFAULTS = dict(weight=5.0, sigma=1e-5, eta=1e-3, eps=1e-5, steps=1)
KINDS = ("classification", "binary", "regression")
READINGS = {
    "library": "smart-pytorch 0.0.4's SMARTLoss, which the student paper used: (nu + eta g) / (||.||_inf + eps) "
               "per token, a perturbation of ~1",
    "paper": "Jiang et al. 2020, Algorithm 1 with its projection onto the eps-ball: |nu| <= eps",
    "mt-dnn": "the SMART authors' code (namisan/mt-dnn): the library's perturbation, their stable KL ascent "
              "and stop-gradient symmetric KL",
}


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


# ---------------------------------------------------------------- mt-dnn's two losses

def _class_logits(y: Tensor, kind: str) -> Tensor:
    """(B, C) logits; a binary head's one logit x is the two-class softmax on [0, x]."""
    return torch.stack([torch.zeros_like(y.reshape(-1)), y.reshape(-1)], dim=-1) if kind == "binary" else y


def _mtdnn_ascent_loss(adv: Tensor, clean: Tensor, kind: str) -> Tensor:
    """What mt-dnn's ascent climbs: sum_b 2 sum_c p_c (r(p_c) - r(y_c)), p = softmax f(x~),
    y = softmax f(x), r(q) = log(q / (1 - q)) held constant (stable_kl, reduce=False)."""
    if kind == "regression":
        return F.mse_loss(adv.reshape(-1).float(), clean.reshape(-1).float(), reduction="sum")
    p = F.softmax(_class_logits(adv, kind).float(), dim=-1)  # (B, C)
    y = F.softmax(_class_logits(clean, kind).float(), dim=-1)
    return 2 * (p * (_log_odds(p) - _log_odds(y)).detach()).sum()


def _log_odds(q: Tensor) -> Tensor:
    return -(1.0 / (q + 1e-6) - 1.0 + 1e-6).log()  # r(q) = log(q / (1 - q)), with stable_kl's 1e-6 guards


def _mtdnn_final_loss(adv: Tensor, clean: Tensor, kind: str) -> Tensor:
    """SymKlCriterion(f(x), f(x~)): KL(a||c) with a constant + KL(c||a) with c constant, batch
    means; MSE for regression. The value is divergence()'s, the gradients are not."""
    if kind == "regression":
        return F.mse_loss(clean.reshape(-1).float(), adv.reshape(-1).float())
    log_a = F.log_softmax(_class_logits(adv, kind).float(), dim=-1)  # (B, C)
    log_c = F.log_softmax(_class_logits(clean, kind).float(), dim=-1)
    return _kl(log_a.detach(), log_c) + _kl(log_c.detach(), log_a)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()  # KL(p||q), batch mean


# ---------------------------------------------------------------- the readings' ascent steps

def _library_step(nu: Tensor, g: Tensor, eta: float, eps: float) -> Tensor:
    """nu <- (nu + eta g) / (||nu + eta g||_inf + eps), one norm per token: (B, T, H) -> (B, T, H)."""
    # BEGIN EXERCISE smart
    step = nu + eta * g
    return step / (step.abs().amax(dim=-1, keepdim=True) + eps)  # (B, T, 1) broadcast over H
    # END EXERCISE smart


def _paper_step(nu: Tensor, g: Tensor, eta: float, eps: float) -> Tensor:
    """nu <- Pi(nu + eta g / ||g||_inf), one norm per example, Pi onto ||nu||_inf <= eps."""
    # BEGIN EXERCISE smart
    size = g.flatten(1).abs().amax(dim=1).clamp_min(torch.finfo(g.dtype).tiny)  # (B,), 0 stays 0
    return (nu + eta * g / size.view(-1, *[1] * (g.dim() - 1))).clamp(-eps, eps)  # Algorithm 1 lines 8-9
    # END EXERCISE smart


ASCENT_STEPS = {"library": _library_step, "paper": _paper_step, "mt-dnn": _library_step}


def smart_regularizer(forward_fn, embeds: list[Tensor], clean_output: Tensor, kind: str,
                      sigma: float = 1e-5, eta: float = 1e-3, eps: float = 1e-5, steps: int = 1,
                      reading: str = "library", float32: bool = True) -> Tensor:
    """R_s(theta) of eq. 3 for one batch: l_s(f(x + nu), f(x)) at the adversarial nu that
    `reading` finds (READINGS, the module docstring). clean_output = forward_fn(embeds),
    already computed by the caller for the task loss."""
    if reading not in READINGS:
        raise ValueError(f"smart_regularizer: reading must be one of {', '.join(READINGS)}, got {reading!r}")
    device = embeds[0].device.type
    if float32 and torch.is_autocast_enabled(device):
        # bf16 would round nu (and f(x + nu) - f(x)) away: every pass here, the clean one too, in float32
        with torch.autocast(device, enabled=False):
            embeds = [e.float() for e in embeds]
            return smart_regularizer(forward_fn, embeds, forward_fn(embeds), kind, sigma, eta, eps, steps, reading)
    ascent_loss = _mtdnn_ascent_loss if reading == "mt-dnn" else divergence
    final_loss = _mtdnn_final_loss if reading == "mt-dnn" else divergence
    # BEGIN EXERCISE smart
    # Algorithm 1 line 6: x~ <- x + nu, nu ~ N(0, sigma^2 I)
    noises = [torch.randn_like(e) * sigma for e in embeds]  # each (B, T, H)
    clean_const = clean_output.detach()
    for _ in range(steps):
        # the inner ascent moves the noise only: embeddings and clean output are constants here
        noises = [n.requires_grad_() for n in noises]
        adv = forward_fn([e.detach() + n for e, n in zip(embeds, noises)])
        grads = torch.autograd.grad(ascent_loss(adv, clean_const, kind), noises)  # no .grad is touched
        noises = [ASCENT_STEPS[reading](n, g, eta, eps).detach() for n, g in zip(noises, grads)]
    # Final term: gradients flow into both sides, f(x + nu) and f(x), i.e. into the encoder
    # and, through the non-detached embeds, into the embedding layer; nu itself is a constant.
    adv = forward_fn([e + n for e, n in zip(embeds, noises)])
    return final_loss(adv, clean_output, kind)
    # END EXERCISE smart


class MomentumTeacher:
    """Bregman proximal point (eq. 4-5): a frozen copy theta~ of the model, updated as
    theta~ <- (1 - beta) theta + beta theta~ (the paper's momentum, beta = 0.99).

    Use: loss += mu * bregman_term(student_fn, teacher_fn, model_output, kind), then after
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


def bregman_term(student_fn, teacher_fn, student_output: Tensor, kind: str, float32: bool = True) -> Tensor:
    """bregman_divergence(student_output, teacher_fn(), kind). Under autocast both sides are
    recomputed in float32 (student_fn() = student_output there): theta and theta~ lie a few
    small steps apart, and bf16 outputs differ by more than that (2x the float32 value here)."""
    device = student_output.device.type
    if float32 and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return bregman_divergence(student_fn(), teacher_fn(), kind)
    return bregman_divergence(student_output, teacher_fn(), kind)
