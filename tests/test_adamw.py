"""Our AdamW against the CS224N reference file and torch.optim.AdamW."""
import copy

import numpy as np
import pytest
import torch

from minbert.optim import AdamW
from conftest import SHARED, need


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
    np.testing.assert_allclose(model.weight.detach().numpy(), ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_adamw_with_two_param_groups(foreach):
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    theirs.load_state_dict(ours.state_dict())

    def groups(m):
        return [{"params": [m.weight], "weight_decay": 0.1}, {"params": [m.bias], "weight_decay": 0.0}]

    opt_a = AdamW(groups(ours), lr=3e-3, betas=(0.8, 0.99), eps=1e-7, foreach=foreach)
    opt_b = torch.optim.AdamW(groups(theirs), lr=3e-3, betas=(0.8, 0.99), eps=1e-7)
    for step in range(1000):
        x = torch.randn(8, 5)
        for m, opt in ((ours, opt_a), (theirs, opt_b)):
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, theirs.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.bias, theirs.bias, atol=1e-6, rtol=1e-5)


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
    if compile:
        request.getfixturevalue("compiler")
    """The baseline preset steps the encoder once per task and each head once: one group,
    several step counts. foreach (and compiled) updates equal the per-tensor loop."""
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
