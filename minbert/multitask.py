"""One encoder shared by every task, one head per task (heads.py), and the sentence vectors
between them (pooling.py): `MultitaskBert(bert, {"sst": "linear", "sts": "cos-2d1"})`."""
from __future__ import annotations

import torch
import torch.nn as nn

from minbert.heads import make_head
from minbert.pooling import pool


class MultitaskBert(nn.Module):
    """One encoder, one head per task. `forward(task, batch)` -> the task's output."""

    def __init__(self, bert: nn.Module, heads: dict[str, str], pooling: str = "cls",
                 dropout: float = 0.1, binary_logit: bool = True):
        super().__init__()
        self.bert = bert
        self.pooling = pooling
        H = bert.config.hidden_size
        self.heads = nn.ModuleDict({t: make_head(h, t, H, dropout, binary_logit) for t, h in heads.items()})

    def embed(self, task: str, batch: dict) -> list[torch.Tensor]:
        """Embedding-layer outputs (B, T, H), one per segment: where SMART adds its noise."""
        return [self.bert.embeddings(seg["input_ids"], seg["token_type_ids"]) for seg in batch["segments"]]

    def from_embeds(self, task: str, batch: dict, embeds: list[torch.Tensor], return_vectors: bool = False):
        vectors = []
        for e, seg in zip(embeds, batch["segments"]):
            out = self.bert.encode(e, seg["attention_mask"] if seg.get("padded", True) else None)
            vectors.append(pool(self.pooling, out.last_hidden_state, seg["attention_mask"], self.bert))
        output = self.heads[task](vectors)
        return (output, vectors) if return_vectors else output

    def forward(self, task: str, batch: dict, return_vectors: bool = False):
        return self.from_embeds(task, batch, self.embed(task, batch), return_vectors)
