"""The steps of a GPU day (minbert/gpu/day.py runs them in order, each until a given time):
the CUDA tests, the table's presets side by side, the benchmarks, M-FAC against Adam, the seed
grid. Each runs its commands as child processes (`run`), so a crash, an out-of-memory or a NaN
stops only that process, and returns the line the day's report gives it; presets and runs add
their own lines under it. Each step's arguments on a GPU and in the dry run are written once,
below: the dry run takes the same code paths at toy sizes.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from minbert.experiments import PRESETS, Experiment
from minbert.sweep.report import compare_optimizers, write_table
from minbert.sweep.shards import total_steps
from minbert.sweep.side_by_side import last_step
from minbert.sweep.sweeps import write_seeds

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
PAPER_EPOCHS = 10
# M-FAC's MRPC model card: run_glue (the glue preset: batch 32, lr 1e-4, 5 epochs, max_seq_length
# 128), --optim MFAC with num_grads 512, damp 1e-6, seed 42; five runs for mean ± std.
MFAC_CARD = {"num_grads": 512, "damp": 1e-6}
MFAC_SEEDS = (42, 43, 44, 45, 46)
# Each step's flags on the GPU; the dry run adds its own after them (the last of a repeated flag
# wins), so it runs the GPU's code paths at toy size. Checkpoints are not kept on the GPU: they
# cannot come back from the device machine, and writing 13 of 270 MB costs its minutes.
GPU = {"table": ["--fast", "--no-save_checkpoints"], "mfac": ["--fast", "--no-save_checkpoints"],
       "grid": ["--grid", "3,3", "--epochs", "1", "--fast", "--no-save_checkpoints"]}
TOY = ["--max_eval_examples", "16", "--max_length", "32"]
DRY = {"table": ["--max_steps", "1", *TOY],
       "mfac": ["--max_steps", "2", "--batch_size", "8", *TOY],
       "grid": ["--grid", "2,2", "--max_steps", "1", "--batch_size", "8", "--eval_per_epoch", "1", *TOY]}
BENCHMARKS = {  # name -> (script, GPU arguments (the "Owed" list, sized to the day), dry-run arguments)
    "encoder": ("bench_encoder.py", shlex.split("--configs minilm,bert-base --batch 32 --seq_len 128 "
                                                "--modes fp32,bf16 --steps 20 --rounds 2"),
                shlex.split("--configs minilm --batch 2 --seq_len 16 --warmup 0 --steps 1")),
    "optim": ("bench_optim.py", shlex.split("--configs minilm,bert-base --steps 50 --rounds 5"),
              shlex.split("--configs minilm --warmup 0 --steps 1 --contenders 'minbert loop,torch fused'")),
    "train_step": ("bench_train_step.py", shlex.split("--presets gse --mfac 32,256,1024 --steps 10 --rounds 2"),
                   shlex.split("--presets gse --mfac 4 --warmup 0 --steps 1")),
    "memory": ("bench_memory.py", shlex.split("--presets all --steps 3"), shlex.split("--presets baseline --steps 1")),
}


@dataclass
class Day:
    out: Path
    dry: bool
    end: float  # time.time() by which every step is done
    data_dir: str = "data"
    model: str = ""
    presets: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the report, one line per step (and per preset)
    env: dict = field(default_factory=lambda: dict(os.environ, PYTHONUNBUFFERED="1"))

    def say(self, line: str):
        self.lines.append(line)
        print(line, flush=True)

    def flags(self, step: str) -> list[str]:
        common = ["--data_dir", self.data_dir] + (["--model", self.model] if self.model else [])
        return GPU[step] + (DRY[step] if self.dry else []) + common


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def run(cmd: list[str], log: Path, until: float, env: dict) -> tuple[int, bool]:
    """cmd with its output in `log`; killed with its children (side by side's presets) at `until`
    (the steps give their runs an earlier --deadline). Returns (exit code, whether it was killed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, until - time.time())), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return proc.returncode, True


