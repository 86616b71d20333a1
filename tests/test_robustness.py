"""Robustness: bad input gets a clear error, an interrupted run loses nothing, numerical
faults are caught (trainer.py, train_multitask.py; the data and weight readers themselves
are tested in test_data.py and test_weights.py).

Runs use the tiny model and data of conftest.py on CPU with one thread: about a second
each in-process. Exact equality between runs holds on CPU for the same thread count
(one and two threads round differently), so every comparison here uses one thread.
The interrupted-run test kills `python train_multitask.py` with SIGKILL and starts it again.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import minbert.data
import train_multitask
from conftest import tiny_experiment
from minbert.data import DataError
from minbert.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(batch_size=4, steps_per_epoch=2, eval_per_epoch=1, epochs=6, max_eval_examples=8, lr=1e-3)
CLI = ["--preset", "multitask", "--device", "cpu", "--batch_size", "4", "--steps_per_epoch", "2",
       "--eval_per_epoch", "1", "--epochs", "6", "--max_eval_examples", "8", "--lr", "1e-3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the subprocesses: one thread, like the in-process runs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(tiny_model, tiny_data, out, preset="multitask", quiet=True, **kw) -> Trainer:
    """A tiny run of `preset` in `out`: 2 steps an epoch, evaluated and checkpointed every 2 steps."""
    trainer = Trainer(tiny_experiment(preset, tiny_model, tiny_data, out, **{**SIZE, **kw}), quiet=quiet)
    trainer.train()
    return trainer


def assert_same_weights(a: Path, b: Path):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs between {a} and {b}"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_at_step_2(tiny_model, tiny_data, tmp_path_factory):
    """A run folder stopped after its first checkpoint, checkpoint-2."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_model, tiny_data, out, max_steps=2)
    return out


