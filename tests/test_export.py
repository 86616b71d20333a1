"""export_hf: a run's fine-tuned encoder becomes a Hugging Face model folder that our loader
and transformers both read back to the same outputs; errors leave nothing behind."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minbert import BertModel, BertTokenizer
from minbert.experiments import preset
from minbert.multitask import MultitaskBert
from minbert.run.export import ExportError, export_hf, load_multitask

HEADS = {"sst": "linear", "quora": "concat", "sts": "cos-2d1"}
ATOL = 1e-5


def fine_tuned(tiny_model, seed: int) -> MultitaskBert:
    """The tiny pretrained encoder with heads, every weight moved as fine-tuning would move it."""
    model = MultitaskBert(BertModel.from_pretrained(tiny_model), HEADS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_run(folder, tiny_model, best: MultitaskBert | None, last: MultitaskBert | None = None):
    """A run folder as the trainer leaves it: config.json, bert_config.json, best/, checkpoint-<step>/."""
    folder.mkdir(parents=True)
    exp = preset("cos-2d1", model=str(tiny_model), output_dir=str(folder), heads=dict(HEADS))
    (folder / "config.json").write_text(json.dumps(exp.to_dict(), indent=2))
    bert = BertModel.from_pretrained(tiny_model)
    (folder / "bert_config.json").write_text(json.dumps(bert.config.to_dict(), indent=2))
    for sub, model in (("best", best), ("checkpoint-8", last)):
        if model is not None:
            (folder / sub).mkdir()
            weights = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(weights, str(folder / sub / "model.safetensors"))
    return folder


@pytest.fixture
def run(tmp_path, tiny_model):
    best, last = fine_tuned(tiny_model, seed=1), fine_tuned(tiny_model, seed=2)
    return make_run(tmp_path / "runs" / "cos-2d1", tiny_model, best, last), best, last


def padded_batch(vocab_size: int):
    """Three sequences of lengths 9, 4 and 6, padded with [PAD] = 0; the second segment typed 1."""
    g = torch.Generator().manual_seed(0)
    lengths = [9, 4, 6]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, vocab_size, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 2, 3  # [CLS] ... [SEP]
        mask[i, :n] = 1
    types = torch.zeros_like(ids)
    types[0, 5:9] = 1
    return ids, mask, types


def max_diffs(ours, theirs, mask):
    """Largest differences of last_hidden_state (real tokens) and pooler_output."""
    keep = mask.bool()
    return ((ours.last_hidden_state - theirs.last_hidden_state)[keep].abs().max().item(),
            (ours.pooler_output - theirs.pooler_output).abs().max().item())


def test_exported_encoder_loads_in_minbert_with_the_fine_tuned_outputs(run, tmp_path, tiny_model, one_thread):
    run_dir, best, last = run
    out = export_hf(run_dir, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
         "heads.safetensors", "heads.json"])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert "attn_implementation" not in config

    ids, mask, types = padded_batch(best.bert.config.vocab_size)
    with torch.no_grad():
        want = best.bert(ids, mask, types)
        got = BertModel.from_pretrained(out)(ids, mask, types)
        pretrained = BertModel.from_pretrained(tiny_model)(ids, mask, types)
    hidden, pooled = max_diffs(got, want, mask)
    print(f"minbert round trip: max |diff| last_hidden_state {hidden:.2e}, pooler_output {pooled:.2e}")
    assert hidden <= ATOL and pooled <= ATOL
    assert max_diffs(got, pretrained, mask)[0] > 1e-2, "the export holds the pretrained weights, not the fine-tuned"

    # which="last": the latest checkpoint's weights instead
    out_last = export_hf(run_dir, tmp_path / "export-last", which="last")
    with torch.no_grad():
        assert max_diffs(BertModel.from_pretrained(out_last)(ids, mask, types), last.bert(ids, mask, types),
                         mask)[0] <= ATOL


def test_heads_are_saved_beside_the_encoder_and_rebuild_the_model(run, tmp_path, one_thread):
    run_dir, best, _ = run
    out = export_hf(run_dir, tmp_path / "export")
    info = json.loads((out / "heads.json").read_text())
    assert {t: v["head"] for t, v in info["tasks"].items()} == HEADS
    assert info["tasks"]["sst"]["loss"] == "ce" and info["tasks"]["quora"]["loss"] == "bce"
    assert info["tasks"]["sts"]["loss"] == "mse" and info["pooling"] == "cls"
    assert info["experiment"]["name"] == "cos-2d1" and info["source"]["which"] == "best"
    assert "from_pretrained" in info["usage"]
    assert sorted(load_file(str(out / "heads.safetensors"))) == sorted(best.heads.state_dict())

    model = load_multitask(out)
    ids, mask, types = padded_batch(best.bert.config.vocab_size)
    seg = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    pair = {"segments": [seg, {**seg, "input_ids": ids.flip(0), "attention_mask": mask.flip(0)}]}
    with torch.no_grad():
        for task, batch in (("sst", {"segments": [seg]}), ("quora", pair), ("sts", pair)):
            diff = (model(task, batch) - best(task, batch)).abs().max().item()
            assert diff <= ATOL, f"{task}: {diff}"


def test_exported_folder_loads_in_transformers_with_no_missing_keys(run, tmp_path, one_thread):
    transformers = pytest.importorskip("transformers", reason="transformers is only in requirements-dev.txt")
    run_dir, best, _ = run
    out = export_hf(run_dir, tmp_path / "export")
    hf, info = transformers.BertModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys") and not info.get("error_msgs"), info
    hf.eval()
    ids, mask, types = padded_batch(best.bert.config.vocab_size)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ours = best.bert(ids, mask, types)
    hidden, pooled = max_diffs(ours, theirs, mask)
    print(f"transformers {transformers.__version__} round trip: max |diff| last_hidden_state {hidden:.2e}, "
          f"pooler_output {pooled:.2e}")
    assert hidden <= ATOL and pooled <= ATOL

    # Its tokenizer reads the folder too, and splits text as ours does.
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    texts, pairs = ["the movie was very good", "a dull plot"], ["how can i learn", "the cat plays guitar"]
    ours = BertTokenizer.from_pretrained(out)(texts, pairs)
    theirs = tok(texts, pairs, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_folder_that_is_not_a_finished_run_is_refused_and_nothing_written(tmp_path, tiny_model):
    with pytest.raises(ExportError, match="no config.json"):
        export_hf(tmp_path / "nowhere", tmp_path / "export")
    assert files_under(tmp_path) == []
    no_weights = make_run(tmp_path / "no-weights", tiny_model, best=None)
    before = files_under(tmp_path)
    with pytest.raises(ExportError, match=r"no weights at .*best/model.safetensors"):
        export_hf(no_weights, tmp_path / "export")
    with pytest.raises(ExportError, match="no checkpoint"):
        export_hf(no_weights, tmp_path / "export", which="last")
    assert files_under(tmp_path) == before


def test_a_non_empty_output_folder_is_refused_and_left_as_it_was(run, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = files_under(tmp_path)
    with pytest.raises(ExportError, match=f"{out} exists and is not empty"):
        export_hf(run_dir, out)
    assert files_under(tmp_path) == before and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert export_hf(run_dir, out) == out  # an empty folder is fine
    assert (out / "model.safetensors").exists()


def test_a_run_moved_from_another_machine_needs_model_dir_for_its_tokenizer(run, tmp_path, tiny_model):
    run_dir, _, _ = run
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "elsewhere" / "model")}))
    with pytest.raises(ExportError, match="pass model_dir="):
        export_hf(run_dir, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    out = export_hf(run_dir, tmp_path / "export", model_dir=tiny_model)
    assert (out / "vocab.txt").read_text() == (tiny_model / "vocab.txt").read_text()

def test_a_minilm_run_exports_for_transformers(tmp_path, minilm_dir, one_thread):
    """The real layout: a tokenizer.json beside vocab.txt, a hub config with extra fields."""
    transformers = pytest.importorskip("transformers", reason="transformers is only in requirements-dev.txt")
    best = fine_tuned(minilm_dir, seed=3)
    run_dir = make_run(tmp_path / "run", minilm_dir, best)
    out = export_hf(run_dir, tmp_path / "export")
    assert (out / "tokenizer.json").exists() and (out / "vocab.txt").exists()
    hf, info = transformers.BertModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = ["A man is playing the guitar.", "Unbelievably dull, overlong and self-satisfied."]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], BertTokenizer.from_pretrained(out)(texts)["input_ids"])
    with torch.no_grad():
        theirs = hf.eval()(**batch)
        ours = BertModel.from_pretrained(out)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    hidden, pooled = max_diffs(ours, theirs, batch["attention_mask"])
    print(f"MiniLM through transformers: max |diff| last_hidden_state {hidden:.2e}, pooler_output {pooled:.2e}")
    assert hidden <= ATOL and pooled <= ATOL
