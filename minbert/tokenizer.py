"""BERT's WordPiece tokenizer, assembled from the `tokenizers` package's parts.

Single sentences are encoded `[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]` with token
types 0 for the first segment and 1 for the second (BERT paper, section 3, Figure 2).
Calls read as with Hugging Face: `model(**tok(["a", "b"], return_tensors="pt"))`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from minbert.weights import resolve_model_dir


def wordpiece_from_vocab(vocab_file: str | Path, lowercase: bool = True, strip_accents=None,
                         handle_chinese_chars: bool = True) -> Tokenizer:
    """vocab.txt -> a Tokenizer with BERT's normalizer, pre-tokenizer and [CLS]/[SEP] template."""
    vocab_file = Path(vocab_file)
    tokens = vocab_file.read_text(encoding="utf-8").splitlines()
    vocab = {tok: i for i, tok in enumerate(tokens)}
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise ValueError(f"{vocab_file} has no {special} token; is it a BERT WordPiece vocab?")
    tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=handle_chinese_chars,
                                               strip_accents=strip_accents, lowercase=lowercase)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[cls, sep])
    tk.decoder = decoders.WordPiece(prefix="##")
    tk.add_special_tokens([t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab])
    return tk


class BatchEncoding(dict):
    """input_ids, token_type_ids, attention_mask: LongTensors (B, T). A dict, so `model(**enc)` works."""

    def to(self, device) -> "BatchEncoding":
        return BatchEncoding({k: v.to(device) for k, v in self.items()})


class BertTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        self.tk = tokenizer
        self.tk.no_padding()  # padding and truncation are chosen per call, not stored in the file
        self.tk.no_truncation()
        self.pad_token_id = self.tk.token_to_id("[PAD]")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "BertTokenizer":
        """A folder (or hub id) with tokenizer.json, or vocab.txt plus tokenizer_config.json."""
        folder = resolve_model_dir(name_or_path, need_weights=False)
        if (folder / "tokenizer.json").exists():
            return cls(Tokenizer.from_file(str(folder / "tokenizer.json")))
        if not (folder / "vocab.txt").exists():
            raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {folder}")
        options = {}
        if (folder / "tokenizer_config.json").exists():
            options = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        return cls(wordpiece_from_vocab(folder / "vocab.txt", lowercase=options.get("do_lower_case", True),
                                        strip_accents=options.get("strip_accents"),
                                        handle_chinese_chars=options.get("tokenize_chinese_chars", True)))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def __call__(self, texts, text_pairs=None, max_length: int = 128, padding=True, truncation: bool = True,
                 return_tensors: str = "pt") -> BatchEncoding:
        """texts: a string or list of strings (text_pairs likewise) -> BatchEncoding of LongTensors (B, T).

        padding: True pads to the longest in the batch, "max_length" to max_length, False not at all
        (then every sequence must have the same length to form a tensor). return_tensors: only "pt"
        (PyTorch), accepted so that Hugging Face-style calls run; encode_lists gives plain lists."""
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported: this tokenizer returns "
                             f"PyTorch tensors (return_tensors='pt'); for lists of ids use encode_lists()")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if text_pairs is not None:
            text_pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
            if len(text_pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
        if truncation:
            self.tk.enable_truncation(max_length, strategy="longest_first")
        else:
            self.tk.no_truncation()
        if padding == "max_length":
            self.tk.enable_padding(pad_id=self.pad_token_id, pad_token="[PAD]", length=max_length)
        elif padding:
            self.tk.enable_padding(pad_id=self.pad_token_id, pad_token="[PAD]")
        else:
            self.tk.no_padding()
        inputs = texts if text_pairs is None else list(zip(texts, text_pairs))
        enc = self.tk.encode_batch(inputs)
        return BatchEncoding(
            input_ids=torch.tensor([e.ids for e in enc], dtype=torch.long),
            token_type_ids=torch.tensor([e.type_ids for e in enc], dtype=torch.long),
            attention_mask=torch.tensor([e.attention_mask for e in enc], dtype=torch.long),
        )

    def encode_lists(self, texts, text_pairs=None, max_length: int = 128) -> list[tuple[list[int], list[int]]]:
        """(token ids, token type ids) of many texts, truncated, unpadded: pre-tokenizes a data set once."""
        self.tk.enable_truncation(max_length, strategy="longest_first")
        self.tk.no_padding()
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        return [(e.ids, e.type_ids) for e in self.tk.encode_batch(inputs)]

    def decode(self, ids) -> str:
        return self.tk.decode([int(i) for i in ids])  # ints, so a tensor row works too

    def convert_ids_to_tokens(self, ids) -> list[str]:
        """[101, 7592, 102] -> ["[CLS]", "hello", "[SEP]"]: the word pieces, e.g. for plot labels."""
        return [self.tk.id_to_token(int(i)) for i in ids]
