"""BertConfig: the shape of a BERT encoder (Devlin et al. 2019, "BERT: Pre-training of
Deep Bidirectional Transformers for Language Understanding").

Field names and defaults follow Hugging Face's `config.json`, so a hub config reads
straight in. The defaults are BERT-base: 12 layers, hidden 768, 12 heads.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

# Which attention code runs (not a Hugging Face config field). "math" is the written-out
# formula in model.BertSelfAttention.forward, the code you read; "sdpa" the fused
# torch.nn.functional.scaled_dot_product_attention, the faster path one switch away.
ATTN_IMPLEMENTATIONS = ("math", "sdpa")


def check_attn_implementation(name: str) -> str:
    """Returns "math" or "sdpa"; "eager", Hugging Face's name for the math path, reads as "math"."""
    if name == "eager":
        return "math"
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be 'math' or 'sdpa' (or 'eager', Hugging Face's "
                         f"name for 'math'), not {name!r}")
    return name


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact erf GELU, as in the original BERT
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    attn_implementation: str = "math"  # or "sdpa"; see ATTN_IMPLEMENTATIONS

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in ("gelu", "gelu_new", "relu"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use gelu, gelu_new or relu")
        self.attn_implementation = check_attn_implementation(self.attn_implementation)

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Keeps the fields we know and ignores the rest (hub configs carry many extras)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {d['position_embedding_type']!r} is not supported "
                             f"(only 'absolute')")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
