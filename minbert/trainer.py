"""The training loop: one `Experiment` in, a run folder out.

    for step in range(start, stop):
        batches = one batch per task              (batches.Stream: a pure function of step)
        update(batches)                           <- the one place where the presets differ:
                                                     separate | summed | pcgrad | gse, +SMART in task_loss
        every 1/eval_per_epoch epoch: evaluate, keep the best, write a checkpoint

What is not the loop lives elsewhere: building the model and data (build.py), predicting
and scoring (evaluation.py), the run folder and its files (checkpoint.py), the optimizers
(optim/), progress lines (progress.py), curves.png (plots.py), several seeds or a seed
search (sweeps.py).
"""
from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime, timezone

import torch
from torch._functorch import config as functorch_config

from minbert import checkpoint, distributed
from minbert.batches import Stream, bucketed, collate, length_keys, to_device
from minbert.build import build_model, read_data, resolve_device
from minbert.evaluation import autocast, evaluate
from minbert.experiments import Experiment
from minbert.fastpaths import check_fast_paths
from minbert.optim import MFAC, AdamW
from minbert.pcgrad import pcgrad_backward
from minbert.plots import plot_run
from minbert.progress import Progress, say
from minbert.smart import MomentumTeacher, bregman_divergence, smart_regularizer

CheckpointError = checkpoint.CheckpointError  # what a caller catches when a run cannot resume


def build_optimizers(model: torch.nn.Module, exp: Experiment) -> list[torch.optim.Optimizer]:
    """AdamW on everything, or M-FAC on everything (or on the parameters whose names start
    with optim_args["only"], comma-separated) with AdamW on the rest. AdamW runs its readable
    loop (`AdamW._update`) unless exp.fast (or optim_args foreach) picks the multi-tensor path."""
    args = dict(exp.optim_args)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    compile = args.pop("compile", exp.compile)
    foreach = args.pop("foreach", exp.fast)
    if exp.optim == "adamw":
        decay = [p for n, p in named if p.dim() > 1]  # no decay on biases and LayerNorm
        rest = [p for n, p in named if p.dim() <= 1]
        return [AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=exp.lr,
                      weight_decay=exp.weight_decay, foreach=foreach, compile=compile, **args)]
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
        opts.append(AdamW(rest, lr=exp.lr, weight_decay=exp.weight_decay, foreach=foreach, compile=compile))
    return opts


