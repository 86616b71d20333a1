"""Many runs on many machines: a sweep's fixed run list cut into shards, runs claimed by
files, and which runs a report would lack.

    python train_multitask.py --task_name mrpc --grid 4,5 --out results/grid --shard 3/20   # runs 3, 23, ...
    python train_multitask.py --task_name mrpc --grid 4,5 --out results/grid --report       # then, once

A sweep (--seeds, --sweep, --grid, several presets) is a fixed list of runs, each an
ordinary run folder. Shard I/N trains runs I, I+N, I+2N, ... of that list; the unsharded
command is shard 0/1 followed by the report, so both write the same files.

Claims. Before training a run, a process creates <run>/claim with O_CREAT | O_EXCL: of two
processes only one can create it, locally and on NFS (v3 and later). The file says which
host and process holds it; a thread touches it every timeout/5 seconds while the run trains,
so its age says whether the holder is alive. A claim older than `timeout` (the holder was
killed, its machine lost) is taken over: renamed away (one rename of a path wins), then
created afresh; the run resumes from its latest checkpoint. The timeout must exceed the
clocks' skew between machines and any pause of a holder (a suspended job): a holder paused
for longer loses its run. A finished run is skipped without a claim.
"""
from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from minbert.experiments import Experiment
from minbert.run.folder import config_differences, record_model

CLAIM = "claim"
CLAIM_TIMEOUT = 300.0  # seconds without a heartbeat after which a claim is stale
SHARD_FLAGS = ("--shard", "--jobs", "--claim_timeout")  # flags that say how a sweep is split, not what it is


