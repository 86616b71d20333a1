"""Our AdamW against the CS224N reference file and torch.optim.AdamW."""
import copy

import numpy as np
import pytest
import torch

from conftest import SHARED, need
from minbert.optim import AdamW


def test_cs224n_reference():
    """As ../shared/data/README.md describes: Linear(3, 2), 1000 steps, lr 1e-3, wd 1e-4."""
    ref = np.load(need(SHARED / "reference" / "cs224n" / "optimizer_test.npy", "CS224N optimizer_test.npy"))
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(1000):
        opt.zero_grad()
        x = torch.tensor(rng.uniform(size=[model.in_features]), dtype=torch.float32)
        y_hat = model(x)
        y = torch.tensor([x[0] + x[1], -x[2]])
        ((y - y_hat) ** 2).sum().backward()
        opt.step()
    got = model.weight.detach().numpy()  # (2, 3), as the reference
    differ = int((~np.isclose(got, ref, atol=1e-6, rtol=1e-4)).sum())
    i, j = np.unravel_index(np.argmax(np.abs(got - ref)), ref.shape)
    assert differ == 0, (
        f"AdamW.step: after the CS224N starter's optimizer_test (Linear(3, 2) without bias, 1000 steps, lr 1e-3, "
        f"weight_decay 1e-4) the weights must equal its optimizer_test.npy within atol 1e-6 + rtol 1e-4; "
        f"{differ} of {ref.size} weights differ, most weight[{i}, {j}]: got {got[i, j]:.6f}, reference "
        f"{ref[i, j]:.6f}. The starter's AdamW is Loshchilov & Hutter Alg. 2: the moments (lines 7-8), their bias "
        f"corrections (lines 9-10), the step lr * m_hat / (sqrt(v_hat) + eps) and the decoupled decay "
        f"lr * weight_decay * theta (line 12); a difference in any of them shows here")


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_adamw_with_two_param_groups(foreach):
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    theirs.load_state_dict(ours.state_dict())

    def groups(m):
        return [{"params": [m.weight], "weight_decay": 0.1}, {"params": [m.bias], "weight_decay": 0.0}]

    opt_a = AdamW(groups(ours), lr=3e-3, betas=(0.8, 0.99), eps=1e-7, foreach=foreach)
    opt_b = torch.optim.AdamW(groups(theirs), lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    # Compared after every step, not only at the end: this loss is least at 0, where both runs
    # end whatever path they took (by step 500, a run without bias correction too).
    gaps = []
    for step in range(1000):
        x = torch.randn(8, 5)
        for m, opt in ((ours, opt_a), (theirs, opt_b)):
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            opt.step()
        gaps.append(max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters())))
    worst = max(range(1000), key=gaps.__getitem__)
    assert gaps[worst] <= 1e-6, (f"{'AdamW._update_foreach' if foreach else 'AdamW._update'} differs from "
                                 f"torch.optim.AdamW by {gaps[worst]:.3g} after step {worst + 1}")


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    opt_a = AdamW(a.parameters(), lr=1e-2)
    xs = [torch.randn(4, 3) for _ in range(10)]
    for i, x in enumerate(xs):
        if i == 5:
            b.load_state_dict(a.state_dict())
            opt_b = AdamW(b.parameters(), lr=1e-2)
            opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if read back from a file
        for m, opt in ((a, opt_a),) + (((b, opt_b),) if i >= 5 else ()):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, atol=0, rtol=0)


