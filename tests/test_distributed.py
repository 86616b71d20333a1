"""Data-parallel training (minbert/run/distributed.py): two CPU processes with gloo.

The property: with dropout off, 2 processes of batch B take the same steps as one
process of batch 2B on the union of their batches, for every kind of update (separate,
summed, PCGrad and GSE, where each task gradient is averaged before the projection)
and for the GLUE preset. With dropout and
SMART noise on, the ranks still hold identical weights (M-FAC included), and a run
stopped at a checkpoint and resumed under torchrun ends where an uninterrupted one does.

One spawn of two processes runs the distributed jobs (imports cost more than the steps);
the resumed run goes through the real command line, torchrun included.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import tiny_experiment
from minbert.experiments import Experiment

REPO = Path(__file__).resolve().parents[1]
WORLD, B = 2, 2  # processes, batch per process
UNION_PRESETS = ("baseline", "multitask", "pcgrad", "gse", "glue")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, jobs: dict[str, dict], out: str):
    """One rank: the environment torchrun would set, then every job's Trainer in turn."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from minbert.run import distributed
    from minbert.trainer import Trainer
    for name, fields in jobs.items():
        trainer = Trainer(Experiment.from_dict(fields))
        trainer.train()
        torch.save(trainer.model.state_dict(), Path(out) / f"{name}-rank{rank}.pt")
    distributed.teardown()


@pytest.fixture(scope="module")
def still_model(tiny_model, tmp_path_factory):
    """The tiny model with dropout off, so that the batch split is the only difference."""
    folder = tmp_path_factory.mktemp("still_model")
    for f in tiny_model.iterdir():
        shutil.copy(f, folder / f.name)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _union_fields(preset, still_model, tiny_data, out, batch_size):
    return tiny_experiment(preset, still_model, tiny_data, out, batch_size=batch_size, head_dropout=0.0,
                           max_steps=3, save_checkpoints=False).to_dict()


@pytest.fixture(scope="module")
def two_process_runs(still_model, tiny_model, tiny_data, tmp_path_factory):
    """({job: (rank 0's weights, rank 1's weights)}, the runs' folder), from one spawn of two processes."""
    out = tmp_path_factory.mktemp("two_process_runs")
    jobs = {p: _union_fields(p, still_model, tiny_data, out / p, B) for p in UNION_PRESETS}
    # dropout and SMART noise on, M-FAC's gradient buffer: the ranks must still agree
    jobs["smart-gse-mfac"] = tiny_experiment("smart-gse", tiny_model, tiny_data, out / "smart-gse-mfac",
                                             batch_size=B, max_steps=2, save_checkpoints=False, optim="mfac",
                                             optim_args={"num_grads": 4}).to_dict()
    # test_resume_under_torchrun continues "gse-stopped" to step 4 and must end where "gse-straight" does
    jobs["gse-straight"] = tiny_experiment("gse", tiny_model, tiny_data, out / "gse-straight", batch_size=B).to_dict()
    jobs["gse-stopped"] = tiny_experiment("gse", tiny_model, tiny_data, out / "gse-stopped", batch_size=B,
                                          max_steps=2).to_dict()
    mp.spawn(_worker, args=(_free_port(), jobs, str(out)), nprocs=WORLD, join=True)
    weights = {name: tuple(torch.load(out / f"{name}-rank{r}.pt") for r in range(WORLD)) for name in jobs}
    return weights, out


def _assert_same(a: dict, b: dict, skip: str = "", **tol):
    assert a.keys() == b.keys()
    for k in a:
        if not (skip and skip in k):
            torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{k}: {m}", **tol)


@pytest.mark.parametrize("preset", UNION_PRESETS)
def test_two_processes_equal_one_on_the_union(preset, two_process_runs, still_model, tiny_data, tmp_path):
    from minbert.trainer import Trainer
    rank0, rank1 = two_process_runs[0][preset]
    _assert_same(rank0, rank1, rtol=0, atol=0)  # the same averaged gradient on every rank
    one = Trainer(Experiment.from_dict(_union_fields(preset, still_model, tiny_data, tmp_path, WORLD * B)),
                  quiet=True)
    start = {k: v.clone() for k, v in one.model.state_dict().items()}
    one.train()
    # The attention key bias adds the same q.b_k to every score of a row, which softmax ignores:
    # its exact gradient is 0, and AdamW turns the rounding noise left in it (~1e-10, different
    # for a different batch split) into steps of up to lr * noise / eps. The other weights agree
    # to ~2e-7.
    _assert_same(rank0, one.model.state_dict(), skip="attention.self.key.bias", rtol=1e-4, atol=1e-5)
    moved = max((rank0[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, "the weights hardly moved: the comparison would prove nothing"


def test_ranks_agree_with_dropout_smart_and_mfac(two_process_runs):
    rank0, rank1 = two_process_runs[0]["smart-gse-mfac"]
    _assert_same(rank0, rank1, rtol=0, atol=0)


def test_resume_under_torchrun(two_process_runs, tiny_model, tiny_data):
    """A 2-process GSE run stopped at step 2, continued to step 4 by torchrun: the weights are
    the uninterrupted run's (dropout on: every rank gets its own random state back)."""
    weights, runs = two_process_runs
    out = runs / "gse-stopped"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               str(REPO / "train_multitask.py"), "--preset", "gse", "--model", str(tiny_model),
               "--data_dir", str(tiny_data), "--output_dir", str(out), "--device", "cpu", "--batch_size", str(B),
               "--eval_batch_size", "8", "--lr", "1e-3", "--eval_per_epoch", "1", "--max_steps", "4"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert log.count("resumed from") == 1, log  # rank 0 alone speaks ...
    assert log.count('"name": "gse"') == 1, log  # ... and prints the config
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    evals = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()
             if "eval_overall" in line]
    assert evals == [2, 4]  # each evaluation once, by rank 0
    state = torch.load(out / "checkpoint-4" / "state.pt", weights_only=True)
    assert len(state["rank_rngs"]) == WORLD
    _assert_same(weights["gse-straight"][0], load_file(str(out / "checkpoint-4" / "model.safetensors")),
                 rtol=1e-5, atol=1e-6)
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == WORLD and results["global_step"] == 4


def test_two_nodes_equal_one_node(two_process_runs, tiny_model, tiny_data, tmp_path):
    """One run across two "nodes": torchrun --nnodes 2 --node_rank 0|1 over 127.0.0.1, one process
    each, as on two machines that see one output folder. The weights are the 2-process
    single-node run's (gse-straight), exactly: the same ranks, batches and all_reduce."""
    port, out = _free_port(), tmp_path / "gse"
    flags = ["--preset", "gse", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(out),
             "--device", "cpu", "--batch_size", str(B), "--eval_batch_size", "8", "--lr", "1e-3",
             "--eval_per_epoch", "1", "--max_steps", "4"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(r), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(REPO / "train_multitask.py"), *flags], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "best overall" in logs[0] and "best overall" not in logs[1]  # node 0's rank 0 alone speaks
    results = json.loads((out / "all_results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 4
    _assert_same(two_process_runs[0]["gse-straight"][0], load_file(str(out / "checkpoint-4" / "model.safetensors")),
                 rtol=0, atol=0)
