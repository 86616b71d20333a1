"""CUDA's default arithmetic, bf16 autocast, run here on the CPU: one training update of each
update kind and head under `torch.autocast(dtype=torch.bfloat16)` against the same update in
float32, from the same weights and batches, dropout off (benchmarks/bench_precision.py does
the comparing; tests/test_smart_bf16.py covers SMART). On a CUDA machine the same tests run
there too (`pytest -m cuda`).

Why the tolerances are what they are. bf16 keeps 8 significant bits: one rounding is off by
up to 2^-8 = 3.9e-3 relative (torch.finfo(torch.bfloat16).eps, the spacing at 1, is 2^-7).
Under autocast only a matmul's *inputs* are rounded; it accumulates in float32, and softmax, LayerNorm and the
losses run in float32. So each of the tiny model's matmuls (2 layers, 6 per layer, width 32)
carries relative errors of up to 4e-3 on single entries, which partly cancel in its sums.
- loss: a mean over the batch of a float32 loss of outputs a few roundings deep: relative
  error of the order of one rounding, 4e-3 at most. Measured up to 5.6e-4 here (9.3e-4 on MiniLM,
  benchmarks/bench_precision.py); bound 1e-2, 2.5 bf16 roundings.
- gradient: the backward pass rounds again (both matmul inputs of every weight gradient),
  and a gradient entry is a sum of terms of both signs, whose small total carries the
  errors of its large terms. Measured up to 4.0e-2 (glue; 2-norm relative, all parameters,
  every optimizer step of the update); bound 0.1.
- update: AdamW's first step is lr * g / (|g| + eps), i.e. lr * sign(g) for |g| >> eps: the
  update keeps the gradient's signs, so entries whose gradient is within the rounding of 0
  flip. Its cosine with the float32 update is 1 - 2 * (fraction flipped); measured >= 0.98,
  bound 0.9 (5% of the entries flipped). M-FAC's first step is g scaled by 1/(damp + |g|^2/m):
  its cosine follows the gradient's (measured 1.0000).
What the bounds catch: an update that goes elsewhere under autocast (a gradient lost to a
cast, a head, PCGrad or an optimizer path that breaks or computes something else, state kept
in bf16), not bf16's own rounding: even rounding each head's output to bf16 before its loss
stays within them (tried: loss 5.7e-4, gradient 3.9e-2).
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import CPU_AND_CUDA, tiny_experiment
from minbert.evaluation import autocast, uses_bf16
from minbert.experiments import Experiment
from minbert.heads import make_head
from minbert.run.folder import config_differences
from minbert.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside minbert/
from benchmarks.bench_precision import measure  # noqa: E402

LOSS_TOL, GRAD_TOL, MIN_COSINE = 1e-2, 0.1, 0.9  # see the module docstring

# update kind or head -> (preset, overrides)
KINDS = {
    "separate": ("baseline", {}),
    "summed": ("multitask", {}),
    "pcgrad": ("pcgrad", {}),
    "gse": ("gse", {}),
    "cos-emb": ("cos-emb", {}),
    "cos-d": ("cos-d", {}),
    "cos-2d1": ("cos-2d1", {}),
    "mfac": ("multitask", dict(optim="mfac", optim_args={"num_grads": 4})),
    "bregman": ("baseline", dict(bregman_weight=1.0)),
    "glue": ("glue", dict(batch_size=4)),
}
@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("kind", KINDS)
def test_bf16_update_follows_float32(kind, device, tiny_model, tiny_data, tmp_path, one_thread):
    name, overrides = KINDS[kind]
    exp = tiny_experiment(name, tiny_model, tiny_data, tmp_path, device=device, max_eval_examples=8, **overrides)
    r = measure(exp, ["bf16"])["bf16"]
    print(f"{kind} on {device}: loss {r['loss']:.2e}, gradient {r['grad']:.2e}, update {r['update']:.2e}, "
          f"cosine {r['update_cosine']:.4f}")
    where = f"Trainer.update with update={exp.update}, heads={exp.heads}, optim={exp.optim} on {device}"
    assert r["loss"] <= LOSS_TOL, (
        f"{where}: a task loss under bf16 autocast differs from float32 by {r['loss']:.2e} relative, more than "
        f"{LOSS_TOL} (2.5 bf16 roundings of 2^-8); the losses {r['losses_fp32']} should be computed from float32 outputs "
        f"(TaskHead.loss casts with .float()), only the matmuls in bf16")
    assert r["grad"] <= GRAD_TOL, (
        f"{where}: the gradient under bf16 autocast differs from float32 by {r['grad']:.2e} (relative 2-norm), "
        f"more than {GRAD_TOL}: something runs in bf16 beyond the matmuls' inputs")
    assert r["update_cosine"] >= MIN_COSINE, (
        f"{where}: the bf16 update's cosine with the float32 update is {r['update_cosine']:.4f} < {MIN_COSINE}: "
        f"more than 5% of its entries moved the other way")


def test_bf16_field_means_auto_on_off():
    """bf16 "auto" is CUDA's default and keeps the CPU in float32; "on" autocasts on the CPU too."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (uses_bf16(cpu, "auto"), uses_bf16(cuda, "auto"), uses_bf16(cpu, "on"), uses_bf16(cuda, "off")) == \
        (False, True, True, False), "uses_bf16: auto is bf16 on CUDA only, on everywhere, off nowhere"
    with autocast(cpu, "on"):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16, "evaluation.autocast(cpu, 'on') should run Linear in bf16 on the CPU"
    assert Experiment(bf16=True).bf16 == "on" and Experiment(bf16=False).bf16 == "off", \
        "Experiment(bf16=True) from Python asks for bf16 on every device, as --bf16 does"


