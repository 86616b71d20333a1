"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight
Decay Regularization", Algorithm 2; Adam of Kingma & Ba 2015, Algorithm 1).

`step()` follows the paper's lines as numbered comments in `_update`, the path that runs by
default. A second code path, `foreach=True` (what --fast picks), does the same arithmetic
over all tensors at once with torch._foreach_* kernels (one launch per operation instead of
one per tensor), which matters on a GPU; tests keep the two equal, and a run that takes the
second path first checks it against the first (`check_foreach_matches_loop`), so an edit to
`_update` is never silently left out of a run.

`compile=True` hands that foreach function to torch.compile, which fuses its eight
passes over memory into one kernel, as torch's `fused=True` AdamW does by hand
(docs/BENCHMARKS.md measures the three). The learning rate and bias corrections then go in
as 0-d tensors: as Python numbers they would be baked into the compiled code, and every
step would compile it again.

`fused=True` (`--optim_args '{"fused": true}'`) hands steps 1-5 to torch's own fused kernel,
`torch._fused_adamw_`, the one `torch.optim.AdamW(fused=True)` runs: one launch per step on a
GPU. It is checked against `_update` the same way (`check_fused_matches_loop`).
"""
import math

import torch


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, foreach: bool = False, compile: bool = False, fused: bool = False):
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")
        if fused and (foreach or compile):
            raise ValueError("AdamW: fused is torch's kernel, foreach and compile are ours; choose one")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.foreach = foreach
        self.compile = compile
        self.fused = fused

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)  # m: first moment
                    state["exp_avg_sq"] = torch.zeros_like(p)  # v: second moment
                state["step"] += 1
            if self.fused:
                self._update_fused(group, params)
            else:
                (self._update_foreach if self.foreach or self.compile else self._update)(group, params)
        return loss

    def _update(self, group, params):
        """One AdamW step, in place, for every p in params (Loshchilov & Hutter Alg. 2, lines 6-12):
        decoupled weight decay p <- p - lr wd p; moments m_t = beta1 m_{t-1} + (1 - beta1) g_t and
        v_t = beta2 v_{t-1} + (1 - beta2) g_t^2; bias corrections m_hat = m_t / (1 - beta1^t),
        v_hat = v_t / (1 - beta2^t); p <- p - lr m_hat / (sqrt(v_hat) + eps)."""
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        for p in params:
            # g, m, v, p: tensors of p's shape; m and v are updated in place; t: this step's number, 1, 2, ...
            g, state = p.grad, self.state[p]
            m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
            # BEGIN EXERCISE adamw
            # 1. decoupled weight decay: shrink the weights, not the gradient (Alg. 2, line 12)
            p.mul_(1.0 - lr * wd)
            # 2. m_t = beta1 m_{t-1} + (1 - beta1) g_t
            m.lerp_(g, 1.0 - beta1)
            # 3. v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            # 4. bias corrections m_hat = m_t / (1 - beta1^t), v_hat = v_t / (1 - beta2^t)
            bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
            # 5. p_t = p_{t-1} - lr * m_hat / (sqrt(v_hat) + eps), with the corrections folded in:
            #    m_hat / (sqrt(v_hat) + eps) = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
            p.addcdiv_(m, denom, value=-lr / bc1)
            # END EXERCISE adamw

    def _update_foreach(self, group, params):
        """Steps 1-5 above, each as one multi-tensor kernel (see adamw_foreach)."""
        # Tensors of one group can be at different steps: the baseline preset steps the
        # encoder once per task and each head once. One call per step count.
        by_step: dict[int, list] = {}
        for p in params:
            by_step.setdefault(self.state[p]["step"], []).append(p)
        beta1, beta2 = group["betas"]
        for t, ps in by_step.items():
            lr, bc1, bc2 = group["lr"], 1.0 - beta1 ** t, 1.0 - beta2 ** t
            update = adamw_foreach
            if self.compile:
                update = _compiled_adamw_foreach()
                lr, bc1, bc2 = torch.tensor([lr, bc1, bc2], dtype=torch.float32).to(ps[0].device).unbind()
            update(ps, [p.grad for p in ps], [self.state[p]["exp_avg"] for p in ps],
                   [self.state[p]["exp_avg_sq"] for p in ps], lr=lr, bc1=bc1, bc2=bc2,
                   beta1=beta1, beta2=beta2, eps=group["eps"], wd=group["weight_decay"])

    def _update_fused(self, group, params):
        """Steps 1-5 above in torch's fused kernel (torch.optim.AdamW(fused=True)); it reads the
        step count t from a tensor and computes the bias corrections itself."""
        beta1, beta2 = group["betas"]
        by_step: dict[int, list] = {}
        for p in params:
            by_step.setdefault(self.state[p]["step"], []).append(p)
        for t, ps in by_step.items():
            step = torch.tensor(float(t), device=ps[0].device)  # read, not written: one tensor serves all
            torch._fused_adamw_(ps, [p.grad for p in ps], [self.state[p]["exp_avg"] for p in ps],
                                [self.state[p]["exp_avg_sq"] for p in ps], [], [step] * len(ps),
                                lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                                eps=group["eps"], amsgrad=False, maximize=False)


def adamw_foreach(params, grads, ms, vs, *, lr, bc1, bc2, beta1, beta2, eps, wd):
    """AdamW._update's steps 1-5 over lists of tensors. lr and the bias corrections bc1,
    bc2 are Python numbers, or 0-d tensors under torch.compile."""
    torch._foreach_mul_(params, 1.0 - lr * wd)  # 1. decoupled weight decay
    torch._foreach_lerp_(ms, grads, 1.0 - beta1)  # 2. first moment
    torch._foreach_mul_(vs, beta2)  # 3. second moment
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_sqrt(vs)  # 4.-5. sqrt(v_hat) + eps
    torch._foreach_div_(denom, bc2 ** 0.5)
    torch._foreach_add_(denom, eps)
    if isinstance(lr, torch.Tensor):  # addcdiv's value= only takes a number
        torch._foreach_sub_(params, torch._foreach_mul(torch._foreach_div(ms, denom), lr / bc1))
    else:
        torch._foreach_addcdiv_(params, ms, denom, value=-lr / bc1)


_COMPILED = None


def _compiled_adamw_foreach():
    """adamw_foreach through torch.compile, built on first use (compiling takes seconds). Each
    new list of shapes compiles once more; past torch's recompile limit it runs eagerly."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(adamw_foreach)
    return _COMPILED


