"""How the task losses make an update: the one place where the presets differ (the CS224N
student paper, Cortes, Hsieh & Fu, section 5.3).

Each step `Trainer.update` draws one batch per task and calls UPDATES[exp.update], which
returns the task losses. An update kind is a function of the trainer and the batches that
uses two of the trainer's calls:

    trainer.task_loss(task, batch)                  L_t (plus SMART's terms when switched on)
    trainer.optimizer_step(losses, pcgrad=False)    zero the gradients; backward through the
                                                    sum of `losses`, or PCGrad's combination of
                                                    their gradients; clip; step every optimizer

The paper's rows (the presets, experiments.py) name an update kind each: its `baseline` row is
`separate`, `multitask` is `summed`, `pcgrad` is `pcgrad`, `gse` and the cos-* rows are `gse`;
`--help` lists, beside each kind, the presets that use it (presets_using).

Adding a kind is one function and one UPDATES entry here: `--update`'s choices and help and
the check of Experiment.update are read from UPDATES; a preset may then name it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def separate(trainer, batches: dict) -> dict:
    """Each task its own optimizer step, one after another: theta <- theta - lr * g(L_t), t = 1..K."""
    losses = {}
    for task, batch in batches.items():
        losses[task] = trainer.task_loss(task, batch)
        trainer.optimizer_step({task: losses[task]})
    return losses


def summed(trainer, batches: dict) -> dict:
    """One optimizer step on L = L_1 + ... + L_K."""
    losses = {task: trainer.task_loss(task, batch) for task, batch in batches.items()}
    trainer.optimizer_step(losses)
    return losses


def pcgrad(trainer, batches: dict) -> dict:
    """One optimizer step on the task gradients combined by PCGrad (Yu et al. 2020, Algorithm 1):
    each g_t projected off the task gradients it conflicts with, then summed (pcgrad.py)."""
    losses = {task: trainer.task_loss(task, batch) for task, batch in batches.items()}
    trainer.optimizer_step(losses, pcgrad=True)
    return losses


def gse(trainer, batches: dict) -> dict:
    """The paper's gradient surgery experiment (section 5.3, 1c): "We first update our parameters
    using the mean of the adjusted gradients for each loss, and immediately after, re-update them
    using the combined loss": a PCGrad step, then a step on the summed loss recomputed with the
    updated weights, on the same batches."""
    losses = pcgrad(trainer, batches)
    summed(trainer, batches)
    return losses


@dataclass(frozen=True)
class Update:
    step: Callable[..., dict]  # (trainer, {task: batch}) -> {task: loss}
    about: str  # one line for --help


UPDATES: dict[str, Update] = {
    "separate": Update(separate, "each task its own optimizer step, one after another"),
    "summed": Update(summed, "one step on the summed task losses"),
    "pcgrad": Update(pcgrad, "one step on the PCGrad-projected task gradients (Yu et al. 2020)"),
    "gse": Update(gse, "a PCGrad step, then a step on the summed loss (the paper's gradient surgery experiment)"),
}