def last_error(log: Path) -> str:
    """The line of a log that says why a process stopped (our one-line errors, a traceback's end), or ""."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    said = [ln for ln in lines if ln.startswith("error:") or re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return said[-1][:300] if said else ""


def why(log: Path, killed: bool) -> str:
    """A process that wrote no results: its error, or that it was killed at its time limit."""
    said = last_error(log)
    if said:
        return f"FAILED: {said}"
    return "killed at its time limit" if killed else f"FAILED, no error line in {log.name}"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------- the steps

def cuda_tests(day: Day, until: float) -> str:
    xml = day.out / "cuda_tests.xml"
    rc, killed = run([PY, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:randomly", f"--junitxml={xml}"],
                     day.out / "cuda_tests.log", until, {**day.env, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    counts = {}
    suite = re.search(r"<testsuite [^>]*>", xml.read_text()) if xml.exists() else None  # none if cut off
    if suite:
        counts = {k: int(re.search(rf'{k}="(\d+)"', suite.group(0)).group(1))
                  for k in ("tests", "failures", "errors", "skipped")}
    if not counts:
        return f"no result ({'killed at its time limit' if killed else f'pytest exited {rc}'}; see cuda_tests.log)"
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return (f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
            + (" (no CUDA here)" if not torch.cuda.is_available() else "") + "; see cuda_tests.log")


def table_presets(table_json: Path) -> list[str]:
    """The presets whose rows in the table lack a GPU run of the paper's 10 epochs."""
    rows = json.loads(table_json.read_text()) if table_json.exists() else []
    done = {r["preset"] for r in rows if r.get("ours") and not r["device"].startswith("cpu")
            and r["epochs_done"] >= PAPER_EPOCHS}
    return [p for p in PRESETS if p != "glue" and p not in done]


def table(day: Day, until: float) -> str:
    names, runs = day.presets, day.out / "table" / "runs"
    if not names:
        return "nothing to run: every preset has a 10-epoch GPU row"
    margin = min(120.0, 0.3 * (until - time.time()))  # the last evaluation (13 at once) and the table after it
    jobs = min(len(names), os.cpu_count() or 1) if day.dry else len(names)  # a CPU: one process per core
    cmd = [PY, "train_multitask.py", "--preset", ",".join(names), "--jobs", str(jobs),
           "--deadline", iso(until - margin), "--output_dir", str(runs),
           "--out", str(day.out / "table" / "cs224n_table.md")]
    rc, killed = run(cmd + day.flags("table"), day.out / "table" / "side_by_side.log", until, day.env)
    for name in names:
        record = runs / name / "all_results.json"
        if record.exists():
            r = json.loads(record.read_text())
            total = total_steps(r)
            how = "stopped at the deadline" if r.get("stopped_at_deadline") else "finished"
            day.say(f"  - {name}: {how} at step {r['global_step']} of {total} "
                    f"({r['global_step'] / r['steps_per_epoch']:.2f} of {r['epochs']:g} epochs), "
                    f"overall {r.get('eval_overall', float('nan')):.3f}")
        else:
            day.say(f"  - {name}: {why(runs / name / 'train.log', killed)}, after step {last_step(runs / name)}")
    if killed and runs.exists():  # side by side was stopped before its table: the table of what finished
        write_table(runs, day.out / "table" / "cs224n_table.md", keep=False)
    done = sum((runs / n / "all_results.json").exists() for n in names)
    return f"{done} of {len(names)} presets wrote results" + (" (killed at the step's time limit)" if killed else "")