def lr_factor(exp: Experiment, step: int, total: int) -> float:
    """Linear warm-up over warmup_ratio of the steps, then constant or linear decay to 0."""
    warmup = int(exp.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if exp.lr_schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    return 1.0


def steps_per_epoch(exp: Experiment, sizes: dict[str, int], global_batch: int) -> int:
    if exp.steps_per_epoch > 0:
        return exp.steps_per_epoch
    if exp.steps_per_epoch == -1:  # one pass over the (first) task's training set, as run_glue
        return math.ceil(sizes[exp.tasks[0]] / global_batch)
    return int(exp.iters_mult * (min(sizes.values()) // global_batch))  # the paper: the smallest set once


class Trainer:
    def __init__(self, exp: Experiment, quiet: bool = False):
        exp.validate()
        self.exp, self.out = exp, exp.out_dir
        # under torchrun: join the process group; rank 0 alone prints (minbert/distributed.py)
        self.device = distributed.setup(resolve_device(exp.device))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.quiet = quiet or not self.is_main
        checkpoint.check_run_folder(self.out, exp)  # another run's folder: stop before any work
        check_fast_paths(exp)  # --fast: the fast paths must compute what the readable ones do
        self.commits = [checkpoint.git_commit()]  # of the code that runs; a resumed run adds its own

        self.tokenizer, self.model = build_model(exp, self.device)
        self.model.train()
        if exp.compile:  # one compiled graph serves every layer; dynamic: batch and length vary
            functorch_config.donated_buffer = False  # PCGrad and SMART backpropagate twice (retain_graph)
            for layer in self.model.bert.encoder.layer:
                layer.compile(dynamic=True)  # in place: the state-dict keys stay as they are
        torch.manual_seed(exp.seed + self.rank)  # dropout, SMART noise: each rank its own

        self.train_data = read_data(exp, self.tokenizer, "train")
        self.dev_data = read_data(exp, self.tokenizer, "dev", exp.max_eval_examples)
        self.streams = self.make_streams()
        self.steps_per_epoch = steps_per_epoch(exp, {t: len(d) for t, d in self.train_data.items()},
                                               exp.batch_size * self.world)
        self.total_steps = math.ceil(exp.epochs * self.steps_per_epoch)
        self.stop_step = min(self.total_steps, exp.max_steps) if exp.max_steps > 0 else self.total_steps

        self.shared_params = list(self.model.bert.parameters())
        self.head_params = list(self.model.heads.parameters())
        self.optimizers = build_optimizers(self.model, exp)
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["initial_lr"] = g["lr"]
        self.teacher = MomentumTeacher(self.model) if exp.bregman_weight > 0 else None

        self.step, self.best, self.history, self.nonfinite_skipped = 0, {"overall": -math.inf}, [], 0
        # The cost of the work kept, across resumed sessions (a checkpoint carries it on):
        self.update_seconds = 0.0  # time in update() alone, without evaluation and checkpoints
        self.earlier_seconds, self.earlier_peak_mb = 0.0, 0.0  # wall time and peak memory of earlier sessions
        self.session_start = time.time()
        self.bar: Progress | None = None  # train() starts it

    def make_streams(self) -> dict:
        """One endless stream of batch indices per task; rank r trains on the r-th slice."""
        exp, global_batch = self.exp, self.exp.batch_size * self.world
        data_seed = exp.seed if exp.data_seed < 0 else exp.data_seed
        streams = {t: Stream(len(d), global_batch, data_seed, i) for i, (t, d) in enumerate(self.train_data.items())}
        if exp.bucket_window > 1:  # less padding: batches of similar lengths
            for t, d in self.train_data.items():
                streams[t] = bucketed(streams[t], length_keys(d), exp.bucket_window)
                window = getattr(streams[t], "window", 1)
                if window < exp.bucket_window:
                    self.say(f"{t}: bucket window {window}, not {exp.bucket_window}: a window holds at most one pass "
                             f"over its {len(d)} examples" + ("; no bucketing" if window < 2 else ""))
        return streams

    def say(self, msg: str):
        if not self.quiet:
            say(msg)

    def log(self, entry: dict):
        self.history.append(entry)
        if self.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")

    # ---------------------------------------------------------------- one step

    def train_batch(self, task: str, step: int) -> dict:
        data, B = self.train_data[task], self.exp.batch_size
        index = self.streams[task].batch_indices(step)[self.rank * B:(self.rank + 1) * B]  # this rank's slice
        return to_device(collate(data, index, self.tokenizer.pad_token_id), self.device)

    def task_loss(self, task: str, batch: dict) -> torch.Tensor:
        """The task's loss, plus SMART's smoothness term and the Bregman term when switched on."""
        exp, head = self.exp, self.model.heads[task]
        with autocast(self.device, exp.bf16):
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
                            reduction=self.exp.pcgrad_reduction,
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
            # gse: the PCGrad update (mean of the projected gradients), then one on the summed loss, recomputed.
            self.apply(losses, surgery=kind in ("pcgrad", "gse"))
            if kind == "gse":
                self.apply({t: self.task_loss(t, batches[t]) for t in tasks})
        return distributed.average_values({t: l.item() for t, l in losses.items()})

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.dev_data, self.exp.eval_batch_size, self.tokenizer.pad_token_id,
                        self.device, self.exp.bf16)

    # ---------------------------------------------------------------- the loop

    def train(self, stop_step: int | None = None) -> dict:
        """Train from the latest checkpoint (if any) to stop_step (default: the run's end, or
        max_steps); returns the run's record, also written as all_results.json."""
        exp = self.exp
        stop = self.stop_step if stop_step is None else min(stop_step, self.total_steps)
        if self.is_main:
            checkpoint.start_run_folder(self.out, exp, self.model.bert.config.to_dict())
        resumed = self.resume()
        if not resumed and self.is_main:
            (self.out / "log.jsonl").write_text("")
        finished = resumed and self.step >= stop and (self.out / "all_results.json").exists()
        if distributed.broadcast(finished):  # the same command again: nothing to do, the record stands
            self.say(f"{exp.name}: already finished at step {self.step}; results in {self.out}")
            return json.loads((self.out / "all_results.json").read_text())
        self.say(f"{exp.name}: {stop - self.step} steps to take (to step {stop} of {self.total_steps}, "
                 f"{self.steps_per_epoch}/epoch), update={exp.update}, smart={exp.smart}, optim={exp.optim}, "
                 f"device={self.device}, tasks={','.join(exp.tasks)}" + (", fast paths" if exp.fast else "")
                 + (f", {self.world} processes of batch {exp.batch_size}" if self.world > 1 else ""))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start_step, self.session_start = self.step, time.time()
        self.bar = Progress(stop, self.step, exp.name, quiet=self.quiet)
        while self.step < stop:
            factor = lr_factor(exp, self.step, self.total_steps)
            for opt in self.optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
            t_update = time.perf_counter()
            losses = self.update(self.step)
            self.update_seconds += time.perf_counter() - t_update
            self.step += 1
            self.bar.update(sum(losses.values()))
            if self.step % exp.logging_steps == 0 or self.step == stop:
                self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": sum(losses.values()),
                          **{f"loss_{t}": v for t, v in losses.items()}, "lr": exp.lr * factor})
            if self.eval_due(stop):
                if self.is_main:  # the other ranks wait for it in their next collective call
                    result = self.evaluate()
                    self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                              **{f"eval_{k}": v for k, v in result.items()}})
                    self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                    if result["overall"] > self.best["overall"]:
                        checkpoint.save_best(self.out, self.model)
                        self.best = {**result, "step": self.step}
                if exp.save_checkpoints:
                    self.save()  # on every rank: it gathers their random states
        self.bar.close()
        return self.finish(self.step - start_step)

    def eval_due(self, stop: int) -> bool:
        """After each 1/eval_per_epoch of an epoch (rounded up to a whole step), and at the end."""
        k, spe = self.exp.eval_per_epoch, self.steps_per_epoch
        return (self.step * k) // spe > ((self.step - 1) * k) // spe or self.step == stop

    # ---------------------------------------------------------------- checkpoints and the record

    def progress(self) -> dict:
        """What a checkpoint keeps besides weights and optimizers."""
        return {"step": self.step, "best": self.best, "history": self.history,
                "nonfinite_skipped": self.nonfinite_skipped,
                "cost": {"seconds": self.earlier_seconds + time.time() - self.session_start,
                         "update_seconds": self.update_seconds, "commits": self.commits,
                         "peak_memory_mb": max(self.earlier_peak_mb, checkpoint.peak_memory_mb(self.device))}}

    def save(self):
        rngs = distributed.gather((torch.get_rng_state(),  # every rank's random state, rank 0's first
                                   torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []))
        if self.is_main:  # rank 0 alone writes
            progress = self.progress()
            if self.teacher is not None:
                progress["teacher"] = self.teacher.module.state_dict()
            checkpoint.save_checkpoint(self.out, self.model, self.optimizers, progress, rngs)

    def resume(self) -> bool:
        if self.is_main:
            checkpoint.remove_partial(self.out)
        ckpts = checkpoint.checkpoints(self.out)
        ckpt = distributed.broadcast(ckpts[-1] if ckpts else None)  # all ranks resume from rank 0's choice
        if ckpt is None:
            return False
        state = checkpoint.load_checkpoint(ckpt, self.model, self.optimizers, self.device)
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

    def finish(self, steps: int) -> dict:
        """The run's record: the eval_* keys of its best (or, results_from="final", its last)
        evaluation; train_runtime, update_ms, samples/s and peak memory cover all the work kept,
        over resumed sessions too; train_steps counts this session's steps."""
        exp, spe = self.exp, self.steps_per_epoch
        best = {f"eval_{k}": v for k, v in self.best.items() if k != "step"}
        results = {**best, "epoch": self.best.get("step", 0) / spe}
        if exp.results_from == "final":  # run_glue's --do_eval scores the final model
            last = next((e for e in reversed(self.history) if "eval_overall" in e), {"step": 0})
            results = {**{k: v for k, v in last.items() if k.startswith("eval_")}, "epoch": last["step"] / spe,
                       **{f"best_{k}": v for k, v in best.items()}, "best_epoch": results["epoch"]}
        if exp.max_eval_examples > 0:  # say so wherever these scores go
            results["dev_subset"] = {t: len(d) for t, d in self.dev_data.items()}
        seconds = self.earlier_seconds + time.time() - self.session_start
        samples = self.step * exp.batch_size * self.world * len(exp.tasks)
        train_losses = [e["loss"] for e in self.history if "loss" in e]
        results.update({
            "train_runtime": seconds, "train_steps": steps, "global_step": self.step,
            "update_ms": 1000 * self.update_seconds / max(1, self.step),
            "train_samples_per_second": samples / seconds if seconds else 0.0,
            "train_loss": sum(train_losses) / len(train_losses) if train_losses else float("nan"),
            "peak_memory_mb": max(self.earlier_peak_mb, checkpoint.peak_memory_mb(self.device)),
            "device": checkpoint.device_name(self.device), "world_size": self.world,
            "nonfinite_skipped": self.nonfinite_skipped, "steps_per_epoch": spe,
            "epochs": exp.epochs, "model": exp.model, "preset": exp.name, "fast": exp.fast,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": " ".join(sys.argv),
            "commit": ",".join(self.commits)})
        if self.is_main:
            checkpoint.write_results(self.out, results, self.progress())
            plot_run(self.out)  # curves.png: losses and dev scores against epoch
            self.say(f"best overall {self.best.get('overall', float('nan')):.4f} at step {self.best.get('step')}; "
                     f"results in {self.out}")
        return results
