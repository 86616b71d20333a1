"""The training loop: one `Experiment` in, a run folder out.

    for step in range(start, stop):
        batches = one batch per task              (batches.Stream: a pure function of step)
        update(batches)                           <- the one place where the presets differ:
                                                     UPDATES[exp.update] (updates.py), +SMART in task_loss
        every 1/eval_per_epoch epoch: evaluate, keep the best, write a checkpoint

What is not the loop lives elsewhere: building the model and data (run/build.py), predicting
and scoring (evaluation.py), the run folder and its files (run/folder.py), the optimizers
(optim/), progress lines (run/progress.py), curves.png (sweep/plots.py), several seeds or a
seed search (sweep/sweeps.py).
"""
from __future__ import annotations

import json
import math
import threading
import time

import torch

from minbert.batches import collate, make_streams, to_device
from minbert.evaluation import autocast, evaluate
from minbert.experiments import Experiment
from minbert.fastpaths import check_fast_paths
from minbert.optim import MFAC, AdamW
from minbert.pcgrad import pcgrad_backward
from minbert.run import distributed, folder
from minbert.run.build import build_model, compile_for_speed, read_data, start_process
from minbert.run.progress import Progress, say
from minbert.smart import MomentumTeacher, bregman_term, smart_regularizer
from minbert.sweep.plots import plot_run
from minbert.updates import UPDATES

CheckpointError = folder.CheckpointError  # what a caller catches when a run cannot resume

# Set when the process is asked to stop (sweep/shards.py sets it on SIGTERM and SIGINT): the loop ends
# before its next step, so the checkpoint due at the last step is written and the run resumes from it.
STOP = threading.Event()