def benchmarks(day: Day, until: float) -> str:
    names, done = list(BENCHMARKS), []
    for i, name in enumerate(names):
        script, gpu_args, dry_args = BENCHMARKS[name]
        left = (until - time.time()) / (len(names) - i)
        if name == "encoder" and version("transformers") == "absent":
            day.say(f"  - {name}: skipped: transformers is not installed (the reference it compares with)")
            continue
        if left < (5 if day.dry else 15):
            day.say(f"  - {name}: skipped for lack of time ({left:.0f} s left for it)")
            continue
        json_out = day.out / "benchmarks" / f"{name}.json"
        cmd = [PY, f"benchmarks/{script}", *(dry_args if day.dry else gpu_args), "--json", str(json_out)]
        if name in ("train_step", "memory"):
            cmd += ["--data_dir", day.data_dir]
        rc, killed = run(cmd, day.out / "benchmarks" / f"{name}.txt", time.time() + left, day.env)
        ok = rc == 0 and json_out.exists()
        done += [name] if ok else []
        day.say(f"  - {name}: " + ("done" if ok else why(day.out / "benchmarks" / f"{name}.txt", killed)))
    return f"{len(done)} of {len(names)} done"


def mfac(day: Day, until: float) -> str:
    seeds = MFAC_SEEDS[:1] if day.dry else MFAC_SEEDS
    card = {**MFAC_CARD, "num_grads": 4} if day.dry else MFAC_CARD  # 512 x 22.7M floats is 46 GB
    optims = {"adam": [], "mfac": ["--optim", "MFAC", "--optim_args", json.dumps(card)]}
    margin = 30.0 if not day.dry else 5.0
    runs = {name: [] for name in optims}
    planned = [(seed, name, extra) for seed in seeds for name, extra in optims.items()]
    for k, (seed, name, extra) in enumerate(planned):
        now = time.time()
        if now > until - 2 * margin:
            day.say(f"  - {name} seed {seed}: skipped for lack of time")
            continue
        # each run its share of what is left, so that the first cannot take the whole step
        deadline = now + (until - margin - now) / (len(planned) - k)
        out = day.out / "mfac" / name / f"seed-{seed}"
        cmd = [PY, "train_multitask.py", "--task_name", "mrpc", "--seed", str(seed), *extra,
               "--deadline", iso(deadline), "--output_dir", str(out)]
        _, killed = run(cmd + day.flags("mfac"), out / "train.log", until, day.env)
        record = out / "all_results.json"
        r = json.loads(record.read_text()) if record.exists() else None
        if r is None:
            day.say(f"  - {name} seed {seed}: {why(out / 'train.log', killed)}")
        elif r.get("stopped_at_deadline"):
            day.say(f"  - {name} seed {seed}: stopped at the deadline at step {r['global_step']}; left out")
        else:
            runs[name].append({"seed": seed, **r})
    if not all(runs.values()):
        return "no comparison: " + ", ".join(f"{n} {len(r)} finished runs" for n, r in runs.items())
    for name, results in runs.items():
        config = json.loads((day.out / "mfac" / name / f"seed-{results[0]['seed']}" / "config.json").read_text())
        write_seeds(Experiment.from_dict(config), results, day.out / "mfac" / name)
    note = (f"GPU day {day.out.name}: the MRPC card's protocol (run_glue, batch 32, lr 1e-4, 5 epochs, "
            f"num_grads {card['num_grads']}, damp {card['damp']:g}) on all-MiniLM-L6-v2, not bert-tiny; "
            f"finished runs only, seeds {', '.join(str(r['seed']) for r in runs['adam'])} (Adam) and "
            f"{', '.join(str(r['seed']) for r in runs['mfac'])} (M-FAC).")
    compare_optimizers("mrpc", {n: day.out / "mfac" / n for n in runs}, day.out / "mfac" / "mfac_mrpc.md", note=note)
    return f"compared {len(runs['adam'])} Adam and {len(runs['mfac'])} M-FAC runs: mfac/mfac_mrpc.md"


def grid(day: Day, until: float) -> str:
    out = day.out / "grid"
    cmd = [PY, "train_multitask.py", "--task_name", "mrpc", "--out", str(out)]
    rc, killed = run(cmd + day.flags("grid"), out / "grid.log", until, day.env)
    finished = len(list(out.glob("runs/*/all_results.json")))
    if rc == 0 and (out / "grid.md").exists():
        return f"done: {finished} runs, grid/grid.md"
    return f"partial: {finished} runs finished, {why(out / 'grid.log', killed)}; no grid report"
