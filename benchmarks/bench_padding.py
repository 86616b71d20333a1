"""Padding waste of the training batches, and what length-bucketing (--bucket_window) saves.

    python benchmarks/bench_padding.py --windows 0,8,32,128                  # counts only
    python benchmarks/bench_padding.py --device cpu --threads 1 --windows 0,32 --time_steps 40

Counts (exact, no timing): over one epoch of the preset's training batches (755 steps of
batch 8 on the CS224N data), the positions the encoder computes, real and padded, for each
task: random batches (window 0, the paper's and our default) against bucketed ones
(batches.Bucketed: sort the examples of `window` consecutive batches by length, cut and
shuffle; at most one pass long, as in training). A segment is padded to its longest member in the batch;
siamese pairs are two
segments. "padding" = padded positions / real tokens.

Timing (with --time_steps N): Trainer.update of the preset on the first N steps of the
random and of the bucketed stream, alternating rounds, the same Trainer. The batches
differ, so the figures are means over the N updates, not the fastest update; the ratio is
of mean CPU time on CPU (mean wall time on a GPU), < 1: bucketed is faster.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import SHARED, add_common_args, alternate, environment, report, setup  # noqa: E402
from minbert.batches import bucketed, length_keys  # noqa: E402
from minbert.experiments import preset  # noqa: E402
from minbert.trainer import Trainer  # noqa: E402


def positions(trainer: Trainer, stream, task: str, steps: int) -> tuple[int, int]:
    """(real tokens, computed positions) of a task's first `steps` batches."""
    segments = trainer.train_data[task].segments
    real = computed = 0
    for s in range(steps):
        index = stream.batch_indices(s)
        for k in range(len(segments[index[0]])):
            lens = [len(segments[i][k][0]) for i in index]
            real += sum(lens)
            computed += len(lens) * max(lens)
    return real, computed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="baseline")
    ap.add_argument("--model", default=None, help="model folder (default: the preset's, all-MiniLM-L6-v2)")
    ap.add_argument("--data_dir", default=str(SHARED / "data"))
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--windows", default="0,8,32,128", help="comma-separated bucket windows; 0: random batches")
    ap.add_argument("--time_steps", type=int, default=0, help="> 0: also time this many updates per stream")
    add_common_args(ap)
    args = ap.parse_args()
    device = setup(args)
    if not (Path(args.data_dir) / "cs224n" / "sts-train.csv").exists():
        sys.exit(f"no CS224N data in {args.data_dir}: run `python data/prepare_data.py --from ../shared/data` "
                 f"or pass --data_dir")
    windows = [int(w) for w in args.windows.split(",")]

    tmp = tempfile.TemporaryDirectory()
    model = {"model": args.model} if args.model else {}
    trainer = Trainer(preset(args.preset, data_dir=args.data_dir, device=str(device), batch_size=args.batch_size,
                             max_eval_examples=1, save_checkpoints=False, output_dir=tmp.name, **model), quiet=True)
    plain = dict(trainer.streams)
    streams = {w: {t: bucketed(s, length_keys(trainer.train_data[t]), w) for t, s in plain.items()} for w in windows}

    steps, rows, totals = trainer.steps_per_epoch, [], {}
    for w, by_task in streams.items():
        all_real = all_computed = 0
        for t, stream in by_task.items():
            real, computed = positions(trainer, stream, t, steps)
            all_real, all_computed = all_real + real, all_computed + computed
            rows.append({"window": w, "task": t, "real tokens": f"{real:,}", "computed positions": f"{computed:,}",
                         "padding": f"{computed / real - 1:.1%}"})
        totals[w] = all_computed
        rows.append({"window": w, "task": "all", "real tokens": f"{all_real:,}",
                     "computed positions": f"{all_computed:,}", "padding": f"{all_computed / all_real - 1:.1%}",
                     f"positions vs window {windows[0]}": f"{all_computed / totals[windows[0]]:.3f}x"})
    env = {**environment(device), "preset": args.preset, "batch_size": args.batch_size,
           "steps (one epoch)": steps, "model": trainer.exp.model}
    report("Positions computed in one epoch of training batches, random (window 0) and length-bucketed", env, rows,
           ["window", "task", "real tokens", "computed positions", "padding",
            f"positions vs window {windows[0]}"], None)

    if args.time_steps > 0:
        timed, first = {}, windows[0]
        for w in (first, windows[-1]):
            step_no = itertools.count()  # each stream from its step 0

            def run(w=w, step_no=step_no):
                trainer.streams = streams[w]
                trainer.update(next(step_no))
            timed[w] = run
        rounds = min(args.rounds or args.time_steps, args.time_steps)
        times = alternate(timed, device, args.warmup, args.time_steps, rounds)  # means: the batches differ
        mean = {w: (statistics.mean(a for a, _ in t), statistics.mean(c for _, c in t)) for w, t in times.items()}
        ref = mean[first][1 if device.type == "cpu" else 0]
        rows = [{"window": w, "updates": len(times[w]), "mean wall ms/update": f"{wall:.1f}",
                 "mean CPU ms/update": f"{cpu:.1f}",
                 f"vs window {first}": f"{(cpu if device.type == 'cpu' else wall) / ref:.3f}x"}
                for w, (wall, cpu) in mean.items()]
        report(f"Training update ({args.preset}) on random vs bucketed batches, "
               f"ratio of mean {'CPU' if device.type == 'cpu' else 'wall'} time", environment(device), rows,
               ["window", "updates", "mean wall ms/update", "mean CPU ms/update", f"vs window {first}"], args.json)


if __name__ == "__main__":
    main()
