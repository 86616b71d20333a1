"""The encoder against reference outputs (tests/fixtures/make_fixtures.py), plus its properties."""
import os
import types

import pytest
import torch
from safetensors.torch import load_file

import minbert.model
from conftest import FIXTURES, SHARED, need
from minbert import BertConfig, BertModel, pooling
from minbert.model import check_sdpa_matches_math


def small_config(**kw):
    shape = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
    return BertConfig(**{**shape, **kw})


def test_bert_base_parameter_count():
    assert BertModel(BertConfig()).num_parameters() == 109_482_240


def test_config_from_json_ignores_hub_extras(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 4, "architectures": ["BertModel"],'
                                          ' "transformers_version": "4.8.2"}')
    c = BertConfig.from_json(tmp_path / "config.json")
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers) == (64, 4, 12)
    with pytest.raises(ValueError, match="multiple of"):
        BertConfig(hidden_size=30, num_attention_heads=4)


@pytest.mark.parametrize("attn", ["sdpa", "math"])
def test_tiny12_matches_reference(attn):
    model = BertModel.from_pretrained(FIXTURES / "tiny12", attn_implementation=attn)
    ref = load_file(str(FIXTURES / "tiny12_reference.safetensors"))
    assert model.config.num_hidden_layers == 12
    with torch.no_grad():
        out = model(ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    keep = ref["attention_mask"].bool()
    torch.testing.assert_close(out.last_hidden_state[keep], ref["last_hidden_state"][keep], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output, ref["pooler_output"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", ["single", "pair"])
def test_minilm_matches_transformers(minilm_dir, batch):
    model = BertModel.from_pretrained(minilm_dir)
    ref = load_file(str(FIXTURES / "minilm_reference.safetensors"))
    with torch.no_grad():
        out = model(ref[f"{batch}.input_ids"], ref[f"{batch}.attention_mask"], ref[f"{batch}.token_type_ids"])
    assert next(model.parameters()).dtype == torch.float32
    real = ref[f"{batch}.attention_mask"].bool()
    got, want = out.last_hidden_state, ref[f"{batch}.last_hidden_state"]
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    # Outputs at padding positions feed nothing downstream and depend on the summation order,
    # which changes with the thread count and the CPU's vector unit (seen: 1.3e-5 on 1 thread,
    # 8.4e-5 on an AVX-512 machine, against references made elsewhere): a looser bound there.
    torch.testing.assert_close(got[~real], want[~real], atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref[f"{batch}.pooler_output"], atol=1e-5, rtol=0)


def test_cs224n_sanity_check():
    """The CS224N starter's check on bert-base-uncased: runs where those weights are."""
    ref_file = need(SHARED / "reference" / "cs224n" / "sanity_check.data", "CS224N sanity_check.data")
    weights = os.environ.get("MINBERT_BERT_BASE")
    if not weights:
        pytest.skip("bert-base-uncased weights are not on this machine; set MINBERT_BERT_BASE to a local folder")
    model = BertModel.from_pretrained(weights)
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0, 0, 0], [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]])
    ref = torch.load(ref_file, weights_only=True)
    with torch.no_grad():
        out = model(ids, (ids != 0).long())
    torch.testing.assert_close(out.last_hidden_state, ref["last_hidden_state"], atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(out.pooler_output, ref["pooler_output"], atol=1e-5, rtol=1e-3)


def test_math_and_sdpa_attention_agree_with_padding():
    torch.manual_seed(0)
    model = BertModel(small_config(num_hidden_layers=4, attn_implementation="sdpa")).eval()
    ids = torch.randint(1, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 1:] = 0
    with torch.no_grad():
        fused = model(ids, mask)
        model.set_attn_implementation("math")
        math = model(ids, mask)
    torch.testing.assert_close(math.last_hidden_state, fused.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(math.pooler_output, fused.pooler_output, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "math"])
def test_padding_changes_nothing(attn):
    torch.manual_seed(0)
    model = BertModel(small_config(attn_implementation=attn)).eval()
    ids = torch.randint(1, 100, (2, 7))
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0] * 7])
    padded_ids = torch.cat([ids, torch.zeros(2, 5, dtype=torch.long)], 1)
    padded_types = torch.cat([types, torch.zeros(2, 5, dtype=torch.long)], 1)
    padded_mask = (padded_ids != 0).long()
    with torch.no_grad():
        short = model(ids, torch.ones_like(ids), types)
        long = model(padded_ids, padded_mask, padded_types)
    torch.testing.assert_close(long.last_hidden_state[:, :7], short.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(long.pooler_output, short.pooler_output, atol=1e-6, rtol=0)
    for name in pooling.POOLERS:
        torch.testing.assert_close(pooling.pool(name, long.last_hidden_state, padded_mask, model),
                                   pooling.pool(name, short.last_hidden_state, torch.ones_like(ids), model),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "math"])