@dataclass
class PlannedRun:
    """One run of a sweep: its folder's name, its experiment, and how it trains: stops=None,
    the run's own end (--max_steps honoured); else Trainer.train once per fraction of the
    run's steps (the seed search's segments)."""
    name: str
    exp: Experiment
    stops: tuple[float, ...] | None = None

    @property
    def dir(self) -> Path:
        return self.exp.out_dir


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), with 0 <= I < N."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not int(parts[0]) < int(parts[1]):
        raise ValueError(f"--shard {text!r}: give I/N, whole numbers with 0 <= I < N (this process's index and "
                         f"the number of shards, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(parts[0]), int(parts[1])


def without_flags(words: list[str], flags: tuple[str, ...], bare: tuple[str, ...] = ()) -> list[str]:
    """Command-line words without `flags` and their values (`--f v` or `--f=v`), and without `bare`."""
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in flags:
            skip = True
        elif w not in bare and not w.startswith(tuple(f + "=" for f in flags)):
            out.append(w)
    return out


def sweep_command(command: str) -> str:
    """A run's command without the flags that split its sweep (--shard, --jobs, --claim_timeout)
    and without --report: the unsharded command that makes the same sweep."""
    return " ".join(without_flags(command.split(" "), SHARD_FLAGS, ("--report",)))


# ---------------------------------------------------------------- finished, missing

def total_steps(results: dict) -> int:
    """A run's planned steps (Trainer.total_steps), from its all_results.json."""
    return math.ceil(results["epochs"] * results["steps_per_epoch"])


def final_step(run: PlannedRun, results: dict) -> int:
    """The step a run ends at, from its all_results.json: all its steps for the seed search's
    segments, else min(all, max_steps) as Trainer.train stops."""
    total = total_steps(results)
    if run.stops is None and run.exp.max_steps > 0:
        return min(total, run.exp.max_steps)
    return total


def status(run: PlannedRun) -> str:
    """'finished', 'unfinished' (started: a config.json, maybe a checkpoint), or 'missing'."""
    record = run.dir / "all_results.json"
    if record.exists():
        try:
            results = json.loads(record.read_text())
            if results["global_step"] >= final_step(run, results):
                return "finished"
        except (ValueError, KeyError):
            pass
    return "unfinished" if (run.dir / "config.json").exists() else "missing"


def not_finished(runs: list[PlannedRun]) -> list[str]:
    """'name (missing)' / 'name (unfinished, claimed by host pid 12)' for every run not finished."""
    lines = []
    for k, run in enumerate(runs):
        state = status(run)
        if state != "finished":
            holder = read_claim(run.dir)
            who = f", claimed by {holder.get('host')} pid {holder.get('pid')}" if holder else ""
            lines.append(f"run {k} {run.name} ({state}{who})")
    return lines


class IncompleteSweep(ValueError):
    """--report of a sweep some of whose runs are not finished; the message names them."""


def require_finished(runs: list[PlannedRun], what: str):
    """A report of part of a sweep would read as the whole: refuse, naming what is not there."""
    lines = not_finished(runs)
    if lines:
        raise IncompleteSweep(f"{what}: {len(lines)} of {len(runs)} runs are not finished, so no report is "
                              f"written (a part would read as the whole): {'; '.join(lines)}. Run the shards "
                              f"that train them (run k belongs to shard k mod N), then --report again")


# ---------------------------------------------------------------- the sweep's folder

def check_sweep_folder(out: Path, exp: Experiment, spec: dict, runs: list[PlannedRun]):
    """Before any work: `out` must hold this sweep or none. Its config.json (the sweep's
    experiment) and sweep.json (`spec`: what kind of sweep, its shape, its run list) are
    written by the first process and compared by every later one, as run folders are; every
    run folder already there is compared with its planned experiment too."""
    differ = [f"{k}: {v}" for k, v in spec_differences(out, spec)] + config_differences(out, exp)
    if differ:
        raise ValueError(f"{out} holds another sweep ({'; '.join(differ)}); use another --out for this one")
    check_runs(runs)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in (("config.json", exp.to_dict()), ("sweep.json", spec)):
        write_once(out / name, json.dumps(content, indent=2) + "\n")
    record_model(out, exp)  # a moved checkout's sweep is compared by what its model is, as its runs are


def check_runs(runs: list[PlannedRun]):
    """Before any work: every run folder already there holds its planned run (checkpoint.config_differences)."""
    differ = [f"{run.name}: {d}" for run in runs for d in config_differences(run.dir, run.exp)]
    if differ:
        raise ValueError(f"run folders hold runs with another configuration ({'; '.join(differ)}); use another "
                         f"--out (or --output_dir) for this sweep")


def spec_differences(out: Path, spec: dict) -> list[tuple[str, str]]:
    path = out / "sweep.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(spec))
    return [(k, f"{old.get(k)!r} -> {new[k]!r}") for k in new if old.get(k) != new[k]]


def write_once(path: Path, text: str):
    """Write `path` unless it exists; of several processes at once, one writes, whole (a
    temporary file, then link, which fails where the name exists)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


# ---------------------------------------------------------------- claims

def read_claim(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / CLAIM).read_text())
    except (OSError, ValueError):
        return None


class Claim:
    """`with Claim(run_dir, timeout) as held:` held is True when this process may train the run;
    the claim is touched while held and removed on leaving."""

    def __init__(self, run_dir: Path, timeout: float = CLAIM_TIMEOUT):
        self.path, self.timeout = Path(run_dir) / CLAIM, timeout
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stop = threading.Event()
        self.thread = None

    def age(self, path: Path) -> float:
        return time.time() - path.stat().st_mtime

    def create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}, f)
        return True

    def take_over(self) -> bool:
        """A stale claim: rename it away (of several processes, one rename wins), then create ours."""
        moved = self.path.with_name(f".{CLAIM}.stale.{self.token}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:  # another process moved it first
            return self.create()
        if self.age(moved) < self.timeout:  # a fresh claim made after our look: give it back
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
            moved.unlink()
            return False
        moved.unlink()
        return self.create()

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.create():
            try:
                if self.age(self.path) < self.timeout or not self.take_over():
                    return False
            except FileNotFoundError:  # released between our two looks
                if not self.create():
                    return False
        self.thread = threading.Thread(target=self.heartbeat, daemon=True)
        self.thread.start()
        return True

    def heartbeat(self):
        while not self.stop.wait(self.timeout / 5):
            claim = read_claim(self.path.parent)
            if claim is None:  # unreadable for a moment (a take-over's rename, a shared file system): look again
                continue
            if claim.get("token") != self.token:  # taken over: this process paused longer than the timeout
                print(f"warning: {self.path} was taken over by another process (this one paused longer than "
                      f"--claim_timeout {self.timeout:g} s?); both may now train {self.path.parent}", flush=True)
                return
            try:
                os.utime(self.path)
            except FileNotFoundError:  # moved away between the read and the touch: the next look decides
                continue

    def release(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            if (read_claim(self.path.parent) or {}).get("token") == self.token:
                self.path.unlink()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def train_shard(runs: list[PlannedRun], shard: tuple[int, int], timeout: float, train) -> list[str]:
    """Runs I, I+N, ... of `runs` through train(run), each under its claim; finished runs and
    runs another live process holds are skipped. Returns what was skipped, and why."""
    i, n = shard
    skipped = []
    for k in range(i, len(runs), n):
        run = runs[k]
        if status(run) == "finished":
            print(f"run {k} {run.name}: finished, skipped", flush=True)
            continue
        with Claim(run.dir, timeout) as held:
            if not held:
                holder = read_claim(run.dir) or {}
                skipped.append(f"run {k} {run.name} (claimed by {holder.get('host')} pid {holder.get('pid')})")
                print(f"run {k} {run.name}: claimed by {holder.get('host')} pid {holder.get('pid')} since "
                      f"{holder.get('since')}, skipped", flush=True)
            elif status(run) != "finished":  # it may have finished between the two looks
                train(run)
    return skipped