def _draws() -> tuple[list, list]:
    """The start-up checks' tiny float64 tensors and three steps of gradients, fixed draws."""
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((4, 3), (3,))]
    return start, [[torch.randn(x.shape, generator=g, dtype=torch.float64) for x in start] for _ in range(3)]


def _three_steps(**path) -> list[torch.Tensor]:
    """Three AdamW steps on _draws(), on the path `path` picks (foreach=True, fused=True, or none)."""
    start, grads = _draws()
    params = [torch.nn.Parameter(x) for x in start]
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, **path)
    for gs in grads:
        for p, grad in zip(params, gs):
            p.grad = grad
        opt.step()
    return params


def check_fused_matches_loop(atol: float = 1e-6):
    """Three steps of AdamW._update and of torch's fused kernel on tiny tensors, compared; a run
    with fused=True calls this first (minbert/fastpaths.py), as check_foreach_matches_loop."""
    diff = max((a - b).abs().max().item() for a, b in zip(_three_steps(), _three_steps(fused=True)))
    if not diff <= atol:
        raise RuntimeError(
            f"AdamW._update (the readable step in minbert/optim/adamw.py) and torch._fused_adamw_ (torch's fused "
            f"AdamW, which optim_args fused runs instead) differ by {diff:.3g} after 3 steps on tiny tensors, so this "
            f"run would not train with AdamW._update as it is written. Leave out fused to train with "
            f"AdamW._update; torch's kernel computes the AdamW of Loshchilov & Hutter, Algorithm 2.")


def check_foreach_matches_loop(atol: float = 1e-6):
    """Three steps of AdamW._update and of the multi-tensor path on tiny tensors, compared; the
    latter also as --compile calls it (lr and bias corrections as 0-d tensors), run eagerly.
    A run that takes a fast path calls this first (minbert/fastpaths.py): a difference means
    one of them was edited, and the run would not train with the readable one."""
    result = {False: _three_steps(), True: _three_steps(foreach=True)}
    start, grads = _draws()
    params = [x.clone() for x in start]
    ms, vs = [torch.zeros_like(x) for x in start], [torch.zeros_like(x) for x in start]
    for t, gs in enumerate(grads, start=1):
        lr, bc1, bc2 = (torch.tensor(v, dtype=torch.float64) for v in (1e-2, 1 - 0.9 ** t, 1 - 0.99 ** t))
        adamw_foreach(params, gs, ms, vs, lr=lr, bc1=bc1, bc2=bc2, beta1=0.9, beta2=0.99, eps=1e-8, wd=0.1)
    result["tensors"] = params
    diff = max((a - b).abs().max().item() for other in (True, "tensors") for a, b in zip(result[False], result[other]))
    if not diff <= atol:
        raise RuntimeError(
            f"AdamW._update (the readable step in minbert/optim/adamw.py) and adamw_foreach (the multi-tensor "
            f"step that --fast and --compile run instead) differ by {diff:.3g} after 3 steps on tiny tensors, "
            f"so this run would not train with AdamW._update as it is written. Run without --fast and "
            f"--compile to train with AdamW._update, or make adamw_foreach compute the same.")
