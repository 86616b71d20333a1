"""The GPU day's command rehearsed on the CPU (minbert/gpu/day.py, gpu_steps.py, gpu_merge.py): a
run stopped by --deadline says how far it got and resumes; the table step picks the presets that
lack a 10-epoch GPU row; the report says why a preset stopped; the dry run goes through every
step, and its archive merges into copies of results/ and docs/BENCHMARKS.md without touching the
real ones."""
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import MINILM, tiny_experiment
from minbert.experiments import PRESETS
from minbert.gpu import day as gpu_day
from minbert.gpu import merge as gpu_merge
from minbert.gpu import steps as gpu_steps
from minbert.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TABLE_PRESETS = [p for p in PRESETS if p != "glue"]


def test_a_run_past_its_deadline_stops_evaluates_and_resumes(tiny_model, tiny_data, tmp_path, one_thread):
    late = tiny_experiment("gse", tiny_model, tiny_data, tmp_path / "run", max_steps=0, steps_per_epoch=2, epochs=2,
                           max_eval_examples=8, deadline="2000-01-01T00:00:00")
    result = Trainer(late, quiet=True).train()
    assert result["stopped_at_deadline"] and result["global_step"] == 0 and "eval_overall" in result, (
        "Trainer.train past --deadline must stop before its next step, evaluate and write the record")
    assert (tmp_path / "run" / "checkpoint-0").exists(), "a run stopped at its deadline keeps a checkpoint to resume"
    again = tiny_experiment("gse", tiny_model, tiny_data, tmp_path / "run", max_steps=0, steps_per_epoch=2, epochs=2,
                            max_eval_examples=8, deadline="2999-01-01T00:00:00+00:00")
    result = Trainer(again, quiet=True).train()
    assert not result["stopped_at_deadline"] and result["global_step"] == 4 and result["train_steps"] == 4


def test_a_deadline_that_is_not_a_time_is_one_clear_error(tiny_model, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="deadline 'tomorrow' is not an ISO time"):
        tiny_experiment("gse", tiny_model, tiny_data, tmp_path, deadline="tomorrow")


def test_the_gpu_day_trains_the_presets_without_a_10_epoch_gpu_row(tmp_path):
    # the CPU rows of results/ (all it holds before a GPU day): the GPU day trains all 13
    cpu_rows = [r for r in json.loads((ROOT / "results" / "cs224n_table.json").read_text())
                if not r.get("ours") or r["device"].startswith("cpu")]
    (tmp_path / "cpu.json").write_text(json.dumps(cpu_rows))
    assert gpu_steps.table_presets(tmp_path / "cpu.json") == TABLE_PRESETS
    row = {"ours": {"eval_overall": 0.6}, "epochs_done": 10.0, "device": "NVIDIA H200"}
    rows = [{**row, "preset": "gse"}, {**row, "preset": "baseline", "device": "cpu (2 cores, torch 2.13.0+cpu)"},
            {**row, "preset": "smart", "epochs_done": 3.2}, {"preset": "pcgrad", "ours": None}]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    assert gpu_steps.table_presets(tmp_path / "t.json") == [p for p in TABLE_PRESETS if p != "gse"]


def test_the_report_names_why_a_preset_stopped(tmp_path):
    """A crash, an out-of-memory or a NaN stops one preset: the report quotes the line that says why."""
    logs = {"oom": "gse: step 3/7550\nTraceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out "
                   "of memory. Tried to allocate 2.00 GiB\n",
            "nan": "smart: step 9/7550\nerror: non-finite loss {'sst': nan} at step 10; stopped.\n",
            "killed": "cos-d: step 120/7550, 3.1 steps/s\n"}
    for name, text in logs.items():
        (tmp_path / name).write_text(text)
    assert gpu_steps.why(tmp_path / "oom", killed=False).startswith("FAILED: torch.OutOfMemoryError: CUDA out of")
    assert gpu_steps.why(tmp_path / "nan", killed=False) == "FAILED: error: non-finite loss {'sst': nan} at step 10; stopped."
    assert gpu_steps.why(tmp_path / "killed", killed=True) == "killed at its time limit"


