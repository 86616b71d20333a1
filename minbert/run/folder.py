"""The run folder: its configuration, checkpoints, best weights and final record.

Functions that take the folder, the model, the optimizers and a plain `run_state` dict
(step, best, history, ...: Trainer.checkpoint_state), so the training loop reads without file handling in it.

    runs/<name>/config.json         the Experiment, written once when the run starts, never again
    runs/<name>/model_identity.json the model's fingerprint (weights.model_fingerprint), so that a
                                    copy of the model in another folder resumes the run
    runs/<name>/checkpoint-<step>/  model.safetensors + state.pt (optimizers, random states,
                                    run_state); the latest only, written to a temporary folder
                                    and renamed, so a killed run never leaves half a checkpoint
    runs/<name>/best/               model.safetensors of the best overall dev score
    runs/<name>/eval_results.json, all_results.json, trainer_state.json   run_glue's names

A folder that holds a run takes only the same configuration again (then it resumes, or is
left alone when finished); any other stops before work, naming the fields that differ,
unless overwrite_output_dir starts it afresh. The model is compared by what it is, not by
where it lies: a moved checkout passes another path to the same model, and resumes.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minbert.experiments import RESUMABLE, Experiment
from minbert.run import distributed
from minbert.run.build import MODEL_RECORD, checkpoints, recorded_fingerprint
from minbert.run.compat import config_notes, upgrade_checkpoint
from minbert.run.paths import DEFAULT_MODEL_NAME, default_model_source, portable, portable_command
from minbert.weights import model_fingerprint


class CheckpointError(ValueError):
    """A checkpoint in the run folder cannot be resumed from; the message names the file."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint (or best/) failed: no space, no permission, a read-only folder. The
    message is one line: what failed, where, what a checkpoint needs, and the ways out."""


class RunFolderError(ValueError):
    """The output folder holds another run; the message names the fields that differ."""


@contextlib.contextmanager
def as_checkpoint_error(path: Path):
    """Any failure to read or apply `path` becomes one CheckpointError naming it."""
    try:
        yield
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError):  # weights_only=True refused it; nothing was run
            why = "it holds pickled objects other than tensors (refused, not run)"
        else:
            why = f"{type(e).__name__}: {' '.join(str(e).split())}"
        raise CheckpointError(f"cannot resume from {path}: {why}. Move {path.parent} away "
                              f"(or use another --output_dir) to start this run from scratch") from None


# ---------------------------------------------------------------- the folder and its config

def config_differences(out: Path, exp: Experiment) -> list[str]:
    """Fields whose value differs from the config.json of the run already in `out` ("name: old -> new")."""
    path = out / "config.json"
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text())
        old = Experiment.from_dict(raw).to_dict()
    except ValueError as e:
        return [f"its config.json cannot be read ({' '.join(str(e).split())})"]
    old, new = (json.loads(json.dumps(d)) for d in (old, exp.to_dict()))  # both as JSON has them: lists, not tuples
    differ = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k not in RESUMABLE and k != "model"
              and old.get(k) != new[k]]
    differ += config_notes(raw, new)
    model = model_difference(out, old["model"], new["model"])
    return differ + ([f"model: {old['model']!r} -> {new['model']!r} ({model})"] if model else [])


def model_difference(out: Path, old: str, new: str) -> str:
    """Why `new` is not the run's model; "" when it is, wherever it lies. The run's fingerprint
    comes from its model_identity.json (or, in a folder without one, from the old path when that
    still holds the model: compat.py); without either, only the same path matches."""
    if old == new and not (out / MODEL_RECORD).exists():
        return ""
    recorded = recorded_fingerprint(out, old)
    if recorded is None:
        return (f"the run's model folder is gone and the run predates {MODEL_RECORD}, so whether {new!r} is "
                f"the same model cannot be told; put the model back at {old!r} to resume")
    current = model_fingerprint(new)
    if current == recorded:
        return ""
    if current is None:
        return f"no model folder at {new!r}"
    return "another model: its config.json, tokenizer files or weights differ from the ones the run started with"


def check_run_folder(out: Path, exp: Experiment):
    """Before any work: a folder holding another run stops the run (RunFolderError). Rank 0
    reads the folder and tells the others (it may rewrite config.json later)."""
    differ = distributed.broadcast(config_differences(out, exp) if distributed.is_main() else None)
    if differ and not exp.overwrite_output_dir:
        raise RunFolderError(f"{out} holds a run with another configuration ({'; '.join(differ)}); "
                             f"use another --output_dir, or --overwrite_output_dir to start afresh there")


def start_run_folder(out: Path, exp: Experiment, bert_config: dict):
    """Rank 0, once checked: start afresh if asked, and write config.json unless the run has one."""
    if exp.overwrite_output_dir and config_differences(out, exp):  # another run's folder: start afresh
        for path in out.iterdir():  # train.log and claim stay: side_by_side writes this process's output
            if path.name not in ("train.log", "claim"):  # to the one; the other says this process holds the run
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.json").exists():  # a resumed run keeps the config it started with
        exp.save(out / "config.json")
        (out / "bert_config.json").write_text(json.dumps(bert_config, indent=2) + "\n")
    record_model(out, exp)


def record_model(out: Path, exp: Experiment):
    """model_identity.json, once, after the folder was checked against exp: what the model is,
    so that a moved checkout (the model elsewhere) is still recognised (model_difference)."""
    if not (out / MODEL_RECORD).exists():
        record = {"model": portable(exp.model), "fingerprint": model_fingerprint(exp.model)}
        if exp.model == DEFAULT_MODEL_NAME:  # where the default came from, and its check
            record["source"] = default_model_source()
        (out / MODEL_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def remove_partial(out: Path):
    """Rank 0, before resuming: a checkpoint write that was cut off is never read, and a cut-off
    write of best/ (save_best's temporary file, or safetensors' own .tmpXXXXXX) is removed."""
    for stale in out.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in [*out.glob("best/.tmp*"), *out.glob("best/.*.tmp")]:
        stale.unlink(missing_ok=True)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(out: Path, model: torch.nn.Module, optimizers: list, run_state: dict, device: torch.device):
    """checkpoint-<step>/: weights, optimizer states, every rank's random state and `run_state`;
    then the older checkpoint is removed. Called on every rank (it gathers their random
    states); rank 0 alone writes. A failed write removes its partial folder, leaves the
    last good checkpoint as it was, and raises one CheckpointWriteError."""
    rngs = distributed.gather((torch.get_rng_state(),  # every rank's (cpu, cuda) states, rank 0's first
                               torch.cuda.get_rng_state_all() if device.type == "cuda" else []))
    if not distributed.is_main():
        return
    step = run_state["step"]
    tmp = out / f".tmp-checkpoint-{step}"
    state = {**run_state, "optimizers": [o.state_dict() for o in optimizers], "rng": rngs[0][0], "cuda_rng": rngs[0][1]}
    if len(rngs) > 1:
        state["rank_rngs"] = rngs
    with writing(tmp, out, f"checkpoint-{step}", tensor_bytes(model.state_dict(), state)):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        os.replace(tmp, out / f"checkpoint-{step}")
    for old in checkpoints(out)[:-1]:
        shutil.rmtree(old)


def tensor_bytes(*trees) -> int:
    """The bytes of every tensor in these (nested) dicts, lists and tuples: about what saving them writes."""
    total, todo = 0, list(trees)
    while todo:
        x = todo.pop()
        if isinstance(x, torch.Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
    return total


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} KB"


@contextlib.contextmanager
def writing(tmp: Path, out: Path, what: str, needs: int):
    """A failed write into tmp (OSError, or the RuntimeError torch.save raises when its stream
    fails) removes tmp and becomes one CheckpointWriteError naming the ways out."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(tmp, Path) and tmp.is_file():
            tmp.unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:200]
        try:
            free = f"{_size(shutil.disk_usage(out).free)} free there"
        except OSError:
            free = "free space unknown"
        kept = checkpoints(out) if out.is_dir() else []
        last = f"the last good checkpoint {kept[-1]} is intact and the run resumes from it" if kept \
            else "no earlier checkpoint was written"
        raise CheckpointWriteError(
            f"writing {what} to {out} failed ({type(e).__name__}: {why}); a checkpoint needs about "
            f"{_size(needs)} ({free}); {last}. Free some space, or rerun with --no-save_checkpoints, "
            f"or give another --output_dir") from None


