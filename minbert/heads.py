"""Task heads and losses on top of one shared BERT encoder.

A task's input reaches the encoder as one segment (a sentence, or a pair encoded
`[CLS] A [SEP] B [SEP]`: the "cross" input) or as two sentences encoded separately
and compared (the "siamese" input of Sentence-BERT, Reimers & Gurevych 2019, which the
CS224N paper uses). Each head is a small class in the HEADS registry, by the name a
preset or `--heads task=name` gives it:

  linear    one segment -> pooled vector -> dropout -> Linear(H, C)
  concat    siamese [u; v] -> dropout -> Linear(2H, C)
  cos-emb   siamese, no parameters: CosineEmbeddingLoss(u, v, +1 if score > 2.5 else -1)
  cos-d     siamese, Linear(H, H) on each of u, v -> 5 * sigmoid(20 * cos(u', v')), MSE
  cos-2d1   siamese [u; v; cos(u, v)] -> dropout -> Linear(2H + 1, 1), MSE

Losses (TaskHead.loss): cross-entropy for C > 2 (SST), binary cross-entropy on one logit
for binary CS224N tasks (Quora), MSE for scores (STS); all are means over the batch, so a
short last batch weighs the same per example.

A new head is a TaskHead subclass and one HEADS entry (docs/EXTENDING.md): its class
attributes `segments` and `task_kinds` are what the checks of an Experiment and --help read.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minbert.data import TASKS

COS_EMB_THRESHOLD = 2.5  # STS scores above this count as "similar" for CosineEmbeddingLoss
COS_D_SCALE = 20.0  # the paper's "large scalar" before the sigmoid


def loss_kind(task: str, binary_logit: bool = True) -> str:
    """mse for scores; bce on one logit for binary labels (when binary_logit); ce otherwise."""
    spec = TASKS[task]
    return "mse" if spec.kind == "regression" else ("bce" if binary_logit and spec.num_labels == 2 else "ce")


class TaskHead(nn.Module):
    """What every head shares: its loss and prediction from the task's kind. A subclass sets
    `segments` (and `task_kinds` if it serves fewer) and writes forward(vectors) -> (B, C)
    logits or (B,) scores."""
    segments = 1  # sentence vectors the head reads: 1 (one segment) or 2 (siamese u, v)
    task_kinds = ("classification", "regression")  # the data.TASKS kinds it can serve

    def __init__(self, task: str, hidden: int, dropout: float, binary_logit: bool):
        super().__init__()
        spec = TASKS[task]
        self.task, self.kind = task, spec.kind
        # One output for scores and (optionally) for binary labels, else one logit per class.
        self.loss_kind = loss_kind(task, binary_logit)
        self.n_out = 1 if self.loss_kind in ("mse", "bce") else spec.num_labels
        self.dropout = nn.Dropout(dropout)

    @property
    def smart_kind(self) -> str:
        """How SMART compares clean and perturbed outputs (smart.py)."""
        return {"ce": "classification", "bce": "binary", "mse": "regression"}[self.loss_kind]

    def loss(self, output: torch.Tensor, labels: torch.Tensor, vectors: list[torch.Tensor]) -> torch.Tensor:
        output = output.float()
        if self.loss_kind == "mse":
            return F.mse_loss(output, labels.float())
        if self.loss_kind == "bce":
            return F.binary_cross_entropy_with_logits(output, labels.float())
        return F.cross_entropy(output, labels.long())

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Class ids, or scores on the data's scale (0..5 for STS)."""
        if self.loss_kind == "ce":
            return output.argmax(-1)
        if self.loss_kind == "bce":
            return (output > 0).long()
        return output


def _squeeze(y: torch.Tensor) -> torch.Tensor:
    return y.squeeze(-1) if y.shape[-1] == 1 else y  # (B, 1) -> (B,) for one output


class Linear(TaskHead):
    """dropout -> Linear(H, C) on the one segment's pooled vector."""

    def __init__(self, task, hidden, dropout, binary_logit):
        super().__init__(task, hidden, dropout, binary_logit)
        self.out = nn.Linear(hidden, self.n_out)

    def forward(self, vectors):
        return _squeeze(self.out(self.dropout(vectors[0])))


