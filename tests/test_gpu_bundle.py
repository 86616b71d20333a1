"""The GPU day's bundle (minbert/gpu/bundle.py): one file with the model rounded to float16, the
day's data and the commit; `--bundle FILE` runs the day from it, and `--out` alone says where
the day's files go."""
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minbert.gpu import bundle as gpu_bundle
from minbert.gpu import day as gpu_day
from minbert.run import paths
from minbert.weights import resolve_model_dir


@pytest.fixture
def as_default(tiny_model, monkeypatch, tmp_path):
    """The tiny model stands in for all-MiniLM-L6-v2: its sha256 is, for this test, the original's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    digest = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    for module in (paths, gpu_bundle):
        monkeypatch.setattr(module, "MODEL_SHA256", digest)
    monkeypatch.setenv(paths.MODEL_ENV, str(tiny_model))
    return tiny_model


def test_the_bundle_holds_the_rounded_model_the_data_and_the_commit(as_default, tiny_data, tmp_path):
    line = gpu_bundle.make(tmp_path / "b.tar.gz", tiny_data, gpu_day.ROOT)
    assert "weights rounded to float16" in line and "data of sst, quora, sts, mrpc" in line
    names = tarfile.open(tmp_path / "b.tar.gz").getnames()
    assert {"bundle.json", "model/config.json", "model/vocab.txt", "model/model.safetensors", "model/rounded.json",
            "data/cs224n/sts-train.csv", "data/glue/MRPC/dev.tsv"} <= set(names)
    manifest = gpu_bundle.unpack(tmp_path / "b.tar.gz", tmp_path / "there")
    assert manifest["commit"] == gpu_bundle.commit(gpu_day.ROOT) != "unknown"
    weights = load_file(str(tmp_path / "there" / "model" / "model.safetensors"))
    original = load_file(str(as_default / "model.safetensors"))
    assert all(w.dtype == torch.float16 for w in weights.values())
    assert all(torch.equal(weights[k], original[k].half()) for k in original)


def test_the_check_accepts_the_bundles_copy_and_no_altered_one(as_default, tiny_data, tmp_path, monkeypatch):
    gpu_bundle.make(tmp_path / "b.tar.gz", tiny_data, gpu_day.ROOT)
    gpu_bundle.unpack(tmp_path / "b.tar.gz", tmp_path / "there")
    model = tmp_path / "there" / "model"
    monkeypatch.setenv(paths.MODEL_ENV, str(model))
    assert resolve_model_dir("all-MiniLM-L6-v2") == model
    record = json.loads((model / "rounded.json").read_text())
    (model / "rounded.json").write_text(json.dumps({**record, "rounded_from": "0" * 64}))
    with pytest.raises(ValueError, match="float32 original"):
        resolve_model_dir("all-MiniLM-L6-v2")


def test_a_bundle_over_the_limit_is_refused_and_not_written(as_default, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_bundle, "LIMIT", 1000)
    assert gpu_day.main(["bundle", str(tmp_path / "b.tar.gz"), "--data_dir", str(tiny_data)]) == 2
    assert not list(tmp_path.glob("b.tar.gz*"))


def test_a_bundle_needs_the_days_data(as_default, tmp_path, capsys):
    assert gpu_day.main(["bundle", str(tmp_path / "b.tar.gz"), "--data_dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "make data" in err and "cs224n/ids-sst-train.csv" in err and err.count("\n") == 1, err


def test_the_day_runs_from_a_bundle_into_its_out_folder_only(as_default, tiny_data, tmp_path, monkeypatch, capsys):
    gpu_bundle.make(tmp_path / "b.tar.gz", tiny_data, gpu_day.ROOT)
    monkeypatch.setenv("OUT", str(tmp_path / "elsewhere"))  # an unrelated variable of the user's shell
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "day"
    assert gpu_day.main(["--dry_run", "--bundle", str(tmp_path / "b.tar.gz"), "--out", str(out),
                         "--skip", "cuda_tests,table,benchmarks,mfac,grid"]) == 0
    report = next(out.glob("*-dry/report.md")).read_text()
    assert f"from {tmp_path / 'b.tar.gz'}: all-MiniLM-L6-v2, weights rounded to float16 for the trip" in report
    assert resolve_model_dir("all-MiniLM-L6-v2") == out / "bundle" / "model"  # the steps' processes find it
    assert (out / "bundle" / "data" / "cs224n" / "ids-sst-train.csv").exists()
    assert list(out.glob("*-dry.tar.gz")) and not any((tmp_path / "elsewhere").iterdir()), "the day wrote outside --out"


def test_a_missing_bundle_is_one_line(tmp_path, capsys):
    assert gpu_day.main(["--dry_run", "--bundle", str(tmp_path / "none.tar.gz"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "bundle FILE" in err and err.count("\n") == 1, err


def test_the_real_bundle_stays_under_60_mib(tmp_path):
    """All-MiniLM-L6-v2's float32 weights alone are 91 MB: rounded to float16 they fit."""
    try:
        folder = paths.default_model_dir()
    except FileNotFoundError:
        pytest.skip("all-MiniLM-L6-v2 is not installed (make setup)")
    model = gpu_bundle.rounded_model(folder, tmp_path / "model")
    size = sum(f.stat().st_size for f in model.iterdir())
    assert size < gpu_bundle.LIMIT - 8 * 2**20, f"the model alone is {size / 2**20:.1f} MiB"
    assert Path(folder / "model.safetensors").stat().st_size > gpu_bundle.LIMIT, "float16 would not be needed"
