"""Several presets at once, one process each, on one machine: the CS224N table in one command;
and a sweep's shards side by side (--seeds/--sweep/--grid with --jobs K).

    python train_multitask.py --preset all --jobs 13          # every row of the table, side by side
    python train_multitask.py --preset gse,smart-gse --epochs 1
    python train_multitask.py --task_name mrpc --grid 4,4 --jobs 4   # shards 0/4 .. 3/4 at once, then the report

Why processes side by side: a MiniLM update of batch 8 is a few hundred small kernels,
so one process leaves a big GPU idle while Python launches them; several processes keep
it fed. Under NVIDIA's MPS (Multi-Process Service) the kernels of different processes also
run at the same time; without it the GPU switches between them. So on CUDA the daemon is
started here when its control binary is on the PATH (and stopped at the end), and one line
says when it is absent. On a CPU the processes share the cores: each gets cores / jobs threads.

Each preset runs the ordinary single-run command (`train_multitask.py --preset NAME` with
the other flags as given) in <runs>/<NAME>, its output in <runs>/<NAME>/train.log, and
resumes from its own checkpoint when the command is run again. One bar counts finished
presets and shows each one's latest logged step; when all are done the CS224N table of
the finished runs is written (runs/cs224n_table.md, or --out), and a line with this
command's wall time is added to runs/side_by_side.jsonl.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from minbert.sweep.report import write_table
from minbert.sweep.shards import PlannedRun, status

SCRIPT = Path(__file__).resolve().parents[2] / "train_multitask.py"


def as_flags(overrides: dict) -> list[str]:
    """Experiment field values -> the command-line flags that set them again."""
    flags = []
    for name, value in overrides.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, dict):
            flags += [f"--{name}", json.dumps(value)]
        elif isinstance(value, tuple):
            flags += [f"--{name}", ",".join(value)]
        else:
            flags += [f"--{name}", str(value)]
    return flags


def last_step(run_dir: Path) -> int:
    """The latest step in a run's log.jsonl (written every --logging_steps and at evaluations)."""
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


MPS_CONTROL = "nvidia-cuda-mps-control"


def start_mps(device: str) -> tuple[bool, str]:
    """NVIDIA MPS for runs on CUDA: (started here, a line saying what was done). Nothing on a
    CPU; a daemon that already runs is used and left running."""
    if not (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        return False, ""
    binary = shutil.which(MPS_CONTROL)
    if binary is None:
        return False, f"MPS: {MPS_CONTROL} is absent (not on the PATH); the presets take turns on the GPU"
    if (Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")) / "control").exists():
        return False, "MPS: a daemon already runs; the presets share the GPU through it"
    out = subprocess.run([binary, "-d"], capture_output=True, text=True)
    if out.returncode != 0:
        why = " ".join((out.stderr or out.stdout).split()) or f"exit status {out.returncode}"
        return False, f"MPS: {MPS_CONTROL} -d failed ({why}); the presets take turns on the GPU"
    return True, f"MPS: started ({MPS_CONTROL} -d); the presets' kernels share the GPU; stopped when they are done"


def stop_mps():
    subprocess.run([shutil.which(MPS_CONTROL) or MPS_CONTROL], input="quit\n", capture_output=True, text=True)


def run_processes(commands: dict[str, list[str]], logs: dict[str, Path], jobs: int, unit: str,
                  progress: Callable[[list[str]], str]) -> tuple[list[str], int]:
    """Run each command, its output in its log, at most `jobs` at a time, each with cores / jobs
    threads. One bar counts finished processes (in a log file: a plain line every 30 s) with
    `progress(running names)` beside it. Returns (the names that failed, threads per process)."""
    threads = max(1, (os.cpu_count() or 1) // min(jobs, len(commands)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "30"}  # the log gets a line per 30 s
    waiting, running, failed = list(commands), {}, []
    shown = time.time()
    tty = sys.stderr.isatty()  # in a log file: a plain line every 30 s instead of a redrawn bar
    bar = tqdm(total=len(commands), desc=f"{len(commands)} {unit}s, {jobs} at a time", unit=unit,
               dynamic_ncols=True, disable=not tty)
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                name = waiting.pop(0)
                logs[name].parent.mkdir(parents=True, exist_ok=True)
                log = open(logs[name], "a")
                running[name] = (subprocess.Popen(commands[name], stdout=log, stderr=subprocess.STDOUT, env=env), log)
            time.sleep(1.0)
            for name, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[name]
                    bar.update(1)
                    if proc.returncode != 0:
                        failed.append(name)
                        tqdm.write(f"{name}: exited with {proc.returncode}; see {logs[name]}")
                    else:
                        tqdm.write(f"{name}: done")
                    sys.stdout.flush()
            if time.time() - shown > (10 if tty else 30):
                line = progress(list(running))
                bar.set_postfix_str(line) if tty else print(f"{len(commands) - len(waiting) - len(running)} of "
                                                            f"{len(commands)} {unit}s done; {line}", flush=True)
                shown = time.time()
    finally:  # interrupted (Ctrl-C, an error here): stop the children; their checkpoints let a rerun resume
        for proc, log in running.values():
            proc.terminate()
            proc.wait()
            log.close()
        bar.close()
    return failed, threads


def run_side_by_side(names: list[str], overrides: dict, jobs: int, runs_dir: Path, table: Path) -> int:
    """Train `names` in at most `jobs` processes at a time; returns 0 if every run finished."""
    flags, t0 = as_flags(overrides), time.time()
    commands = {name: [sys.executable, str(SCRIPT), "--preset", name, *flags, "--output_dir", str(runs_dir / name)]
                for name in names}
    mps, line = start_mps(str(overrides.get("device", "auto")))
    if line:
        print(line, flush=True)
    try:
        failed, threads = run_processes(commands, {n: runs_dir / n / "train.log" for n in names}, jobs, "preset",
                                        lambda running: "at step: " + ", ".join(f"{n} {last_step(runs_dir / n)}"
                                                                                for n in running))
    finally:
        if mps:
            stop_mps()
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / "side_by_side.jsonl", "a") as f:  # the table's wall time; a resumed table adds a line
        f.write(json.dumps({"presets": names, "jobs": jobs, "threads_per_process": threads, "failed": failed,
                            "wall_seconds": round(time.time() - t0, 1), "command": " ".join(sys.argv),
                            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}) + "\n")
    write_table(runs_dir, table)
    if failed:
        print(f"error: {len(failed)} of {len(names)} presets failed: "
              + ", ".join(f"{n} (see {runs_dir / n / 'train.log'})" for n in failed), file=sys.stderr)
        return 1
    return 0


def run_shards(argv: list[str], jobs: int, out: Path, runs: list[PlannedRun]) -> list[str]:
    """A sweep's command as `jobs` shards side by side (--shard k/jobs appended), each one's
    output in <out>/shard-<k>.log; returns the shards that failed. The caller writes the report."""
    commands = {f"shard {k}/{jobs}": [sys.executable, str(SCRIPT), *argv, "--shard", f"{k}/{jobs}"]
                for k in range(jobs)}
    logs = {name: out / f"shard-{k}.log" for k, name in enumerate(commands)}
    failed, _ = run_processes(commands, logs, jobs, "shard",
                              lambda running: f"{sum(status(r) == 'finished' for r in runs)} of {len(runs)} "
                                              f"runs finished")
    return failed
