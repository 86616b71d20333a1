"""M-FAC against an explicit inverse: every step is checked against
lr * solve(damp*I + G^T G / m, g) built in float64 from a buffer kept by the test.
Weight decay and momentum are checked in both forms: the authors' (the defaults) and the
one behind an option (OLD_FORMS, minbert's earlier default)."""
import collections
import io
import itertools

import pytest
import torch

from minbert.optim import mfac as mfac_module
from minbert.optim.mfac import MFAC

SHAPES = [(5, 7), (11,), (3, 4, 6)]  # odd shapes, d = 35 + 11 + 72 = 118
SIZES = [35, 11, 72]
OLD_FORMS = dict(weight_decay_mode="decoupled", momentum_mode="heavy_ball")


def make_params(shapes=SHAPES, seed=0, zeros=True):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.zeros(s) if zeros else torch.randn(s)) for s in shapes]


def gradient_stream(steps, shapes=SHAPES, seed=1, shared=0.0):
    """Random per-parameter gradients. shared > 0 adds a common component, so that
    successive gradients correlate like minibatch gradients do (cosine ~ shared^2/(1+shared^2))."""
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=gen) for s in shapes]
    return [[shared * b + torch.randn(s, generator=gen) for b, s in zip(base, shapes)]
            for _ in range(steps)]


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors]).double()


class ExplicitMFAC:
    """F^{-1} g with F = damp*I + G^T G / m written out as a d x d matrix, in float64."""

    def __init__(self, num_grads, damp):
        self.m, self.damp = num_grads, damp
        self.window = collections.deque(maxlen=num_grads)  # missing rows = zero rows

    def direction(self, g):
        self.window.append(g)
        G = torch.stack(list(self.window))
        F = self.damp * torch.eye(g.numel(), dtype=torch.float64) + G.T @ G / self.m
        return torch.linalg.solve(F, g)


