"""The run folder (minbert/run/folder.py): the same command on a finished run leaves it
alone, another configuration into a folder holding a run stops before any work naming the
fields that differ, --overwrite_output_dir starts afresh, config.json is never rewritten;
evaluate.py scores whole dev sets unless told otherwise, says when it did not, and reads
no training data."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import evaluate
import minbert.run.build
import train_multitask
from conftest import tiny_experiment
from minbert.run.folder import MODEL_RECORD, RunFolderError, remove_partial
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
    real = minbert.run.build.read_split
    monkeypatch.setattr(minbert.run.build, "read_split", lambda t, d, split, **kw: read.append(split) or real(t, d, split, **kw))
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
    code = ("import sys, evaluate; bad = [m for m in ('minbert.trainer', 'minbert.run.folder', 'minbert.sweep.sweeps', "
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
    """Tuples become lists in config.json; the comparison reads both as JSON does, so the
    second Trainer resumes from the first one's checkpoint instead of refusing the folder."""
    exp = tiny_experiment("multitask", tiny_model, tiny_data, tmp_path, optim_args={"betas": (0.9, 0.98)},
                          max_steps=2)
    Trainer(exp, quiet=True).train()
    assert (tmp_path / "checkpoint-2").is_dir()
    again = Trainer(tiny_experiment("multitask", tiny_model, tiny_data, tmp_path, optim_args={"betas": (0.9, 0.98)},
                                    nonfinite="skip", max_steps=4), quiet=True)  # --nonfinite may change on a rerun
    result = again.train()
    assert (result["global_step"], result["train_steps"]) == (4, 2), \
        f"the second run should resume at step 2 and take 2 steps; it took {result['train_steps']} to step {result['global_step']}"
    assert [e["step"] for e in again.history if "eval_overall" in e] == [2, 4]  # the first run's evaluation kept


# ---------------------------------------------------------------- a write that fails

def fail_on(call: int, error: Exception):
    """A torch.save that raises `error` on its call-th call and saves otherwise."""
    import torch
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == call:
            Path(f).write_bytes(b"partial")  # the disk filled up part-way through
            raise error
        return real(obj, f, *a, **k)
    return save


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(tiny_model, tiny_data, tmp_path,
                                                                              monkeypatch, capsys):
    import errno

    import minbert.run.folder
    out = tmp_path / "run"
    first = argv(tiny_model, tiny_data, out, "--max_steps", "2")
    assert train_multitask.main(first) == 0
    good = snapshot(out / "checkpoint-2")
    monkeypatch.setattr(minbert.run.folder.torch, "save", fail_on(1, OSError(errno.ENOSPC, "No space left on device")))
    capsys.readouterr()
    assert train_multitask.main(argv(tiny_model, tiny_data, out, "--max_steps", "4")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (err,) = [line for line in err.splitlines() if line.startswith("error:")]  # progress lines aside, one line
    for part in ("checkpoint-4", str(out), "No space left on device", "a checkpoint needs about", "KB",
                 "checkpoint-2 is intact", "--no-save_checkpoints", "--output_dir", "Free some space"):
        assert part in err, f"the error line should say {part!r}: {err}"
    assert not list(out.glob(".tmp-*")), "the partial checkpoint folder should be removed"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"] and snapshot(out / "checkpoint-2") == good
    monkeypatch.undo()  # space again: the same command resumes from checkpoint-2 and finishes
    assert train_multitask.main(argv(tiny_model, tiny_data, out, "--max_steps", "4")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "all_results.json").read_text())["global_step"] == 4


