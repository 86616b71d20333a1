"""The training loop: one `Experiment` in, a run folder out.

    for step in range(start, total):
        batches = one batch per task              (batches.Stream: a pure function of step)
        update(batches)                           <- the one place where the presets differ:
                                                     separate | summed | pcgrad | gse, +SMART in task_loss
        every 1/eval_per_epoch epoch: evaluate, keep the best, write a checkpoint

The run folder holds config.json, log.jsonl, checkpoint-<step>/ (resumable, written
atomically), best/ (weights of the best overall dev score), eval_results.json,
all_results.json and trainer_state.json, named as Hugging Face's run_glue names them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import resource
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from minbert import distributed, metrics
from minbert.batches import Stream, bucketed, collate, encode, eval_batches, length_keys, to_device
from minbert.data import TASKS, read_split
from minbert.experiments import Experiment
from minbert.heads import MultitaskBert
from minbert.model import BertModel
from minbert.optim import AdamW, MFAC
from minbert.pcgrad import pcgrad_backward
from minbert.smart import MomentumTeacher, bregman_divergence, smart_regularizer
from minbert.tokenizer import BertTokenizer


class CheckpointError(ValueError):
    """A checkpoint in the run folder cannot be resumed from; the message names the file."""


@contextlib.contextmanager
def reading(path: Path):
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def build_optimizers(model: torch.nn.Module, exp: Experiment) -> list[torch.optim.Optimizer]:
    """AdamW on everything, or M-FAC on everything (or on the parameters whose names start
    with optim_args["only"], comma-separated) with AdamW on the rest."""
    args = dict(exp.optim_args)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    compile = args.pop("compile", exp.compile)
    if exp.optim == "adamw":
        decay = [p for n, p in named if p.dim() > 1]  # no decay on biases and LayerNorm
        rest = [p for n, p in named if p.dim() <= 1]
        return [AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=exp.lr,
                      weight_decay=exp.weight_decay, compile=compile, **args)]
    only = [s for s in str(args.pop("only", "")).split(",") if s]
    if "buffer_dtype" in args:
        args["buffer_dtype"] = getattr(torch, str(args["buffer_dtype"]).removeprefix("torch."))
    mine = [p for n, p in named if not only or n.startswith(tuple(only))]
    rest = [p for n, p in named if only and not n.startswith(tuple(only))]
    if not mine:
        raise ValueError(f"M-FAC: no parameter name starts with any of {only}")
    args.setdefault("lr", exp.lr)
    args.setdefault("weight_decay", exp.weight_decay)
    opts = [MFAC(mine, **args)]
    if rest:
        opts.append(AdamW(rest, lr=exp.lr, weight_decay=exp.weight_decay, compile=compile))
    return opts


def lr_factor(exp: Experiment, step: int, total: int) -> float:
    warmup = int(exp.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if exp.lr_schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return 1.0


def git_commit() -> str:
    """The code's commit, so a result can be traced to what made it ("+dirty" if changed)."""
    import subprocess
    here = Path(__file__).parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of the process (KiB on Linux)