def test_the_dry_run_takes_the_gpu_flags_and_shrinks_them():
    """The dry run's flags come after the GPU's, so the GPU's code paths run at toy size: parsed as
    train_multitask.py parses them, the GPU's switches hold and the sizes are the toy ones."""
    import train_multitask
    for step in gpu_steps.GPU:
        gpu = gpu_steps.Day(out=Path("x"), dry=False, end=0).flags(step)
        dry = gpu_steps.Day(out=Path("x"), dry=True, end=0).flags(step)
        assert gpu[:len(gpu_steps.GPU[step])] == gpu_steps.GPU[step], f"{step}: the GPU's flags come first"
        assert dry == gpu_steps.GPU[step] + gpu_steps.DRY[step] + gpu[len(gpu_steps.GPU[step]):], \
            f"{step}: the dry run is the GPU's flags, then the toy sizes, then the data and model"
        on_gpu = train_multitask.build_parser().parse_args(["--preset", "baseline", *gpu])
        toy = train_multitask.build_parser().parse_args(["--preset", "baseline", *dry])
        assert 0 < toy.max_steps <= 2 and toy.max_eval_examples == 16 and toy.max_length == 32, \
            f"{step}: the dry run should shrink the run to toy size; it parsed to max_steps={toy.max_steps}"
        for flag in ("fast", "save_checkpoints", "epochs"):
            assert getattr(toy, flag) == getattr(on_gpu, flag), f"{step}: the dry run changed the GPU's --{flag}"


def tree_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        for f in sorted([root] if root.is_file() else root.rglob("*")):
            if f.is_file():
                h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dry_day(tmp_path_factory, tiny_model, tiny_data):
    """The dry run, lean enough for the suite: every step, on the tiny model and data of conftest.py,
    with 2 presets side by side (SMART, PCGrad and a cosine head between them). The benchmarks
    measure the real model's shapes. `python -m minbert.gpu.day --dry_run` runs all 13 presets
    on the real data and model (docs/GPU.md: its time)."""
    if not MINILM.exists():
        pytest.skip("all-MiniLM-L6-v2 is not installed (make setup) and MINBERT_MODEL is not set: the benchmarks build it")
    out = tmp_path_factory.mktemp("gpu_day")
    before = tree_hash(ROOT / "results", ROOT / "docs" / "BENCHMARKS.md")
    done = subprocess.run([sys.executable, "-m", "minbert.gpu.day", "--dry_run", "--presets", "smart-gse,cos-2d1",
                           "--model", str(tiny_model), "--data_dir", str(tiny_data), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert tree_hash(ROOT / "results", ROOT / "docs" / "BENCHMARKS.md") == before, "the dry run wrote into results/"
    archive = Path(done.stdout.strip().splitlines()[-1].split("archive: ")[1].split(" (")[0])
    return out, archive, done.stdout


def test_the_dry_run_goes_through_every_step(dry_day):
    out, archive, printed = dry_day
    report = next(out.glob("*-dry/report.md")).read_text()
    for step in ("cuda_tests", "table", "benchmarks", "mfac", "grid"):
        line = next((ln for ln in report.splitlines() if ln.startswith(f"- {step}:")), "")
        assert line and "FAILED" not in report and "CRASHED" not in line, f"gpu_day step {step}: {line}\n{report}"
    assert "skipped (no CUDA here)" in report and " 0 failed" in report
    assert "smart-gse: finished at step 1 of 60 (0.17 of 10 epochs)" in report  # the paper's length, cut short
    assert "compared 1 Adam and 1 M-FAC runs" in report and "- grid: done: 4 runs" in report
    assert archive.stat().st_size < gpu_day.ARCHIVE_LIMIT
    names = tarfile.open(archive).getnames()
    assert not [n for n in names if n.endswith((".safetensors", ".pt"))], "weights or checkpoints in the archive"


def test_the_dry_runs_archive_merges_into_copies_of_results(dry_day, tmp_path):
    _, archive, _ = dry_day
    results, bench = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    shutil.copytree(ROOT / "results", results)
    shutil.copy(ROOT / "docs" / "BENCHMARKS.md", bench)
    earlier = [r for r in json.loads((results / "cs224n_table.json").read_text()) if r["ours"]]
    with pytest.raises(ValueError, match="is a dry run's"):  # its numbers never go into results/ by mistake
        gpu_merge.merge(archive, results, bench)
    for _ in range(2):  # merging the same archive again changes nothing
        gpu_merge.merge(archive, results, bench, dry_run=True)
        rows = [r for r in json.loads((results / "cs224n_table.json").read_text()) if r["ours"]]
        assert len(rows) == len(earlier) + 2 and all(r in rows for r in earlier), "earlier rows must stay as they were"
        assert {r["preset"] for r in rows if r.get("gpu_day")} == {"smart-gse", "cos-2d1"}
        text = bench.read_text()
        assert text.count("<!-- gpu-day ") == 1 and text.index("<!-- gpu-day ") < text.index(gpu_merge.OWED)
    table = (results / "cs224n_table.md").read_text()
    assert "**Made by older code" in table, "the note written above the table must stay"
    assert "| smart-gse | 0.357 |" in table and "0.17 of 10" in table  # the CPU row and the day's row
    assert "#### AdamW step" in text and "| minilm | 103 | 22.7M | torch fused |" in text
    day = next((results / "gpu_days").iterdir())
    assert (day / "report.md").exists() and (day / "mfac" / "mfac_mrpc.md").exists()