@pytest.mark.parametrize("compile", [False, True])
def test_tensors_at_different_steps_in_one_group(compile, request):
    """The baseline preset steps the encoder once per task and each head once: one group,
    several step counts. foreach (and compiled) updates equal the per-tensor loop."""
    if compile:
        request.getfixturevalue("compiler")
    torch.manual_seed(0)
    nets = [torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)]) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [AdamW(nets[0].parameters(), lr=1e-2, weight_decay=0.1, foreach=False),
            AdamW(nets[1].parameters(), lr=1e-2, weight_decay=0.1, foreach=True, compile=compile)]
    for step in range(6):
        x = torch.randn(3, 4)
        for net, opt in zip(nets, opts):
            opt.zero_grad(set_to_none=True)
            h = net[0](x)
            loss = (net[1](h) ** 2).mean() if step % 2 else (h ** 2).mean()  # the head: every other step
            loss.backward()
            opt.step()
    assert {s["step"] for s in opts[1].state.values()} == {6, 3}
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bad_arguments():
    p = [torch.nn.Parameter(torch.zeros(1))]
    for kw in (dict(lr=-1), dict(betas=(1.0, 0.9)), dict(weight_decay=-0.1)):
        with pytest.raises(ValueError):
            AdamW(p, **kw)


def test_compiled_update_matches_eager_and_compiles_once(compiler):
    """compile=True: the same numbers as the foreach path, and changing lr (a schedule)
    does not compile again: lr and the bias corrections go in as tensors."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    ours, ref = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
    ref.load_state_dict(ours.state_dict())
    opt_c = AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1, compile=True)
    opt_e = AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, foreach=True)
    for step in range(5):
        x = torch.randn(4, 6)
        for m, opt in ((ours, opt_c), (ref, opt_e)):
            opt.param_groups[0]["lr"] = 1e-2 * (5 - step) / 5  # linear decay
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, ref.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.bias, ref.bias, atol=1e-6, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


# ---------------------------------------------------------------- one test per idea of Algorithm 2
# Loshchilov & Hutter 2019, Algorithm 2, read as torch does (schedule multiplier eta_t = lr, alpha = 1):
#   line 7   m_t = beta1 m_{t-1} + (1 - beta1) g_t                        first moment
#   line 8   v_t = beta2 v_{t-1} + (1 - beta2) g_t^2                      second moment
#   line 9   m_hat = m_t / (1 - beta1^t)                                  bias corrections
#   line 10  v_hat = v_t / (1 - beta2^t)
#   line 12  theta_t = theta_{t-1} - lr (m_hat / (sqrt(v_hat) + eps) + wd theta_{t-1})
# Each test below runs on every code path, with gradients set by hand (not computed from the
# weights), so that m and v are known, and checks one idea on inputs where the others cannot
# hide or mimic it.

BETAS, EPS = (0.9, 0.999), 1e-8
PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "compiled": dict(compile=True)}
FUNCTION = {"loop": "AdamW._update", "foreach": "AdamW._update_foreach / adamw_foreach",
            "compiled": "AdamW._update_foreach / adamw_foreach under torch.compile"}


@pytest.fixture(params=list(PATHS))
def path(request):
    if request.param == "compiled":
        request.getfixturevalue("compiler")
    return request.param


def run_adamw(path, grads, start, lr=1e-2, wd=0.0, lrs=None):
    """AdamW on one tensor, one step per given gradient (lrs: the lr of each step, a schedule).
    Returns the weights before and after every step, and the optimizer state."""
    p = torch.nn.Parameter(start.clone())
    opt = AdamW([p], lr=lr, betas=BETAS, eps=EPS, weight_decay=wd, **PATHS[path])
    weights = [p.detach().clone()]
    for t, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[t]
        p.grad = g.clone()
        opt.step()
        weights.append(p.detach().clone())
    return weights, opt.state[p]


def algorithm_2(start, grads, lr=1e-2, wd=0.0, lrs=None):
    """The reference: Algorithm 2 in float64, line by line. Returns the weights before and
    after every step, and the final m and v."""
    b1, b2 = BETAS
    p = start.double()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    weights = [p]
    for t, g in enumerate(grads, start=1):
        lr_t = lr if lrs is None else lrs[t - 1]
        g = g.double()
        m = b1 * m + (1 - b1) * g  # line 7
        v = b2 * v + (1 - b2) * g * g  # line 8
        m_hat = m / (1 - b1 ** t)  # line 9
        v_hat = v / (1 - b2 ** t)  # line 10
        p = p - lr_t * (m_hat / (v_hat.sqrt() + EPS) + wd * p)  # line 12
        weights.append(p)
    return weights, m, v


def _grads(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, generator=g) for _ in range(n)]


START = torch.tensor([0.5, -1.0, 2.0, -0.3, 0.0, 1.5])  # the weights before the first step


def test_adamw_first_moment(path):
    grads = _grads(3)
    _, state = run_adamw(path, grads, START)
    _, m, _ = algorithm_2(START, grads)
    torch.testing.assert_close(state["exp_avg"].double(), m, atol=1e-6, rtol=1e-5, msg=lambda e: (
        f"{FUNCTION[path]}: the first moment must be m_t = beta1 m_(t-1) + (1 - beta1) g_t "
        f"(Loshchilov & Hutter Alg. 2, line 7): {e}"))
    # ...and the step follows m, not g: after a gradient, a zero gradient still moves the weights
    g = torch.tensor([1.0, -2.0, 0.5, -0.1])
    weights, _ = run_adamw(path, [g, torch.zeros(4)], torch.zeros(4))
    assert torch.equal(torch.sign(weights[1] - weights[2]), torch.sign(g)), (
        f"{FUNCTION[path]}: the step is lr m_hat / (sqrt(v_hat) + eps) with m_hat from m, the running "
        f"mean of the gradients (Alg. 2, lines 7, 9, 12): a zero gradient after g must still move the "
        f"weights along -g; the second step was {(weights[2] - weights[1]).tolist()}")


def test_adamw_second_moment(path):
    grads = _grads(3)
    _, state = run_adamw(path, grads, START)
    _, _, v = algorithm_2(START, grads)
    torch.testing.assert_close(state["exp_avg_sq"].double(), v, atol=1e-6, rtol=1e-5, msg=lambda e: (
        f"{FUNCTION[path]}: the second moment must be v_t = beta2 v_(t-1) + (1 - beta2) g_t^2, "
        f"the square element-wise (Loshchilov & Hutter Alg. 2, line 8): {e}"))
    # ...and the step divides by sqrt(v_hat): gradients 1000 times larger take the same steps
    small, _ = run_adamw(path, grads, START)
    large, _ = run_adamw(path, [1000 * g for g in grads], START)
    torch.testing.assert_close(large[-1], small[-1], atol=1e-6, rtol=1e-5, msg=lambda e: (
        f"{FUNCTION[path]}: the step m_hat / (sqrt(v_hat) + eps) must not depend on the gradients' "
        f"scale, since sqrt(v_hat) scales as |g| (Alg. 2, lines 8, 12): {e}"))


def test_adamw_bias_correction(path):
    """With a constant gradient g, m_t = (1 - beta1^t) g and v_t = (1 - beta2^t) g^2: the bias
    corrections make m_hat = g and v_hat = g^2 exactly, so every step moves each weight by lr,
    whatever the size of g. Uncorrected, the first step would be lr (1 - beta1) / sqrt(1 - beta2),
    3.2 lr, and the later ones would change from step to step."""
    g = torch.tensor([1e-3, -0.5, 20.0, -4.0])
    lr = 1e-2
    weights, _ = run_adamw(path, [g] * 5, torch.zeros(4), lr=lr)
    steps = torch.stack([b - a for a, b in zip(weights, weights[1:])])  # (5, 4)
    torch.testing.assert_close(steps, (-lr * torch.sign(g)).expand(5, 4), atol=0, rtol=1e-4, msg=lambda e: (
        f"{FUNCTION[path]}: with a constant gradient each step must move every weight by lr: "
        f"m_hat = m_t / (1 - beta1^t), v_hat = v_t / (1 - beta2^t) at step t = 1, 2, ... "
        f"(Loshchilov & Hutter Alg. 2, lines 9-10). Steps taken (rows: t = 1..5): {steps.tolist()}. {e}"))


def test_adamw_decoupled_weight_decay(path):
    lr, wd = 0.1, 0.5
    # with no gradient, m = v = 0 and only the decay acts: theta_t = (1 - lr wd) theta_(t-1)
    weights, _ = run_adamw(path, [torch.zeros(6)] * 3, START, lr=lr, wd=wd)
    torch.testing.assert_close(weights[-1], START * (1 - lr * wd) ** 3, msg=lambda e: (
        f"{FUNCTION[path]}: with a zero gradient, weight decay alone must shrink the weights by "
        f"(1 - lr wd) per step, the term lr wd theta_(t-1) of Loshchilov & Hutter Alg. 2 line 12, "
        f"kept out of the gradient and so out of m and v (line 6 without the L2 term): {e}"))
    # with a gradient, decay adds -lr wd theta_(t-1) to the step that the same run without decay takes
    grads = _grads(3)
    decayed, _ = run_adamw(path, grads, START, lr=lr, wd=wd)
    plain, _ = run_adamw(path, grads, START, lr=lr, wd=0.0)
    for t in range(1, 4):
        extra = (decayed[t] - decayed[t - 1]) - (plain[t] - plain[t - 1])
        torch.testing.assert_close(extra, -lr * wd * decayed[t - 1], atol=1e-6, rtol=1e-5, msg=lambda e: (
            f"{FUNCTION[path]}: at step {t}, weight decay must add exactly -lr wd theta_(t-1) to the "
            f"Adam step, decoupled from m_hat / (sqrt(v_hat) + eps) (Alg. 2, line 12): {e}"))


def test_adamw_learning_rate(path):
    grads = _grads(3)
    slow, _ = run_adamw(path, grads, START, lr=1e-3)
    fast, _ = run_adamw(path, grads, START, lr=3e-3)
    torch.testing.assert_close(fast[-1] - START, 3 * (slow[-1] - START), atol=1e-6, rtol=1e-4, msg=lambda e: (
        f"{FUNCTION[path]}: without weight decay the weights move by lr m_hat / (sqrt(v_hat) + eps) "
        f"(Alg. 2, line 12): three times the lr must move them three times as far: {e}"))
    # the lr is read from param_groups at every step (a schedule): at lr = 0 nothing moves, decay included
    weights, _ = run_adamw(path, grads, START, wd=0.1, lrs=[1e-2, 0.0, 1e-2])
    assert torch.equal(weights[2], weights[1]), (
        f"{FUNCTION[path]}: a step at lr = 0 (param_groups[0]['lr'] set by a schedule) must leave "
        f"the weights as they were, decay included (Alg. 2, line 12); it moved them by "
        f"{(weights[2] - weights[1]).tolist()}")


def test_adamw_matches_algorithm_2(path):
    """All the lines together, on two parameter groups with a learning-rate schedule."""
    a0, b0 = START, START.flip(0)
    ga, gb, lrs = _grads(4, seed=1), _grads(4, seed=2), [0.05, 0.1, 0.02, 0.08]
    a, b = torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())
    opt = AdamW([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=0.1, betas=BETAS, eps=EPS,
                weight_decay=0.5, **PATHS[path])
    ref_a, _, _ = algorithm_2(a0, ga, wd=0.5, lrs=lrs)
    ref_b, _, _ = algorithm_2(b0, gb, wd=0.0, lrs=lrs)
    for t in range(4):
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        a.grad, b.grad = ga[t].clone(), gb[t].clone()
        opt.step()
        for name, p, ref in (("decayed group", a, ref_a), ("group without decay", b, ref_b)):
            torch.testing.assert_close(p.detach().double(), ref[t + 1], atol=1e-6, rtol=1e-5, msg=lambda e: (
                f"{FUNCTION[path]}: the {name} differs from Loshchilov & Hutter Algorithm 2 after step "
                f"{t + 1}: {e}"))