def test_old_config_json_keeps_its_meaning():
    """config.json written before bf16 took auto/on/off: true meant bf16 on CUDA only, which is "auto"."""
    assert Experiment.from_dict({"bf16": True}).bf16 == "auto"
    assert Experiment.from_dict({"bf16": False}).bf16 == "off"


def test_old_run_folder_resumes(tiny_model, tiny_data, tmp_path):
    """A CPU run started before this change (its config.json says "bf16": true) resumes with the
    same command: true then meant float32 on the CPU, which is what "auto" does."""
    exp = tiny_experiment("multitask", tiny_model, tiny_data, tmp_path)
    exp.save(tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "bf16": True}))
    assert config_differences(tmp_path, exp) == [], "checkpoint.config_differences: an old true is today's auto"
    (tmp_path / "config.json").write_text(json.dumps({**config, "bf16": False}))
    assert config_differences(tmp_path, exp) == ["bf16: 'off' -> 'auto'"]


def test_cpu_run_trains_and_evaluates_under_bf16(tiny_model, tiny_data, tmp_path, one_thread):
    """--bf16 on a CPU: the whole loop (updates, evaluation, the record) runs under autocast."""
    exp = tiny_experiment("gse", tiny_model, tiny_data, tmp_path, max_steps=2, max_eval_examples=8, bf16="on")
    result = Trainer(exp, quiet=True).train()
    assert result["global_step"] == 2 and 0 <= result["eval_overall"] <= 1, \
        f"a bf16 run on the CPU should train 2 steps and score its dev sets; got {result}"


def test_cos_d_projects_in_float32():
    """CosD.forward keeps W u + b in float32 under bf16 autocast: 20 * cos(u', v') amplifies its rounding."""
    head = make_head("cos-d", "sts", 8)
    seen = []
    head.proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with autocast(torch.device("cpu"), "on"):
        head([torch.randn(2, 8), torch.randn(2, 8)])
    assert seen == [torch.float32, torch.float32], f"CosD.proj ran in {seen} under autocast, not float32"
