"""minbert's "library" reading of SMART against smart-pytorch 0.0.4's SMARTLoss, the library the
student paper used: the same noise draw must give the same regulariser and gradients, for
classification, binary and regression heads, on one sentence and on pairs, at the paper's
settings and at one where the ascent step dominates. Live where the package is installed
(requirements-dev.txt), and always against tests/fixtures/smart_library.safetensors, which
tests/fixtures/make_smart_library.py wrote with it.

The Bregman term has no counterpart to check: neither smart-pytorch nor the authors' mt-dnn has one."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, fixture_script
from minbert.smart import smart_regularizer

cases = fixture_script("make_smart_library")  # the cases: encoder, inputs, heads, settings
CASES = cases.case_names()


@pytest.fixture(scope="module")
def bert():
    return cases.encoder()


def ours(bert, kind, n, setting, seed, noise, head_weight=None, head_bias=None):
    """minbert's library reading on the case, with the given noise draw (n, B, T, H)."""
    head, embeds, f = cases.build(bert, kind, n, seed)
    if head_weight is not None:
        with torch.no_grad():
            head.weight.copy_(head_weight)
            head.bias.copy_(head_bias)
    draws = list(noise.unbind(0))
    s = cases.SETTINGS[setting]
    real = torch.randn_like
    torch.randn_like = lambda like, **kw: draws.pop(0).clone()
    try:
        r = smart_regularizer(f, embeds, f(embeds), kind, sigma=s["sigma"], eta=s["eta"], eps=s["eps"],
                              steps=s["steps"], reading="library")
    finally:
        torch.randn_like = real
    r.backward()
    return {"value": r.detach(), "grad_head_weight": head.weight.grad,
            "grad_embeds": torch.stack([e.grad for e in embeds])}


def _check(got, want, case, where, rtol):
    for key in ("value", "grad_head_weight", "grad_embeds"):
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=rtol * scale, msg=lambda e: (
            f"smart_regularizer(reading='library') must compute what smart-pytorch 0.0.4's SMARTLoss does "
            f"((nu + eta g) / (||nu + eta g||_inf + eps) per token, then l_s at x + nu) with the same noise; "
            f"{key} differs from {where} for {case}: {e}"))


def test_library_reading_equals_smart_pytorch(bert, one_thread):
    pytest.importorskip("smart_pytorch", reason="smart-pytorch is not installed (pip install -r requirements-dev.txt); "
                                                "test_library_reading_matches_the_fixture checks the same")
    for seed, (kind, n, setting) in enumerate(CASES):
        want = cases.library_case(bert, kind, n, setting, seed)
        got = ours(bert, kind, n, setting, seed, want["noise"])
        # The same operations in the same order on the same machine: equal to float32 rounding (1e-6).
        _check(got, want, (kind, n, setting), "smart-pytorch's", rtol=1e-6)


def test_library_reading_matches_the_fixture(bert, one_thread):
    ref = load_file(str(FIXTURES / "smart_library.safetensors"))
    for seed, (kind, n, setting) in enumerate(CASES):
        want = {k.rsplit("/", 1)[1]: v for k, v in ref.items() if k.startswith(f"{kind}/{n}/{setting}/")}
        got = ours(bert, kind, n, setting, seed, want["noise"], want["head_weight"], want["head_bias"])
        # Written on another machine, maybe another torch: 12 float32 layers' reductions may be summed in
        # another order, so 5e-4 of the largest entry, not bit for bit (on an AMD EPYC, 2.2e-4 of it).
        _check(got, want, (kind, n, setting), "tests/fixtures/smart_library.safetensors", rtol=5e-4)
