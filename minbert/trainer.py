"""The training loop: one `Experiment` in, a run folder out.

    for step in range(start, stop):
        batches = one batch per task              (batches.Stream: a pure function of step)
        update(batches)                           <- the one place where the presets differ:
                                                     separate | summed | pcgrad | gse, +SMART in task_loss
        every 1/eval_per_epoch epoch: evaluate, keep the best, write a checkpoint

What is not the loop lives elsewhere: building the model and data (run/build.py), predicting
and scoring (evaluation.py), the run folder and its files (run/folder.py), the optimizers
(optim/), progress lines (run/progress.py), curves.png (sweep/plots.py), several seeds or a
seed search (sweep/sweeps.py).
"""
from __future__ import annotations

import json
import math
import time

import torch

from minbert.run import distributed, folder
from minbert.batches import collate, make_streams, to_device
from minbert.run.build import build_model, compile_layers, read_data, resolve_device
from minbert.evaluation import autocast, evaluate
from minbert.experiments import Experiment
from minbert.fastpaths import check_fast_paths
from minbert.optim import MFAC, AdamW
from minbert.pcgrad import pcgrad_backward
from minbert.sweep.plots import plot_run
from minbert.run.progress import Progress, say
from minbert.smart import MomentumTeacher, bregman_term, smart_regularizer

CheckpointError = folder.CheckpointError  # what a caller catches when a run cannot resume


def build_optimizers(model: torch.nn.Module, exp: Experiment) -> list[torch.optim.Optimizer]:
    """AdamW on everything, or M-FAC on everything (or on the parameters whose names start
    with optim_args["only"], comma-separated) with AdamW on the rest. AdamW runs its readable
    loop (`AdamW._update`) unless exp.fast (or optim_args foreach) picks the multi-tensor path, or
    optim_args fused torch's fused kernel."""
    args = dict(exp.optim_args)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fused = bool(args.get("fused"))  # torch's fused AdamW kernel stands in for ours (foreach, compiled)
    compile = args.pop("compile", exp.compile and not fused)
    foreach = args.pop("foreach", exp.fast and not fused)
    if exp.optim == "adamw":
        decay = [p for n, p in named if p.dim() > 1]  # no decay on biases and LayerNorm
        rest = [p for n, p in named if p.dim() <= 1]
        opts = [AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=exp.lr,
                      weight_decay=exp.weight_decay, foreach=foreach, compile=compile, **args)]
        return with_initial_lr(opts)
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
    if rest:  # AdamW on what M-FAC leaves, with no decay on biases and LayerNorm
        opts.append(AdamW([{"params": [p for p in rest if p.dim() > 1]},
                           {"params": [p for p in rest if p.dim() <= 1], "weight_decay": 0.0}],
                          lr=exp.lr, weight_decay=exp.weight_decay, foreach=foreach, compile=compile))
    return with_initial_lr(opts)


def with_initial_lr(opts: list) -> list:
    """Each param group remembers its lr: the schedule (lr_factor) scales that."""
    for opt in opts:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
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


def eval_due(step: int, stop: int, per_epoch: int, steps_per_epoch: int) -> bool:
    """After each 1/per_epoch of an epoch (rounded up to a whole step), and at the end."""
    return (step * per_epoch) // steps_per_epoch > ((step - 1) * per_epoch) // steps_per_epoch or step == stop


def describe(exp: Experiment, device: torch.device, world: int) -> str:
    smart = exp.smart_reading if exp.smart else False
    return (f"update={exp.update}, smart={smart}, optim={exp.optim}, device={device}, "
            f"tasks={','.join(exp.tasks)}" + (", fast paths" if exp.fast else "")
            + (f", {world} processes of batch {exp.batch_size}" if world > 1 else ""))