class Stopped(BaseException):
    """Raised by Trainer.train when STOP is set; like KeyboardInterrupt, no `except Exception` takes it."""


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
    """Steps in one epoch: exp.steps_per_epoch when set; -1: one pass over the first task's
    training set (run_glue); else the paper's, the smallest training set once (times iters_mult)."""
    if exp.steps_per_epoch > 0:
        return exp.steps_per_epoch
    if exp.steps_per_epoch == -1:
        steps = math.ceil(sizes[exp.tasks[0]] / global_batch)
    else:
        steps = int(exp.iters_mult * (min(sizes.values()) // global_batch))
    if steps < 1:
        raise ValueError(f"experiment {exp.name!r}: 0 steps per epoch: the smallest training set "
                         f"({min(sizes.values())} examples) holds no global batch of {global_batch} "
                         f"(times iters_mult {exp.iters_mult}); lower --batch_size")
    return steps


def set_lr(optimizers: list, factor: float):
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor


def past(deadline: float | None) -> bool:
    """Whether time.time() is past the deadline; rank 0's clock decides for every rank."""
    return deadline is not None and distributed.broadcast(time.time() >= deadline)


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
        self.device = start_process(exp)  # under torchrun: join the process group (run/distributed.py)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.quiet = quiet or not self.is_main  # rank 0 alone prints
        folder.check_run_folder(self.out, exp)  # another run's folder: stop before any work

        self.tokenizer, self.model = build_model(exp, self.device)
        self.model.train()
        self.cuda_graphs = compile_for_speed(self.model, exp, self.device)  # --compile
        torch.manual_seed(exp.seed + self.rank)  # dropout, SMART noise: each rank its own

        self.train_data = read_data(exp, self.tokenizer, "train")
        self.dev_data = read_data(exp, self.tokenizer, "dev", exp.max_eval_examples)
        self.streams, notes = make_streams(self.train_data, exp.batch_size * self.world,
                                           exp.seed if exp.data_seed < 0 else exp.data_seed, exp.bucket_window)
        for note in notes:
            self.say(note)
        self.steps_per_epoch = steps_per_epoch(exp, {t: len(d) for t, d in self.train_data.items()},
                                               exp.batch_size * self.world)
        self.total_steps = math.ceil(exp.epochs * self.steps_per_epoch)
        self.stop_step = min(self.total_steps, exp.max_steps) if exp.max_steps > 0 else self.total_steps

        self.shared_params = list(self.model.bert.parameters())
        self.head_params = list(self.model.heads.parameters())
        self.optimizers = build_optimizers(self.model, exp)
        check_fast_paths(self.model, self.optimizers)  # --fast: the fast paths must compute what the readable ones do
        self.teacher = MomentumTeacher(self.model) if exp.bregman_weight > 0 else None

        self.step, self.best, self.history, self.nonfinite_skipped = 0, {"overall": -math.inf}, [], 0
        self.stopped_at_deadline = False
        self.cost = folder.Cost(self.device)  # wall time, update time, peak memory, commits: over all resumed runs

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

    def optimizer_step(self, losses: dict[str, torch.Tensor], pcgrad: bool = False) -> bool:
        """One optimizer update from these losses: on their sum, or (pcgrad) on PCGrad's combination
        of their gradients. False when a non-finite loss or gradient skipped it."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if not distributed.all_ranks(all(torch.isfinite(loss).item() for loss in losses.values())):
            return self.on_nonfinite(f"loss {({t: loss.item() for t, loss in losses.items()})}")
        if pcgrad:
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
            return self.on_nonfinite("gradient norm")
        for opt in self.optimizers:
            opt.step()
        if self.teacher is not None:
            self.teacher.update(self.model, self.exp.bregman_beta)
        return True

    def on_nonfinite(self, what: str) -> bool:
        if self.exp.nonfinite == "stop":
            raise FloatingPointError(
                f"non-finite {what} at step {self.step + 1}; stopped. The last good checkpoint in {self.out} "
                f"is intact; rerun with --nonfinite skip to skip such steps, or lower --lr in a new --output_dir")
        self.nonfinite_skipped += 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return False

    def update(self, step: int) -> dict[str, float]:
        """Where the presets differ (CS224N paper, section 5.3): one batch per task, then the
        experiment's update kind (updates.py: separate, summed, pcgrad, gse). Returns the task losses."""
        if self.cuda_graphs:  # the outputs of the last update's graph replays may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        batches = {t: self.train_batch(t, step) for t in self.exp.tasks}
        losses = UPDATES[self.exp.update].step(self, batches)
        return distributed.average_values({t: loss.item() for t, loss in losses.items()})

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
        done = folder.finished_record(self.out, stop, resumed or not exp.save_checkpoints)
        if done is not None:  # the same command again: nothing to do, the record stands
            self.say(f"{exp.name}: already finished at step {self.step}; results in {self.out}")
            return done
        if not resumed and self.is_main:
            (self.out / "log.jsonl").write_text("")
        self.say(f"{exp.name}: {stop - self.step} steps to take (to step {stop} of {self.total_steps}, "
                 f"{self.steps_per_epoch}/epoch), {describe(exp, self.device, self.world)}")
        start_step, deadline = self.step, exp.deadline_seconds()
        self.cost.start_stint()
        bar = Progress(stop, self.step, exp.name, quiet=self.quiet)
        while self.step < stop:
            if STOP.is_set():
                bar.close()
                raise Stopped(f"{exp.name} stopped at step {self.step} of {stop}")
            if past(deadline):
                self.stopped_at_deadline = True
                break
            factor = lr_factor(exp, self.step, self.total_steps)
            set_lr(self.optimizers, factor)
            with self.cost.timing_update():
                losses = self.update(self.step)
            self.step += 1
            bar.update(sum(losses.values()))
            if self.step % exp.logging_steps == 0 or self.step == stop:
                self.log({"step": self.step, "epoch": self.step / self.steps_per_epoch, "loss": sum(losses.values()),
                          **{f"loss_{t}": v for t, v in losses.items()}, "lr": exp.lr * factor})
            if eval_due(self.step, stop, exp.eval_per_epoch, self.steps_per_epoch):
                self.evaluate_and_save()
        bar.close()
        if self.stopped_at_deadline:
            self.keep_what_the_deadline_cut()
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

    def keep_what_the_deadline_cut(self):
        """Stopped at --deadline: the step reached is evaluated and checkpointed (unless it just
        was); the command with a later deadline resumes from it."""
        exp = self.exp
        self.say(f"{exp.name}: stopped at the deadline {exp.deadline} at step {self.step} of {self.total_steps} "
                 f"({self.step / self.steps_per_epoch:.2f} of {exp.epochs:g} epochs)")
        if distributed.broadcast(not any(e["step"] == self.step and "eval_overall" in e for e in self.history)):
            self.evaluate_and_save()  # rank 0 alone holds the evaluations: it decides for all

    # ---------------------------------------------------------------- checkpoints and the record

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps besides weights and optimizers (and the record is made of)."""
        state = {"step": self.step, "best": self.best, "history": self.history, "cost": self.cost.so_far(),
                 "nonfinite_skipped": self.nonfinite_skipped, "stopped_at_deadline": self.stopped_at_deadline}
        if self.teacher is not None:
            state["teacher"] = self.teacher.module.state_dict()
        return state

    def save(self):
        folder.save_checkpoint(self.out, self.model, self.optimizers, self.checkpoint_state(), self.device)

    def resume(self) -> bool:
        """The run folder's latest checkpoint, if any, into the model, optimizers, teacher and
        counters; returns whether there was one."""
        state = folder.restore(self.out, self.model, self.optimizers, self.device, self.teacher)
        if state is None:
            return False
        if state["warning"]:
            self.say(state["warning"])
        self.step, self.best, self.history = state["step"], state["best"], state["history"]
        self.nonfinite_skipped = state["nonfinite_skipped"]
        self.cost.carry_on(state["cost"])
        # log.jsonl may hold lines written after this checkpoint: rewrite it from the history.
        if self.is_main:
            (self.out / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.history))
        self.say(f"resumed from {state['checkpoint']} at step {self.step}")
        return True

    def finish(self, steps: int) -> dict:
        """The run's record (folder.record), its files, and curves.png."""
        state = self.checkpoint_state()
        results = folder.record(self.exp, state, steps, self.steps_per_epoch, self.device,
                                {t: len(d) for t, d in self.dev_data.items()})
        if self.is_main:
            folder.write_results(self.out, results, state)
            plot_run(self.out)  # curves.png: losses and dev scores against epoch
            self.say(f"best overall {self.best.get('overall', float('nan')):.4f} at step {self.best.get('step')}; "
                     f"results in {self.out}")
        return results
