"""Predictions and dev metrics of a model, as two functions: the trainer calls them during
training, evaluate.py on a finished run, neither needs anything else of the other."""
from __future__ import annotations

import contextlib

import torch

from minbert import metrics
from minbert.batches import Encoded, collate, eval_batches, to_device
from minbert.data import TASKS
from minbert.heads import MultitaskBert


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; float32 everywhere else."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: MultitaskBert, data: dict[str, Encoded], batch_size: int, pad_id: int,
            device: torch.device, bf16: bool = False) -> dict[str, list]:
    """{task: Encoded} -> {task: predictions in data order} (class ids, or scores)."""
    was_training = model.training
    model.eval()
    out = {}
    for t, d in data.items():
        preds = [None] * len(d)
        for index in eval_batches(d, batch_size):
            batch = to_device(collate(d, index, pad_id), device)
            with autocast(device, bf16):
                y = model(t, batch)
            for i, v in zip(index, model.heads[t].predict(y.float()).tolist()):
                preds[i] = v
        out[t] = preds
    model.train(was_training)
    return out


def score(preds: dict[str, list], data: dict[str, Encoded]) -> dict[str, float]:
    """Dev metrics: `accuracy`, `f1`, ... for one task, `sst_accuracy`, ... for several, and
    `overall`, the mean of the tasks' main metrics (metrics.overall)."""
    result, main = {}, {}
    for t, p in preds.items():
        spec = TASKS[t]
        m = metrics.task_metrics(spec.kind, spec.num_labels, p, data[t].labels)
        main[t] = (spec.metric, m[spec.metric])
        prefix = "" if len(preds) == 1 else f"{t}_"
        result.update({prefix + k: v for k, v in m.items()})
        if len(preds) == 1:
            result["combined_score"] = metrics.combined_score(m)
    result["overall"] = metrics.overall(main)
    return result


def evaluate(model: MultitaskBert, data: dict[str, Encoded], batch_size: int, pad_id: int,
             device: torch.device, bf16: bool = False) -> dict[str, float]:
    return score(predict(model, data, batch_size, pad_id, device, bf16), data)
