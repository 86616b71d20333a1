"""The code you read is the code that runs (minbert/fastpaths.py): a default run computes
with BertSelfAttention.forward's math and AdamW._update; --fast swaps in SDPA and
adamw_foreach only after checking them against those, and stops when they disagree."""
import math

import pytest
import torch

import minbert.model
import train_multitask
from conftest import tiny_experiment
from minbert.optim import adamw
from minbert.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def argv(tiny_model, tiny_data, out, *extra):
    return ["--preset", "gse", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(out),
            "--device", "cpu", "--batch_size", "4", "--max_steps", "2", "--max_eval_examples", "8", *extra]


def test_default_run_uses_the_readable_attention_and_adamw_step(tiny_model, tiny_data, tmp_path, monkeypatch):
    calls = []
    real_update = adamw.AdamW._update
    monkeypatch.setattr(adamw.AdamW, "_update", lambda self, g, p: calls.append("_update") or real_update(self, g, p))
    monkeypatch.setattr(adamw.AdamW, "_update_foreach", lambda *a: pytest.fail("a default run took adamw_foreach"))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: pytest.fail("a default run took SDPA attention"))
    assert train_multitask.main(argv(tiny_model, tiny_data, tmp_path / "run")) == 0
    assert calls  # AdamW._update made every step


def test_a_students_edit_to_the_attention_math_changes_a_default_run(tiny_model, tiny_data, tmp_path, monkeypatch):
    runs = {}
    for name in ("as_written", "edited"):
        if name == "edited":  # drop the 1/sqrt(d_head) of eq. 1
            monkeypatch.setattr(minbert.model, "math", type("m", (), {"sqrt": staticmethod(lambda x: 1.0)}))
        assert train_multitask.main(argv(tiny_model, tiny_data, tmp_path / name)) == 0
        runs[name] = (tmp_path / name / "all_results.json").read_text()
    assert runs["as_written"] != runs["edited"]


def test_fast_run_stops_when_the_attention_math_was_edited(tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(minbert.model, "math", type("m", (), {"sqrt": staticmethod(lambda x: 1.0)}))
    assert train_multitask.main(argv(tiny_model, tiny_data, tmp_path / "run", "--fast")) == 2
    err = capsys.readouterr().err
    assert "BertSelfAttention.forward" in err and "scaled_dot_product_attention" in err and "without --fast" in err
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_fast_run_stops_when_adamw_update_was_edited(tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    real_update = adamw.AdamW._update

    def no_bias_correction(self, group, params):  # a student's broken step: lr doubled
        real_update(self, {**group, "lr": 2 * group["lr"]}, params)
    monkeypatch.setattr(adamw.AdamW, "_update", no_bias_correction)
    assert train_multitask.main(argv(tiny_model, tiny_data, tmp_path / "run", "--fast")) == 2
    err = capsys.readouterr().err
    assert "AdamW._update" in err and "adamw_foreach" in err and "without --fast and --compile" in err
    assert not (tmp_path / "run").exists()


def test_fast_run_trains_with_the_fast_paths_when_they_agree(tiny_model, tiny_data, tmp_path):
    trainer = Trainer(tiny_experiment("gse", tiny_model, tiny_data, tmp_path / "run", fast=True), quiet=True)
    assert trainer.optimizers[0].foreach
    assert all(layer.attention.self.use_sdpa for layer in trainer.model.bert.encoder.layer)
    result = trainer.train()
    assert math.isfinite(result["eval_overall"]) and result["fast"] is True


def test_fast_path_checks_take_well_under_a_second():
    import time
    t0 = time.perf_counter()
    minbert.model.check_sdpa_matches_math()
    adamw.check_foreach_matches_loop()
    assert time.perf_counter() - t0 < 1.0