@pytest.fixture(scope="module")
def run_to_step_6(tiny_model, tiny_data, tmp_path_factory):
    """The same run, uninterrupted, to step 6."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_model, tiny_data, out, max_steps=6)
    return out


# ---------------------------------------------------------------- bad data, through the trainer

def with_bad_row(tiny_data, tmp_path) -> tuple[Path, Path]:
    """A copy of the data whose quora train file has 3 fields instead of 5 on line 5."""
    data = shutil.copytree(tiny_data, tmp_path / "data")
    path = data / "cs224n" / "quora-train.csv"
    lines = path.read_text().split("\n")
    lines[4] = "3\tquora3\thow do i learn"
    path.write_text("\n".join(lines))
    return data, path


def test_bad_row_stops_construction_when_raise(tiny_model, tiny_data, tmp_path, capsys):
    data, path = with_bad_row(tiny_data, tmp_path)
    with pytest.raises(DataError) as err:
        Trainer(tiny_experiment("multitask", tiny_model, data, tmp_path / "out", bad_rows="raise", **SIZE))
    assert (err.value.path, err.value.line) == (path, 5)
    # the command line: one line on stderr, exit status 2, nothing written
    argv = [*CLI, "--model", str(tiny_model), "--data_dir", str(data), "--output_dir", str(tmp_path / "out"),
            "--bad_rows", "raise"]
    assert train_multitask.main(argv) == 2
    assert capsys.readouterr().err == (f"error: {path}, line 5: 3 tab-separated fields; expected 5, one per header "
                                       f"column ['', 'id', 'sentence1', 'sentence2', 'is_duplicate']\n")
    assert not (tmp_path / "out").exists()


def test_bad_row_skipped_and_counted_by_default(tiny_model, tiny_data, tmp_path, monkeypatch):
    data, path = with_bad_row(tiny_data, tmp_path)
    warned = []  # what minbert.data's logger is asked to say (other tests may reconfigure logging)
    monkeypatch.setattr(minbert.data.logger, "warning", lambda msg, *args: warned.append(msg % args))
    trainer = train(tiny_model, data, tmp_path / "out", quiet=False, max_steps=2)  # bad_rows="skip"
    assert len(warned) == 1 and f"{path}: skipped 1 bad row(s) on line(s) 5" in warned[0], warned  # once
    assert len(trainer.train_data["quora"]) == 47  # of 48
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["global_step"] == 2


# ---------------------------------------------------------------- bad checkpoints, on resume

class Evil:
    """Unpickling this runs code: it writes `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('x')",))


def truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def other_weights(path: Path):
    weights = load_file(str(path))
    weights["heads.sst.extra.weight"] = weights.pop("heads.sst.out.weight")  # as if another preset's
    save_file(weights, str(path))


CORRUPTIONS = [
    pytest.param("model.safetensors", truncate, id="weights-truncated"),
    pytest.param("model.safetensors", lambda p: p.write_bytes(b"\0" * 100), id="weights-garbage"),
    pytest.param("model.safetensors", other_weights, id="weights-of-another-model"),
    pytest.param("model.safetensors", Path.unlink, id="weights-missing"),
    pytest.param("state.pt", truncate, id="state-truncated"),
    pytest.param("state.pt", lambda p: torch.save({"step": Evil(p.parent / "PWNED")}, p), id="state-pickled-code"),
    pytest.param("state.pt", Path.unlink, id="state-missing"),
]


@pytest.mark.parametrize("name, corrupt", CORRUPTIONS)
def test_bad_checkpoint_is_an_error_naming_the_file(name, corrupt, run_at_step_2, tiny_model, tiny_data, tmp_path):
    out = shutil.copytree(run_at_step_2, tmp_path / "run")
    corrupt(out / "checkpoint-2" / name)
    before = files(out / "checkpoint-2")
    with pytest.raises((ValueError, OSError)) as err:  # the kinds train_multitask.main reports in one line
        train(tiny_model, tiny_data, out, max_steps=4)
    assert str(out / "checkpoint-2" / name) in str(err.value)
    # not a silent fresh start, and the checkpoint is left as it was for the user to look at
    assert files(out / "checkpoint-2") == before
    assert not (out / "checkpoint-4").exists()


def test_pickled_code_in_state_is_refused_not_run(run_at_step_2, tiny_model, tiny_data, tmp_path):
    out = shutil.copytree(run_at_step_2, tmp_path / "run")
    torch.save({"step": Evil(tmp_path / "PWNED")}, out / "checkpoint-2" / "state.pt")
    with pytest.raises(Exception):
        train(tiny_model, tiny_data, out, max_steps=4)
    assert not (tmp_path / "PWNED").exists()
    assert not (out / "checkpoint-4").exists()


def test_bad_checkpoint_on_the_command_line(run_at_step_2, tiny_model, tiny_data, tmp_path, capsys):
    out = shutil.copytree(run_at_step_2, tmp_path / "run")
    truncate(out / "checkpoint-2" / "model.safetensors")
    argv = [*CLI, "--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(out)]
    assert train_multitask.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(out / "checkpoint-2" / "model.safetensors") in err


# ---------------------------------------------------------------- interrupted runs

# train_multitask.py on a slow disk: the state.pt of checkpoint-4 is written in two halves
# with a pause between, so that the test can kill the run in the middle of writing it.
SLOW_DISK = """
import io, os, runpy, sys, time
import torch
save = torch.save
def slow_save(obj, f, *args, **kwargs):
    if ".tmp-checkpoint-4" not in str(f):
        return save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    with open(f, "wb") as out:
        out.write(data[: len(data) // 2])
        out.flush()
        time.sleep(10)
        out.write(data[len(data) // 2:])
torch.save = slow_save
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def command(tiny_model, tiny_data, out) -> list[str]:
    return [sys.executable, "train_multitask.py", *CLI, "--model", str(tiny_model), "--data_dir", str(tiny_data),
            "--output_dir", str(out)]


def start(argv, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(argv, cwd=REPO, env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=f,
                                stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while not condition():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.002)
    return time.monotonic()


def checkpoint_from(out: Path, step: int):
    return lambda: any(int(p.name.split("-")[1]) >= step for p in out.glob("checkpoint-*"))


def test_killed_run_resumes_to_the_same_model(tiny_model, tiny_data, tmp_path, capsys):
    """Killed twice by SIGKILL, while writing checkpoint-4 and at a random time after
    checkpoint-6, then the same command to the end: the model is the uninterrupted run's.
    (The reference and the last restart run in this process, as the same command.)"""
    out, logs = tmp_path / "run", [tmp_path / f"log{i}.txt" for i in range(2)]
    argv = command(tiny_model, tiny_data, out)

    # 1. on a slow disk: killed with half of checkpoint-4's state.pt written
    (tmp_path / "slow_disk.py").write_text(SLOW_DISK)
    proc = start([sys.executable, str(tmp_path / "slow_disk.py"), *argv[1:]], logs[0])
    half_written = out / ".tmp-checkpoint-4" / "state.pt"  # open() creates it empty: wait for the first half
    wait_for(lambda: half_written.exists() and half_written.stat().st_size > 0, proc, logs[0])
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    half = (out / ".tmp-checkpoint-4" / "state.pt").stat().st_size
    assert 0 < half < (out / "checkpoint-2" / "state.pt").stat().st_size

    # 2. resumed from checkpoint-2, not the half-written one; killed anywhere in the two
    # evaluation periods after checkpoint-6: in a step, an evaluation, save_best or save_checkpoint
    proc = start(argv, logs[1])
    t4 = wait_for(checkpoint_from(out, 4), proc, logs[1])
    period = wait_for(checkpoint_from(out, 6), proc, logs[1]) - t4
    delay = random.uniform(0, 2 * period)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"finished before the kill {delay:.3f} s after checkpoint-6"
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in logs[1].read_text()

    # 3. to the end; and the reference, uninterrupted
    assert train_multitask.main(argv[2:]) == 0
    resumed = [line for line in capsys.readouterr().err.splitlines() if "resumed from" in line]
    killed = f"(second kill {delay:.3f} s after checkpoint-6, then {resumed})"
    reference = tmp_path / "reference"
    assert train_multitask.main(command(tiny_model, tiny_data, reference)[2:]) == 0
    assert sorted(files(out)) == sorted(files(reference)), killed  # one checkpoint, no .tmp-* left
    assert_same_weights(out / "best" / "model.safetensors", reference / "best" / "model.safetensors")
    assert_same_weights(out / "checkpoint-12" / "model.safetensors", reference / "checkpoint-12" / "model.safetensors")
    for name in ("eval_results.json", "log.jsonl"):
        assert (out / name).read_text() == (reference / name).read_text(), killed


def test_half_written_checkpoint_is_not_read(run_at_step_2, run_to_step_6, tiny_model, tiny_data, tmp_path):
    """A kill during save_checkpoint leaves .tmp-checkpoint-N; resume must start from the last whole one."""
    out = shutil.copytree(run_at_step_2, tmp_path / "run")
    tmp = shutil.copytree(out / "checkpoint-2", out / ".tmp-checkpoint-4")
    truncate(tmp / "state.pt")
    trainer = Trainer(tiny_experiment("multitask", tiny_model, tiny_data, out, **{**SIZE, "max_steps": 6}), quiet=True)
    assert trainer.resume() and trainer.step == 2
    assert not list(out.glob(".tmp-*"))  # removed, before the run writes its own .tmp-checkpoint-4
    trainer.train()
    assert_same_weights(out / "checkpoint-6" / "model.safetensors",
                        run_to_step_6 / "checkpoint-6" / "model.safetensors")
    assert (out / "eval_results.json").read_text() == (run_to_step_6 / "eval_results.json").read_text()


# ---------------------------------------------------------------- numerical faults

def fault_at(monkeypatch, step: int, where: str):
    """From here on the sts loss of `step` (1-based) is NaN, or finite with a NaN gradient."""
    task_loss = Trainer.task_loss

    def faulty(self, task, batch):
        loss = task_loss(self, task, batch)
        if self.step + 1 == step and task == "sts":
            if where == "loss":
                return loss * float("nan")
            w = next(self.model.heads[task].parameters())
            return loss + torch.sqrt(0 * w.sum())  # adds 0; its gradient is inf * 0 = NaN
        return loss

    monkeypatch.setattr(Trainer, "task_loss", faulty)


@pytest.mark.parametrize("where, what", [("loss", "loss"), ("gradient", "gradient norm")])
def test_nan_stops_the_run_and_keeps_the_last_checkpoint(where, what, run_to_step_6, tiny_model, tiny_data,
                                                         tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fault_at(m, 5, where)
        with pytest.raises(FloatingPointError, match=f"non-finite {what}.* at step 5; stopped") as err:
            train(tiny_model, tiny_data, out, max_steps=6)
    assert str(out) in str(err.value)
    assert [p.name for p in out.iterdir() if "checkpoint" in p.name] == ["checkpoint-4"]
    # intact: resuming from it (the fault gone) ends where the run would have
    train(tiny_model, tiny_data, out, max_steps=6)
    assert_same_weights(out / "checkpoint-6" / "model.safetensors",
                        run_to_step_6 / "checkpoint-6" / "model.safetensors")
    assert (out / "eval_results.json").read_text() == (run_to_step_6 / "eval_results.json").read_text()


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_skip_skips_the_step_and_counts_it(where, tiny_model, tiny_data, tmp_path, monkeypatch):
    fault_at(monkeypatch, 5, where)
    trainer = train(tiny_model, tiny_data, tmp_path / "run", max_steps=6, nonfinite="skip")
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert (results["nonfinite_skipped"], results["global_step"]) == (1, 6)
    assert {s["step"] for s in trainer.optimizers[0].state.values()} == {5}  # one update left out
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# ---------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("args, message", [
    (["--preset", "nope"], "unknown preset 'nope'; choose one of baseline, multitask,"),
    (["--optim", "sgd"], "unknown optim 'sgd'; choose one of adamw, mfac"),
    (["--optim_args", '{"betas": [0.9, 0.98], "foo": 1}'],
     "unknown AdamW argument(s) ['foo'] in optim_args; known: betas, compile, eps, foreach"),
    (["--optim", "mfac", "--optim_args", "bogus=1"], "unknown M-FAC argument(s) ['bogus'] in optim_args; known: "),
    (["--optim", "mfac", "--optim_args", "num_grads=100000000"], "M-FAC needs 40008.9 TB on cpu"),
    (["--model", "{tmp}/nope"], "no model folder at {tmp}/nope"),
    (["--data_dir", "{tmp}/nope"], "{tmp}/nope/cs224n/ids-sst-train.csv: file not found"),
])
def test_bad_argument_is_one_line_before_any_work(args, message, tiny_model, tiny_data, tmp_path, capsys):
    argv = [*CLI, "--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(tmp_path / "out"),
            *[a.replace("{tmp}", str(tmp_path)) for a in args]]
    t0 = time.monotonic()
    assert train_multitask.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - t0 < 20  # M-FAC: refused, not allocated


def test_bad_argument_exit_status(tmp_path):
    argv = [sys.executable, "train_multitask.py", "--preset", "nope", "--output_dir", str(tmp_path / "out")]
    done = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown preset 'nope'") and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- determinism

def test_same_seed_same_metrics(tiny_model, tiny_data, tmp_path):
    """smart-gse draws from every random source: dropout, SMART's noise, PCGrad's task order, batches."""
    runs = [train(tiny_model, tiny_data, tmp_path / name, "smart-gse", seed=seed, max_steps=2)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    a, b, c = (tmp_path / name for name in "abc")
    assert (a / "eval_results.json").read_text() == (b / "eval_results.json").read_text()
    assert runs[0].history == runs[1].history
    assert_same_weights(a / "checkpoint-2" / "model.safetensors", b / "checkpoint-2" / "model.safetensors")
    with pytest.raises(AssertionError):  # and a different seed does change them
        assert_same_weights(a / "checkpoint-2" / "model.safetensors", c / "checkpoint-2" / "model.safetensors")
