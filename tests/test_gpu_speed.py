"""What pays only on a GPU, tested here as far as a CPU goes (issue 20, item 4): torch's fused
AdamW behind the start-up check, batches padded to fixed lengths and the layers compiled for
them (CUDA graphs on CUDA: mode "reduce-overhead"; the same shapes and mode on the CPU), and
NVIDIA MPS for presets side by side. None of them is timed here (docs/BENCHMARKS.md, "Owed")."""
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from conftest import CPU_AND_CUDA, tiny_experiment
from minbert.batches import collate
from minbert.experiments import preset
from minbert.fastpaths import FastPathMismatch, check_fast_paths
from minbert.optim import AdamW
from minbert.optim.adamw import check_fused_matches_loop
from minbert.sweep import side_by_side
from minbert.trainer import Trainer, build_optimizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ lives beside minbert/
from benchmarks.bench_precision import one_update, start  # noqa: E402

# ---------------------------------------------------------------- torch's fused AdamW

def test_fused_adamw_computes_adamw_update(tiny_model, tiny_data, tmp_path, one_thread):
    """optim_args fused: torch._fused_adamw_ in place of AdamW._update (and of --fast's foreach),
    checked against it at start-up; the check passes on today's code."""
    exp = tiny_experiment("gse", tiny_model, tiny_data, tmp_path, fast=True, optim_args={"fused": True})
    trainer = Trainer(exp, quiet=True)  # runs check_fast_paths
    opt = trainer.optimizers[0]
    assert isinstance(opt, AdamW) and opt.fused and not opt.foreach and not opt.compile, \
        "build_optimizers: optim_args fused should run torch's fused kernel alone, not adamw_foreach too"
    check_fused_matches_loop()


def test_fused_check_stops_a_run_when_adamw_update_is_edited(tiny_model, tiny_data, tmp_path, monkeypatch):
    """A student's edit to AdamW._update (here: no weight decay) is either in the run or stops it."""
    exp = tiny_experiment("multitask", tiny_model, tiny_data, tmp_path, optim_args={"fused": True}, weight_decay=0.1)
    model = torch.nn.Linear(2, 2)
    opts = build_optimizers(model, exp)
    edited = AdamW._update

    def without_decay(self, group, params):
        edited(self, {**group, "weight_decay": 0.0}, params)
    monkeypatch.setattr(AdamW, "_update", without_decay)
    with pytest.raises(FastPathMismatch, match=r"AdamW\._update .* torch\._fused_adamw_ .* Leave out fused"):
        check_fast_paths(model, opts)


def test_fused_and_foreach_are_one_choice():
    with pytest.raises(ValueError, match="choose one"):
        AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True, foreach=True)


# ---------------------------------------------------------------- fixed lengths, compiled

def test_padding_to_a_multiple_changes_no_output(tiny_model, tiny_data, tmp_path, one_thread):
    """--pad_to_multiple_of 16: every segment's length is a multiple of 16 (at most max_length),
    and the pads are masked: the outputs equal those of batches padded to their longest."""
    exp = tiny_experiment("gse", tiny_model, tiny_data, tmp_path, pad_to_multiple_of=16, max_length=40)
    trainer = Trainer(exp, quiet=True)
    trainer.model.eval()
    for t, data in trainer.train_data.items():
        index = list(range(8))
        tight, padded = collate(data, index), collate(data, index, 0, 16, 40)
        for seg in padded["segments"]:
            T = seg["input_ids"].shape[1]
            assert T % 16 == 0 or T == 40, f"collate(multiple_of=16, max_length=40) made length {T} for {t}"
        with torch.no_grad():
            torch.testing.assert_close(trainer.model(t, padded), trainer.model(t, tight), atol=1e-5, rtol=1e-5,
                                       msg=lambda m: f"{t}: padding to a multiple of 16 changed the output: {m}")
    assert trainer.train_batch("sst", 0)["segments"][0]["input_ids"].shape[1] in (16, 32, 40), \
        "Trainer.train_batch should pad to --pad_to_multiple_of"


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_fixed_shape_compile_matches_eager(device, tiny_model, tiny_data, tmp_path, compiler, one_thread):
    """--compile --pad_to_multiple_of: the layers compiled for fixed shapes in mode "reduce-overhead"
    (CUDA graphs on CUDA) make the eager update, dropout off. One task and one padded length,
    so that one graph (forward and backward) is compiled: 20 s on a CPU, not minutes."""
    def update(name, **kw):
        exp = tiny_experiment("multitask", tiny_model, tiny_data, tmp_path / name, tasks=("sst",), head_dropout=0.0,
                              pad_to_multiple_of=16, device=device, **kw)
        return one_update(*start(exp))  # the same initial weights: the heads' init seed is the same
    eager, compiled = update("eager"), update("compiled", compile=True)
    assert compiled["losses"]["sst"] == pytest.approx(eager["losses"]["sst"], rel=1e-5), \
        "compile_layers(fixed_shapes=True): the compiled layers' loss differs from eager BertLayer.forward's"
    # Compare gradients: AdamW's first step is about lr * sign(g), so an entry with g near 0 may
    # flip on float32 rounding (seen: 1 of 22149); the gradient differs by rounding only.
    (g_compiled,), (g_eager,) = compiled["grads"], eager["grads"]
    diff = ((g_compiled - g_eager).norm() / g_eager.norm()).item()
    assert diff < 1e-5, f"compile_layers(fixed_shapes=True): the gradient differs from eager's by {diff:.2e} relative"


def test_pad_to_multiple_of_is_checked():
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 0"):
        preset("gse", pad_to_multiple_of=-1)


# ---------------------------------------------------------------- MPS

def fake_mps_control(folder):
    """An nvidia-cuda-mps-control stand-in that writes its arguments and stdin to calls.txt."""
    folder.mkdir(exist_ok=True)
    script = folder / side_by_side.MPS_CONTROL
    script.write_text(f'#!/bin/sh\necho "args:$* stdin:$(cat)" >> {folder / "calls.txt"}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder / "calls.txt"


def test_mps_started_on_cuda_only_where_present(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))  # no daemon runs there
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert side_by_side.start_mps("cpu") == (False, ""), "start_mps: nothing to do on a CPU"
    started, line = side_by_side.start_mps("cuda")
    assert not started and "nvidia-cuda-mps-control is absent" in line, f"start_mps without the binary: {line!r}"
    calls = fake_mps_control(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + "/bin:/usr/bin")
    started, line = side_by_side.start_mps("cuda:0")
    assert started and "started" in line
    side_by_side.stop_mps()
    assert calls.read_text().splitlines() == ["args:-d stdin:", "args: stdin:quit"], \
        "start_mps should run `nvidia-cuda-mps-control -d`, stop_mps send it `quit`"
