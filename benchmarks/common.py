"""What the benchmarks share: device and thread setup, a step timer bracketed by
cuda.synchronize (as nanoGPT's bench.py does), peak FLOP/s for MFU, and output as a
markdown table and JSON.

Ratios are only meaningful between measurements of the same run: `interleave` times
the contenders in alternating rounds, so a neighbour's load (another job on a shared
CPU, GPU clocks settling) falls on all of them alike. Each step is timed twice: wall
clock, and the CPU time of this process. On a CPU shared with other jobs the wall clock
also counts the time the scheduler gave our thread away; the CPU time does not, but it
still swings with the neighbours' use of caches and memory bandwidth. They can only slow
a step down, so on CPU the ratios are taken from the fastest step's CPU time
(`Timing.ms`); on a GPU, from the median wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from minbert.run.paths import default_model_if_installed, portable_command, shared_data

DATA = str(shared_data() or "data")  # $MINBERT_DATA, else ../shared/data where it exists, else data/ (make data)


MINILM = default_model_if_installed()

# Dense peak TFLOP/s from NVIDIA's data sheets (no 2:4 sparsity): (bf16 tensor core, fp32).
# fp32 is the non-tensor-core figure: the scripts keep torch's default float32 matmul
# precision ("highest"), so TF32 tensor cores are not used. First match in the device
# name wins, hence the PCIe/NVL variants before plain "H100".
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 51.2),
    "H100 NVL": (835.0, 60.0),
    "H100": (989.4, 66.9),  # SXM5
    "H200": (989.4, 66.9),  # the H100 SXM5 compute with more, faster memory
    "A100": (312.0, 19.5),  # SXM4 and PCIe alike
}
# No CPU entry: a CPU's peak depends on its vector units (AVX2/AVX-512/AMX), clocks and,
# here, on the cores it shares with other jobs; MFU on CPU is reported as n/a.


def add_common_args(ap: argparse.ArgumentParser):
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (set explicitly, reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per contender")
    ap.add_argument("--rounds", type=int, default=0,
                    help="alternating rounds the timed steps are split into (0: alternate every step)")
    ap.add_argument("--json", default=None, help="also write the results here")


def setup(args) -> torch.device:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return device


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, n: int) -> list[tuple[float, float]]:
    """(wall ms, process CPU ms) of each of n calls of step(), each bracketed by synchronize."""
    times = []
    for _ in range(n):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        sync(device)
        times.append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
    return times


@dataclass
class Timing:
    wall_ms: float  # median wall-clock milliseconds per step
    cpu_ms: float  # CPU milliseconds of this process (all its threads) of the fastest step
    device: str

    @property
    def ms(self) -> float:
        """What ratios compare: the fastest step's CPU time on CPU, the median wall time on GPU."""
        return self.cpu_ms if self.device == "cpu" else self.wall_ms


def clock(device: torch.device) -> str:
    """Which time the ratios compare (see Timing.ms), for table titles."""
    return "min CPU" if device.type == "cpu" else "median wall"


def alternate(steps: dict, device: torch.device, warmup: int, n: int, rounds: int) -> dict[str, list]:
    """{name: step fn} -> {name: [(wall ms, CPU ms) per step]}: warm each up, then alternate
    rounds of timed steps (rounds 0: alternate every step)."""
    for step in steps.values():
        time_steps(step, device, warmup)
    times = {name: [] for name in steps}
    rounds = rounds or n
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += time_steps(step, device, per_round)
    return times


def interleave(steps: dict, device: torch.device, warmup: int, n: int, rounds: int) -> dict[str, Timing]:
    """{name: step fn} -> {name: Timing} over alternating rounds (see `alternate`)."""
    return {name: Timing(statistics.median(w for w, _ in t), min(c for _, c in t), device.type)
            for name, t in alternate(steps, device, warmup, n, rounds).items()}


def peak_tflops(device: torch.device, bf16: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (peak_bf16, peak_fp32) in PEAK_TFLOPS.items():
        if key in name:
            return peak_bf16 if bf16 else peak_fp32
    return None


def mfu(flops_per_step: float, ms: float, device: torch.device, bf16: bool) -> str:
    """Model FLOP utilisation (PaLM, appendix B): achieved FLOP/s over the device's peak."""
    peak = peak_tflops(device, bf16)
    return "n/a" if peak is None else f"{flops_per_step / (ms / 1e3) / (peak * 1e12):.1%}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def cpu_model() -> str:
    """The host CPU's name from /proc/cpuinfo (Linux), with its widest vector unit."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = next((v for v in ("amx_tile", "avx512f", "avx2") if v in flags), "")
    return f"{name}, {vector}" if vector else name


def environment(device: torch.device) -> dict:
    from minbert.run.folder import git_commit
    env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device_name(device),
           "cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "commit": git_commit(), "command": portable_command()}
    if "transformers" in sys.modules:  # the reference, where the script compares against it
        env["transformers"] = sys.modules["transformers"].__version__
    if hasattr(os, "getloadavg"):  # other jobs on the machine while we measured
        env["load_average_1min"] = round(os.getloadavg()[0], 2)
    return env


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(title: str, env: dict, rows: list[dict], columns: list[str], json_path: str | None):
    print(f"\n## {title}\n")
    print(", ".join(f"{k}: {v}" for k, v in env.items()) + "\n")
    print(markdown(rows, columns))
    if json_path:
        Path(json_path).write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
        print(f"\nwrote {json_path}")