class Concat(TaskHead):
    """dropout -> Linear(2H, C) on [u; v] (Sentence-BERT's classifier without |u - v|)."""
    segments = 2

    def __init__(self, task, hidden, dropout, binary_logit):
        super().__init__(task, hidden, dropout, binary_logit)
        self.out = nn.Linear(2 * hidden, self.n_out)

    def forward(self, vectors):
        return _squeeze(self.out(self.dropout(torch.cat(vectors, dim=-1))))


class CosEmb(TaskHead):
    """cos(u, v) in [-1, 1]; trained with CosineEmbeddingLoss against labels thresholded at 2.5."""
    segments = 2
    task_kinds = ("regression",)  # a similarity score

    def forward(self, vectors):
        # vectors: [u, v], each (B, H) -> (B,)
        # BEGIN EXERCISE cosine_heads
        return F.cosine_similarity(*vectors, dim=-1)
        # END EXERCISE cosine_heads

    def loss(self, output, labels, vectors):
        # labels: (B,) STS scores in [0, 5]; vectors: [u, v], each (B, H) -> a scalar
        # BEGIN EXERCISE cosine_heads
        target = torch.where(labels > COS_EMB_THRESHOLD, 1.0, -1.0)
        return F.cosine_embedding_loss(vectors[0].float(), vectors[1].float(), target)
        # END EXERCISE cosine_heads

    def predict(self, output):
        return (output + 1.0) * 2.5  # [-1, 1] -> [0, 5]; a monotone map, Pearson unchanged


class CosD(TaskHead):
    """5 * sigmoid(20 * cos(W u + b, W v + b)), one d-wide Linear shared by both sentences."""
    segments = 2
    task_kinds = ("regression",)  # a similarity score

    def __init__(self, task, hidden, dropout, binary_logit):
        super().__init__(task, hidden, dropout, binary_logit)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, vectors):
        # vectors: [u, v], each (B, H) -> (B,) in (0, 5)
        # In float32 under bf16 autocast too: the 20x scale amplifies bf16's rounding of W u
        # (one update's gradient 5.1% off float32's in bf16, 2.2% so; docs/GPU.md, precision).
        # BEGIN EXERCISE cosine_heads
        with torch.autocast(vectors[0].device.type, enabled=False):
            u, v = self.proj(vectors[0].float()), self.proj(vectors[1].float())
        return 5.0 * torch.sigmoid(COS_D_SCALE * F.cosine_similarity(u, v, dim=-1))
        # END EXERCISE cosine_heads


class Cos2d1(TaskHead):
    """dropout -> Linear(2H + 1, 1) on [u; v; cos(u, v)]."""
    segments = 2
    task_kinds = ("regression",)  # a similarity score

    def __init__(self, task, hidden, dropout, binary_logit):
        super().__init__(task, hidden, dropout, binary_logit)
        self.out = nn.Linear(2 * hidden + 1, 1)

    def forward(self, vectors):
        # vectors: [u, v], each (B, H); cos(u, v): (B, 1); [u; v; cos]: (B, 2H + 1) -> (B,)
        # BEGIN EXERCISE cosine_heads
        u, v = vectors
        cos = F.cosine_similarity(u, v, dim=-1).unsqueeze(-1)
        return _squeeze(self.out(self.dropout(torch.cat([u, v, cos], dim=-1))))
        # END EXERCISE cosine_heads


HEADS = {"linear": Linear, "concat": Concat, "cos-emb": CosEmb, "cos-d": CosD, "cos-2d1": Cos2d1}


def check_head(name: str, task: str):
    """A ValueError unless `name` is a head that can serve `task`."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r} for task {task}; choose one of {', '.join(HEADS)}")
    kind = TASKS[task].kind
    if kind not in HEADS[name].task_kinds:
        raise ValueError(f"head {name!r} serves {' or '.join(HEADS[name].task_kinds)} tasks; task {task} is {kind}")


def heads_reading(segments: int) -> list[str]:
    """The heads that read this many sentence vectors: 1 (one segment) or 2 (siamese u, v)."""
    return [name for name, head in HEADS.items() if head.segments == segments]


def make_head(name: str, task: str, hidden: int, dropout: float = 0.1, binary_logit: bool = True) -> TaskHead:
    check_head(name, task)
    return HEADS[name](task, hidden, dropout, binary_logit)
