"""One file that carries what a GPU day needs to a machine without network: the default model,
the data of the day's tasks and the commit of the code.

    python -m minbert.gpu.day bundle gpu_bundle.tar.gz      # here, where the model and data are
    python -m minbert.gpu.day --bundle gpu_bundle.tar.gz    # there (unpacked into gpu_day/bundle/)

The model's float32 weights (91 MB) are stored as float16 for the trip, so that the bundle
stays under LIMIT (about 50 MiB in all); they are widened back to float32 on loading, and the
model folder's rounded.json names the float32 original they were rounded from, so that the
default model's sha256 check (minbert/run/paths.py) accepts this copy and no other. A GPU day run
from a bundle trains on the float16-rounded weights; its report says so.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minbert.data import TASKS
from minbert.run.paths import DEFAULT_MODEL_NAME, MODEL_SHA256, ROUNDED_RECORD, default_model_dir, file_sha256

LIMIT = 60 * 2**20  # bytes
DAY_TASKS = ("sst", "quora", "sts", "mrpc")  # the table's three (and the benchmarks'), M-FAC's and the grid's one
MODEL_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def commit(root: Path) -> str:
    """The short commit, +dirty when tracked files differ from it; "unknown" outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def rounded_model(folder: Path, into: Path) -> Path:
    """The default model's folder with its weights rounded to float16, and rounded.json saying so."""
    into.mkdir(parents=True)
    for name in MODEL_FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, into / name)
    weights = {k: v.to(torch.float16) if v.is_floating_point() else v
               for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(weights, str(into / "model.safetensors"))
    record = {"rounded_from": MODEL_SHA256, "dtype": "float16", "sha256": file_sha256(into / "model.safetensors")}
    (into / ROUNDED_RECORD).write_text(json.dumps(record))
    return into


def make(path: Path, data_dir: Path, root: Path) -> str:
    """Writes the bundle; returns the line that describes it. Stops at the first missing piece."""
    files = [rel for name in DAY_TASKS for split, rel in TASKS[name].files.items()]
    needed = [rel for rel in files if not rel.endswith(("test.tsv", "test-student.csv"))]
    missing = [rel for rel in needed if not (data_dir / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)} in {data_dir}: run `make data` first (or pass --data_dir)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    manifest = {"commit": commit(root), "made": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "model": f"{DEFAULT_MODEL_NAME}, weights rounded to float16 for the trip", "tasks": list(DAY_TASKS)}
    try:
        with tempfile.TemporaryDirectory() as scratch, tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            tar.add(rounded_model(default_model_dir(), Path(scratch) / "model"), arcname="model")
            for rel in files:
                if (data_dir / rel).is_file():
                    tar.add(data_dir / rel, arcname=f"data/{rel}")
            blob = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo("bundle.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        size = tmp.stat().st_size
        if size > LIMIT:
            raise ValueError(f"the bundle would be {size / 2**20:.1f} MiB, over the {LIMIT / 2**20:.0f} MiB limit")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return (f"{path}: {size / 2**20:.1f} MiB, commit {manifest['commit']}, {manifest['model']}, "
            f"data of {', '.join(DAY_TASKS)}")


def unpack(path: Path, into: Path) -> dict:
    """The bundle into `into` (model/, data/, bundle.json), replacing an earlier one; its manifest."""
    if not path.is_file():
        raise FileNotFoundError(f"--bundle {path}: no such file (make it with `python -m minbert.gpu.day bundle FILE`)")
    if into.exists():
        shutil.rmtree(into)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    if not (into / "bundle.json").is_file():
        raise ValueError(f"--bundle {path}: not a GPU-day bundle (no bundle.json in it)")
    return json.loads((into / "bundle.json").read_text())
