"""The code you read is the code that runs; the fast code is one switch away, and checked.

By default a run computes with the readable implementations the README points at:
attention's math in `BertSelfAttention.forward` (minbert/model.py) and AdamW's step in
`AdamW._update` (minbert/optim/adamw.py). An edit to either changes what a default run
computes.

`--fast` swaps in their faster twins: torch's fused `scaled_dot_product_attention` and the
multi-tensor `adamw_foreach` (`--compile` also runs adamw_foreach, compiled; `--optim_args
'{"fused": true}'` runs torch's fused AdamW kernel). Before such a
run trains, `check_fast_paths` runs each fast path beside the readable one it replaces on
tiny inputs (well under a second) and stops the run if they disagree, with a message that
names both functions and the flag that trains with the readable one. So a student's edit
is either in the run, or the run says it is not.
"""
from __future__ import annotations

import torch

from minbert.model import BertSelfAttention, check_sdpa_matches_math
from minbert.optim.adamw import AdamW, check_foreach_matches_loop, check_fused_matches_loop


class FastPathMismatch(RuntimeError):
    """A fast path computes something else than the readable code it stands in for."""


def check_fast_paths(model: torch.nn.Module, optimizers: list) -> None:
    """Compare every fast path this model and these optimizers will take with its readable twin
    (read off the built objects, so nothing here decides again which path runs)."""
    checks = []
    if any(m.use_sdpa for m in model.modules() if isinstance(m, BertSelfAttention)):
        checks.append(check_sdpa_matches_math)
    if any(isinstance(o, AdamW) and (o.foreach or o.compile) for o in optimizers):
        checks.append(check_foreach_matches_loop)
    if any(isinstance(o, AdamW) and o.fused for o in optimizers):
        checks.append(check_fused_matches_loop)
    for check in checks:
        try:
            check()
        except RuntimeError as e:
            raise FastPathMismatch(str(e)) from None
