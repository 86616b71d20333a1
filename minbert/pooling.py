"""Sentence vectors from token vectors: [CLS], mean or max over the real tokens, or BERT's
own pooler.

Sentence-BERT (Reimers & Gurevych 2019, section 3) compares the first three. Padding never
counts: mean divides by the number of real tokens, max ignores pad positions. "pooler" is
tanh(W h_[CLS] + b) with the encoder's pre-trained pooler weights (Devlin et al. 2019, the
vector next-sentence prediction was trained on; run_glue's classifiers read it). Every
pooling takes (hidden, attention_mask, bert); only "pooler" needs the encoder. A new pooling
is one such function and one POOLERS entry (docs/EXTENDING.md): `--pooling` and its checks
read POOLERS.
"""
import torch


def cls(hidden: torch.Tensor, attention_mask: torch.Tensor, bert=None) -> torch.Tensor:
    """(B, T, H) -> (B, H): the vector at position 0, the [CLS] token."""
    # BEGIN EXERCISE pooling
    return hidden[:, 0]
    # END EXERCISE pooling


def mean(hidden: torch.Tensor, attention_mask: torch.Tensor, bert=None) -> torch.Tensor:
    """(B, T, H) -> (B, H): average of the real tokens' vectors."""
    # attention_mask: (B, T), 1 for real tokens
    # BEGIN EXERCISE pooling
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    # END EXERCISE pooling


def max(hidden: torch.Tensor, attention_mask: torch.Tensor, bert=None) -> torch.Tensor:
    """(B, T, H) -> (B, H): element-wise max over the real tokens."""
    # attention_mask: (B, T), 1 for real tokens
    # BEGIN EXERCISE pooling
    pad = ~attention_mask.bool().unsqueeze(-1)
    return hidden.masked_fill(pad, torch.finfo(hidden.dtype).min).max(dim=1).values
    # END EXERCISE pooling


def pooler(hidden: torch.Tensor, attention_mask: torch.Tensor, bert=None) -> torch.Tensor:
    """(B, T, H) -> (B, H): the encoder's pooler layer on [CLS], tanh(W h_[CLS] + b)."""
    if bert is None:
        raise ValueError("pooling 'pooler' uses the encoder's pooler weights: pass bert=<the BertModel>")
    return bert.pooler(hidden)


POOLERS = {"cls": cls, "mean": mean, "max": max, "pooler": pooler}


def pool(name: str, hidden: torch.Tensor, attention_mask: torch.Tensor, bert=None) -> torch.Tensor:
    if name not in POOLERS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {', '.join(POOLERS)}")
    return POOLERS[name](hidden, attention_mask, bert)