def restore(out: Path, model: torch.nn.Module, optimizers: list, device: torch.device, teacher=None) -> dict | None:
    """The latest checkpoint (rank 0's choice, on every rank) into the model, optimizers,
    teacher and this rank's random state; returns the rest of its state (step, best, history,
    cost, "checkpoint": its path, "warning"), or None when there is none."""
    if distributed.is_main():
        remove_partial(out)
    ckpts = checkpoints(out)
    ckpt = distributed.broadcast(ckpts[-1] if ckpts else None)
    if ckpt is None:
        return None
    with as_checkpoint_error(ckpt / "model.safetensors"):
        model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
    with as_checkpoint_error(ckpt / "state.pt"):
        state = upgrade_checkpoint(torch.load(ckpt / "state.pt", map_location=device, weights_only=True))
        for opt, s in zip(optimizers, state.pop("optimizers"), strict=True):
            opt.load_state_dict(s)
    rngs = state.get("rank_rngs") or [(state["rng"], state["cuda_rng"])]
    world = distributed.world_size()
    state["warning"] = "" if len(rngs) == world else (
        f"{ckpt} was written by {len(rngs)} process(es), this run has {world}: batches and "
        f"dropout will not continue exactly as the interrupted run would have")
    rng, cuda_rng = rngs[distributed.rank() % len(rngs)]
    torch.set_rng_state(rng.cpu())
    if cuda_rng:
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_rng])
    if teacher is not None:
        teacher.module.load_state_dict(state["teacher"])
    state["checkpoint"] = ckpt
    return state


