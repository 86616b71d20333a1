"""The run folder (minbert/checkpoint.py): the same command on a finished run leaves it
alone, another configuration into a folder holding a run stops before any work naming the
fields that differ, --overwrite_output_dir starts afresh, config.json is never rewritten;
evaluate.py scores whole dev sets unless told otherwise, says when it did not, and reads
no training data."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import minbert.build
import train_multitask
from conftest import tiny_experiment
from minbert.checkpoint import RunFolderError
from minbert.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def argv(tiny_model, tiny_data, out, *extra):
    return ["--preset", "multitask", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir",
            str(out), "--device", "cpu", "--batch_size", "4", "--max_steps", "2", "--max_eval_examples", "8",
            "--lr", "1e-3", *extra]


@pytest.fixture
def finished(tiny_model, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train_multitask.main(argv(tiny_model, tiny_data, out)) == 0
    return out


def snapshot(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_command_on_a_finished_run_leaves_it_alone(finished, tiny_model, tiny_data, capsys):
    before = snapshot(finished)
    assert train_multitask.main(argv(tiny_model, tiny_data, finished)) == 0
    assert "already finished at step 2" in capsys.readouterr().out
    assert snapshot(finished) == before


def test_other_configuration_stops_before_any_work_naming_the_fields(finished, tiny_model, tiny_data, capsys):
    before = snapshot(finished)
    assert train_multitask.main(argv(tiny_model, tiny_data, finished, "--lr", "1e-4", "--pooling", "mean")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{finished} holds a run with another configuration" in err, err
    assert "lr: 0.001 -> 0.0001" in err and "pooling: 'cls' -> 'mean'" in err and "--overwrite_output_dir" in err
    assert snapshot(finished) == before  # config.json (lr 1e-3) not rewritten, nothing trained


def test_resumable_fields_may_change(finished, tiny_model, tiny_data):
    """A longer --max_steps continues the run; config.json keeps what the run started with."""
    config = (finished / "config.json").read_text()
    assert train_multitask.main(argv(tiny_model, tiny_data, finished, "--max_steps", "4")) == 0
    assert json.loads((finished / "all_results.json").read_text())["global_step"] == 4
    assert (finished / "config.json").read_text() == config


def test_overwrite_output_dir_starts_afresh(finished, tiny_model, tiny_data):
    (finished / "stray.txt").write_text("from the old run")
    assert train_multitask.main(argv(tiny_model, tiny_data, finished, "--lr", "1e-4", "--overwrite_output_dir")) == 0
    assert json.loads((finished / "config.json").read_text())["lr"] == 1e-4
    assert not (finished / "stray.txt").exists()
    assert json.loads((finished / "all_results.json").read_text())["train_steps"] == 2  # trained from step 0


def test_python_callers_meet_the_same_check(finished, tiny_model, tiny_data):
    with pytest.raises(RunFolderError, match="lr: 0.001 -> 0.0001"):
        Trainer(tiny_experiment("multitask", tiny_model, tiny_data, finished, lr=1e-4), quiet=True)


def test_startup_line_gives_the_steps_this_run_takes(tiny_model, tiny_data, tmp_path, capsys):
    assert train_multitask.main(argv(tiny_model, tiny_data, tmp_path / "run", "--max_steps", "3")) == 0
    assert "multitask: 3 steps to take (to step 3 of 120, 12/epoch)" in capsys.readouterr().out


def test_evaluate_scores_whole_dev_sets_by_default(finished, tiny_data, monkeypatch):
    read = []
    real = minbert.build.read_split
    monkeypatch.setattr(minbert.build, "read_split", lambda t, d, split, **kw: read.append(split) or real(t, d, split, **kw))
    assert evaluate.main([str(finished), "--device", "cpu", "--splits", "dev"]) == 0
    results = json.loads((finished / "evaluate_results.json").read_text())
    assert "dev_subset" not in results  # the training run scored 8 dev examples; evaluate scores all 16
    assert len((finished / "predictions" / "sst-dev-output.csv").read_text().splitlines()) == 1 + 16
    assert set(read) == {"dev"}  # no training data read

    assert evaluate.main([str(finished), "--device", "cpu", "--splits", "dev", "--max_eval_examples", "5"]) == 0
    results = json.loads((finished / "evaluate_results.json").read_text())
    assert results["dev_subset"] == {"sst": 5, "quora": 5, "sts": 5}
    training = json.loads((finished / "all_results.json").read_text())
    assert training["dev_subset"] == {"sst": 8, "quora": 8, "sts": 8}  # the run's record says so too


def test_evaluate_imports_no_training_machinery():
    code = ("import sys, evaluate; bad = [m for m in ('minbert.trainer', 'minbert.checkpoint', 'minbert.sweeps', "
            "'minbert.pcgrad') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_finished_run_without_checkpoints_is_left_alone(tiny_model, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_multitask.main(argv(tiny_model, tiny_data, out, "--no-save_checkpoints")) == 0
    before = snapshot(out)
    assert train_multitask.main(argv(tiny_model, tiny_data, out, "--no-save_checkpoints")) == 0
    assert "already finished" in capsys.readouterr().out and snapshot(out) == before


def test_a_python_run_resumes_against_its_own_config(tiny_model, tiny_data, tmp_path):
    """Tuples become lists in config.json; the comparison reads both as JSON does."""
    exp = tiny_experiment("multitask", tiny_model, tiny_data, tmp_path, optim_args={"betas": (0.9, 0.98)})
    Trainer(exp, quiet=True).train()
    Trainer(tiny_experiment("multitask", tiny_model, tiny_data, tmp_path, optim_args={"betas": (0.9, 0.98)},
                            nonfinite="skip"), quiet=True)  # and --nonfinite may change on a rerun
