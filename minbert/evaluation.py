"""Predictions and dev metrics of a model, as two functions: the trainer calls them during
training, evaluate.py on a finished run, neither needs anything else of the other."""
from __future__ import annotations

import contextlib

import torch

from minbert import metrics
from minbert.batches import Encoded, collate, eval_batches, to_device
from minbert.data import TASKS
from minbert.multitask import MultitaskBert


def uses_bf16(device: torch.device, bf16: str) -> bool:
    """The Experiment's bf16 field on this device: "auto" is bf16 on CUDA only, "on" everywhere."""
    return bf16 == "on" or (bf16 == "auto" and device.type == "cuda")


def autocast(device: torch.device, bf16: str):
    """bf16 autocast where uses_bf16 says so, float32 elsewhere. Under autocast the weights stay
    float32; matmuls (Linear, attention's products) take bf16 inputs (8 significant bits: each
    rounding is off by up to 2^-8 = 0.4% relative) and accumulate in float32; softmax, LayerNorm and
    the losses run in float32. On the CPU this is the arithmetic of a CUDA bf16 run, emulated."""
    if uses_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: MultitaskBert, data: dict[str, Encoded], batch_size: int, pad_id: int,
            device: torch.device, bf16: str = "off", padding: tuple[int, int] = (0, 0)) -> dict[str, list]:
    """{task: Encoded} -> {task: predictions in data order} (class ids, or scores). padding:
    (multiple_of, max_length) of batches.collate; (0, 0) pads to each batch's longest."""
    was_training = model.training
    model.eval()
    out = {}
    for t, d in data.items():
        preds = [None] * len(d)
        for index in eval_batches(d, batch_size):
            batch = to_device(collate(d, index, pad_id, *padding), device)
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
             device: torch.device, bf16: str = "off", padding: tuple[int, int] = (0, 0)) -> dict[str, float]:
    return score(predict(model, data, batch_size, pad_id, device, bf16, padding), data)