def test_a_failed_write_of_best_is_one_error_naming_it(tiny_model, tiny_data, tmp_path, monkeypatch):
    import minbert.run.folder
    out = tmp_path / "run"

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(minbert.run.folder, "save_file", refuse)
    with pytest.raises(minbert.run.folder.CheckpointWriteError, match=r"best/model.safetensors.*Permission denied.*"
                                                                     r"--no-save_checkpoints.*--output_dir"):
        Trainer(tiny_experiment("multitask", tiny_model, tiny_data, out, max_steps=2), quiet=True).train()
    assert not list((out / "best").glob(".*.tmp")), "the partial best/ file should be removed"


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders: the permission test needs an ordinary user")
def test_a_read_only_run_folder_stops_with_one_line(tiny_model, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_multitask.main(argv(tiny_model, tiny_data, out, "--max_steps", "2")) == 0
    out.chmod(0o555)
    try:
        capsys.readouterr()
        assert train_multitask.main(argv(tiny_model, tiny_data, out, "--max_steps", "4")) == 2
        (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert "--output_dir" in err and "Traceback" not in err, err
        assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    finally:
        out.chmod(0o755)


@pytest.fixture(scope="module")
def finished_once(tiny_model, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_multitask.main(argv(tiny_model, tiny_data, out)) == 0
    return out


@pytest.fixture
def moved(finished_once, tmp_path):
    """The finished run's folder, moved (copied) as a moved checkout moves it."""
    return shutil.copytree(finished_once, tmp_path / "moved" / "run")


def test_a_copy_of_the_model_in_another_folder_resumes_the_run(moved, tiny_model, tiny_data, tmp_path, capsys):
    """A moved checkout passes another path to the same model: the run folder compares the
    model by its fingerprint (model_identity.json), not by the path in config.json."""
    copy = shutil.copytree(tiny_model, tmp_path / "moved" / "tiny_model")
    config = (moved / "config.json").read_text()
    assert train_multitask.main(argv(copy, tiny_data, moved)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"resumed from {moved / 'checkpoint-2'}" in out and "already finished at step 2" in out, out
    assert (moved / "config.json").read_text() == config  # still names the model where the run started


def test_another_model_is_refused_naming_the_model_field(moved, tiny_model, tiny_data, tmp_path, capsys):
    other = shutil.copytree(tiny_model, tmp_path / "other")
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 for k, v in weights.items()}, str(other / "model.safetensors"))  # same shape, other weights
    assert train_multitask.main(argv(other, tiny_data, moved)) == 2
    err = capsys.readouterr().err
    assert f"model: '{tiny_model}' -> '{other}' (another model: its config.json, tokenizer files or weights differ" in err, err


def test_a_run_folder_without_a_model_fingerprint_compares_as_before(moved, tiny_model, tiny_data, tmp_path, capsys):
    """Folders written before model_identity.json: the fingerprint is computed from the old path
    while it holds the model; once that is gone, only the same path resumes, and the error says why."""
    (moved / MODEL_RECORD).unlink()
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert train_multitask.main(argv(copy, tiny_data, moved)) == 0  # the old path still holds the model
    assert "already finished" in capsys.readouterr().out and (moved / MODEL_RECORD).exists()

    (moved / MODEL_RECORD).unlink()
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "gone")}))
    assert train_multitask.main(argv(copy, tiny_data, moved)) == 2
    err = capsys.readouterr().err
    assert f"model: '{tmp_path / 'gone'}' -> '{copy}' (the run's model folder is gone" in err, err


def test_evaluate_finds_a_moved_runs_model_through_model(moved, tiny_model, tiny_data, tmp_path, capsys):
    """The checkout moved and config.json's model path is gone: evaluate.py --model takes the
    model's new place, checked against the run's fingerprint."""
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "model": str(tmp_path / "gone")}))
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    common = [str(moved), "--device", "cpu", "--splits", "dev", "--max_eval_examples", "4"]
    assert evaluate.main(common + ["--model", str(copy)]) == 0, capsys.readouterr().err
    other = shutil.copytree(tiny_model, tmp_path / "other")
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text().replace("movie", "cinema"))
    capsys.readouterr()
    assert evaluate.main(common + ["--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--model {other}: not the model {moved} was trained from ({tmp_path / 'gone'})" in err, err


def test_a_smart_run_from_before_the_readings_is_not_resumed_with_another_ascent(tmp_path, tiny_model, tiny_data,
                                                                                 capsys):
    """Its config.json has no smart_reading: its ascent was the removed form, so resuming it with the
    library reading would silently change what the run computes."""
    from minbert.run.folder import config_differences
    exp = tiny_experiment("smart", tiny_model, tiny_data, tmp_path)
    old = exp.to_dict()
    del old["smart_reading"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    differ = config_differences(tmp_path, exp)
    assert differ == ["smart_reading: the old form (Algorithm 1 without its projection, removed) -> 'library'"], differ


def test_remove_partial_clears_a_cut_off_save_best(tmp_path):
    """A kill while best/ is written leaves save_best's .model.safetensors.tmp or safetensors' own
    .tmpXXXXXX; remove_partial (run before resuming) deletes them and keeps the whole files."""
    (tmp_path / "best").mkdir()
    (tmp_path / ".tmp-checkpoint-4").mkdir()
    for name in ("best/.tmpTef2Ab", "best/.model.safetensors.tmp", "best/model.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    remove_partial(tmp_path)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["best", "best/model.safetensors"], f"remove_partial left {left}"
