"""bf16 autocast and TF32 matmuls against float32: one training update of each preset from
the same weights and batches, compared. Precision, not speed: nothing here is timed.

    python benchmarks/bench_precision.py --presets all                  # MiniLM, real data, CPU
    python benchmarks/bench_precision.py --presets gse,glue --modes bf16,tf32 --json p.json
    python benchmarks/bench_precision.py --device cuda --presets all    # on a GPU: the real kernels

Modes: "bf16" is autocast (`--bf16 on`, minbert/evaluation.py); on the CPU it runs the
arithmetic of a CUDA bf16 run (bf16 matmul inputs, float32 accumulation). "tf32" rounds the
inputs of every float32 matmul, forward, backward and the optimizer's, to TF32's 10-bit
mantissa, 11 significant bits (`tf32_matmuls`), as CUDA does with
`torch.backends.cuda.matmul.allow_tf32`; on CUDA it switches that on instead. Dropout is off in both runs so that
only the arithmetic
differs. Per preset: the task losses' largest relative difference, and the update
Delta = theta_after - theta_before as ||Delta_mode - Delta_fp32|| / ||Delta_fp32|| and the
cosine of the two. The first AdamW step is lr * g / (|g| + eps), about lr * sign(g), so the
update's difference counts the gradient entries whose sign the rounding flipped; the
gradient's own relative difference (every optimizer step of the update, all parameters)
is reported beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import SHARED, environment  # noqa: E402
from minbert.experiments import PRESETS, preset  # noqa: E402
from minbert.model import BertSelfAttention  # noqa: E402
from minbert.smart import MomentumTeacher  # noqa: E402
from minbert.trainer import Trainer, build_optimizers  # noqa: E402

MODES = ("bf16", "tf32")
# Rows beside the presets: the M-FAC model cards' optimizer on the glue preset (the buffer is
# short, 16 gradients: a first update holds one, whatever its length).
VARIANTS = {"glue-mfac": ("glue", dict(optim="mfac", optim_args={"num_grads": 16, "damp": 1e-6}))}
MATMULS = {torch.ops.aten.mm.default: (0, 1), torch.ops.aten.bmm.default: (0, 1),
           torch.ops.aten.addmm.default: (1, 2), torch.ops.aten.baddbmm.default: (1, 2)}  # op -> its matrix args


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the nearest value with a 10-bit mantissa (TF32), kept as float32: add half of
    the 13 dropped bits' range, then clear them (round half up on the magnitude)."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).view(x.shape)


class tf32_matmuls(TorchDispatchMode):
    """Within it, every float32 mm/bmm/addmm/baddbmm gets TF32-rounded inputs (accumulation
    stays float32), as a CUDA tensor core does with allow_tf32; the backward pass too, since
    autograd's matmuls go through the same operators."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            args = list(args)
            for i in MATMULS[func]:
                if args[i].dtype == torch.float32:
                    args[i] = round_tf32(args[i])
        return func(*args, **(kwargs or {}))


def precision(device: torch.device, mode: str):
    """The context of one mode ("fp32", "bf16" is the Experiment's field instead, "tf32")."""
    if mode != "tf32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        return cuda_tf32()
    return tf32_matmuls()