class Trainer:
    def __init__(self, exp: Experiment, quiet: bool = False):
        exp.validate()
        # under torchrun: join the process group; rank 0 alone prints (minbert/distributed.py)
        self.device = distributed.setup(resolve_device(exp.device))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.exp, self.quiet = exp, quiet or not self.is_main
        self.commits = [git_commit()]  # of the code that runs, read now; a resumed run adds its own
        self.out = exp.out_dir
        self.amp = exp.bf16 and self.device.type == "cuda"
        seed = exp.seed
        self.init_seed = seed if exp.init_seed < 0 else exp.init_seed
        self.data_seed = seed if exp.data_seed < 0 else exp.data_seed

        self.tokenizer = BertTokenizer.from_pretrained(exp.model)
        bert = BertModel.from_pretrained(exp.model, attn_implementation=exp.attn_implementation)
        torch.manual_seed(self.init_seed)  # the new heads' initial weights
        self.model = MultitaskBert(bert, exp.heads, exp.pooling, exp.head_dropout, exp.binary_logit).to(self.device)
        self.model.train()
        if exp.compile:  # one compiled graph serves every layer; dynamic: batch and length vary
            from torch._functorch import config as functorch_config
            functorch_config.donated_buffer = False  # PCGrad and SMART backpropagate twice (retain_graph)
            for layer in self.model.bert.encoder.layer:
                layer.compile(dynamic=True)  # in place: the state-dict keys stay as they are
        torch.manual_seed(seed + self.rank)  # dropout, SMART noise: each rank its own

        self.train_data, self.dev_data = {}, {}
        siamese = exp.pair_input == "siamese"
        for t in exp.tasks:
            train = read_split(t, exp.data_dir, "train", on_error=exp.bad_rows)
            dev = read_split(t, exp.data_dir, "dev", on_error=exp.bad_rows)
            if exp.max_eval_examples > 0:
                dev = dev[:exp.max_eval_examples]
            for name, rows in (("train", train), ("dev", dev)):
                if getattr(rows, "skipped", None):
                    self.say(f"{t} {name}: skipped {len(rows.skipped)} malformed rows "
                             f"(lines {', '.join(str(e.line) for e in rows.skipped[:10])})")
            self.train_data[t] = encode(self.tokenizer, train, siamese and TASKS[t].pair, exp.max_length)
            self.dev_data[t] = encode(self.tokenizer, dev, siamese and TASKS[t].pair, exp.max_length)
        global_batch = exp.batch_size * self.world  # rank r trains on the r-th slice (train_batch)
        self.streams = {t: Stream(len(d), global_batch, self.data_seed, i)
                        for i, (t, d) in enumerate(self.train_data.items())}
        if exp.bucket_window > 1:  # less padding: batches of similar lengths
            for t, d in self.train_data.items():
                self.streams[t] = bucketed(self.streams[t], length_keys(d), exp.bucket_window)
                window = getattr(self.streams[t], "window", 1)
                if window < exp.bucket_window:
                    self.say(f"{t}: bucket window {window}, not {exp.bucket_window}: a window holds at most one pass "
                             f"over its {len(d)} examples" + ("; no bucketing" if window < 2 else ""))

        n = {t: len(d) for t, d in self.train_data.items()}
        if exp.steps_per_epoch > 0:
            self.steps_per_epoch = exp.steps_per_epoch
        elif exp.steps_per_epoch == -1:
            self.steps_per_epoch = math.ceil(n[exp.tasks[0]] / global_batch)
        else:  # the paper: the smallest training set once per epoch (times iters_mult)
            self.steps_per_epoch = int(exp.iters_mult * (min(n.values()) // global_batch))
        self.total_steps = math.ceil(exp.epochs * self.steps_per_epoch)
        self.stop_step = min(self.total_steps, exp.max_steps) if exp.max_steps > 0 else self.total_steps

        self.shared_params = list(self.model.bert.parameters())
        self.head_params = list(self.model.heads.parameters())
        self.optimizers = build_optimizers(self.model, exp)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]
        self.teacher = MomentumTeacher(self.model) if exp.bregman_weight > 0 else None

        self.step = 0
        self.best = {"overall": -math.inf}
        self.history: list[dict] = []
        self.nonfinite_skipped = 0
        # The cost of the work kept, across resumed sessions (a checkpoint carries it on):
        self.update_seconds = 0.0  # time in update() alone, without evaluation and checkpoints
        self.earlier_seconds, self.earlier_peak_mb = 0.0, 0.0  # wall time and peak memory of earlier sessions
        self.session_start = time.time()

    # ---------------------------------------------------------------- logging

    def say(self, msg: str):
        if not self.quiet:
            tqdm.write(msg)

    def log(self, entry: dict):
        self.history.append(entry)
        if self.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    # ---------------------------------------------------------------- one step

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()

    def train_batch(self, task: str, step: int) -> dict:
        data, B = self.train_data[task], self.exp.batch_size
        index = self.streams[task].batch_indices(step)[self.rank * B:(self.rank + 1) * B]  # this rank's slice
        return to_device(collate(data, index, self.tokenizer.pad_token_id), self.device)

    def task_loss(self, task: str, batch: dict) -> torch.Tensor:
        """The task's loss, plus SMART's smoothness term and the Bregman term when switched on."""
        exp, head = self.exp, self.model.heads[task]
        with self.autocast():
            embeds = self.model.embed(task, batch)
            output, vectors = self.model.from_embeds(task, batch, embeds, return_vectors=True)
            loss = head.loss(output, batch["labels"], vectors)
            if exp.smart:
                reg = smart_regularizer(lambda es: self.model.from_embeds(task, batch, es), embeds, output,
                                        head.smart_kind, sigma=exp.smart_sigma, eta=exp.smart_eta,
                                        eps=exp.smart_eps, steps=exp.smart_steps)
                loss = loss + exp.smart_weight * reg
            if self.teacher is not None:
                loss = loss + exp.bregman_weight * bregman_divergence(output, self.teacher(task, batch), head.smart_kind)
        return loss

    def apply(self, losses: dict[str, torch.Tensor], surgery: bool = False) -> bool:
        """One optimizer update from these losses; PCGrad combines them when `surgery`."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if not distributed.all_ranks(all(torch.isfinite(l).item() for l in losses.values())):
            return self.nonfinite(f"loss {({t: l.item() for t, l in losses.items()})}")
        if surgery:
            g = torch.Generator().manual_seed(self.exp.seed * 7919 + self.step)  # task order, per step
            pcgrad_backward(list(losses.values()), self.shared_params, self.head_params, generator=g,
                            reduce_fn=distributed.average)  # task gradients averaged over ranks, then projected
        else:
            sum(losses.values()).backward()
            distributed.average_grads(self.model.parameters())  # what DDP does; a no-op in one process
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.exp.max_grad_norm or math.inf)
        if not torch.isfinite(norm):
            return self.nonfinite("gradient norm")
        for opt in self.optimizers:
            opt.step()
        if self.teacher is not None:
            self.teacher.update(self.model, self.exp.bregman_beta)
        return True

    def nonfinite(self, what: str) -> bool:
        if self.exp.nonfinite == "stop":
            raise FloatingPointError(
                f"non-finite {what} at step {self.step + 1}; stopped. The last good checkpoint in {self.out} "
                f"is intact; rerun with --nonfinite skip to skip such steps, or lower --lr")
        self.nonfinite_skipped += 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return False

    def update(self, step: int) -> dict[str, float]:
        """Where the presets differ (CS224N paper, section 5.3). Returns the task losses."""
        tasks, kind = self.exp.tasks, self.exp.update
        batches = {t: self.train_batch(t, step) for t in tasks}
        if kind == "separate":  # baseline: each task its own update, one after another
            losses = {}
            for t in tasks:
                losses[t] = self.task_loss(t, batches[t])
                self.apply({t: losses[t]})
        else:
            losses = {t: self.task_loss(t, batches[t]) for t in tasks}
            # summed: one update on L_sst + L_qqp + L_sts; pcgrad: projected task gradients;
            # gse: the PCGrad update, then a second update on the summed loss, recomputed.
            self.apply(losses, surgery=kind in ("pcgrad", "gse"))
            if kind == "gse":
                self.apply({t: self.task_loss(t, batches[t]) for t in tasks})
        return distributed.average_values({t: l.item() for t, l in losses.items()})

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, data: dict) -> dict[str, list]:
        """{task: Encoded} -> {task: predictions in data order}."""
        self.model.eval()
        out = {}
        for t, d in data.items():
            preds = [None] * len(d)
            for index in eval_batches(d, self.exp.eval_batch_size):
                batch = to_device(collate(d, index, self.tokenizer.pad_token_id), self.device)
                with self.autocast():
                    y = self.model(t, batch)
                for i, v in zip(index, self.model.heads[t].predict(y.float()).tolist()):
                    preds[i] = v
            out[t] = preds
        self.model.train()
        return out

    def evaluate(self) -> dict[str, float]:
        """Dev metrics: `accuracy`, `f1`, ... for one task, `sst_accuracy`, ... for several, and `overall`."""
        preds = self.predict(self.dev_data)
        result, main = {}, {}
        for t, p in preds.items():
            spec = TASKS[t]
            m = metrics.task_metrics(spec.kind, spec.num_labels, p, self.dev_data[t].labels)
            main[t] = (spec.metric, m[spec.metric])
            prefix = "" if len(preds) == 1 else f"{t}_"
            result.update({prefix + k: v for k, v in m.items()})
            if len(preds) == 1:
                result["combined_score"] = metrics.combined_score(m)
        result["overall"] = metrics.overall(main)
        return result

    # ---------------------------------------------------------------- checkpoints

    def checkpoints(self) -> list[Path]:
        found = [p for p in self.out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self):
        """Written into a temporary folder, then renamed: a killed run never leaves a half checkpoint."""
        rngs = distributed.gather((torch.get_rng_state(),  # every rank's random state, rank 0's first
                                   torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []))
        if not self.is_main:  # rank 0 alone writes
            return
        tmp = self.out / f".tmp-checkpoint-{self.step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "model.safetensors"))
        state = {"step": self.step, "best": self.best, "history": self.history,
                 "nonfinite_skipped": self.nonfinite_skipped,
                 "optimizers": [o.state_dict() for o in self.optimizers], "rng": rngs[0][0], "cuda_rng": rngs[0][1]}
        if self.world > 1:
            state["rank_rngs"] = rngs
        if self.teacher is not None:
            state["teacher"] = self.teacher.module.state_dict()
        state["cost"] = {"seconds": self.earlier_seconds + time.time() - self.session_start,
                         "update_seconds": self.update_seconds, "commits": self.commits,
                         "peak_memory_mb": max(self.earlier_peak_mb, peak_memory_mb(self.device))}
        torch.save(state, tmp / "state.pt")
        os.replace(tmp, self.out / f"checkpoint-{self.step}")
        for old in self.checkpoints()[:-1]:
            shutil.rmtree(old)

    def resume(self) -> bool:
        if self.is_main:
            for stale in self.out.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a write that was cut off
        ckpts = self.checkpoints()
        ckpt = distributed.broadcast(ckpts[-1] if ckpts else None)  # all ranks resume from rank 0's choice
        if ckpt is None:
            return False
        with reading(ckpt / "model.safetensors"):
            self.model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(self.device)))
        with reading(ckpt / "state.pt"):
            state = torch.load(ckpt / "state.pt", map_location=self.device, weights_only=True)
            for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(s)
        rngs = state.get("rank_rngs") or [(state["rng"], state["cuda_rng"])]
        if len(rngs) != self.world:
            self.say(f"{ckpt} was written by {len(rngs)} process(es), this run has {self.world}: "
                     f"batches and dropout will not continue exactly as the interrupted run would have")
        rng, cuda_rng = rngs[self.rank % len(rngs)]
        torch.set_rng_state(rng.cpu())
        if cuda_rng:
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_rng])
        if self.teacher is not None:
            self.teacher.module.load_state_dict(state["teacher"])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.nonfinite_skipped = state["nonfinite_skipped"]
        if "cost" in state:  # checkpoints written before it was kept lack it
            cost = state["cost"]
            self.earlier_seconds, self.update_seconds = cost["seconds"], cost["update_seconds"]
            self.earlier_peak_mb = cost["peak_memory_mb"]
            self.commits = cost["commits"] + [c for c in self.commits if c not in cost["commits"]]
        # log.jsonl may hold lines written after this checkpoint: rewrite it from the history.
        if self.is_main:
            (self.out / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.history))
        self.say(f"resumed from {ckpt} at step {self.step}")
        return True

    def save_best(self, result: dict):
        tmp = self.out / "best" / ".model.safetensors.tmp"
        tmp.parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        os.replace(tmp, self.out / "best" / "model.safetensors")
        self.best = {**result, "step": self.step}

    # ---------------------------------------------------------------- the loop

    def train(self) -> dict:
        exp = self.exp
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            exp.save(self.out / "config.json")
            (self.out / "bert_config.json").write_text(json.dumps(self.model.bert.config.to_dict(), indent=2))
        resumed = self.resume()
        if not resumed and self.is_main:
            (self.out / "log.jsonl").write_text("")
        finished = resumed and self.step >= self.stop_step and (self.out / "all_results.json").exists()
        if distributed.broadcast(finished):  # the same command again: nothing to do, the record stands
            self.say(f"{exp.name}: already finished at step {self.step}; results in {self.out}")
            return json.loads((self.out / "all_results.json").read_text())
        self.say(f"{exp.name}: {self.total_steps} steps ({self.steps_per_epoch}/epoch), update={exp.update}, "
                 f"smart={exp.smart}, optim={exp.optim}, device={self.device}, tasks={','.join(exp.tasks)}"
                 + (f", {self.world} processes of batch {exp.batch_size}" if self.world > 1 else ""))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start_step = self.step
        self.session_start = time.time()
        bar = tqdm(total=self.stop_step, initial=self.step, desc=exp.name, disable=self.quiet, dynamic_ncols=True)
        running = None
        while self.step < self.stop_step:
            factor = lr_factor(exp, self.step, self.total_steps)
            for opt in self.optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
            t_update = time.perf_counter()
            losses = self.update(self.step)
            self.update_seconds += time.perf_counter() - t_update
            self.step += 1
            loss = sum(losses.values())
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)  # shown at the next redraw, not a line per step in a log
            if self.step % 50 == 0 or self.step == self.stop_step:
                self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": loss,
                          **{f"loss_{t}": v for t, v in losses.items()}, "lr": exp.lr * factor})
            if self.eval_due():
                if self.is_main:  # the other ranks wait for it in their next collective call
                    result = self.evaluate()
                    self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                              **{f"eval_{k}": v for k, v in result.items()}})
                    self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                    if result["overall"] > self.best["overall"]:
                        self.save_best(result)
                if exp.save_checkpoints:
                    self.save_checkpoint()  # on every rank: it gathers their random states
        bar.close()
        return self.finish(self.step - start_step)

    def eval_due(self) -> bool:
        """After each 1/eval_per_epoch of an epoch (rounded up to a whole step), and at the end."""
        k, spe = self.exp.eval_per_epoch, self.steps_per_epoch
        return (self.step * k) // spe > ((self.step - 1) * k) // spe or self.step == self.stop_step

    def finish(self, steps: int) -> dict:
        """The run's record. train_runtime, update_ms, samples/s and peak memory cover all the
        work kept, over resumed sessions too; train_steps counts this session's steps."""
        exp = self.exp
        best = {f"eval_{k}": v for k, v in self.best.items() if k != "step"}
        best["epoch"] = self.best.get("step", 0) / self.steps_per_epoch
        seconds = self.earlier_seconds + time.time() - self.session_start
        samples = self.step * exp.batch_size * self.world * len(exp.tasks)
        train_losses = [e["loss"] for e in self.history if "loss" in e]
        run = {
            "train_runtime": seconds, "train_steps": steps, "global_step": self.step,
            "update_ms": 1000 * self.update_seconds / max(1, self.step),
            "train_samples_per_second": samples / seconds if seconds else 0.0,
            "train_loss": sum(train_losses) / len(train_losses) if train_losses else float("nan"),
            "peak_memory_mb": max(self.earlier_peak_mb, peak_memory_mb(self.device)), "device": self.device_name(),
            "world_size": self.world,
            "nonfinite_skipped": self.nonfinite_skipped, "steps_per_epoch": self.steps_per_epoch,
            "epochs": exp.epochs, "model": exp.model, "preset": exp.name,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": " ".join(sys.argv),
            "commit": ",".join(self.commits),
        }
        if not self.is_main:
            return {**best, **run}
        (self.out / "eval_results.json").write_text(json.dumps(best, indent=2) + "\n")
        (self.out / "all_results.json").write_text(json.dumps({**best, **run}, indent=2) + "\n")
        (self.out / "trainer_state.json").write_text(json.dumps({
            "global_step": self.step, "best_metric": self.best.get("overall"),
            "best_model_checkpoint": str(self.out / "best"), "best_step": self.best.get("step"),
            "log_history": self.history}, indent=2) + "\n")
        self.say(f"best overall {self.best.get('overall', float('nan')):.4f} at step {self.best.get('step')}; "
                 f"results in {self.out}")
        return {**best, **run}

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({os.cpu_count()} cores, torch {torch.__version__})"


def load_run(run_dir: str | Path, device: str = "auto", which: str = "best") -> Trainer:
    """A finished run folder -> a Trainer holding its best (or latest checkpoint's) weights."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.json")
    exp = Experiment.from_dict(json.loads((run_dir / "config.json").read_text()))
    exp.device, exp.output_dir = device, str(run_dir)
    exp.compile = False  # predicting once does not repay compiling
    trainer = Trainer(exp, quiet=True)
    weights = run_dir / "best" / "model.safetensors" if which == "best" else trainer.checkpoints()[-1] / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}; did the run evaluate at least once?")
    trainer.model.load_state_dict(load_file(str(weights), device=str(trainer.device)))
    return trainer
