"""How far one update moves the weights: AdamW against M-FAC at several buffer sizes m,
from the same start and on the same MRPC batches (the glue preset: run_glue's settings).

    python benchmarks/mfac_step_size.py --mfac 8,16,32 --steps 10 --json step_size.json

Why it matters. M-FAC's update is lr * F^{-1} g with F = damp * I + G^T G / m
(minbert/optim/mfac.py). When damp is tiny and the newest gradient g points away from the
older ones, F^{-1} g is close to m * g / |g|^2: the update's norm is about lr * m / |g|, so
it grows with the buffer size m and does not depend on the number of parameters d. AdamW
moves every coordinate by about lr, a norm of about lr * sqrt(d). With the same lr, M-FAC
with a small buffer on a large model therefore moves the weights far less than AdamW;
the model cards' lr of 1e-4 was set for m = 512 on bert-tiny (d = 4.4M).

Each row is one fresh run of the glue preset (same init seed, data seed and batches) for
--steps updates; the columns are means over those updates: the gradient norm after
clipping, the norm of the change of all weights, of the encoder's and of the head's, and
for M-FAC that change divided by lr * m / |g| (1 where the approximation above holds).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import DATA, MINILM, add_common_args, environment, report, setup  # noqa: E402
from minbert.experiments import preset  # noqa: E402
from minbert.trainer import Trainer  # noqa: E402

COLUMNS = ["optimizer", "m", "lr", "updates", "mean ‖g‖", "mean ‖Δθ‖", "mean ‖Δθ‖ encoder", "mean ‖Δθ‖ head",
           "‖Δθ‖ / (lr m / ‖g‖)"]


def norm(tensors) -> float:
    return math.sqrt(sum(float(t.float().pow(2).sum()) for t in tensors))


def measure(trainer: Trainer, steps: int) -> dict:
    """Mean over `steps` updates of |g| (after clipping), |Δθ| (all, encoder, head) and lr."""
    named = list(trainer.model.named_parameters())
    sums = dict(g=0.0, all=0.0, encoder=0.0, head=0.0, lr=0.0, law=0.0)
    for step in range(steps):
        before = [p.detach().clone() for _, p in named]
        trainer.update(step)
        trainer.step += 1
        deltas = [(n, p.detach() - b) for (n, p), b in zip(named, before)]
        g = norm(p.grad for _, p in named if p.grad is not None)
        moved = norm(d for _, d in deltas)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        sums["g"] += g
        sums["all"] += moved
        sums["encoder"] += norm(d for n, d in deltas if n.startswith("bert."))
        sums["head"] += norm(d for n, d in deltas if not n.startswith("bert."))
        sums["lr"] += lr
        if hasattr(trainer.optimizers[0], "grads"):  # M-FAC: the update against lr * m / |g|
            sums["law"] += moved / (lr * trainer.optimizers[0].grads.shape[0] / g)
    return {k: v / steps for k, v in sums.items()}


def row(name: str, m: int | None, means: dict, steps: int) -> dict:
    return {"optimizer": name, "m": m or "", "lr": f"{means['lr']:.2g}", "updates": steps,
            "mean ‖g‖": f"{means['g']:.3f}", "mean ‖Δθ‖": f"{means['all']:.3e}",
            "mean ‖Δθ‖ encoder": f"{means['encoder']:.3e}", "mean ‖Δθ‖ head": f"{means['head']:.3e}",
            "‖Δθ‖ / (lr m / ‖g‖)": f"{means['law']:.3f}" if m else ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--model", default=MINILM, help="model folder (default: the installed all-MiniLM-L6-v2)")
    ap.add_argument("--data_dir", default=DATA, help="folder holding glue/MRPC")
    ap.add_argument("--mfac", default="8,16,32", help="comma-separated M-FAC buffer sizes m")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of every row (run_glue's: 1e-4)")
    ap.add_argument("--damp", type=float, default=1e-6)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.model is None:
        sys.exit("--model: no model given and all-MiniLM-L6-v2 is not installed (make setup installs it)")
    if not (Path(args.data_dir) / "glue" / "MRPC").is_dir():
        sys.exit(f"--data_dir {args.data_dir}: no glue/MRPC there (make data fetches it)")
    device = setup(args)
    sizes = [int(m) for m in args.mfac.split(",") if m]
    base = preset("glue", model=str(args.model), data_dir=str(args.data_dir), device=str(device), lr=args.lr,
                  batch_size=args.batch_size, seed=args.seed, save_checkpoints=False, epochs=3)
    rows = []
    for name, m in [("AdamW", None)] + [("M-FAC", m) for m in sizes]:
        with tempfile.TemporaryDirectory() as out:
            optim = dict(optim="mfac", optim_args={"num_grads": m, "damp": args.damp}) if m else {}
            trainer = Trainer(dataclasses.replace(base, output_dir=out, **optim), quiet=True)
            rows.append(row(name, m, measure(trainer, args.steps), args.steps))
            print(rows[-1], flush=True)
            del trainer
            gc.collect()
    report(f"One update's size, glue preset on MRPC, lr {args.lr:g}, damp {args.damp:g}: means over "
           f"{args.steps} updates from the same start", environment(device), rows, COLUMNS, args.json)


if __name__ == "__main__":
    main()
