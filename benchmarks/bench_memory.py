"""Peak memory of a few training updates of each CS224N preset (smart-gse included: the
row the paper could not run for lack of GPU memory).

    python benchmarks/bench_memory.py --device cuda --presets all
    python benchmarks/bench_memory.py --device cpu --threads 1 --presets baseline,gse,smart,smart-gse

CUDA: torch.cuda.max_memory_allocated over the updates, all presets in one process
(the peak statistics are reset between them). It counts tensors, not the caching
allocator's reserve or the CUDA context.
CPU: there is no allocator statistic, so each preset runs in its own process and we
report the growth of its resident set: peak RSS during the updates (VmHWM, reset just
before them through /proc/self/clear_refs) minus RSS before them. That includes the
Python heap and allocator slack, so read it as an upper-bound-ish estimate, not a
figure comparable with the CUDA one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds minbert/ and benchmarks/
from benchmarks.common import DATA, environment, report  # noqa: E402
from minbert.experiments import PRESETS, preset  # noqa: E402
from minbert.trainer import Trainer  # noqa: E402

CS224N_PRESETS = [p for p in PRESETS if p != "glue"]


def proc_status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build(name: str, args) -> Trainer:
    exp = preset(name, data_dir=args.data_dir, device=args.device, batch_size=args.batch_size,
                 max_eval_examples=1, save_checkpoints=False, output_dir="unused")
    return Trainer(exp, quiet=True)


def measure_cuda(name: str, args) -> dict:
    trainer = build(name, args)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**20
    for step in range(args.steps):
        trainer.update(step)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    del trainer
    torch.cuda.empty_cache()
    return {"before updates (MiB)": f"{before:.0f}", "peak (MiB)": f"{peak:.0f}",
            "peak - before (MiB)": f"{peak - before:.0f}"}


def measure_cpu_here(name: str, args) -> dict:
    """Runs in the child process (--one NAME)."""
    trainer = build(name, args)
    reset = reset_peak_rss()
    before = proc_status_mb("VmRSS")
    for step in range(args.steps):
        trainer.update(step)
    peak = proc_status_mb("VmHWM")
    note = "" if reset else " (peak not reset: includes loading)"
    return {"RSS before updates (MiB)": f"{before:.0f}", "peak RSS (MiB)": f"{peak:.0f}",
            "peak RSS - before (MiB)": f"{peak - before:.0f}{note}"}


def measure_cpu(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--device", "cpu", "--threads", str(args.threads),
           "--steps", str(args.steps), "--batch_size", str(args.batch_size), "--data_dir", args.data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"peak RSS - before (MiB)": f"failed: {out.stderr.strip().splitlines()[-1]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="all", help=f"comma-separated, or 'all': {', '.join(CS224N_PRESETS)}")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="training updates per preset")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--data_dir", default=DATA)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: the CPU child process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(measure_cpu_here(args.one, args)))
        return
    if not (Path(args.data_dir) / "cs224n").exists():
        sys.exit(f"no CS224N data in {args.data_dir}: memory depends on real sentence lengths; pass --data_dir")

    names = CS224N_PRESETS if args.presets == "all" else args.presets.split(",")
    measure = measure_cuda if device.type == "cuda" else measure_cpu
    rows = []
    for name in names:
        exp = preset(name)
        rows.append({"preset": name, "update": exp.update, "smart": exp.smart, **measure(name, args)})
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    columns = (["before updates (MiB)", "peak (MiB)", "peak - before (MiB)"] if device.type == "cuda" else
               ["RSS before updates (MiB)", "peak RSS (MiB)", "peak RSS - before (MiB)"])
    what = ("peak GPU memory allocated" if device.type == "cuda" else
            "CPU: peak RSS growth of the process (not GPU memory)")
    report(f"Memory of {args.steps} training updates, batch {args.batch_size}: {what}",
           {**environment(device), "steps": args.steps}, rows, ["preset", "update", "smart", *columns], args.json)


if __name__ == "__main__":
    main()
