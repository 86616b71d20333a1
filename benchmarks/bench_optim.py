"""AdamW step time: minbert.optim.AdamW (per-tensor loop, torch._foreach_* kernels, and
those through torch.compile) against torch.optim.AdamW (per-tensor, foreach, fused) on the parameter shapes of a BERT.

    python benchmarks/bench_optim.py --device cpu --threads 1 --configs minilm,bert-base
    python benchmarks/bench_optim.py --device cuda --configs bert-base --steps 50

Every contender gets its own copy of the parameters and optimizer state (the step
changes them) and shares one set of fixed random gradients. Parameter groups as the
Trainer makes them: weight decay on matrices, none on biases and LayerNorm.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import add_common_args, clock, environment, interleave, report, setup  # noqa: E402
from minbert import BertConfig, BertModel  # noqa: E402
from minbert.optim import AdamW  # noqa: E402

CONFIGS = {"minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
           "bert-base": {}}
HPARAMS = dict(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
CONTENDERS = {  # name -> (optimizer class, extra arguments)
    "minbert loop": (AdamW, dict(foreach=False)),
    "minbert foreach": (AdamW, dict(foreach=True)),
    "minbert compiled": (AdamW, dict(compile=True)),  # compiles during the warm-up
    "torch loop": (torch.optim.AdamW, dict(foreach=False)),
    "torch foreach": (torch.optim.AdamW, dict(foreach=True)),
    "torch fused": (torch.optim.AdamW, dict(fused=True)),
}


def bert_shapes(config: str) -> list[torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = BertModel(BertConfig(**CONFIGS[config]))
    return [p.shape for p in model.parameters()]


def make_optimizer(cls, extra, shapes, grads, device):
    params = [torch.randn(s, device=device) * 0.02 for s in shapes]
    for p, g in zip(params, grads):
        p.requires_grad_(True)
        p.grad = g  # shared, read-only: every contender steps on the same gradients
    groups = [{"params": [p for p in params if p.dim() > 1]},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    return cls(groups, **HPARAMS, **extra)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="minilm,bert-base", help="comma-separated: minilm, bert-base")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the names")
    add_common_args(ap)
    args = ap.parse_args()
    device = setup(args)

    rows = []
    for config in args.configs.split(","):
        shapes = bert_shapes(config)
        grads = [torch.randn(s, device=device) * 1e-3 for s in shapes]
        steps = {}
        for name in args.contenders.split(","):
            cls, extra = CONTENDERS[name]
            try:
                steps[name] = make_optimizer(cls, extra, shapes, grads, device).step
            except RuntimeError as e:  # e.g. fused=True where this torch build has no such kernel
                print(f"{name}: skipped on {device.type} ({e})")
        ms = interleave(steps, device, args.warmup, args.steps, args.rounds)
        ref = {k: ms[k].ms for k in ("torch fused", "torch foreach") if k in ms}
        size = f"{sum(s.numel() for s in shapes) / 1e6:.1f}M"
        for name, t in ms.items():
            rows.append({"config": config, "tensors": len(shapes), "params": size, "optimizer": name,
                         "median wall ms/step": f"{t.wall_ms:.1f}", "min CPU ms/step": f"{t.cpu_ms:.1f}",
                         **{f"vs {k}": f"{t.ms / r:.2f}x" for k, r in ref.items()}})
        del steps, grads
    columns = ["config", "tensors", "params", "optimizer", "median wall ms/step", "min CPU ms/step",
               "vs torch fused", "vs torch foreach"]
    report(f"AdamW step: ratios of {clock(device)} time, < 1: faster than the reference",
           environment(device), rows, columns, args.json)


if __name__ == "__main__":
    main()