def test_attentions_rows_sum_to_one_and_padding_keys_get_zero(attn):
    torch.manual_seed(0)
    model = BertModel(small_config(attn_implementation=attn)).eval()
    ids = torch.randint(1, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        out = model(ids, mask, output_attentions=True)
        plain = model(ids, mask)
    assert plain.attentions is None
    assert isinstance(out.attentions, tuple) and len(out.attentions) == 2
    pad = ~mask.bool()[:, None, None, :].expand(3, 4, 9, 9)  # (B, nh, T, T): padding key columns
    for att in out.attentions:
        assert att.shape == (3, 4, 9, 9)
        assert (att[pad] == 0).all()  # exactly zero, not merely small
        torch.testing.assert_close(att.sum(-1), torch.ones(3, 4, 9), atol=1e-6, rtol=0)
    # Asking for the weights runs the math path for that call, which gives the same hidden states.
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state, atol=1e-6, rtol=0)
    assert model.config.attn_implementation == attn


@pytest.mark.parametrize("layer", [0, 5])
def test_minilm_attentions_match_transformers_eager(minilm_dir, layer):
    model = BertModel.from_pretrained(minilm_dir, attn_implementation="sdpa")
    ref = load_file(str(FIXTURES / "minilm_reference.safetensors"))
    want = load_file(str(FIXTURES / "minilm_attentions.safetensors"))[f"pair.attentions.{layer}"]
    with torch.no_grad():
        out = model(ref["pair.input_ids"], ref["pair.attention_mask"], ref["pair.token_type_ids"],
                    output_attentions=True)
    got = out.attentions[layer]  # (4, 12, T, T)
    real = ref["pair.attention_mask"].bool()  # (4, T)
    assert (~real).any()
    torch.testing.assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real], atol=1e-5, rtol=0)
    assert (got[~real[:, None, None, :].expand_as(got)] == 0).all()


def test_attn_implementation_names():
    assert BertConfig().attn_implementation == "math"  # the code you read is the code that runs by default
    assert BertModel.from_pretrained(FIXTURES / "tiny12").config.attn_implementation == "math"
    assert BertConfig(attn_implementation="eager").attn_implementation == "math"  # Hugging Face's name
    model = BertModel(small_config())
    allowed = "must be 'math' or 'sdpa'.*not 'flash'"
    with pytest.raises(ValueError, match=allowed):
        BertConfig(attn_implementation="flash")
    with pytest.raises(ValueError, match=allowed):
        BertModel.from_pretrained(FIXTURES / "tiny12", attn_implementation="flash")
    with pytest.raises(ValueError, match=allowed):
        model.set_attn_implementation("flash")
    model.set_attn_implementation("sdpa")
    assert all(layer.attention.self.use_sdpa for layer in model.encoder.layer)


def test_sdpa_check_passes_on_the_code_and_keeps_the_random_stream():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert check_sdpa_matches_math() < 1e-5
    assert torch.equal(torch.rand(3), expected)


def test_sdpa_check_fails_when_the_math_path_drops_the_scaling(monkeypatch):
    monkeypatch.setattr(minbert.model, "math", types.SimpleNamespace(sqrt=lambda d: 1.0))  # no 1/sqrt(d_k)
    with pytest.raises(RuntimeError) as e:
        check_sdpa_matches_math()
    msg = str(e.value)
    assert "BertSelfAttention.forward" in msg
    assert "torch.nn.functional.scaled_dot_product_attention" in msg
    assert "max difference" in msg
    assert "run without --fast (attention runs the math path) to train with your version" in msg


def test_pooling_by_hand():
    h = torch.tensor([[[1.0, -1.0], [3.0, 5.0], [100.0, 100.0]]])  # the last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pooling.cls(h, mask).tolist() == [[1.0, -1.0]]
    assert pooling.mean(h, mask).tolist() == [[2.0, 2.0]]
    assert pooling.max(h, mask).tolist() == [[3.0, 5.0]]
    with pytest.raises(ValueError, match="unknown pooling"):
        pooling.pool("median", h, mask)


def test_sequence_longer_than_positions_is_refused():
    model = BertModel(small_config())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_gradients_reach_every_parameter():
    model = BertModel(small_config())
    ids = torch.randint(1, 100, (2, 6))
    out = model(ids, torch.ones_like(ids), torch.tensor([[0, 0, 0, 1, 1, 1]] * 2))
    (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