def step_with(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    opt.step()


def relative_error(got, want):
    return ((got - want).norm() / want.norm()).item()


def assert_close(got, want, what):
    """float32 optimizer vs float64 reference, several steps in: rounding drifts ~1e-7."""
    torch.testing.assert_close(got.detach().double(), want, rtol=1e-5, atol=1e-6,
                               msg=lambda detail: f"MFAC.step: {what}\n{detail}")


def read_updates(params, grads, opt, lr):
    """Run the stream; return each step's F^{-1} g as read off the parameters. The
    parameters do not enter the update (no weight decay), so we reset them to zero
    before each step: then the update is exactly -p, free of the rounding of p - p_old."""
    out = []
    for gs in grads:
        with torch.no_grad():
            for p in params:
                p.zero_()
        step_with(opt, params, gs)
        out.append(-flat(params) / lr)
    return out


@pytest.mark.parametrize("damp", [1e-1, 1e-2])
@pytest.mark.parametrize("m", [1, 7, 32])
def test_matches_explicit_inverse(m, damp):
    params, lr = make_params(), 0.5
    opt = MFAC(params, lr=lr, num_grads=m, damp=damp)
    grads = gradient_stream(m + 9)  # more steps than m: the ring wraps
    ref = ExplicitMFAC(m, damp)
    for got, gs in zip(read_updates(params, grads, opt, lr), grads):
        err = relative_error(got, ref.direction(flat(gs)))
        assert err < 1e-6, f"MFAC.step: the update must be F^-1 g, F = damp*I + G^T G / m (Frantar et al. eq. 1); relative error {err:.3g}"
    assert opt.num_steps == m + 9


@pytest.mark.parametrize("m", [7, 32])
def test_small_damp_matches_explicit_inverse(m):
    # damp=1e-6 as in the model cards, with correlated gradients (cosine ~0.5). Outside
    # the span of G, F is just 1e-6 * I, so everything rests on the m x m system, whose
    # condition grows with the correlation; float32 Gram entries (eps 6e-8) times that
    # give ~1e-6, hence 1e-5 here. (The textbook Woodbury form (1/damp)(g - G^T c) in
    # float32 is off by more than 100% on this very stream: it cancels and then
    # multiplies by 1e6. That is why mfac.py uses the push-through form m G^T x.)
    params, lr, damp = make_params(), 1.0, 1e-6
    opt = MFAC(params, lr=lr, num_grads=m, damp=damp)
    grads = gradient_stream(m + 9, shared=1.0)
    ref = ExplicitMFAC(m, damp)
    for got, gs in zip(read_updates(params, grads, opt, lr), grads):
        err = relative_error(got, ref.direction(flat(gs)))
        assert err < 1e-5, f"MFAC.step with damp=1e-6: F^-1 g through the m x m system (Woodbury); relative error {err:.3g}"


ALL_FORMS = list(itertools.product(("preconditioned", "decoupled"), ("average", "heavy_ball")))


@pytest.mark.parametrize("weight_decay_mode,momentum_mode", ALL_FORMS)
def test_momentum_weight_decay_and_param_groups(weight_decay_mode, momentum_mode):
    params = make_params(zeros=False)
    groups = [dict(params=params[:2], lr=0.1, weight_decay=0.05),  # momentum from the default
              dict(params=params[2:], lr=0.02, momentum=0.5)]  # weight_decay from the default
    opt = MFAC(groups, lr=1.0, num_grads=5, damp=1e-1, momentum=0.9, weight_decay=0.0,
               weight_decay_mode=weight_decay_mode, momentum_mode=momentum_mode)
    hyper = [(0.1, 0.05, 0.9)] * 2 + [(0.02, 0.0, 0.5)]  # (lr, weight_decay, momentum) per tensor
    ref, want = ExplicitMFAC(5, 1e-1), [p.detach().double().clone() for p in params]
    bufs = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    for gs in gradient_stream(12):
        step_with(opt, params, gs)
        if weight_decay_mode == "preconditioned":  # g <- grad + wd*p
            gs = [x + wd * w for x, w, (_, wd, _) in zip(gs, want, hyper)]
        u = ref.direction(flat(gs)).split(SIZES)
        for i, (lr, wd, mu) in enumerate(hyper):
            if weight_decay_mode == "decoupled":
                want[i] -= lr * wd * want[i]  # p <- p - lr*wd*p
            weight = 1 - mu if momentum_mode == "average" else 1
            bufs[i] = mu * bufs[i] + weight * u[i].view(want[i].shape)  # v <- mu*v + (1-mu or 1)*F^{-1} g
            want[i] -= lr * bufs[i]  # p <- p - lr*v
        for p, w in zip(params, want):
            assert_close(p, w, f"{weight_decay_mode} weight decay, {momentum_mode} momentum, per group")


def test_weight_decay_enters_the_buffer_before_preconditioning():
    # The authors' form (the default): g = grad + wd*p is what is written into the ring
    # and preconditioned, p <- p - lr * F^{-1}(grad + wd*p), with no separate shrinking.
    params, lr, m = make_params(zeros=False), 0.3, 5
    groups = [dict(params=params[:2], weight_decay=0.1), dict(params=params[2:])]  # 2nd: no decay
    opt = MFAC(groups, lr=lr, num_grads=m, damp=1e-1)
    wds, ref = [0.1, 0.1, 0.0], ExplicitMFAC(m, 1e-1)
    want = [p.detach().double().clone() for p in params]
    for t, gs in enumerate(gradient_stream(2 * m + 2)):  # 12 steps > m: the ring wraps
        g = flat([x + wd * w for x, wd, w in zip(gs, wds, want)])  # g = grad + wd*p, float64
        step_with(opt, params, gs)
        assert_close(opt.grads[t % m], g, "ring row j must hold g = grad + weight_decay * p")
        u = ref.direction(g).split(SIZES)  # F^{-1} g, F = damp*I + G^T G / m over the window
        for i, w in enumerate(want):
            want[i] = w - lr * u[i].view(w.shape)  # p <- p - lr * F^{-1}(grad + wd*p)
        for p, w in zip(params, want):
            assert_close(p, w, "p <- p - lr * F^{-1}(grad + weight_decay * p) (preconditioned decay)")


def test_momentum_is_an_average_of_updates():
    # The authors' form (the default): v <- mu*v + (1 - mu)*F^{-1} g, p <- p - lr*v.
    params, lr, m = make_params(zeros=False), 0.3, 5
    groups = [dict(params=params[:2]), dict(params=params[2:], momentum=0.5)]
    opt = MFAC(groups, lr=lr, num_grads=m, damp=1e-1, momentum=0.9)
    mus, ref = [0.9, 0.9, 0.5], ExplicitMFAC(m, 1e-1)
    want = [p.detach().double().clone() for p in params]
    v = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    for gs in gradient_stream(2 * m + 2):  # the ring wraps
        step_with(opt, params, gs)
        u = ref.direction(flat(gs)).split(SIZES)
        for i, mu in enumerate(mus):
            v[i] = mu * v[i] + (1 - mu) * u[i].view(SHAPES[i])  # v <- mu*v + (1 - mu)*F^{-1} g
            want[i] -= lr * v[i]  # p <- p - lr*v
        assert_close(opt.momentum_buffer, flat(v), "v <- mu*v + (1 - mu)*F^{-1} g (average momentum)")
        for p, w in zip(params, want):
            assert_close(p, w, "p <- p - lr*v with v <- mu*v + (1 - mu)*F^{-1} g (average momentum)")


def test_decoupled_weight_decay_option():
    # weight_decay_mode="decoupled": the ring holds the bare gradient and the weights shrink
    # apart from it: p <- p - lr*wd*p, then p <- p - lr * F^{-1} grad.
    params, lr, wd, m = make_params(zeros=False), 0.3, 0.1, 5
    opt = MFAC(params, lr=lr, num_grads=m, damp=1e-1, weight_decay=wd, weight_decay_mode="decoupled")
    ref, want = ExplicitMFAC(m, 1e-1), [p.detach().double().clone() for p in params]
    for t, gs in enumerate(gradient_stream(2 * m + 2)):  # the ring wraps
        step_with(opt, params, gs)
        assert torch.equal(opt.grads[t % m].double(), flat(gs)), \
            "MFAC.step (decoupled weight decay): ring row j must hold the bare gradient g = grad"
        u = ref.direction(flat(gs)).split(SIZES)
        for i, w in enumerate(want):
            want[i] = w - lr * wd * w - lr * u[i].view(w.shape)  # p <- p - lr*wd*p - lr*F^{-1} grad
        for p, w in zip(params, want):
            assert_close(p, w, "p <- p - lr*wd*p - lr*F^{-1} grad (decoupled weight decay)")


def test_heavy_ball_momentum_option():
    # momentum_mode="heavy_ball": v <- mu*v + F^{-1} g, p <- p - lr*v.
    params, lr, mu, m = make_params(zeros=False), 0.03, 0.9, 5
    opt = MFAC(params, lr=lr, num_grads=m, damp=1e-1, momentum=mu, momentum_mode="heavy_ball")
    ref, want = ExplicitMFAC(m, 1e-1), [p.detach().double().clone() for p in params]
    v = [torch.zeros(s, dtype=torch.float64) for s in SHAPES]
    for gs in gradient_stream(2 * m + 2):  # the ring wraps
        step_with(opt, params, gs)
        u = ref.direction(flat(gs)).split(SIZES)
        for i in range(len(v)):
            v[i] = mu * v[i] + u[i].view(SHAPES[i])  # v <- mu*v + F^{-1} g
            want[i] -= lr * v[i]  # p <- p - lr*v
        assert_close(opt.momentum_buffer, flat(v), "v <- mu*v + F^{-1} g (heavy-ball momentum)")
        for p, w in zip(params, want):
            assert_close(p, w, "p <- p - lr*v with v <- mu*v + F^{-1} g (heavy-ball momentum)")


def test_heavy_ball_is_average_momentum_with_lr_over_one_minus_mu():
    # As the module docstring says: both v start at 0, so heavy_ball at lr = average at lr/(1 - mu).
    grads, mu, trajectories = gradient_stream(12), 0.9, []
    for mode, lr in (("heavy_ball", 0.01), ("average", 0.01 / (1 - mu))):
        params = make_params(zeros=False)
        opt = MFAC(params, lr=lr, num_grads=5, damp=1e-1, momentum=mu, momentum_mode=mode)
        for gs in grads:
            step_with(opt, params, gs)
        trajectories.append(flat(params))
    assert_close(trajectories[1], trajectories[0], "heavy_ball at lr != average at lr / (1 - momentum)")


@pytest.mark.parametrize("forms", [{}, OLD_FORMS], ids=["authors", "old"])
def test_grad_none_counts_as_zero_and_param_is_untouched(forms):
    params, lr, wd, mu = make_params(zeros=False), 0.3, 0.1, 0.9
    opt = MFAC(params, lr=lr, num_grads=4, damp=1e-1, weight_decay=wd, momentum=mu, **forms)
    preconditioned = forms.get("weight_decay_mode", "preconditioned") == "preconditioned"
    ref = ExplicitMFAC(4, 1e-1)
    for t, gs in enumerate(gradient_stream(8)):
        if t % 3 == 1:
            gs[1] = None
        before = [p.detach().clone() for p in params]
        step_with(opt, params, gs)
        decay = wd if preconditioned else 0.0  # g = grad + decay * p; zeros where grad is None
        g = flat([torch.zeros(s) if x is None else x + decay * b for x, b, s in zip(gs, before, SHAPES)])
        assert_close(opt.grads[t % 4], g, "ring row j")  # zeros for grad None (no wd*p either)
        u = ref.direction(g).split(SIZES)
        if gs[1] is None:
            assert torch.equal(params[1], before[1])  # no decay, no update
        # the others still move along their slice of F^{-1} g of the zero-filled g
        if t == 0 and preconditioned:  # first step: v = (1 - mu)*u, so p = p_old - lr*(1 - mu)*u
            want = before[0].double() - lr * (1 - mu) * u[0].view(5, 7)
            assert_close(params[0], want, "first step, authors' forms")
        if t == 0 and not preconditioned:  # first step: v = u, so p = (1 - lr*wd) p_old - lr*u
            want = (1 - lr * wd) * before[0].double() - lr * u[0].view(5, 7)
            assert_close(params[0], want, "first step, decoupled decay and heavy ball")


@pytest.mark.parametrize("damp", [1e-1, 1e-6])
def test_bf16_buffer_within_stated_tolerance(damp):
    # The tolerance stated in mfac.py: bf16 direction within 1e-2 relative of float32 for
    # moderately correlated gradients (cosine ~0.5; measured ~3.5e-3, the bf16 rounding of
    # g alone is ~2e-3).
    grads = gradient_stream(40, shared=1.0)
    updates = {}
    for dtype in (torch.float32, torch.bfloat16):
        params = make_params()
        opt = MFAC(params, lr=1.0, num_grads=32, damp=damp, buffer_dtype=dtype)
        opt._chunk = min(opt._chunk, 10)  # bf16: upcast G in several column chunks, as for a big d
        updates[dtype] = read_updates(params, grads, opt, 1.0)
        assert opt.grads.dtype == dtype and opt.gram.dtype == torch.float32
    for a, b in zip(updates[torch.float32], updates[torch.bfloat16]):
        assert relative_error(b, a) < 1e-2


@pytest.mark.parametrize("forms", [{}, OLD_FORMS], ids=["authors", "old"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip(dtype, forms):
    grads = gradient_stream(10)
    kwargs = dict(lr=0.1, num_grads=4, damp=1e-2, momentum=0.9, weight_decay=0.01, buffer_dtype=dtype,
                  **forms)
    a_params = make_params(zeros=False)
    a = MFAC(a_params, **kwargs)
    for t, gs in enumerate(grads):
        if t == 5:  # save as a checkpoint would; weights_only load must accept it
            blob = io.BytesIO()
            torch.save({"optim": a.state_dict(), "params": [p.detach() for p in a_params]}, blob)
        step_with(a, a_params, gs)
    blob.seek(0)
    ckpt = torch.load(blob, weights_only=True)
    b_params = [torch.nn.Parameter(p.clone()) for p in ckpt["params"]]
    b = MFAC(b_params, **{**kwargs, "lr": 123.0})  # lr comes back from the state dict
    b.load_state_dict(ckpt["optim"])
    assert b.num_steps == 5 and b.param_groups[0]["lr"] == 0.1
    for gs in grads[5:]:
        step_with(b, b_params, gs)
    for pa, pb in zip(a_params, b_params):
        assert torch.equal(pa, pb)
    for name in ("grads", "gram", "momentum_buffer", "num_steps"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(x, y) if torch.is_tensor(x) else x == y


def test_resuming_momentum_of_the_other_mode_is_refused():
    # an average v is (1 - mu) times a heavy-ball one: loading one as the other would
    # silently rescale the steps
    kwargs = dict(num_grads=4, damp=1e-2, momentum=0.9)
    params = make_params()
    heavy = MFAC(params, momentum_mode="heavy_ball", **kwargs)
    step_with(heavy, params, gradient_stream(1)[0])
    state = heavy.state_dict()
    with pytest.raises(ValueError, match="pass momentum_mode='heavy_ball' to resume"):
        MFAC(make_params(), **kwargs).load_state_dict(state)
    # a checkpoint from before the option has no "momentum_mode": it was heavy ball
    older = {**state, "mfac": {k: v for k, v in state["mfac"].items() if k != "momentum_mode"}}
    with pytest.raises(ValueError, match="pass momentum_mode='heavy_ball' to resume"):
        MFAC(make_params(), **kwargs).load_state_dict(older)
    MFAC(make_params(), momentum_mode="heavy_ball", **kwargs).load_state_dict(older)
    # no momentum saved: nothing to mix up, either mode loads
    MFAC(make_params(), num_grads=4, momentum_mode="heavy_ball").load_state_dict(
        MFAC(make_params(), num_grads=4).state_dict())


def test_memory_refusal(monkeypatch, capsys):
    monkeypatch.setattr(mfac_module, "available_memory", lambda device: 10**9)
    big = torch.nn.Parameter(torch.empty(22_680_000))  # refused before the buffer is made
    with pytest.raises(ValueError) as err:
        MFAC([big], num_grads=1024)
    assert "M-FAC buffer: m=1024 x d=22.7M in float32 = 92.9 GB" in capsys.readouterr().out
    message = str(err.value)
    assert "needs 93.2 GB" in message and "only 1.0 GB is available" in message
    for knob in ("num_grads", "buffer_dtype=torch.bfloat16", "fewer parameters", "check_memory=False"):
        assert knob in message
    MFAC(make_params(), num_grads=8)  # a small buffer fits in 1 GB
    assert MFAC.buffer_bytes(22_680_000, 1024, torch.float32) == 1024 * 22_680_000 * 4
    assert MFAC.buffer_bytes(100, 8, torch.bfloat16) == 1600


def test_argument_validation():
    for bad in (dict(lr=-1.0), dict(num_grads=0), dict(damp=0.0), dict(momentum=-0.1),
                dict(weight_decay=-1.0), dict(buffer_dtype=torch.float16)):
        with pytest.raises(ValueError):
            MFAC(make_params(), **bad)
    with pytest.raises(ValueError, match=r"weight_decay_mode must be one of \('preconditioned', "
                                         r"'decoupled'\), got 'adamw'"):
        MFAC(make_params(), weight_decay_mode="adamw")
    with pytest.raises(ValueError, match=r"momentum_mode must be one of \('average', 'heavy_ball'\), "
                                         r"got 'nesterov'"):
        MFAC(make_params(), momentum_mode="nesterov")
    for shared in (dict(damp=1e-3), dict(momentum_mode="heavy_ball"), dict(weight_decay_mode="decoupled")):
        with pytest.raises(ValueError, match="shared buffer"):
            MFAC([dict(params=make_params(), **shared)])
    opt = MFAC(make_params())
    with pytest.raises(ValueError, match="at construction"):
        opt.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(3))]))


def test_decreases_loss_on_regression():
    torch.manual_seed(0)
    X = torch.randn(256, 20)
    y = X @ torch.randn(20, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = MFAC(model.parameters(), lr=0.1, num_grads=16, damp=1e-2)
    full_loss = lambda: torch.nn.functional.mse_loss(model(X), y).item()  # noqa: E731
    start = full_loss()
    for _ in range(100):
        idx = torch.randint(0, 256, (32,))

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(X[idx]), y[idx])
            loss.backward()
            return loss

        assert torch.is_tensor(opt.step(closure))
    assert full_loss() < 0.2 * start


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    grads = gradient_stream(12)
    updates = []
    for device in ("cpu", "cuda"):
        params = [torch.nn.Parameter(p.to(device)) for p in make_params()]
        opt = MFAC(params, lr=1.0, num_grads=8, damp=1e-2, buffer_dtype=dtype)
        updates.append(read_updates(params, [[g.to(device) for g in gs] for gs in grads], opt, 1.0))
    for a, b in zip(*updates):
        assert relative_error(b.cpu(), a) < 1e-5
