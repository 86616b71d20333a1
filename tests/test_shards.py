"""Many runs on many machines (minbert/sweep/shards.py): shards of a sweep run as separate
processes give the unsharded sweep's runs and report; a claim keeps two processes off one
run; a killed shard's run is taken over and ends where an uninterrupted one does; a report
of part of a sweep is refused, naming what is missing.

Every process here is the real command line; each costs a torch import (seconds on 2 cores),
so one fixture starts them all and the tests read what they left.
"""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_multitask
from conftest import SHARED
from minbert.experiments import preset
from minbert.sweep.shards import Claim, read_claim, sweep_command
from minbert.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
REAL = SHARED / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def command(model, data, *flags) -> list[str]:
    """train_multitask.py on MRPC with the tiny model: seconds a run."""
    return ["--task_name", "mrpc", "--model", str(model), "--data_dir", str(data), "--device", "cpu",
            "--max_length", "32", "--batch_size", "4", "--max_eval_examples", "8", "--lr", "1e-3", *flags]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train_multitask.py"), *argv], cwd=REPO, env=ENV,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def provenance_free(grid: dict) -> dict:
    """grid.json without what says when and by which command its runs were made."""
    meta = {k: v for k, v in grid["meta"].items() if k not in ("command", "date", "wall time of all runs (min)")}
    return {**grid, "meta": meta}


# ---------------------------------------------------------------- three shards of a grid, on real data

@pytest.fixture(scope="module")
def grids(tiny_model, tmp_path_factory):
    """The same 2 x 3 grid on real MRPC, unsharded (in this process) and as three shards at once
    (--jobs 3: three processes `--shard k/3`, then the report)."""
    if not (REAL / "glue" / "MRPC" / "train.tsv").exists():
        pytest.skip(f"real MRPC data not found under {REAL} (set MINBERT_SHARED)")
    tmp = tmp_path_factory.mktemp("grids")
    flags = command(tiny_model, REAL, "--max_steps", "3", "--eval_per_epoch", "1", "--grid", "2,3")
    torch.set_num_threads(1)
    assert train_multitask.main([*flags, "--out", str(tmp / "whole")]) == 0
    assert train_multitask.main([*flags, "--out", str(tmp / "sharded"), "--jobs", "3"]) == 0
    return tmp / "whole", tmp / "sharded", flags


def test_shards_of_a_grid_train_the_runs_of_the_whole_grid(grids):
    whole, sharded, _ = grids
    names = json.loads((whole / "sweep.json").read_text())["runs"]
    assert len(names) == 6 and json.loads((sharded / "sweep.json").read_text())["runs"] == names
    logs = [(sharded / f"shard-{k}.log").read_text() for k in range(3)]
    for k, name in enumerate(names):  # run k in shard k mod 3, and only there
        assert [f"{name}: seed" in log for log in logs] == [j == k % 3 for j in range(3)], \
            f"run {k} ({name}) must be trained by shard {k % 3} of 3 alone (shards.train_shard)"
        a, b = whole / "runs" / name, sharded / "runs" / name
        ra, rb = (json.loads((r / "trainer_state.json").read_text())["log_history"] for r in (a, b))
        assert ra == rb, f"{name}: the shard's losses and evaluations differ from the unsharded grid's"
        wa, wb = load_file(str(a / "best" / "model.safetensors")), load_file(str(b / "best" / "model.safetensors"))
        assert all(torch.equal(wa[key], wb[key]) for key in wa), f"{name}: the shard's weights differ"


def test_report_of_the_shards_is_the_unsharded_grids_report(grids):
    whole, sharded, flags = grids
    before = {f: (whole / f).read_bytes() for f in ("grid.md", "grid.json", "config.json")}
    assert train_multitask.main([*flags, "--out", str(whole), "--report"]) == 0
    assert {f: (whole / f).read_bytes() for f in before} == before, \
        "--report must write exactly the files the unsharded command wrote (sweeps.grid_report)"
    assert train_multitask.main([*flags, "--out", str(sharded), "--report"]) == 0
    a, b = (json.loads((d / "grid.json").read_text()) for d in (whole, sharded))
    assert provenance_free(a) == provenance_free(b), "the sharded grid's report holds other numbers"
    assert b["meta"]["command"] == sweep_command(b["meta"]["command"]), \
        "the report's command is the unsharded one (no --shard / --jobs)"
    assert "--grid 2,3" in b["meta"]["command"]


def test_a_shard_of_another_sweep_stops_before_any_work_naming_the_fields(grids, capsys):
    _, sharded, flags = grids
    other = [*flags, "--out", str(sharded), "--shard", "0/3"]
    other[other.index("2,3")] = "3,3"
    other[other.index("--lr") + 1] = "2e-3"
    before = sorted(p.name for p in (sharded / "runs").iterdir())
    assert train_multitask.main(other) == 2
    err = capsys.readouterr().err
    assert "holds another sweep" in err and "init_seeds: 2 -> 3" in err and "lr: 0.001 -> 0.002" in err
    assert sorted(p.name for p in (sharded / "runs").iterdir()) == before


# ---------------------------------------------------------------- a killed shard, and two of one shard

