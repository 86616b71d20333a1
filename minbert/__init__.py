"""minBERT: a readable BERT you can train, from scratch in PyTorch.

    from minbert import BertModel, BertTokenizer
    tok = BertTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder)  # attn_implementation="sdpa" for the fused path
    out = model(**tok(["A sentence.", "Another one."], return_tensors="pt"), output_attentions=True)
    out.last_hidden_state, out.pooler_output, out.attentions  # (B, T, H), (B, H), per layer (B, nh, T, T)
"""
from minbert.config import BertConfig
from minbert.model import BertModel, BertOutput
from minbert.tokenizer import BertTokenizer

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertTokenizer"]
