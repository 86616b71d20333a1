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

from minbert.config import BertConfig, check_attn_implementation
from minbert.weights import load_pretrained


@dataclass
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H)
    attentions: tuple[torch.Tensor, ...] | None = None  # output_attentions=True: per layer (B, nh, T, T)


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
        # input_ids, token_type_ids (None: all segment 0): (B, T) -> (B, T, H); positions 0..T-1: (T,)
        # BEGIN EXERCISE embeddings
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(T, device=input_ids.device)
        x = (self.word_embeddings(input_ids)
             + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x))
        # END EXERCISE embeddings


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention, softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. eq. 1),
    with d_k = hs, the head size. The math path below is what runs unless attn_implementation="sdpa"."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.dropout_p = config.attention_probs_dropout_prob
        self.use_sdpa = config.attn_implementation == "sdpa"

    def forward(self, x, keep, output_attentions: bool = False):
        # x: (B, T, H); keep: (B, 1, 1, T) bool, True where the key is a real token, or None: no padding.
        # Returns y (B, T, H) and, if output_attentions, the probabilities (B, nh, T, T) before dropout.
        B, T, H = x.shape
        hs = H // self.n_head

        def heads(t):  # (B, T, H) -> (B, nh, T, hs)
            return t.view(B, T, self.n_head, hs).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        p_drop = self.dropout_p if self.training else 0.0
        att = None  # the probabilities, kept when output_attentions
        # SDPA returns no weights, so a call with output_attentions=True takes the math path below.
        if self.use_sdpa and not output_attentions:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p_drop)
        else:
            # q, k, v: (B, nh, T, hs) -> att: (B, nh, T, T) probabilities, query rows, key columns, each
            # row summing to 1 over the real keys (padding keys get 0); y = dropout(att) @ v: (B, nh, T, hs)
            # BEGIN EXERCISE attention
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T): query rows, key columns
            if keep is not None:
                att = att.masked_fill(~keep, torch.finfo(att.dtype).min)  # exp underflows: padding keys get 0
            att = F.softmax(att, dim=-1)
            y = F.dropout(att, p=p_drop, training=self.training) @ v
            # END EXERCISE attention
        y = y.transpose(1, 2).reshape(B, T, H)  # re-assemble heads side by side
        return y, (att if output_attentions else None)


class BertAddNorm(nn.Module):
    """dense -> dropout -> add the residual -> LayerNorm (post-LN, as in the original BERT)."""

    def __init__(self, d_in: int, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        # x: (B, T, d_in), residual: (B, T, H) -> (B, T, H)
        # BEGIN EXERCISE layer
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)
        # END EXERCISE layer


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)  # named `self` to match the checkpoint keys
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x, keep, output_attentions: bool = False):
        # x: (B, T, H) -> (B, T, H), and the self-attention's probabilities (or None)
        # BEGIN EXERCISE layer
        y, att = self.self(x, keep, output_attentions)
        return self.output(y, x), att
        # END EXERCISE layer


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.approximate = "tanh" if config.hidden_act == "gelu_new" else "none"
        self.relu = config.hidden_act == "relu"

    def forward(self, x):
        # x: (B, T, H) -> (B, T, intermediate_size)
        # BEGIN EXERCISE layer
        x = self.dense(x)
        return F.relu(x) if self.relu else F.gelu(x, approximate=self.approximate)
        # END EXERCISE layer


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x, keep, output_attentions: bool = False):
        # x: (B, T, H) -> (B, T, H), and the self-attention's probabilities (or None)
        # BEGIN EXERCISE layer
        x, att = self.attention(x, keep, output_attentions)
        return self.output(self.intermediate(x), x), att
        # END EXERCISE layer


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, keep, output_attentions: bool = False):
        attentions = []
        for block in self.layer:
            x, att = block(x, keep, output_attentions)
            attentions.append(att)
        return x, (tuple(attentions) if output_attentions else None)


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
        """Switch every layer between "math" (or "eager", the same) and "sdpa" attention."""
        name = check_attn_implementation(name)
        self.config.attn_implementation = name
        for layer in self.encoder.layer:
            layer.attention.self.use_sdpa = name == "sdpa"

    def encode(self, embedding_output, attention_mask=None, output_attentions: bool = False) -> BertOutput:
        """Runs the encoder and pooler on embedding-layer outputs (B, T, H); attention_mask
        None means no padding. Split from forward() so SMART can perturb the embeddings."""
        keep = None
        if attention_mask is not None:
            keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): broadcasts over heads and queries
        h, attentions = self.encoder(embedding_output, keep, output_attentions)
        return BertOutput(last_hidden_state=h, pooler_output=self.pooler(h), attentions=attentions)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None,
                output_attentions: bool = False) -> BertOutput:
        """output_attentions=True also returns each layer's attention probabilities, as .attentions."""
        # No padding: no mask, which lets SDPA pick its fastest (flash) kernel on a GPU. Asking
        # costs a device sync; the training loop knows the answer on the host (batches.collate).
        if attention_mask is not None and not torch.compiler.is_compiling() and attention_mask.all():
            attention_mask = None
        return self.encode(self.embeddings(input_ids, token_type_ids), attention_mask, output_attentions)

    @classmethod
    def from_pretrained(cls, name_or_path: str, attn_implementation: str = "math") -> "BertModel":
        """A Hugging Face model folder or hub id -> float32 BertModel in eval mode (see weights.py)."""
        return load_pretrained(cls, name_or_path, attn_implementation=attn_implementation)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def check_sdpa_matches_math(atol: float = 1e-5) -> float:
    """The start-up guard of the fast path: runs a tiny random BertModel (2 layers, hidden 32, 4 heads)
    on a padded batch with the math path and with sdpa, and returns the largest difference of the
    hidden states. Raises RuntimeError above atol: the math path was edited, and sdpa would not run it."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left where it was
        torch.manual_seed(0)
        config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=16, initializer_range=0.2)
        model = BertModel(config).eval()  # initializer_range 0.2: peaked attention, so slips show
        ids = torch.randint(1, 50, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        math_out = model(ids, mask).last_hidden_state
        model.set_attn_implementation("sdpa")
        sdpa_out = model(ids, mask).last_hidden_state
    diff = (math_out - sdpa_out).abs().max().item()
    if not diff <= atol:  # `not <=` so that NaN fails too
        raise RuntimeError(
            f"BertSelfAttention.forward (the math path) and torch.nn.functional.scaled_dot_product_attention "
            f"(the fast path) disagree on a tiny random model: max difference {diff:.3g} > atol {atol:g}. "
            f"The fast path would not run your version; run without --fast (attention runs the math path) "
            f"to train with your version.")
    return diff