@pytest.fixture(scope="module")
def killed_and_taken_over(tiny_model, tiny_data, tmp_path_factory):
    """--seeds 1,2,3 --shard 0/1: killed with SIGKILL inside its first run; --report then; then
    two processes of the same shard at once (the dead claim is older than --claim_timeout)."""
    tmp = tmp_path_factory.mktemp("killed")
    flags = command(tiny_model, tiny_data, "--epochs", "5", "--eval_per_epoch", "2", "--seeds", "1,2,3",
                    "--out", str(tmp / "seeds"), "--claim_timeout", "2")
    first = tmp / "seeds" / "seed-1"
    victim = start([*flags, "--shard", "0/1"], tmp / "victim.log")
    deadline = time.time() + 120
    while not list(first.glob("checkpoint-*")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (first / "all_results.json").exists(), \
        f"the run finished before the kill: nothing to take over ({(tmp / 'victim.log').read_text()[-2000:]})"
    claim = read_claim(first)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        report = train_multitask.main([*flags, "--report"]), err.getvalue()
    time.sleep(2)  # the dead claim goes stale
    heirs = [start([*flags, "--shard", "0/1"], tmp / f"heir{k}.log") for k in range(2)]
    assert [p.wait(timeout=300) for p in heirs] == [0, 0], [(tmp / f"heir{k}.log").read_text()[-2000:] for k in (0, 1)]
    logs = [(tmp / f"heir{k}.log").read_text() for k in range(2)]
    return tmp / "seeds", claim, victim.pid, report, logs


def test_report_of_a_partial_sweep_names_the_missing_runs(killed_and_taken_over):
    out, claim, pid, (rc, err), _ = killed_and_taken_over
    assert rc == 1 and claim["pid"] == pid
    assert "3 of 3 runs are not finished, so no report is written" in err
    assert f"run 0 seed-1 (unfinished, claimed by {claim['host']} pid {pid})" in err
    assert "run 1 seed-2 (missing)" in err and "run 2 seed-3 (missing)" in err


def test_a_killed_shards_run_is_taken_over_and_ends_as_an_uninterrupted_run(killed_and_taken_over, tiny_model,
                                                                           tiny_data, tmp_path):
    out, *_, logs = killed_and_taken_over
    assert sum(log.count("resumed from") for log in logs) == 1, "the killed run must resume from its checkpoint"
    exp = preset("glue", model=str(tiny_model), data_dir=str(tiny_data), device="cpu", max_length=32, batch_size=4,
                 max_eval_examples=8, lr=1e-3, epochs=5, eval_per_epoch=2, seed=1, tasks=("mrpc",),
                 name="glue-mrpc", output_dir=str(tmp_path / "straight"))
    torch.set_num_threads(1)
    Trainer(exp, quiet=True).train()
    for f in ("best/model.safetensors", "checkpoint-60/model.safetensors"):
        a, b = load_file(str(out / "seed-1" / f)), load_file(str(tmp_path / "straight" / f))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{f}: the taken-over run ends elsewhere than a straight one"
    assert (out / "seeds.md").exists() is False  # shards write no report ...
    assert not (out / "seed-1" / "claim").exists()  # ... and leave no claim behind


def test_two_processes_of_one_shard_never_train_one_run_twice(killed_and_taken_over):
    out, *_, logs = killed_and_taken_over
    for name in ("seed-1", "seed-2", "seed-3"):
        trained = [log.count(f"{name}: seed") for log in logs]
        assert sum(trained) == 1, f"{name} was trained {sum(trained)} times by two processes of one shard " \
                                  f"(shards.Claim must let one process alone take it)"
        assert json.loads((out / name / "all_results.json").read_text())["global_step"] == 60


# ---------------------------------------------------------------- claims, in one process

def test_a_live_claim_holds_and_a_stale_one_is_taken_over(tmp_path):
    with Claim(tmp_path, timeout=60) as held:
        assert held and read_claim(tmp_path)["pid"] == os.getpid()
        with Claim(tmp_path, timeout=60) as second:
            assert not second, "a fresh claim must keep a second process off the run"
    assert not (tmp_path / "claim").exists()
    (tmp_path / "claim").write_text(json.dumps({"host": "lost", "pid": 1}))
    old = time.time() - 120
    os.utime(tmp_path / "claim", (old, old))
    with Claim(tmp_path, timeout=60) as held:
        assert held and read_claim(tmp_path)["pid"] == os.getpid(), "a claim older than the timeout is taken over"


def test_shards_of_several_presets_then_their_table(tiny_model, tiny_data, tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    flags = ["--preset", "baseline,gse", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--device", "cpu",
             "--output_dir", str(runs), "--batch_size", "4", "--max_steps", "2", "--max_eval_examples", "8"]
    assert train_multitask.main([*flags, "--shard", "1/2"]) == 0
    assert (runs / "gse" / "all_results.json").exists() and not (runs / "baseline").exists()
    assert train_multitask.main([*flags, "--report"]) == 1
    assert "run 0 baseline (missing)" in capsys.readouterr().err and not (runs / "cs224n_table.md").exists()
    assert train_multitask.main([*flags, "--shard", "0/2"]) == 0
    assert train_multitask.main([*flags, "--report"]) == 0
    table = (runs / "cs224n_table.md").read_text()
    assert "| baseline | 0." in table and "| gse | 0." in table and "| pcgrad | not run |" in table


def test_a_moved_checkouts_sweep_folder_is_recognised_by_its_model(tiny_model, tiny_data, tmp_path):
    """The sweep folder records what its model is (model_identity.json), as each run folder does:
    with the model moved elsewhere and the old path gone, the sweep still checks as the same one."""
    import shutil

    from conftest import tiny_experiment
    from minbert.sweep.sweeps import plan_seeds
    old, new = tmp_path / "old_model", tmp_path / "new_model"
    shutil.copytree(tiny_model, old)
    exp = tiny_experiment("multitask", old, tiny_data, tmp_path / "unused")
    plan_seeds(exp, [1, 2], str(tmp_path / "sweep")).check()
    old.rename(new)
    moved = tiny_experiment("multitask", new, tiny_data, tmp_path / "unused")
    plan_seeds(moved, [1, 2], str(tmp_path / "sweep")).check()  # raised "the run's model folder is gone" before
