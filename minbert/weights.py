"""Reading pretrained checkpoints: a name or folder -> files -> state dict -> strict load.

Because our module names equal Hugging Face's keys (model.py), only a few fix-ups are
needed: a `bert.` prefix, legacy `LayerNorm.gamma/beta`, the `position_ids` buffer, and
pretraining heads (`cls.*`) that a bare encoder does not have.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import torch
from safetensors.torch import load_file

from minbert.config import BertConfig, check_attn_implementation
from minbert.run.paths import where_hint

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
IDENTITY_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "model.safetensors.index.json")
IDENTITY_ENDS = 1 << 20  # bytes hashed from each end of a weights file: tells models apart, fast at any size
HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.txt",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def is_local_path(name_or_path: str | Path) -> bool:
    """Written as a path (./x, /x, ~/x, a/b/c), never a hub id ("org/name")."""
    return str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1


def model_fingerprint(name_or_path: str | Path) -> str | None:
    """What a model is, not where it lies: sha256 of its config.json and tokenizer files, and of
    each weights file its name, size and first and last MiB, so a copy or a moved folder
    gives the same value and another model (even one of the same shape) another. A hub id is
    its own identity ("hub:<id>", nothing downloaded); a local path with no folder is None."""
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        return None if is_local_path(name_or_path) or folder.exists() else f"hub:{name_or_path}"
    weights = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors" or
                     (p.name.startswith("pytorch_model") and p.suffix == ".bin"))
    digest = hashlib.sha256()
    for name in [f for f in IDENTITY_FILES if (folder / f).is_file()] + weights:
        size = (folder / name).stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with open(folder / name, "rb") as f:
            digest.update(f.read(IDENTITY_ENDS))
            if size > 2 * IDENTITY_ENDS:
                f.seek(-IDENTITY_ENDS, os.SEEK_END)
            digest.update(f.read())  # the rest of a small file, or the last MiB of a large one
    return f"sha256:{digest.hexdigest()}"


def resolve_model_dir(name_or_path: str | Path, need_weights: bool = True) -> Path:
    """A local folder, or a hub id fetched through huggingface_hub into its cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the model folder that holds config.json and the weights")
    if is_local_path(name_or_path):
        raise FileNotFoundError(f"no model folder at {path}: {where_hint()}")
    try:
        patterns = HUB_PATTERNS if need_weights else [p for p in HUB_PATTERNS if "safetensors" not in p]
        folder = Path(huggingface_hub.snapshot_download(str(name_or_path), allow_patterns=patterns))
        if need_weights and not any((folder / f).exists() for f in WEIGHT_FILES):
            # Older repos ship only pytorch_model.bin.
            folder = Path(huggingface_hub.snapshot_download(str(name_or_path),
                                                            allow_patterns=HUB_PATTERNS + ["pytorch_model.bin"]))
        return folder
    except Exception as e:  # network, auth, or repo errors all end the same way for the user
        raise OSError(
            f"could not fetch {str(name_or_path)!r} from the Hugging Face hub ({type(e).__name__}); "
            f"if this machine is offline, pass a local model folder instead, e.g. "
            f"--model $MINBERT_SHARED/models/all-MiniLM-L6-v2 (a folder with config.json and model.safetensors)"
        ) from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Reads model.safetensors (single or sharded) or pytorch_model.bin, never executing pickled code."""
    folder = Path(folder)
    single, index, legacy = (folder / f for f in WEIGHT_FILES)
    try:
        if single.exists():
            return load_file(str(single))
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for s in shards for k, v in load_file(str(folder / s)).items()}
        if legacy.exists():
            # weights_only=True: a pickle that carries code is refused, not run.
            return torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"could not read the weights in {folder}: {type(e).__name__}: {e} "
                         f"(a truncated download, or a file that is not a plain tensor checkpoint)") from None
    raise FileNotFoundError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def fix_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face / original-TF-port key variants -> our module names."""
    fixed = {}
    for key, value in state_dict.items():
        if key.startswith("cls.") or key.endswith("position_ids"):
            continue  # pretraining heads, and a buffer we compute instead
        key = key.removeprefix("bert.")
        if ".LayerNorm." in key:
            key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        fixed[key] = value
    return fixed


def load_checked(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint"):
    """Strict load: missing, unexpected or wrong-shape keys raise one error listing them all."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ValueError(f"{source} does not fit the model; " + "; ".join(parts))
    # Stored float16/bfloat16 weights are widened to the model's dtype (float32).
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)


def load_pretrained(cls, name_or_path, attn_implementation: str = "math"):
    attn_implementation = check_attn_implementation(attn_implementation)  # a bad name fails before any download
    folder = resolve_model_dir(name_or_path)
    config = BertConfig.from_json(folder / "config.json")
    config.attn_implementation = attn_implementation
    model = cls(config)
    load_checked(model, fix_keys(read_state_dict(folder)), source=str(folder))
    return model.eval()
