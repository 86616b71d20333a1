"""Task heads and losses on top of one shared BERT encoder.

A task's input reaches the encoder as one segment (a sentence, or a pair encoded
`[CLS] A [SEP] B [SEP]`: the "cross" input) or as two sentences encoded separately
and compared (the "siamese" input of Sentence-BERT, Reimers & Gurevych 2019, which the
CS224N paper uses). The heads, by the name a preset gives them:

  linear    one segment -> pooled vector -> dropout -> Linear(H, C)
  concat    siamese [u; v] -> dropout -> Linear(2H, C)
  cos-emb   siamese, no parameters: CosineEmbeddingLoss(u, v, +1 if score > 2.5 else -1)
  cos-d     siamese, Linear(H, H) on each of u, v -> 5 * sigmoid(20 * cos(u', v')), MSE
  cos-2d1   siamese [u; v; cos(u, v)] -> dropout -> Linear(2H + 1, 1), MSE

Losses: cross-entropy for C > 2 (SST), binary cross-entropy on one logit for binary
CS224N tasks (Quora), MSE for scores (STS); all are means over the batch, so a short
last batch weighs the same per example.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minbert.data import TASKS
from minbert.pooling import pool

HEADS = ("linear", "concat", "cos-emb", "cos-d", "cos-2d1")
COS_EMB_THRESHOLD = 2.5  # STS scores above this count as "similar" for CosineEmbeddingLoss
COS_D_SCALE = 20.0  # the paper's "large scalar" before the sigmoid


class TaskHead(nn.Module):
    def __init__(self, task: str, head: str, hidden: int, dropout: float, binary_logit: bool):
        super().__init__()
        spec = TASKS[task]
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r} for task {task}; choose one of {', '.join(HEADS)}")
        if head.startswith("cos") and spec.kind != "regression":
            raise ValueError(f"head {head!r} predicts a similarity score; task {task} is {spec.kind}")
        self.task, self.head, self.kind = task, head, spec.kind
        # One output for scores and (optionally) for binary labels, else one logit per class.
        self.loss_kind = "mse" if spec.kind == "regression" else (
            "bce" if binary_logit and spec.num_labels == 2 else "ce")
        n_out = 1 if self.loss_kind in ("mse", "bce") else spec.num_labels
        self.dropout = nn.Dropout(dropout)
        if head == "linear":
            self.out = nn.Linear(hidden, n_out)
        elif head == "concat":
            self.out = nn.Linear(2 * hidden, n_out)
        elif head == "cos-d":
            self.proj = nn.Linear(hidden, hidden)
        elif head == "cos-2d1":
            self.out = nn.Linear(2 * hidden + 1, 1)

    @property
    def segments(self) -> int:
        return 1 if self.head == "linear" else 2

    @property
    def smart_kind(self) -> str:
        """How SMART compares clean and perturbed outputs (smart.py)."""
        return {"ce": "classification", "bce": "binary", "mse": "regression"}[self.loss_kind]

    def forward(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """Pooled vectors, one (B, H) per segment -> (B, C) logits or (B,) scores."""
        if self.head == "linear":
            y = self.out(self.dropout(vectors[0]))
        elif self.head == "concat":
            y = self.out(self.dropout(torch.cat(vectors, dim=-1)))
        elif self.head == "cos-emb":
            y = F.cosine_similarity(*vectors, dim=-1)  # (B,) in [-1, 1]
        elif self.head == "cos-d":
            u, v = self.proj(vectors[0]), self.proj(vectors[1])
            y = 5.0 * torch.sigmoid(COS_D_SCALE * F.cosine_similarity(u, v, dim=-1))
        else:  # cos-2d1
            u, v = vectors
            cos = F.cosine_similarity(u, v, dim=-1).unsqueeze(-1)  # (B, 1)
            y = self.out(self.dropout(torch.cat([u, v, cos], dim=-1)))
        return y.squeeze(-1) if y.dim() == 2 and y.shape[-1] == 1 else y

    def loss(self, output: torch.Tensor, labels: torch.Tensor, vectors: list[torch.Tensor]) -> torch.Tensor:
        output = output.float()
        if self.head == "cos-emb":
            target = torch.where(labels > COS_EMB_THRESHOLD, 1.0, -1.0)
            return F.cosine_embedding_loss(vectors[0].float(), vectors[1].float(), target)
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
        if self.head == "cos-emb":
            return (output + 1.0) * 2.5  # cosine in [-1, 1] -> [0, 5]; a monotone map, Pearson unchanged
        return output


class MultitaskBert(nn.Module):
    """One encoder, one head per task. `forward(task, batch)` -> the task's output."""

    def __init__(self, bert: nn.Module, heads: dict[str, str], pooling: str = "cls",
                 dropout: float = 0.1, binary_logit: bool = True):
        super().__init__()
        self.bert = bert
        self.pooling = pooling
        H = bert.config.hidden_size
        self.heads = nn.ModuleDict({t: TaskHead(t, h, H, dropout, binary_logit) for t, h in heads.items()})

    def embed(self, task: str, batch: dict) -> list[torch.Tensor]:
        """Embedding-layer outputs (B, T, H), one per segment: where SMART adds its noise."""
        return [self.bert.embeddings(seg["input_ids"], seg["token_type_ids"]) for seg in batch["segments"]]

    def from_embeds(self, task: str, batch: dict, embeds: list[torch.Tensor], return_vectors: bool = False):
        vectors = []
        for e, seg in zip(embeds, batch["segments"]):
            out = self.bert.encode(e, seg["attention_mask"] if seg.get("padded", True) else None)
            vectors.append(out.pooler_output if self.pooling == "pooler"
                           else pool(self.pooling, out.last_hidden_state, seg["attention_mask"]))
        output = self.heads[task](vectors)
        return (output, vectors) if return_vectors else output

    def forward(self, task: str, batch: dict, return_vectors: bool = False):
        return self.from_embeds(task, batch, self.embed(task, batch), return_vectors)
