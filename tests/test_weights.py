"""Checkpoint reading: key variants, dtypes, strict errors, and files that must be refused."""
import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES
from minbert import BertModel
from minbert.weights import resolve_model_dir

TINY = FIXTURES / "tiny12"


def tiny_state():
    return load_file(str(TINY / "model.safetensors"))


def write_folder(tmp_path, state, fmt="safetensors"):
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    if fmt == "safetensors":
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def outputs(model):
    ids = torch.tensor([[5, 6, 7, 0]])
    with torch.no_grad():
        return model(ids, (ids != 0).long()).last_hidden_state


def test_key_variants_all_load_to_the_same_model(tmp_path):
    """bert. prefix, legacy gamma/beta, a position_ids buffer, cls.* heads, float16, .bin."""
    reference = outputs(BertModel.from_pretrained(TINY))
    state = {}
    for k, v in tiny_state().items():
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state[k] = v.half()
    state["bert.embeddings.position_ids"] = torch.arange(64)[None]
    state["cls.predictions.bias"] = torch.zeros(128)
    for fmt in ("safetensors", "bin"):
        folder = write_folder(tmp_path / fmt, state, fmt) if (tmp_path / fmt).mkdir() is None else None
        model = BertModel.from_pretrained(folder)
        assert next(model.parameters()).dtype == torch.float32
        torch.testing.assert_close(outputs(model), reference, atol=2e-2, rtol=0)  # float16 rounding only


def test_strict_load_lists_missing_unexpected_and_wrong_shapes(tmp_path):
    state = tiny_state()
    del state["pooler.dense.bias"]
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    state["embeddings.word_embeddings.weight"] = torch.zeros(10, 32)
    with pytest.raises(ValueError) as e:
        BertModel.from_pretrained(write_folder(tmp_path, state))
    msg = str(e.value)
    assert "missing (1): pooler.dense.bias" in msg
    assert "unexpected (1): encoder.layer.0.extra.weight" in msg
    assert "embeddings.word_embeddings.weight: checkpoint (10, 32) vs model (128, 32)" in msg


def test_truncated_file_is_a_clear_error(tmp_path):
    folder = write_folder(tmp_path, tiny_state())
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not read the weights"):
        BertModel.from_pretrained(folder)


class Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_with_code_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"embeddings.word_embeddings.weight": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        BertModel.from_pretrained(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_weights_and_missing_folder(tmp_path):
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights in"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        BertModel.from_pretrained(str(tmp_path / "nope"))


def test_hub_id_offline_says_how_to_use_a_local_folder(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="pass a local model folder instead"):
        resolve_model_dir("prajjwal1/bert-tiny")


def test_config_json_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    save_file(tiny_state(), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="not supported"):
        BertModel.from_pretrained(tmp_path)
