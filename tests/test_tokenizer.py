"""WordPiece encoding against Hugging Face's BertTokenizer (ids in tests/fixtures/tokenizer_cases.json)."""
import json

import pytest
import torch

from conftest import FIXTURES
from minbert import BertConfig, BertModel, BertTokenizer
from minbert.tokenizer import wordpiece_from_vocab

CASES = json.loads((FIXTURES / "tokenizer_cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("source", ["tokenizer.json", "vocab.txt"])
def test_awkward_strings_match_hugging_face(minilm_dir, tmp_path, source):
    if source == "vocab.txt":  # a folder with only vocab.txt + tokenizer_config.json
        for f in ("vocab.txt", "tokenizer_config.json"):
            (tmp_path / f).write_bytes((minilm_dir / f).read_bytes())
        minilm_dir = tmp_path
    tok = BertTokenizer.from_pretrained(minilm_dir)
    assert len(CASES) >= 30
    for c in CASES:
        enc = tok(c["text"], c["pair"], max_length=c["max_length"])
        assert enc["input_ids"][0].tolist() == c["legacy_input_ids"], c["text"]
        assert enc["token_type_ids"][0].tolist() == c["legacy_token_type_ids"], c["text"]


def test_batch_padding_and_pairs(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(wordpiece_from_vocab(tmp_path / "vocab.txt"))
    enc = tok(["The cat", "the dogs sat"], ["sat", "the cat"])
    assert enc["input_ids"].tolist() == [[2, 5, 6, 3, 7, 3, 0, 0, 0], [2, 5, 8, 9, 7, 3, 5, 6, 3]]
    assert enc["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert enc["attention_mask"].tolist() == [[1] * 6 + [0] * 3, [1] * 9]
    assert all(v.dtype == torch.long for v in enc.values())
    fixed = tok(["cat"], padding="max_length", max_length=6)
    assert fixed["input_ids"].tolist() == [[2, 6, 3, 0, 0, 0]]
    assert tok("cat bird")["input_ids"].tolist() == [[2, 6, 1, 3]]  # unknown word -> [UNK]
    with pytest.raises(ValueError, match="2 texts but 1 text_pairs"):
        tok(["a", "b"], ["c"])


def test_hugging_face_style_calls(tmp_path):
    """tok(texts, return_tensors="pt"), the pair form, and model(**enc) as with transformers."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(wordpiece_from_vocab(tmp_path / "vocab.txt"))
    enc = tok(["the cat", "dogs"], return_tensors="pt")
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask"}
    assert enc["input_ids"].tolist() == [[2, 5, 6, 3], [2, 8, 9, 3]]
    pairs = tok(["the cat", "dogs"], ["sat", "the dogs sat"], padding="max_length", max_length=7,
                truncation=True, return_tensors="pt").to("cpu")
    # the longer segment loses pieces first: "the dogs sat" -> "the dog"
    assert pairs["input_ids"].tolist() == [[2, 5, 6, 3, 7, 3, 0], [2, 8, 9, 3, 5, 8, 3]]
    assert pairs["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1]]
    assert pairs["attention_mask"].tolist() == [[1] * 6 + [0], [1] * 7]
    assert tok.convert_ids_to_tokens(enc["input_ids"][1]) == ["[CLS]", "dog", "##s", "[SEP]"]
    assert tok.decode(enc["input_ids"][1]) == "dogs"  # a tensor row; special tokens are skipped
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, max_position_embeddings=16))
    assert model(**pairs).last_hidden_state.shape == (2, 7, 16)
    for bad in ("np", "tf", None):
        with pytest.raises(ValueError, match="return_tensors=.* is not supported.*return_tensors='pt'"):
            tok(["the cat"], return_tensors=bad)


def test_vocab_without_special_tokens_is_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("the\ncat\n")
    with pytest.raises(ValueError, match="no \\[PAD\\] token"):
        wordpiece_from_vocab(tmp_path / "vocab.txt")
