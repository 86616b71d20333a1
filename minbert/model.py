"""The BERT encoder, written out (Devlin et al. 2019; the Transformer of Vaswani et al. 2017).

    embeddings -> N x [self-attention -> add & LayerNorm -> feed-forward -> add & LayerNorm] -> pooler

Post-LayerNorm residual blocks, exact-erf GELU. Module attribute names equal the
Hugging Face state-dict keys (`encoder.layer.0.attention.self.query.weight`, ...), so
loading a checkpoint needs no rename table (see weights.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minbert.config import BertConfig


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H)


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None):
        B, T = input_ids.shape
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"({self.position_embeddings.num_embeddings}); truncate the input")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        x = (self.word_embeddings(input_ids)
             + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))  # (B, T, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention, softmax(Q K^T / sqrt(hs)) V (Vaswani et al. eq. 1)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.dropout_p = config.attention_probs_dropout_prob
        self.use_sdpa = config.attn_implementation == "sdpa"

    def forward(self, x, keep):
        # x: (B, T, H); keep: (B, 1, 1, T) bool, True where the key is a real token, or None: no padding
        B, T, H = x.shape
        hs = H // self.n_head

        def heads(t):  # (B, T, H) -> (B, nh, T, hs)
            return t.view(B, T, self.n_head, hs).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p_drop = self.dropout_p if self.training else 0.0
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p_drop)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
            if keep is not None:
                att = att.masked_fill(~keep, torch.finfo(att.dtype).min)  # padding keys get ~zero weight
            att = F.softmax(att, dim=-1)
            att = F.dropout(att, p=p_drop, training=self.training)
            y = att @ v  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, H)  # re-assemble heads side by side


class BertAddNorm(nn.Module):
    """dense -> dropout -> add the residual -> LayerNorm (post-LN, as in the original BERT)."""

    def __init__(self, d_in: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # named `self` to match the checkpoint keys
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x, keep):
        return self.output(self.self(x, keep), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.approximate = "tanh" if config.hidden_act == "gelu_new" else "none"
        self.relu = config.hidden_act == "relu"

    def forward(self, x):
        x = self.dense(x)
        return F.relu(x) if self.relu else F.gelu(x, approximate=self.approximate)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x, keep):
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, keep):
        for block in self.layer:
            x = block(x, keep)
        return x


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence vector BERT was pre-trained to give next-sentence prediction."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    def __init__(self, config: BertConfig | None = None):
        super().__init__()
        self.config = config or BertConfig()
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = BertPooler(self.config)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # BERT's initialisation: N(0, 0.02) weights, zero biases, identity LayerNorm
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_attn_implementation(self, name: str):
        """Switch every layer between "sdpa" and "math" attention."""
        if name not in ("sdpa", "math"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'math', not {name!r}")
        self.config.attn_implementation = name
        for layer in self.encoder.layer:
            layer.attention.self.use_sdpa = name == "sdpa"

    def encode(self, embedding_output, attention_mask=None) -> BertOutput:
        """Runs the encoder and pooler on embedding-layer outputs (B, T, H); attention_mask
        None means no padding. Split from forward() so SMART can perturb the embeddings."""
        keep = None
        if attention_mask is not None:
            keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): broadcasts over heads and queries
        h = self.encoder(embedding_output, keep)
        return BertOutput(last_hidden_state=h, pooler_output=self.pooler(h))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> BertOutput:
        # No padding: no mask, which lets SDPA pick its fastest (flash) kernel on a GPU. Asking
        # costs a device sync; the training loop knows the answer on the host (batches.collate).
        if attention_mask is not None and not torch.compiler.is_compiling() and attention_mask.all():
            attention_mask = None
        return self.encode(self.embeddings(input_ids, token_type_ids), attention_mask)

    @classmethod
    def from_pretrained(cls, name_or_path: str, attn_implementation: str = "sdpa") -> "BertModel":
        """A Hugging Face model folder or hub id -> float32 BertModel (see weights.py)."""
        from minbert.weights import load_pretrained
        return load_pretrained(cls, name_or_path, attn_implementation=attn_implementation)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
