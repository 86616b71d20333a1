"""One command for a GPU day: every GPU measurement this project owes, in order, within a budget.

    make gpu                                       # python -m minbert.gpu_day --budget 11
    python -m minbert.gpu_day --dry_run            # every step at toy size on the CPU (tests/test_gpu_day.py)
    python -m minbert.gpu_day merge ARCHIVE        # the archive into results/ and docs/BENCHMARKS.md (gpu_merge.py)

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
(../shared/tools/device-bundle, `make gpu-bundle`), which is unpacked and linked as ../shared.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from minbert.checkpoint import git_commit
from minbert.experiments import PRESETS, Experiment
from minbert.report import compare_optimizers
from minbert.sweeps import write_seeds

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PY = sys.executable
PAPER_EPOCHS = 10
ARCHIVE_LIMIT = 16 * 2**20  # bytes: what the device tool brings back in one file
SMALL = {".json", ".jsonl", ".md", ".txt", ".log", ".xml", ".png", ".csv"}  # what the archive takes
NEEDED = ("torch", "tokenizers", "safetensors", "huggingface_hub", "numpy", "scipy", "tqdm", "pytest", "matplotlib")
# M-FAC's MRPC model card: run_glue (the glue preset: batch 32, lr 1e-4, 5 epochs, max_seq_length
# 128), --optim MFAC with num_grads 512, damp 1e-6, seed 42; five runs for mean ± std.
MFAC_CARD = {"num_grads": 512, "damp": 1e-6}
MFAC_SEEDS = (42, 43, 44, 45, 46)
# Each step's arguments on the GPU, and in the dry run (toy sizes, the same code paths).
GPU = {"table": ["--fast"], "mfac": ["--fast"], "grid": ["--grid", "3,3", "--epochs", "1", "--fast"]}
DRY = {"table": ["--max_steps", "1", "--max_eval_examples", "16"],
       "mfac": ["--max_steps", "2", "--max_eval_examples", "16"],
       "grid": ["--grid", "2,2", "--max_steps", "1", "--max_eval_examples", "16", "--eval_per_epoch", "1"]}
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
# (step, share of the time left, the least seconds worth starting it with on a GPU)
STEPS = (("cuda_tests", 0.10, 30), ("table", 0.50, 90), ("benchmarks", 0.20, 30), ("mfac", 0.10, 40),
         ("grid", 0.10, 40))


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
        return (DRY if self.dry else GPU)[step] + common


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def run(cmd: list[str], log: Path, until: float, env: dict) -> tuple[int, bool]:
    """cmd with its output in `log`; killed with its children (side by side's presets) at
    `until` plus a grace minute. Returns (exit code, whether it was killed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, until - time.time() + 60)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return proc.returncode, True


def last_error(log: Path) -> str:
    """The line of a log that says why a process stopped: our one-line errors, else a traceback's end."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    said = [ln for ln in lines if ln.startswith("error:") or re.match(r"^[\w.]*(Error|Exception)\b", ln)]
    return (said or lines or ["no output"])[-1][:300]


# ---------------------------------------------------------------- setting up

def set_up(day: Day) -> str:
    """../shared from .bundle/ where it is absent; data/ from it; the packages the steps import."""
    notes = []
    bundle = ROOT / ".bundle"
    if not SHARED.exists() and bundle.exists():
        if not (bundle / "data").exists():
            (bundle / "data").mkdir()
            with tarfile.open(bundle / "data.tar.xz") as tar:
                tar.extractall(bundle / "data", filter="data")
        SHARED.symlink_to(bundle)
        notes.append(f"../shared linked to {bundle}")
    if day.data_dir == "data" and (SHARED / "data").exists():
        subprocess.run([PY, "data/prepare_data.py", "--from", str(SHARED / "data")], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:  # never the pinned CPU torch over a CUDA build: the missing ones only
        ok = subprocess.run([PY, "-m", "pip", "install", "-q", *missing], timeout=120).returncode == 0
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
            "transformers": _version("transformers"), "command": " ".join(sys.argv)}


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "absent"
    return importlib.import_module(module).__version__


# ---------------------------------------------------------------- the steps

def cuda_tests(day: Day, until: float) -> str:
    xml = day.out / "cuda_tests.xml"
    rc, killed = run([PY, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:randomly", f"--junitxml={xml}"],
                     day.out / "cuda_tests.log", until, day.env)
    counts = {}
    if xml.exists():
        suite = re.search(r"<testsuite [^>]*>", xml.read_text()).group(0)
        counts = {k: int(re.search(rf'{k}="(\d+)"', suite).group(1)) for k in ("tests", "failures", "errors", "skipped")}
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
    margin = min(90.0, 0.2 * (until - time.time()))  # the last evaluation, checkpoint and table after the deadline
    cmd = [PY, "train_multitask.py", "--preset", ",".join(names), "--jobs", str(len(names)),
           "--deadline", iso(until - margin), "--output_dir", str(runs), "--out", str(day.out / "table" / "cs224n_table.md")]
    rc, killed = run(cmd + day.flags("table"), day.out / "table" / "side_by_side.log", until, day.env)
    for name in names:
        record = runs / name / "all_results.json"
        if record.exists():
            r = json.loads(record.read_text())
            total = round(r["epochs"] * r["steps_per_epoch"])
            how = "stopped at the deadline" if r.get("stopped_at_deadline") else "finished"
            day.say(f"  - {name}: {how} at step {r['global_step']} of {total} "
                    f"({r['global_step'] / r['steps_per_epoch']:.2f} of {r['epochs']:g} epochs), "
                    f"overall {r.get('eval_overall', float('nan')):.3f}")
        else:
            day.say(f"  - {name}: FAILED: {last_error(runs / name / 'train.log')}")
    done = sum((runs / n / "all_results.json").exists() for n in names)
    return f"{done} of {len(names)} presets wrote results" + (" (killed at the step's time limit)" if killed else "")


def benchmarks(day: Day, until: float) -> str:
    names, done = list(BENCHMARKS), []
    for i, name in enumerate(names):
        script, gpu_args, dry_args = BENCHMARKS[name]
        left = (until - time.time()) / (len(names) - i)
        if name == "encoder" and _version("transformers") == "absent":
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
        day.say(f"  - {name}: " + ("done" if ok else "killed at its time limit" if killed else
                                   f"FAILED: {last_error(day.out / 'benchmarks' / f'{name}.txt')}"))
    return f"{len(done)} of {len(names)} done"


def mfac(day: Day, until: float) -> str:
    seeds = MFAC_SEEDS[:1] if day.dry else MFAC_SEEDS
    card = {**MFAC_CARD, "num_grads": 4} if day.dry else MFAC_CARD  # 512 x 22.7M floats is 46 GB
    optims = {"adam": [], "mfac": ["--optim", "MFAC", "--optim_args", json.dumps(card)]}
    margin = 30.0 if not day.dry else 5.0
    runs = {name: [] for name in optims}
    for seed in seeds:
        for name, extra in optims.items():
            if time.time() > until - 2 * margin:
                day.say(f"  - {name} seed {seed}: skipped for lack of time")
                continue
            out = day.out / "mfac" / name / f"seed-{seed}"
            cmd = [PY, "train_multitask.py", "--task_name", "mrpc", "--seed", str(seed), *extra,
                   "--deadline", iso(until - margin), "--no-save_checkpoints", "--output_dir", str(out)]
            run(cmd + day.flags("mfac"), out / "train.log", until, day.env)
            record = out / "all_results.json"
            r = json.loads(record.read_text()) if record.exists() else None
            if r is None:
                day.say(f"  - {name} seed {seed}: FAILED: {last_error(out / 'train.log')}")
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
    cmd = [PY, "train_multitask.py", "--task_name", "mrpc", "--no-save_checkpoints", "--out", str(out)]
    rc, killed = run(cmd + day.flags("grid"), out / "grid.log", until, day.env)
    finished = len(list(out.glob("runs/*/all_results.json")))
    if rc == 0 and (out / "grid.md").exists():
        return f"done: {finished} runs, grid/grid.md"
    return (f"partial: {finished} runs finished, " + ("killed at the step's time limit" if killed else
                                                      f"FAILED: {last_error(out / 'grid.log')}") + "; no grid report")


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
        from minbert.gpu_merge import main as merge
        return merge(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=11, help="minutes for the whole programme (default 11)")
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
    t0 = time.time()
    env_gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M-") + re.sub(r"[^A-Za-z0-9]+", "-", env_gpu) \
        + ("-dry" if args.dry_run else "")
    day = Day(out=Path(args.out).resolve() / stamp, dry=args.dry_run, end=t0 + 60 * args.budget - 20,
              data_dir=args.data_dir, model=args.model)
    day.out.mkdir(parents=True, exist_ok=True)
    day.say(f"# GPU day {stamp}{' (dry run)' if day.dry else ''}\n\n`{' '.join(['python -m minbert.gpu_day', *argv])}`\n")
    day.say(f"- setup: {set_up(day)}")
    env = environment(day)
    (day.out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    day.say(f"- environment: {env['gpu']}, driver {env['nvidia_smi']}, torch {env['torch']}, CUDA {env['cuda']}, "
            f"commit {env['commit']}")
    day.presets = args.presets.split(",") if args.presets else table_presets(ROOT / "results" / "cs224n_table.json")
    have_data = (Path(day.data_dir) / "cs224n").exists() if Path(day.data_dir).is_absolute() else \
        (ROOT / day.data_dir / "cs224n").exists()
    steps = {"cuda_tests": cuda_tests, "table": table, "benchmarks": benchmarks, "mfac": mfac, "grid": grid}
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
                line = steps[name](day, until)
            except Exception as e:  # one step's bug must not cost the others their minutes
                line = f"CRASHED: {type(e).__name__}: {e}"
            day.lines[at] = f"- {name}: {line} [{time.time() - t:.0f} s]"  # above its presets' or runs' lines
            print(day.lines[at], flush=True)
    day.say(f"\nwall time: {time.time() - t0:.0f} s of a {args.budget:g}-minute budget")
    (day.out / "report.md").write_text("\n".join(day.lines) + "\n")
    (day.out / "meta.json").write_text(json.dumps({"stamp": stamp, "dry_run": day.dry, "environment": env,
                                                   "presets": day.presets, "benchmarks": BENCHMARKS,
                                                   "wall_seconds": round(time.time() - t0)}, indent=2) + "\n")
    archive = pack(day)
    (day.out / "report.md").write_text("\n".join(day.lines) + "\n")
    if os.environ.get("OUT"):
        shutil.copy(day.out / "report.md", Path(os.environ["OUT"]) / "report.md")
    print(f"archive: {archive} ({archive.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