@contextlib.contextmanager
def cuda_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def start(exp) -> tuple[Trainer, dict]:
    """A Trainer of `exp` with dropout off (so that only the arithmetic differs between
    modes) and its initial weights."""
    trainer = Trainer(exp, quiet=True)
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, BertSelfAttention):
            m.dropout_p = 0.0
    return trainer, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def one_update(trainer: Trainer, weights: dict, mode: str = "fp32") -> dict:
    """Trainer.update(0) from `weights` with fresh optimizers, in `mode` (fp32 | bf16 | tf32):
    the task losses, the update Delta (one flat float64 vector) and every optimizer step's gradient."""
    trainer.model.load_state_dict(weights)
    trainer.exp = dataclasses.replace(trainer.exp, bf16="on" if mode == "bf16" else "off")
    trainer.optimizers = build_optimizers(trainer.model, trainer.exp)
    trainer.step = 0
    if trainer.teacher is not None:  # Bregman's teacher: a copy of these weights, dropout off too
        trainer.teacher = MomentumTeacher(trainer.model)
    torch.manual_seed(trainer.exp.seed)  # SMART's noise: the same draw in every mode
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
    grads = []

    def keep_grads(opt, args, kwargs):
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double().cpu()
                                for g in opt.param_groups for p in g["params"]]))
    hooks = [opt.register_step_pre_hook(keep_grads) for opt in trainer.optimizers]
    with precision(trainer.device, mode):
        losses = trainer.update(0)
    for h in hooks:
        h.remove()
    after = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
    return {"losses": losses, "delta": after - before, "grads": grads}


def compare(ref: dict, other: dict) -> dict:
    """Relative differences of `other` (bf16 or tf32) from `ref` (float32), as in the module docstring."""
    rel = lambda a, b: ((a - b).norm() / b.norm()).item() if b.norm() > 0 else (a - b).norm().item()  # noqa: E731
    a, b = other["delta"], ref["delta"]
    return {"loss": max(abs(other["losses"][t] - v) / max(abs(v), 1e-12) for t, v in ref["losses"].items()),
            "update": rel(a, b),
            "update_cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "grad": max(rel(x, y) for x, y in zip(other["grads"], ref["grads"], strict=True)),
            "losses_fp32": ref["losses"]}


def measure(exp, modes=MODES) -> dict[str, dict]:
    """{mode: compare(float32 update, the mode's update)} for one Experiment, from the same start."""
    trainer, weights = start(exp)
    ref = one_update(trainer, weights, "fp32")
    return {mode: compare(ref, one_update(trainer, weights, mode)) for mode in modes}


def first_rows(src: Path, dst: Path, rows: int) -> Path:
    """A copy of the data folder with the first `rows` rows of each file (the header kept)."""
    for f in src.rglob("*"):
        if f.is_file() and f.suffix in (".csv", ".tsv"):
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(f.open(encoding="utf-8").readlines()[:rows + 1]), encoding="utf-8")
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="all", help=f"comma-separated presets or {', '.join(VARIANTS)}, or all "
                                                     "(the 13 and glue)")
    ap.add_argument("--modes", default="bf16,tf32", help=f"comma-separated, of: {', '.join(MODES)}")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--rows", type=int, default=2000, help="read the first ROWS rows of each data file (0: all)")
    ap.add_argument("--batch_size", type=int, default=8, help="the presets' batch (glue: 32)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    names = list(PRESETS) if args.presets == "all" else args.presets.split(",")
    modes = args.modes.split(",")
    unknown = [n for n in names if n not in PRESETS and n not in VARIANTS] + [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"unknown preset or mode: {', '.join(unknown)}; presets: {', '.join([*PRESETS, *VARIANTS])}; "
                 f"modes: {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    rows = []
    print("| preset | mode | loss | gradient | update | update cosine |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = first_rows(Path(args.data_dir), Path(tmp) / "data", args.rows) if args.rows else args.data_dir
        for name in names:
            base, extra = VARIANTS.get(name, (name, {}))
            extra = {**extra, **({} if base == "glue" else {"batch_size": args.batch_size})}
            exp = preset(base, name=name, model=args.model, data_dir=str(data_dir), device=args.device,
                         max_eval_examples=1,
                         save_checkpoints=False, output_dir=str(Path(tmp) / name), **extra)
            for mode, r in measure(exp, modes).items():
                rows.append({"preset": name, "mode": mode, **r})
                print(f"| {name} | {mode} | {r['loss']:.2e} | {r['grad']:.2e} | {r['update']:.2e} | "
                      f"{r['update_cosine']:.4f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(torch.device(args.device)),
                                               "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
