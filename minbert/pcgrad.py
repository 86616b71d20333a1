"""PCGrad: "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020).

Where two task gradients conflict (negative dot product), each is projected
onto the normal plane of the other before they are summed (Algorithm 1).

The shared encoder gets the surgically combined gradient; a task head only ever
receives its own task's gradient, so it keeps its ordinary gradient.

GSE, the student paper's "gradient surgery experiment", is composed in the
trainer from two optimizer steps on one batch: a PCGrad step
(`pcgrad_backward` + `optimizer.step()`), then a plain step on the summed
loss recomputed with the updated weights (`sum(losses).backward()` + `step()`).
"""
import torch
from torch import Tensor


def _grads_or_none(losses: list[Tensor], params: list[Tensor], reduce_fn=None) -> list[list[Tensor | None]]:
    """One autograd.grad per task; None where a param is not in that task's graph.

    reduce_fn (data-parallel training: minbert.run.distributed.average) maps the list of all
    these gradients to their means over the processes, before any projection: PCGrad
    of the averaged task gradients, which is not the average of per-process PCGrads.
    """
    grads = []
    for k, loss in enumerate(losses):
        keep = k < len(losses) - 1  # the graph is shared by the tasks: free it after the last one
        grads.append(list(torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)))
    if reduce_fn is not None:
        found = [(k, m) for k, gk in enumerate(grads) for m, g in enumerate(gk) if g is not None]
        for (k, m), g in zip(found, reduce_fn([grads[k][m] for k, m in found]), strict=True):
            grads[k][m] = g
    return grads


def task_gradients(losses: list[Tensor], params: list[Tensor], reduce_fn=None) -> list[list[Tensor]]:
    """Alg. 1 line 1: g_k = grad_theta L_k(theta) for every task k, as grads[k][param]."""
    grads = _grads_or_none(losses, params, reduce_fn)
    return [[torch.zeros_like(p) if g is None else g for g, p in zip(gk, params)] for gk in grads]


def project_conflicting(G: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Alg. 1 lines 2-7 on flattened gradients G (K, P): returns g_i^PC for every task, (K, P).

    Each g_i^PC starts as g_i and is projected, against the other tasks' ORIGINAL gradients g_j
    taken in the random order torch.randperm(K, generator=generator) gives, onto the normal
    plane of every g_j it conflicts with (g_i^PC . g_j < 0); a zero g_j is skipped."""
    K = G.shape[0]
    # BEGIN EXERCISE pcgrad
    norms2 = (G * G).sum(dim=1)  # (K,) ||g_j||^2 of the ORIGINAL gradients
    projected = G.clone()  # line 2: g_i^PC <- g_i
    for i in range(K):  # line 3: for each task i
        g_i = projected[i]  # (P,) a view: edits land in `projected`
        for j in torch.randperm(K, generator=generator).tolist():  # line 4: other tasks, random order
            if j == i or norms2[j] == 0:  # a zero gradient has no direction to project away from
                continue
            dot = g_i @ G[j]  # g_i^PC . g_j, against the original g_j
            if dot < 0:  # line 5: conflicting
                g_i -= dot / norms2[j] * G[j]  # line 7: project onto the normal plane of g_j
    return projected
    # END EXERCISE pcgrad


def pcgrad(grads: list[list[Tensor]], generator: torch.Generator | None = None,
           reduction: str = "sum") -> list[Tensor]:
    """Combine K tasks' gradients (grads[k][param]) with PCGrad; returns one tensor per param.

    reduction="sum" is Yu et al.'s update; "mean" divides it by K (the student paper
    speaks of "the mean of the adjusted gradients"; Adam hardly sees the difference).
    """
    shapes = [g.shape for g in grads[0]]
    G = torch.stack([torch.cat([g.reshape(-1) for g in gk]) for gk in grads])  # (K, P)
    combined = project_conflicting(G, generator).sum(dim=0)  # line 8: g^PC = sum_i g_i^PC, (P,)
    if reduction == "mean":
        combined = combined / len(grads)
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return [chunk.view(shape) for chunk, shape in
            zip(combined.split([s.numel() for s in shapes]), shapes)]


def _accumulate(p: Tensor, g: Tensor) -> None:
    """Add g into p.grad the way loss.backward() does."""
    if p.grad is None:
        p.grad = g.detach().clone()
    else:
        p.grad.add_(g)


def pcgrad_backward(losses: list[Tensor], shared_params, other_params=None,
                    generator: torch.Generator | None = None, reduction: str = "sum", reduce_fn=None) -> None:
    """Like sum(losses).backward(), but the shared params get the PCGrad combination.

    other_params (task heads) get the gradient of the summed loss: each head only
    appears in its own task's graph, so that is its own task gradient. It comes
    out of the same per-task autograd.grad calls (sum over tasks), with no extra
    backward pass. Gradients accumulate into .grad; a param that no loss reaches
    keeps .grad unchanged (None after zero_grad), as with backward(). reduce_fn: see
    _grads_or_none (it averages every task gradient, heads' too, across processes).
    """
    shared = [p for p in shared_params if p.requires_grad]
    other = [p for p in (other_params or []) if p.requires_grad]
    grads = _grads_or_none(losses, shared + other, reduce_fn)
    n = len(shared)

    reached = [any(gk[m] is not None for gk in grads) for m in range(n)]
    filled = [[torch.zeros_like(p) if g is None else g for g, p in zip(gk[:n], shared)] for gk in grads]
    for p, g, r in zip(shared, pcgrad(filled, generator, reduction), reached):
        if r:
            _accumulate(p, g)

    scale = 1.0 / len(losses) if reduction == "mean" else 1.0
    for m, p in enumerate(other, start=n):
        per_task = [gk[m] for gk in grads if gk[m] is not None]
        if per_task:
            _accumulate(p, torch.stack(per_task).sum(dim=0) * scale)
