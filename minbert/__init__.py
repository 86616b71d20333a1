"""minBERT: a readable BERT you can train, from scratch in PyTorch.

    from minbert import BertConfig, BertModel, BertTokenizer
"""
from minbert.config import BertConfig
from minbert.model import BertModel, BertOutput
from minbert.tokenizer import BertTokenizer

__all__ = ["BertConfig", "BertModel", "BertOutput", "BertTokenizer"]
