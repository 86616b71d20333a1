"""Optimizers written by hand: AdamW (Loshchilov & Hutter) and M-FAC (Frantar et al.), and
`build_optimizers`, which makes them for a model the way an Experiment asks."""
from __future__ import annotations

import torch

from minbert.optim.adamw import AdamW
from minbert.optim.mfac import MFAC

__all__ = ["AdamW", "MFAC", "build_optimizers"]


def build_optimizers(model: torch.nn.Module, exp) -> list[torch.optim.Optimizer]:
    """AdamW on everything, or M-FAC on everything (or on the parameters whose names start
    with optim_args["only"], comma-separated) with AdamW on the rest. AdamW runs its readable
    loop (`AdamW._update`) unless exp.fast (or optim_args foreach) picks the multi-tensor path.
    `exp` is a minbert.experiments.Experiment, already validated."""
    args = dict(exp.optim_args)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    compile = args.pop("compile", exp.compile)
    foreach = args.pop("foreach", exp.fast)
    if exp.optim == "adamw":
        decay = [p for n, p in named if p.dim() > 1]  # no decay on biases and LayerNorm
        rest = [p for n, p in named if p.dim() <= 1]
        return [AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=exp.lr,
                      weight_decay=exp.weight_decay, foreach=foreach, compile=compile, **args)]
    only = [s for s in str(args.pop("only", "")).split(",") if s]
    if "buffer_dtype" in args:
        args["buffer_dtype"] = getattr(torch, str(args["buffer_dtype"]).removeprefix("torch."))
    mine = [p for n, p in named if not only or n.startswith(tuple(only))]
    rest = [p for n, p in named if only and not n.startswith(tuple(only))]
    if not mine:
        raise ValueError(f"M-FAC: no parameter name starts with any of {only}")
    args.setdefault("lr", exp.lr)
    args.setdefault("weight_decay", exp.weight_decay)
    opts = [MFAC(mine, **args)]
    if rest:
        opts.append(AdamW(rest, lr=exp.lr, weight_decay=exp.weight_decay, foreach=foreach, compile=compile))
    return opts
