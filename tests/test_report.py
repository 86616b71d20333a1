"""evaluate.py's prediction files, and the reports: CS224N table, multi-seed summary, sweep."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

import evaluate
from conftest import tiny_experiment
from minbert.evaluation import predict
from minbert.run.build import encode_split, load_run
from minbert.sweep import report, sweeps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gse_run(tiny_model, tiny_data, tmp_path_factory):
    from minbert.trainer import Trainer
    out = tmp_path_factory.mktemp("runs") / "gse"
    Trainer(tiny_experiment("gse", tiny_model, tiny_data, out, max_steps=2), quiet=True).train()
    return out


def test_evaluate_writes_csv_prediction_files(gse_run, tiny_data):
    assert evaluate.main([str(gse_run), "--device", "cpu"]) == 0
    results = json.loads((gse_run / "evaluate_results.json").read_text())
    best = json.loads((gse_run / "eval_results.json").read_text())
    assert results.pop("weights") == str(gse_run / "best" / "model.safetensors")
    assert results == pytest.approx({k: v for k, v in best.items() if k != "epoch"})  # the best checkpoint again
    expected = {"sst": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase", "sts": "Predicted_Similarity"}
    for short, column in expected.items():
        for split in ("dev", "test"):
            rows = list(csv.reader(open(gse_run / "predictions" / f"{short}-{split}-output.csv")))
            assert rows[0] == ["id", column]
            assert len(rows) == 1 + 16  # every example once, in file order
            name = {"para": "quora"}.get(short, short)
            assert [r[0] for r in rows[1:]] == [f"{name}{i}" for i in range(16)]
            values = [float(r[1]) for r in rows[1:]]
            if short == "sst":
                assert all(v in range(5) for v in values)
            elif short == "para":
                assert set(values) <= {0, 1}


def test_evaluate_format_cs224n_writes_the_starters_files_byte_for_byte(gse_run):
    """The CS224N starter (evaluation.py, test_model_multitask) writes f"id \\t {column} \\n", then
    f"{p} , {s} \\n" per example, where s is a numpy scalar: argmax ids (int64) for sentiment,
    sigmoid().round() (float32) for paraphrase, the float32 score for similarity; and it spells
    the STS column Predicted_Similiary. Expected here: that recipe, applied to our predictions."""
    assert evaluate.main([str(gse_run), "--device", "cpu", "--format", "cs224n"]) == 0
    run = load_run(gse_run, device="cpu")
    starter = {"sst": ("sst", "Predicted_Sentiment", np.int64), "quora": ("para", "Predicted_Is_Paraphrase", np.float32),
               "sts": ("sts", "Predicted_Similiary", np.float32)}
    for task, (short, column, scalar) in starter.items():
        for split in ("dev", "test"):
            data = encode_split(run.exp, run.tokenizer, task, split)
            preds = predict(run.model, {task: data}, 8, run.tokenizer.pad_token_id, run.device)[task]
            expected = f"id \t {column} \n" + "".join(f"{i} , {scalar(p)} \n" for i, p in zip(data.ids, preds))
            written = (gse_run / "predictions" / f"{short}-{split}-output.csv").read_bytes()
            assert written == expected.encode(), (
                f"evaluate.py --format cs224n, {short}-{split}-output.csv: not the starter's bytes; first lines "
                f"written {written.splitlines(keepends=True)[:2]}, the starter's {expected.splitlines(keepends=True)[:2]}")
    assert expected.startswith("id \t Predicted_Similiary \n") and " , " in expected  # the layout, spelled out once


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert evaluate.main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_table_holds_our_numbers_beside_the_papers(gse_run, tmp_path):
    out = tmp_path / "table.md"
    report.write_table(gse_run.parent, out)
    text = out.read_text()
    ours = json.loads((gse_run / "eval_results.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| gse |"))
    assert f"{ours['eval_overall']:.3f}" in row and "0.507 / 0.748 / 0.353 / 0.644" in row
    assert "| smart-gse | not run |" in text and "N/A (out of memory)" in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {r["preset"] for r in rows} == {"baseline", "multitask", "pcgrad", "gse", "cos-emb", "cos-d", "cos-2d1",
                                           "cos-2d1-mean", "smart", "smart-gse", "gse-3x", "cos-2d1-3x", "smart-3x"}


def test_seeds_summary_and_optimizer_comparison(tiny_model, tiny_data, tmp_path):
    dirs = {}
    for optim, args in (("adam", {}), ("mfac", {"num_grads": 4, "damp": 1e-3})):
        exp = tiny_experiment("glue", tiny_model, tiny_data, tmp_path / optim, tasks=("mrpc",), max_steps=2,
                              optim="mfac" if optim == "mfac" else "adamw", optim_args=args)
        summary = sweeps.run_seeds(exp, [1, 2], str(tmp_path / optim))
        per_run = [json.loads((tmp_path / optim / f"seed-{s}" / "eval_results.json").read_text()) for s in (1, 2)]
        f1s = [r["eval_f1"] for r in per_run]
        assert summary["eval_f1"][0] == pytest.approx(sum(f1s) / 2)
        dirs[optim] = tmp_path / optim
    report.compare_optimizers("mrpc", dirs, tmp_path / "mfac.md", note="tiny test")
    text = (tmp_path / "mfac.md").read_text()
    assert "81.68 ± 0.33" in text and "82.77 ± 0.22" in text and "M-FAC step time / Adam step time" in text
    for optim in ("adam", "mfac"):
        for seed in (1, 2):
            r = json.loads((tmp_path / optim / f"seed-{seed}" / "eval_results.json").read_text())
            assert f"| {optim} | {seed} | {100 * r['eval_f1']:.2f} |" in text  # the per-seed table
    assert "| adam | 2 | " in text.split("Per seed")[0], "the summary row: label, runs, then the epochs"
    assert "M-FAC - Adam, eval_f1:" in text and "standard error" in text
    report.compare_optimizers("mrpc", dirs, tmp_path / "loaded.md", note="other work shared the machine",
                              timed_alike=False)
    loaded = (tmp_path / "loaded.md").read_text()
    assert "not the ratio of the column above" in loaded and "x (same machine, same runs" not in loaded


def test_difference_line_tells_a_gap_from_seed_noise():
    runs = lambda *f1: [{"eval_f1": x} for x in f1]  # noqa: E731
    assert "not told apart from seed noise" in report.difference_line(runs(0.80, 0.82), runs(0.81, 0.83))
    assert "M-FAC ahead by more than two standard errors" in report.difference_line(
        runs(0.800, 0.801, 0.802), runs(0.850, 0.851, 0.852))
    assert "+5.00 points" in report.difference_line(runs(0.800, 0.801, 0.802), runs(0.850, 0.851, 0.852))


def test_sweep_report(tiny_model, tiny_data, tmp_path):
    exp = tiny_experiment("glue", tiny_model, tiny_data, tmp_path / "unused", tasks=("mrpc",), max_steps=0,
                          epochs=1, steps_per_epoch=4, eval_per_epoch=4)
    result = sweeps.run_sweep(exp, t=3, f=0.5, p=1, out=str(tmp_path / "sweep"))
    assert len(result.continued) == 1 and result.cost_epochs == pytest.approx(3 * 0.5 + 1 * 0.5)
    for f in ("runs.json", "table.md", "expected_max.png", "curves.png", "config.json"):
        assert (tmp_path / "sweep" / f).stat().st_size > 0
    runs = json.loads((tmp_path / "sweep" / "runs.json").read_text())
    assert len(runs["runs"]) == 3


def test_table_keeps_earlier_rows_of_presets_it_has_no_run_of(gse_run, tmp_path):
    """A table filled over several runs: a new runs folder adds and replaces rows, and
    keeps the others with their own command and date."""
    out = tmp_path / "table.md"
    report.write_table(gse_run.parent, out)
    gse_row = next(r for r in json.loads(out.with_suffix(".json").read_text()) if r["preset"] == "gse")
    other = tmp_path / "later"
    (other / "baseline").mkdir(parents=True)
    for f in ("all_results.json", "config.json"):
        data = json.loads((gse_run / f).read_text())
        data.update({"preset": "baseline", "command": "train_multitask.py --preset baseline --epochs 1"}
                    if f == "all_results.json" else {"name": "baseline", "epochs": 1})
        (other / "baseline" / f).write_text(json.dumps(data))
    report.write_table(other, out)
    rows = {r["preset"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert rows["gse"]["ours"] == gse_row["ours"] and rows["gse"]["command"] == gse_row["command"]  # kept
    assert rows["baseline"]["command"].endswith("--epochs 1") and rows["baseline"]["epochs"] == 1  # added
    text = out.read_text()
    assert "**Kept from this table's earlier version** (no run of them in" in text and ": gse." in text
    assert f"- gse: `{gse_row['command']}`" in text and "| smart | not run |" in text
    report.write_table(other, out, keep=False)
    assert "| gse | not run |" in out.read_text()


def test_planned_epochs_from_a_command():
    assert report.planned_epochs("train_multitask.py --preset gse --epochs 1 --eval_per_epoch 2") == 1
    assert report.planned_epochs("train_multitask.py --task_name mrpc --num_train_epochs=5") == 5
    assert report.planned_epochs("train_multitask.py --preset gse") == 10
    assert report.planned_epochs("x --num_train_epochs 3 --epochs 1e-1") == 0.1  # the last, as argparse


@pytest.mark.parametrize("content", ["{not json", '{"environment": {}, "results": []}', '[{"preset": "gse"}]'])
def test_table_refuses_to_overwrite_a_json_it_did_not_write(gse_run, tmp_path, content):
    out = tmp_path / "table.md"
    out.with_suffix(".json").write_text(content)
    with pytest.raises(ValueError, match="is not a CS224N table written by this project"):
        report.write_table(gse_run.parent, out)
    assert out.with_suffix(".json").read_text() == content and not out.exists()  # nothing lost


def test_table_says_which_rows_a_new_run_replaced(gse_run, tmp_path):
    out = tmp_path / "table.md"
    report.write_table(gse_run.parent, out)
    report.write_table(gse_run.parent, out)
    assert f"**Replaced by the runs in {gse_run.parent}:** gse." in out.read_text()


def fake_run(folder: Path, f1: float, update_ms: float, epochs: float, init_seed=-1, data_seed=-1, seed=1):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"epochs": epochs, "results_from": "final", "seed": seed,
                                                    "init_seed": init_seed, "data_seed": data_seed}))
    (folder / "all_results.json").write_text(json.dumps({
        "eval_f1": f1, "eval_accuracy": f1 - 0.1, "train_runtime": 60.0, "peak_memory_mb": 1024.0,
        "update_ms": update_ms, "command": "train_multitask.py --task_name mrpc", "model": "all-MiniLM-L6-v2",
        "device": "cpu", "date": "2026-01-01 00:00 UTC", "commit": "abc1234", "global_step": 10,
        "steps_per_epoch": 10, "seed": seed}))


def test_compare_optimizers_reads_a_grid_folder_and_compares_each_pair(tmp_path):
    """A grid's runs (runs/<name>/all_results.json) serve as a reference set beside --seeds folders; each
    (reference, other) pair gets its own difference line and step-time ratio, and the seed column names a
    grid run's init and data seeds."""
    for i, (s_init, s_data) in enumerate([(1, 1), (1, 2), (2, 1), (2, 2)]):
        fake_run(tmp_path / "grid" / "runs" / f"init{s_init}-data{s_data}", 0.80 + 0.01 * i, 100.0, 1,
                 s_init, s_data)
    for s in (1, 2, 3):
        fake_run(tmp_path / "fast" / f"seed-{s}", 0.90 + 0.001 * s, 150.0, 1, seed=s)
    report.compare_optimizers("mrpc", {"adam 1 epoch": tmp_path / "grid", "mfac big lr": tmp_path / "fast"},
                              tmp_path / "c.md", pairs=(("adam 1 epoch", "mfac big lr"), ("adam", "mfac")))
    text = (tmp_path / "c.md").read_text()
    assert "| adam 1 epoch | 4 | 1 | 81.50 ± 1.29 |" in text, "the grid's four runs: mean ± sample std of F1"
    assert "mfac big lr step time / adam 1 epoch step time: 1.50x" in text
    assert "mfac big lr - adam 1 epoch, eval_f1: +8.70 points" in text and "mfac big lr ahead" in text
    assert "| adam 1 epoch | init 2, data 1 | 82.00 |" in text and "| mfac big lr | 3 | 90.30 |" in text
    assert "M-FAC - Adam" not in text, "a pair whose labels are absent is left out"
