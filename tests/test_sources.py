"""Faithful to the sources: the choices the papers and run_glue make, each checked where
the code makes it (the M-FAC authors' weight decay and momentum: tests/test_mfac.py)."""
import json

import pytest
import torch

import minbert.trainer
import train_multitask
from conftest import tiny_experiment
from minbert.experiments import PRESETS, preset
from minbert.sweep import sweeps
from minbert.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
GSE_PRESETS = ["gse", "cos-emb", "cos-d", "cos-2d1", "cos-2d1-mean", "smart-gse", "gse-3x", "cos-2d1-3x"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_gse_presets_take_the_mean_of_the_projected_gradients(name):
    """Student paper, 5.3 1c: "the mean of the adjusted gradients"; the pcgrad row keeps Yu et al.'s sum."""
    exp = preset(name)
    if name in GSE_PRESETS:
        assert exp.update == "gse" and exp.pcgrad_reduction == "mean", name
    elif name == "pcgrad":
        assert exp.pcgrad_reduction == "sum"


def test_trainer_passes_the_reduction_to_pcgrad(tiny_model, tiny_data, tmp_path, monkeypatch):
    seen = []
    real = minbert.trainer.pcgrad_backward
    monkeypatch.setattr(minbert.trainer, "pcgrad_backward",
                        lambda *a, reduction="sum", **k: seen.append(reduction) or real(*a, reduction=reduction, **k))
    for name in ("gse", "pcgrad"):
        Trainer(tiny_experiment(name, tiny_model, tiny_data, tmp_path / name), quiet=True).update(0)
    assert seen == ["mean", "sum"]


def test_mean_gse_step_is_a_third_of_the_summed_one_for_three_tasks(tiny_model, tiny_data, tmp_path):
    """With one task gradient per head, the mean divides every PCGrad gradient by K = 3."""
    grads = {}
    for reduction in ("sum", "mean"):
        trainer = Trainer(tiny_experiment("pcgrad", tiny_model, tiny_data, tmp_path / reduction, head_dropout=0.0,
                                          pcgrad_reduction=reduction), quiet=True)
        trainer.model.eval()  # no dropout: the two runs see the same forward
        losses = {t: trainer.task_loss(t, trainer.train_batch(t, 0)) for t in trainer.exp.tasks}
        trainer.optimizers[0].step = lambda: None  # look at the gradients, do not step
        trainer.optimizer_step(losses, pcgrad=True)
        grads[reduction] = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    for s, m in zip(grads["sum"], grads["mean"]):
        torch.testing.assert_close(m, s / 3)


def test_glue_preset_follows_run_glue():
    """Hugging Face's Trainer clips at max_grad_norm 1.0; run_glue's --do_eval scores the final model."""
    exp = preset("glue")
    assert exp.max_grad_norm == 1.0 and exp.results_from == "final"
    assert (exp.lr, exp.batch_size, exp.epochs, exp.lr_schedule, exp.max_length) == (1e-4, 32, 5, "linear", 128)


def test_glue_results_are_the_final_model_with_the_best_kept_apart(tiny_model, tiny_data, tmp_path):
    exp = tiny_experiment("glue", tiny_model, tiny_data, tmp_path, tasks=("mrpc",), max_steps=0, epochs=3,
                          steps_per_epoch=2, lr=5e-3)
    result = Trainer(exp, quiet=True).train()
    evals = [e for e in json.loads((tmp_path / "trainer_state.json").read_text())["log_history"] if "eval_f1" in e]
    assert len(evals) == 3
    assert result["eval_f1"] == evals[-1]["eval_f1"] and result["epoch"] == 3  # the final model
    best = max(evals, key=lambda e: e["eval_overall"])
    assert result["best_eval_f1"] == best["eval_f1"] and result["best_epoch"] == best["step"] / 2


def test_optim_mfac_as_the_model_cards_spell_it(tiny_model, tiny_data, tmp_path):
    assert train_multitask.main(["--task_name", "mrpc", "--optim", "MFAC", "--optim_args", "num_grads=4",
                                 "--model", str(tiny_model), "--data_dir", str(tiny_data), "--device", "cpu",
                                 "--output_dir", str(tmp_path), "--max_steps", "1", "--batch_size", "4",
                                 "--max_eval_examples", "4"]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["optim"] == "mfac"


def test_sweep_gives_each_run_its_own_init_and_data_seed_and_evaluates_ten_times_an_epoch(tiny_model, tiny_data,
                                                                                        tmp_path):
    exp = tiny_experiment("glue", tiny_model, tiny_data, tmp_path / "unused", tasks=("mrpc",), max_steps=0,
                          epochs=1, steps_per_epoch=10, init_seed=100, data_seed=200, max_eval_examples=4)
    sweeps.run_sweep(exp, t=2, f=0.5, p=1, out=str(tmp_path / "sweep"))
    configs = [json.loads((tmp_path / "sweep" / "runs" / f"run-{i}" / "config.json").read_text()) for i in (0, 1)]
    assert [(c["init_seed"], c["data_seed"], c["seed"]) for c in configs] == [(100, 200, exp.seed), (101, 201, exp.seed)]
    assert all(c["eval_per_epoch"] == 10 for c in configs)
    log = json.loads((tmp_path / "sweep" / "runs" / "run-0" / "trainer_state.json").read_text())["log_history"]
    assert len([e for e in log if "eval_overall" in e]) >= 5  # 10 an epoch: 5 by fraction 0.5


def test_grid_trains_every_init_and_data_seed_pair(tiny_model, tiny_data, tmp_path):
    exp = tiny_experiment("glue", tiny_model, tiny_data, tmp_path / "unused", tasks=("mrpc",), max_steps=0,
                          epochs=1, steps_per_epoch=2, max_eval_examples=4, init_seed=1, data_seed=7)
    scores = sweeps.run_grid(exp, 2, 2, str(tmp_path / "grid"), evals_per_epoch=2)
    assert set(scores) == {(1, 7), (1, 8), (2, 7), (2, 8)}
    for f in ("grid.md", "grid.json", "grid.png"):
        assert (tmp_path / "grid" / f).stat().st_size > 0
    text = (tmp_path / "grid" / "grid.md").read_text()
    assert "dev subset scored" in text and "init" in text