class Trainer:
    def __init__(self, exp: Experiment, quiet: bool = False):
        exp.validate()
        self.exp, self.out = exp, exp.out_dir
        # under torchrun: join the process group; rank 0 alone prints (minbert/run/distributed.py)
        self.device = distributed.setup(resolve_device(exp.device))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.quiet = quiet or not self.is_main
        folder.check_run_folder(self.out, exp)  # another run's folder: stop before any work

        if self.device.type == "cuda":  # float32 matmuls in full float32, not TF32 (docs/GPU.md, precision)
            torch.set_float32_matmul_precision("highest")
        self.tokenizer, self.model = build_model(exp, self.device)
        self.model.train()
        if exp.compile:
            compile_layers(self.model.bert, fixed_shapes=exp.pad_to_multiple_of > 0)
        # CUDA graphs (compile_layers' fixed shapes): each update is one iteration of graph replays
        self.cuda_graphs = exp.compile and exp.pad_to_multiple_of > 0 and self.device.type == "cuda"
        torch.manual_seed(exp.seed + self.rank)  # dropout, SMART noise: each rank its own

        self.train_data = read_data(exp, self.tokenizer, "train")
        self.dev_data = read_data(exp, self.tokenizer, "dev", exp.max_eval_examples)
        self.streams, notes = make_streams(self.train_data, exp.batch_size * self.world,
                                           exp.seed if exp.data_seed < 0 else exp.data_seed, exp.bucket_window)
        for note in notes:
            self.say(note)
        self.steps_per_epoch = steps_per_epoch(exp, {t: len(d) for t, d in self.train_data.items()},
                                               exp.batch_size * self.world)
        if self.steps_per_epoch < 1:
            raise ValueError(f"experiment {exp.name!r}: 0 steps per epoch: the smallest training set "
                             f"({min(len(d) for d in self.train_data.values())} examples) holds no global batch of "
                             f"{exp.batch_size * self.world} (times iters_mult {exp.iters_mult}); lower --batch_size")
        self.total_steps = math.ceil(exp.epochs * self.steps_per_epoch)
        self.stop_step = min(self.total_steps, exp.max_steps) if exp.max_steps > 0 else self.total_steps

        self.shared_params = list(self.model.bert.parameters())
        self.head_params = list(self.model.heads.parameters())
        self.optimizers = build_optimizers(self.model, exp)
        check_fast_paths(self.model, self.optimizers)  # --fast: the fast paths must compute what the readable ones do
        self.teacher = MomentumTeacher(self.model) if exp.bregman_weight > 0 else None

        self.step, self.best, self.history, self.nonfinite_skipped = 0, {"overall": -math.inf}, [], 0
        self.stopped_at_deadline = False
        # The cost of the work kept over resumed sessions (a checkpoint carries it on): wall time and
        # peak memory of earlier sessions, time in update() alone, and the commits of the code that ran.
        self.cost = {"seconds": 0.0, "update_seconds": 0.0, "peak_memory_mb": 0.0, "commits": [folder.git_commit()]}
        self.session_start = time.time()

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
        return to_device(collate(data, index, self.tokenizer.pad_token_id, self.exp.pad_to_multiple_of,
                                 self.exp.max_length), self.device)

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
                                        eps=exp.smart_eps, steps=exp.smart_steps, reading=exp.smart_reading)
                loss = loss + exp.smart_weight * reg
            if self.teacher is not None:
                breg = bregman_term(lambda: self.model.from_embeds(task, batch, [e.float() for e in embeds]),
                                    lambda: self.teacher(task, batch), output, head.smart_kind)
                loss = loss + exp.bregman_weight * breg
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
                f"is intact; rerun with --nonfinite skip to skip such steps, or lower --lr in a new --output_dir")
        self.nonfinite_skipped += 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return False

    def update(self, step: int) -> dict[str, float]:
        """Where the presets differ (CS224N paper, section 5.3). Returns the task losses."""
        tasks, kind = self.exp.tasks, self.exp.update
        if self.cuda_graphs:  # the outputs of the last update's graph replays may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
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
                        self.device, self.exp.bf16, (self.exp.pad_to_multiple_of, self.exp.max_length))

    # ---------------------------------------------------------------- the loop

    def train(self, stop_step: int | None = None) -> dict:
        """Train from the latest checkpoint (if any) to stop_step (default: the run's end, or
        max_steps); returns the run's record, also written as all_results.json."""
        exp = self.exp
        stop = self.stop_step if stop_step is None else min(stop_step, self.total_steps)
        if self.is_main:
            folder.start_run_folder(self.out, exp, self.model.bert.config.to_dict())
        resumed = self.resume()
        record = self.out / "all_results.json"  # a finished run, with or without checkpoints
        finished = record.exists() and json.loads(record.read_text()).get("global_step", 0) >= stop \
            and (resumed or not exp.save_checkpoints)
        if distributed.broadcast(finished):  # the same command again: nothing to do, the record stands
            self.say(f"{exp.name}: already finished at step {self.step}; results in {self.out}")
            return json.loads((self.out / "all_results.json").read_text())
        if not resumed and self.is_main:
            (self.out / "log.jsonl").write_text("")
        self.say(f"{exp.name}: {stop - self.step} steps to take (to step {stop} of {self.total_steps}, "
                 f"{self.steps_per_epoch}/epoch), {describe(exp, self.device, self.world)}")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start_step, self.session_start = self.step, time.time()
        deadline = exp.deadline_seconds()
        bar = Progress(stop, self.step, exp.name, quiet=self.quiet)
        while self.step < stop:
            if deadline is not None and distributed.broadcast(time.time() >= deadline):  # rank 0's clock decides
                self.stopped_at_deadline = True
                break
            factor = lr_factor(exp, self.step, self.total_steps)
            for opt in self.optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
            t_update = time.perf_counter()
            losses = self.update(self.step)
            self.cost["update_seconds"] += time.perf_counter() - t_update
            self.step += 1
            bar.update(sum(losses.values()))
            if self.step % exp.logging_steps == 0 or self.step == stop:
                self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": sum(losses.values()),
                          **{f"loss_{t}": v for t, v in losses.items()}, "lr": exp.lr * factor})
            if eval_due(self.step, stop, exp.eval_per_epoch, self.steps_per_epoch):
                self.evaluate_and_save()
        bar.close()
        if self.stopped_at_deadline:  # where it got to is evaluated and kept; a later --deadline resumes
            self.say(f"{exp.name}: stopped at the deadline {exp.deadline} at step {self.step} of {self.total_steps} "
                     f"({self.step / self.steps_per_epoch:.2f} of {exp.epochs:g} epochs)")
            if distributed.broadcast(not any(e["step"] == self.step and "eval_overall" in e for e in self.history)):
                self.evaluate_and_save()  # rank 0 alone holds the evaluations: it decides for all
        return self.finish(self.step - start_step)

    def evaluate_and_save(self):
        """Score the dev sets, keep the best weights, write a checkpoint."""
        if self.is_main:  # the other ranks wait for it in their next collective call
            result = self.evaluate()
            self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                      **{f"eval_{k}": v for k, v in result.items()}})
            self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            if result["overall"] > self.best["overall"]:
                folder.save_best(self.out, self.model)
                self.best = {**result, "step": self.step}
        if self.exp.save_checkpoints:
            self.save()  # on every rank: it gathers their random states

    # ---------------------------------------------------------------- checkpoints and the record

    def progress(self) -> dict:
        """What a checkpoint keeps besides weights and optimizers (and the record is made of)."""
        progress = {"step": self.step, "best": self.best, "history": self.history,
                    "nonfinite_skipped": self.nonfinite_skipped, "stopped_at_deadline": self.stopped_at_deadline,
                    "cost": {**self.cost, "seconds": self.cost["seconds"] + time.time() - self.session_start,
                             "peak_memory_mb": max(self.cost["peak_memory_mb"], folder.peak_memory_mb(self.device))}}
        if self.teacher is not None:
            progress["teacher"] = self.teacher.module.state_dict()
        return progress

    def save(self):
        folder.save_checkpoint(self.out, self.model, self.optimizers, self.progress(), self.device)

    def resume(self) -> bool:
        state = folder.restore(self.out, self.model, self.optimizers, self.device, self.teacher)
        if state is None:
            return False
        if state["warning"]:
            self.say(state["warning"])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.nonfinite_skipped = state["nonfinite_skipped"]
        if "cost" in state:  # checkpoints written before it was kept lack it
            commits = state["cost"]["commits"]
            self.cost = {**state["cost"], "commits": commits + [c for c in self.cost["commits"] if c not in commits]}
        # log.jsonl may hold lines written after this checkpoint: rewrite it from the history.
        if self.is_main:
            (self.out / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.history))
        self.say(f"resumed from {state['checkpoint']} at step {self.step}")
        return True

    def finish(self, steps: int) -> dict:
        """The run's record (folder.record), its files, and curves.png."""
        progress = self.progress()
        results = folder.record(self.exp, progress, steps, self.steps_per_epoch, self.device,
                                    {t: len(d) for t, d in self.dev_data.items()})
        if self.is_main:
            folder.write_results(self.out, results, progress)
            plot_run(self.out)  # curves.png: losses and dev scores against epoch
            self.say(f"best overall {self.best.get('overall', float('nan')):.4f} at step {self.best.get('step')}; "
                     f"results in {self.out}")
        return results
