"""One command for a GPU day: every GPU measurement this project owes, in order, within a budget.

    make gpu                                       # python -m minbert.gpu.day --budget 11
    python -m minbert.gpu.day --dry_run            # every step at toy size on the CPU (tests/test_gpu_day.py)
    python -m minbert.gpu.day merge ARCHIVE        # the archive into results/ and docs/BENCHMARKS.md (merge.py)

A GPU comes to this project for minutes, once, so one command runs the whole programme and
writes it to one folder, gpu_day/<date>-<device>/:

    1. environment   GPU, driver, torch, CUDA, commit                     environment.json
    2. cuda tests    pytest -m cuda                                       cuda_tests.log, .xml
    3. table         the presets results/cs224n_table.json lacks at 10 epochs on a GPU, side by
                     side at the paper's length, each stopped by --deadline   table/
    4. benchmarks    docs/BENCHMARKS.md "Owed": encoder vs transformers, AdamW vs torch's fused,
                     the training step, peak memory per preset            benchmarks/
    5. mfac          M-FAC against Adam at the MRPC model card's protocol mfac/
    6. grid          Dodge et al.'s init x data seed grid on MRPC         grid/

Each step gets a share of the time left when it starts (time a step leaves unused goes to the
next); a step with too little time left is skipped, and the report says so in one line. A
crash, an out-of-memory or a NaN in one preset or run stops only that one (each is its own
process), and the report quotes its error. The small files (results, logs, configs; no
weights, no checkpoints) are packed into gpu_day/<stamp>.tar.gz, or $OUT/<stamp>.tar.gz
where the device tool sets $OUT.

On the device machine ../shared is absent: the model and data travel in .bundle/
(../shared/tools/device-bundle, `make gpu-bundle`), which is unpacked and named by $MINBERT_SHARED.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from minbert.gpu import steps as gpu_steps
from minbert.gpu.merge import main as merge
from minbert.gpu.steps import PY, Day, iso, version
from minbert.run.folder import git_commit
from minbert.run.paths import SHARED_ENV, shared_dir

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE_LIMIT = 16 * 2**20  # bytes: what the device tool brings back in one file
SMALL = {".json", ".jsonl", ".md", ".txt", ".log", ".xml", ".png", ".csv"}  # what the archive takes
NEEDED = ("torch", "tokenizers", "safetensors", "huggingface_hub", "numpy", "scipy", "tqdm", "pytest", "matplotlib")
# (step, share of the time left, the least seconds worth starting it with on a GPU)
STEPS = (("cuda_tests", 0.10, 30), ("table", 0.50, 90), ("benchmarks", 0.20, 30), ("mfac", 0.10, 40),
         ("grid", 0.10, 40))


# ---------------------------------------------------------------- setting up

def set_up(day: Day) -> str:
    """The model and data from .bundle/ where the shared folder lacks them; data/ from them; the
    packages the steps import."""
    notes = []
    shared, bundle = shared_dir(), ROOT / ".bundle"
    if not (shared / "models").exists() and bundle.exists():
        if not (bundle / "data").exists():
            (bundle / "data").mkdir()
            with tarfile.open(bundle / "data.tar.xz") as tar:
                tar.extractall(bundle / "data", filter="data")
        shared = bundle  # this process and every step's process find the default model there
        os.environ[SHARED_ENV] = day.env[SHARED_ENV] = str(bundle)
        notes.append(f"{SHARED_ENV}={bundle}")
    if day.data_dir == "data" and (shared / "data").exists():
        subprocess.run([PY, "data/prepare_data.py", "--from", str(shared / "data")], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        notes.append(f"data/ from {shared / 'data'}")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:  # never the pinned CPU torch over a CUDA build: the missing ones only, and quickly (no network?)
        try:
            ok = subprocess.run([PY, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "5", *missing],
                                timeout=60).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        notes.append(f"installed {', '.join(missing)}" if ok else f"could not install {', '.join(missing)}")
    if git_commit() == "unknown" and (bundle / "COMMIT").exists():  # a copy without .git: make gpu-bundle wrote it
        day.env["MINBERT_COMMIT"] = (bundle / "COMMIT").read_text().strip()
        notes.append(f"commit {day.env['MINBERT_COMMIT']} (from .bundle/COMMIT)")
    return "; ".join(notes) or "nothing to do"


def environment(day: Day) -> dict:
    cuda = torch.cuda.is_available()
    smi = shutil.which("nvidia-smi")
    query = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True).stdout.strip() if smi else ""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU)", "nvidia_smi": query or "absent",
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "commit": day.env.get("MINBERT_COMMIT") or git_commit(), "dry_run": day.dry,
            "transformers": version("transformers"), "command": " ".join(sys.argv)}


# ---------------------------------------------------------------- the day

def pack(day: Day) -> Path:
    """The small files of the day's folder in one .tar.gz under ARCHIVE_LIMIT; the largest left out first."""
    files = sorted(p for p in day.out.rglob("*") if p.is_file() and p.suffix in SMALL)
    dest = Path(os.environ["OUT"]) if os.environ.get("OUT") else day.out.parent
    archive = dest / f"{day.out.name}.tar.gz"
    while True:
        with tarfile.open(archive, "w:gz") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(day.out.parent)))
        if archive.stat().st_size <= ARCHIVE_LIMIT or not files:
            return archive
        biggest = max(files, key=lambda p: p.stat().st_size)
        files.remove(biggest)
        day.say(f"left out of the archive (size): {biggest.relative_to(day.out)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m minbert.gpu.day", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=None,
                    help="minutes for the whole programme (default 11; 30 with --dry_run, whose steps must all finish)")
    ap.add_argument("--dry_run", action="store_true", help="every step at toy size, on the CPU")
    ap.add_argument("--out", default="gpu_day", help="the folder the day's folder and archive go in")
    ap.add_argument("--presets", default=None, help="the table's presets (default: those results/ lacks)")
    ap.add_argument("--data_dir", default="data", help="the prepared data (default data/, from ../shared/data)")
    ap.add_argument("--model", default="", help="the model (default: the presets', all-MiniLM-L6-v2)")
    ap.add_argument("--skip", default="", help="comma-separated steps to leave out (tests use it)")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; the GPU day needs one (try --dry_run on a CPU)", file=sys.stderr)
        return 2
    args.budget = args.budget or (30 if args.dry_run else 11)
    t0 = time.time()
    env_gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M-") + re.sub(r"[^A-Za-z0-9]+", "-", env_gpu) \
        + ("-dry" if args.dry_run else "")
    day = Day(out=Path(args.out).resolve() / stamp, dry=args.dry_run, end=t0 + 60 * args.budget - 30,
              data_dir=args.data_dir, model=args.model)
    day.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m minbert.gpu.day", *argv])
    day.say(f"# GPU day {stamp}{' (dry run)' if day.dry else ''}\n\n`{command}`\n")
    day.say(f"- setup: {set_up(day)}")
    env = environment(day)
    (day.out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    day.say(f"- environment: {env['gpu']}, driver {env['nvidia_smi']}, torch {env['torch']}, CUDA {env['cuda']}, "
            f"commit {env['commit']}")
    day.presets = (args.presets.split(",") if args.presets
                   else gpu_steps.table_presets(ROOT / "results" / "cs224n_table.json"))
    have_data = (Path(day.data_dir) / "cs224n").exists() if Path(day.data_dir).is_absolute() else \
        (ROOT / day.data_dir / "cs224n").exists()
    skip = set(filter(None, args.skip.split(",")))
    for i, (name, share, least) in enumerate(STEPS):
        left = day.end - time.time()
        later = sum(s for _, s, _ in STEPS[i:])
        until = time.time() + left * share / later
        if name in skip:
            day.say(f"- {name}: left out (--skip)")
        elif name in ("table", "mfac", "grid") and not have_data:
            day.say(f"- {name}: skipped: no data in {day.data_dir} (python data/prepare_data.py --from ../shared/data)")
        elif not day.dry and until - time.time() < least:
            day.say(f"- {name}: skipped for lack of time ({until - time.time():.0f} s left for it, needs {least} s)")
        else:
            at, t = len(day.lines), time.time()
            day.say(f"- {name}: running until {iso(until)}")
            try:
                line = getattr(gpu_steps, name)(day, until)
            except Exception as e:  # one step's bug must not cost the others their minutes
                line = f"CRASHED: {type(e).__name__}: {e}"
            day.lines[at] = f"- {name}: {line} [{time.time() - t:.0f} s]"  # above its presets' or runs' lines
            print(day.lines[at], flush=True)
    day.say(f"\nwall time: {time.time() - t0:.0f} s of a {args.budget:g}-minute budget")
    (day.out / "report.md").write_text("\n".join(day.lines) + "\n")
    (day.out / "meta.json").write_text(json.dumps({"stamp": stamp, "dry_run": day.dry, "environment": env,
                                                   "presets": day.presets, "benchmarks": gpu_steps.BENCHMARKS,
                                                   "wall_seconds": round(time.time() - t0)}, indent=2) + "\n")
    archive = pack(day)
    (day.out / "report.md").write_text("\n".join(day.lines) + "\n")
    if os.environ.get("OUT"):
        shutil.copy(day.out / "report.md", Path(os.environ["OUT"]) / "report.md")
    print(f"archive: {archive} ({archive.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