def finished_record(out: Path, stop: int, resumable: bool) -> dict | None:
    """The record (all_results.json) of a run in `out` that already reached step `stop`, or None.
    resumable: its checkpoint was resumed, or it keeps none; else the record is of another run.
    Rank 0's answer holds for every rank."""
    path = out / "all_results.json"
    finished = resumable and path.exists() and json.loads(path.read_text()).get("global_step", 0) >= stop
    return json.loads(path.read_text()) if distributed.broadcast(finished) else None


def save_best(out: Path, model: torch.nn.Module):
    tmp = out / "best" / ".model.safetensors.tmp"
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    with writing(tmp, out, "best/model.safetensors", tensor_bytes(weights)):
        tmp.parent.mkdir(exist_ok=True)
        save_file(weights, str(tmp))
        os.replace(tmp, out / "best" / "model.safetensors")


def git_commit() -> str:
    """The code's commit, so a result can be traced to what made it ("+dirty" if changed)."""
    if os.environ.get("MINBERT_COMMIT"):  # a copy of the tree without .git (the GPU day sets it, gpu/day.py)
        return os.environ["MINBERT_COMMIT"]
    here = Path(__file__).parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


class Cost:
    """What a run's work cost, summed over its stints (each Trainer.train of it; a checkpoint
    carries the totals on): wall time, time in Trainer.update alone, peak memory, and the
    commits of the code that ran."""

    def __init__(self, device: torch.device):
        self.device, self.stint_start = device, time.time()
        self.totals = {"seconds": 0.0, "update_seconds": 0.0, "peak_memory_mb": 0.0, "commits": [git_commit()]}

    def start_stint(self):
        """One Trainer.train starts: its wall time and peak memory count from here."""
        self.stint_start = time.time()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def timing_update(self):
        start = time.perf_counter()
        yield
        self.totals["update_seconds"] += time.perf_counter() - start

    def carry_on(self, saved: dict):
        """The earlier stints' totals, from a checkpoint; this stint's commit joins theirs."""
        commits = saved["commits"]
        self.totals = {**saved, "commits": commits + [c for c in self.totals["commits"] if c not in commits]}

    def so_far(self) -> dict:
        """The totals, this stint's time and memory up to now included."""
        return {**self.totals, "seconds": self.totals["seconds"] + time.time() - self.stint_start,
                "peak_memory_mb": max(self.totals["peak_memory_mb"], peak_memory_mb(self.device))}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of the process (KiB on Linux)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"


def record(exp: Experiment, run_state: dict, steps: int, steps_per_epoch: int, device: torch.device,
           dev_sizes: dict[str, int]) -> dict:
    """A run's all_results.json: the eval_* keys of its best (or, results_from="final", its last)
    evaluation; train_runtime, update_ms, samples/s and peak memory cover all the work kept,
    over resumed runs too; train_steps counts the steps of this process."""
    best, history, cost, spe = run_state["best"], run_state["history"], run_state["cost"], steps_per_epoch
    best_evals = {f"eval_{k}": v for k, v in best.items() if k != "step"}
    results = {**best_evals, "epoch": best.get("step", 0) / spe}
    if exp.results_from == "final":  # run_glue's --do_eval scores the final model
        last = next((e for e in reversed(history) if "eval_overall" in e), {"step": 0})
        results = {**{k: v for k, v in last.items() if k.startswith("eval_")}, "epoch": last["step"] / spe,
                   **{f"best_{k}": v for k, v in best_evals.items()}, "best_epoch": results["epoch"]}
    if exp.max_eval_examples > 0:  # say so wherever these scores go
        results["dev_subset"] = dev_sizes
    world, step, seconds = distributed.world_size(), run_state["step"], cost["seconds"]
    losses = [e["loss"] for e in history if "loss" in e]
    return {**results,
            "train_runtime": seconds, "train_steps": steps, "global_step": step,
            "update_ms": 1000 * cost["update_seconds"] / max(1, step),
            "train_samples_per_second": step * exp.batch_size * world * len(exp.tasks) / seconds if seconds else 0.0,
            "train_loss": sum(losses) / len(losses) if losses else float("nan"),
            "peak_memory_mb": cost["peak_memory_mb"], "device": device_name(device), "world_size": world,
            "nonfinite_skipped": run_state["nonfinite_skipped"], "steps_per_epoch": spe,
            "stopped_at_deadline": run_state.get("stopped_at_deadline", False),
            "epochs": exp.epochs, "model": portable(exp.model), "preset": exp.name, "fast": exp.fast,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": portable_command(),
            "commit": ",".join(cost["commits"])}


def write_results(out: Path, results: dict, run_state: dict):
    """eval_results.json (the eval_* keys), all_results.json (everything), trainer_state.json."""
    evals = {k: v for k, v in results.items() if k.startswith(("eval_", "best_eval_")) or k == "epoch"}
    (out / "eval_results.json").write_text(json.dumps(evals, indent=2) + "\n")
    (out / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
    best = run_state["best"]
    (out / "trainer_state.json").write_text(json.dumps({
        "global_step": run_state["step"], "best_metric": best.get("overall"),
        "best_model_checkpoint": str(out / "best"), "best_step": best.get("step"),
        "log_history": run_state["history"]}, indent=2) + "\n")
