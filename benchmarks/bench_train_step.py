"""One full multitask training update (forward, backward, optimizer step) through
minbert.trainer.Trainer, with AdamW and with M-FAC; M-FAC's time over AdamW's.

    python benchmarks/bench_train_step.py --device cpu --threads 1 --presets gse --mfac 32,256,1024
    python benchmarks/bench_train_step.py --device cuda --presets all --mfac none   # the 13 presets, AdamW
    python benchmarks/bench_train_step.py --presets gse --mfac none --compile       # --compile against eager
    python benchmarks/bench_train_step.py --presets baseline,gse --mfac none --vs_fast   # --fast against the default

An "update" is Trainer.update(step): one batch per task and whatever the preset does
with them (baseline: three optimizer steps, one per task; gse: a PCGrad step, then a
step on the summed loss). Real CS224N data from --data_dir when it is there, else
synthetic sentences of --synthetic_words words written to a temporary folder.

M-FAC keeps an (m, d) float32 gradient buffer. Where m x d does not fit in 80% of the
free memory, M-FAC gets only --mfac_subset (AdamW the rest), and the row says so.
Each M-FAC row is timed interleaved with AdamW on the same Trainer, data and batches.
With --compile, a second Trainer built with --compile (each encoder layer and AdamW's
update through torch.compile, compiled in the untimed warm-up) is timed interleaved with
the eager one on the same batches. (Bucketed batches: bench_padding.py.)
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import DATA, add_common_args, clock, environment, interleave, report, setup  # noqa: E402
from minbert.evaluation import uses_bf16  # noqa: E402
from minbert.experiments import PRESETS, preset  # noqa: E402
from minbert.optim import MFAC  # noqa: E402
from minbert.optim.mfac import available_memory  # noqa: E402
from minbert.trainer import Trainer, build_optimizers  # noqa: E402

CS224N_PRESETS = [p for p in PRESETS if p != "glue"]
WORDS = "the a film movie is was good bad very not how can I what why do you best way to learn make".split()


def write_synthetic(folder: Path, rows: int, words: int) -> Path:
    """CS224N-layout sst/quora/sts train and dev files of random sentences."""
    rng = random.Random(0)
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(words))  # noqa: E731
    files = {"ids-sst": ("sentence", "sentiment", lambda: rng.randrange(5)),
             "quora": ("sentence1\tsentence2", "is_duplicate", lambda: float(rng.randrange(2))),
             "sts": ("sentence1\tsentence2", "similarity", lambda: float(rng.randrange(6)))}
    (folder / "cs224n").mkdir(parents=True)
    for stem, (texts, label_col, label) in files.items():
        for split in ("train", "dev"):
            lines = [f"\tid\t{texts}\t{label_col}"]
            for i in range(rows):
                text = "\t".join(sentence() for _ in texts.split("\t"))
                lines.append(f"{i}\t{stem}-{split}-{i}\t{text}\t{label()}")
            (folder / "cs224n" / f"{stem}-{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def mfac_setting(trainer: Trainer, m: int, subset: str, choice: str) -> tuple[dict, str]:
    """optim_args for M-FAC with m gradients, and a label saying which parameters it holds."""
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    d_all = sum(p.numel() for _, p in named)
    d_sub = sum(p.numel() for n, p in named if n.startswith(tuple(subset.split(","))))
    free = available_memory(trainer.device)
    fits = free is None or MFAC.buffer_bytes(d_all, m) < 0.8 * free
    if choice == "all" or (choice == "auto" and fits):
        return {"num_grads": m}, f"all (d={d_all / 1e6:.1f}M)"
    return {"num_grads": m, "only": subset}, f"{subset} (d={d_sub / 1e6:.2f}M)"


def step_of(trainer: Trainer, opts: list):
    """An update of `trainer` with these optimizers; each such function counts its own steps,
    so every contender sees the same batches in the same order."""
    step_no = itertools.count()

    def run():
        trainer.optimizers = opts
        trainer.update(next(step_no))
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="gse", help=f"comma-separated, or 'all': {', '.join(CS224N_PRESETS)}")
    ap.add_argument("--data_dir", default=DATA)
    ap.add_argument("--synthetic_words", type=int, default=24, help="sentence length when the data is absent")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--fast", action="store_true", help="build every Trainer with --fast (SDPA, foreach AdamW)")
    ap.add_argument("--vs_fast", action="store_true",
                    help="also time --fast against the readable default (math attention, AdamW._update)")
    ap.add_argument("--mfac", default="32,256,1024", help="comma-separated num_grads, or 'none'")
    ap.add_argument("--mfac_only", default="auto", choices=["auto", "all", "subset"],
                    help="auto: all parameters where the buffer fits in memory, else --mfac_subset")
    ap.add_argument("--mfac_subset", default="heads,bert.encoder.layer.5")
    ap.add_argument("--compile", action="store_true", help="also time the update with --compile against eager")
    add_common_args(ap)
    args = ap.parse_args()
    if args.fast and args.vs_fast:
        sys.exit("--vs_fast times --fast against the readable default: leave out --fast")
    device = setup(args)
    names = CS224N_PRESETS if args.presets == "all" else args.presets.split(",")
    sizes = [] if args.mfac == "none" else [int(m) for m in args.mfac.split(",")]

    tmp = tempfile.TemporaryDirectory()
    data_dir, data = Path(args.data_dir), "real CS224N"
    if not (data_dir / "cs224n" / "sts-train.csv").exists():
        data_dir, data = write_synthetic(Path(tmp.name) / "data", 512, args.synthetic_words), "synthetic"

    rows, total_min = [], 0.0
    for name in names:
        exp = preset(name, epochs=10, data_dir=str(data_dir), device=str(device), batch_size=args.batch_size,
                     fast=args.fast, max_eval_examples=1, save_checkpoints=False,
                     output_dir=str(Path(tmp.name) / name))
        trainer = Trainer(exp, quiet=True)  # the data is tokenized once; optimizers are swapped below
        examples = exp.batch_size * len(exp.tasks)
        mode = ("bf16 autocast" if uses_bf16(device, exp.bf16) else "fp32") + (", --fast" if exp.fast else "")

        adamw = trainer.optimizers
        pairs = []
        for m in sizes:
            optim_args, params = mfac_setting(trainer, m, args.mfac_subset, args.mfac_only)
            mfac = build_optimizers(trainer.model, dataclasses.replace(exp, optim="mfac", optim_args=optim_args))
            ms = interleave({"adamw": step_of(trainer, adamw), "mfac": step_of(trainer, mfac)}, device,
                            args.warmup, args.steps, args.rounds)
            pairs.append((m, params, ms))
            trainer.optimizers = adamw  # let this M-FAC buffer go before the next is made
            del mfac
            if device.type == "cuda":
                torch.cuda.empty_cache()  # so the next fit check sees the memory as free
        if not pairs:  # AdamW alone
            alone = interleave({"adamw": step_of(trainer, adamw)}, device, args.warmup, args.steps, 1)
            pairs.append((None, None, alone))

        first = pairs[0][2]["adamw"]
        minutes = first.wall_ms * trainer.total_steps / 6e4
        total_min += minutes
        rows.append({"preset": name, "optimizer": "AdamW", "mode": mode,
                     "median wall ms/update": f"{first.wall_ms:.0f}", "min CPU ms/update": f"{first.cpu_ms:.0f}",
                     "examples/s": f"{examples / first.wall_ms * 1e3:.1f}",
                     "10 epochs (min, no eval)": f"{minutes:.1f} ({trainer.total_steps} updates)"})
        for m, params, ms in pairs[:len(sizes)]:
            t = ms["mfac"]
            rows.append({"preset": name, "optimizer": f"M-FAC m={m}", "M-FAC params": params, "mode": mode,
                         "median wall ms/update": f"{t.wall_ms:.0f}", "min CPU ms/update": f"{t.cpu_ms:.0f}",
                         "examples/s": f"{examples / t.wall_ms * 1e3:.1f}",
                         "M-FAC/AdamW": f"{t.ms / ms['adamw'].ms:.2f}x (AdamW {ms['adamw'].ms:.0f})"})
        if args.vs_fast:  # same preset, same batches, --fast: interleaved with the readable default
            fast = Trainer(dataclasses.replace(exp, fast=True), quiet=True)
            fast.model.load_state_dict(trainer.model.state_dict())
            ms = interleave({"readable": step_of(trainer, adamw), "fast": step_of(fast, fast.optimizers)},
                            device, args.warmup, args.steps, args.rounds)
            rows.append({"preset": name, "optimizer": "AdamW, --fast", "mode": mode,
                         "median wall ms/update": f"{ms['fast'].wall_ms:.0f}",
                         "min CPU ms/update": f"{ms['fast'].cpu_ms:.0f}",
                         "examples/s": f"{examples / ms['fast'].wall_ms * 1e3:.1f}",
                         "vs readable": f"{ms['fast'].wall_ms / ms['readable'].wall_ms:.3f}x "
                                        f"(readable {ms['readable'].wall_ms:.0f} ms)"})
            del fast
        if args.compile:  # same preset, same batches, compiled: interleaved with the eager AdamW update
            compiled = Trainer(dataclasses.replace(exp, compile=True), quiet=True)
            ms = interleave({"eager": step_of(trainer, adamw), "compiled": step_of(compiled, compiled.optimizers)},
                            device, args.warmup, args.steps, args.rounds)
            t = ms["compiled"]
            rows.append({"preset": name, "optimizer": "AdamW, --compile", "mode": mode,
                         "median wall ms/update": f"{t.wall_ms:.0f}", "min CPU ms/update": f"{t.cpu_ms:.0f}",
                         "examples/s": f"{examples / t.wall_ms * 1e3:.1f}",
                         "vs eager": f"{t.ms / ms['eager'].ms:.2f}x (eager {ms['eager'].ms:.0f})"})
            del compiled
        del trainer, adamw, pairs

    env = {**environment(device), "data": data, "batch_size": args.batch_size, "fast": args.fast}
    if len(names) > 1:
        env["all presets, AdamW, 10 epochs (min, no eval)"] = f"{total_min:.1f}"
    report(f"Training update (forward, backward, optimizer): M-FAC/AdamW = ratio of {clock(device)} time "
           f"(AdamW's {clock(device)} ms in the same run), > 1: M-FAC slower; vs eager: --compile over eager; "
           f"vs readable: --fast over the default (math attention, AdamW._update)",
           env, rows,
           ["preset", "optimizer", "M-FAC params", "mode", "median wall ms/update", "min CPU ms/update", "examples/s",
            "M-FAC/AdamW", "vs eager", "vs readable", "10 epochs (min, no eval)"], args.json)


if __name__ == "__main__":
    main()
