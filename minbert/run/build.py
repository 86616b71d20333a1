"""From an `Experiment` to the things a run holds: the device, the tokenizer and model, the
encoded data; and a finished run folder back to a model that predicts.

Why apart from the trainer: evaluating, exporting or drawing attention needs a model and
its dev data, never the training sets, optimizers or checkpoint machinery (nanochat's
checkpoint_manager.build_model is the same cut). Nothing here builds an optimizer or reads
a training split unless asked for it by name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch._dynamo import config as dynamo_config
from torch._functorch import config as functorch_config

from minbert.batches import Encoded, encode
from minbert.data import TASKS, read_split
from minbert.experiments import Experiment
from minbert.model import BertModel
from minbert.multitask import MultitaskBert
from minbert.run import distributed
from minbert.run.compat import fingerprint_of_unrecorded
from minbert.run.paths import compile_path_problem
from minbert.tokenizer import BertTokenizer
from minbert.weights import model_fingerprint

MODEL_RECORD = "model_identity.json"  # the run's model fingerprint, written when the run starts (folder.py)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def start_process(exp: Experiment) -> torch.device:
    """The device this process trains on. Under torchrun it joins the process group first and
    takes its rank's GPU (distributed.py). On CUDA, float32 matmuls run in full float32, not
    TF32, so that float32 means float32 everywhere (docs/GPU.md, precision)."""
    device = distributed.setup(resolve_device(exp.device))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("highest")
    return device


def build_model(exp: Experiment, device: torch.device) -> tuple[BertTokenizer, MultitaskBert]:
    """The pre-trained encoder (readable attention, or SDPA with --fast) and fresh task heads,
    initialised from exp.init_seed (or exp.seed)."""
    tokenizer = BertTokenizer.from_pretrained(exp.model)
    bert = BertModel.from_pretrained(exp.model, attn_implementation="sdpa" if exp.fast else "math")
    torch.manual_seed(exp.seed if exp.init_seed < 0 else exp.init_seed)  # the new heads' initial weights
    model = MultitaskBert(bert, exp.heads, exp.pooling, exp.head_dropout, exp.binary_logit)
    return tokenizer, model.to(device)


# --compile with --pad_to_multiple_of: one graph per (batch size, padded length); 128 / 16 = 8
# lengths times the training batch and a few evaluation batch sizes is more than torch's
# default of 8 graphs per function, past which it would run the rest eagerly.
FIXED_SHAPE_GRAPHS = 64


def compile_layers(bert: BertModel, fixed_shapes: bool = False):
    """--compile: each encoder layer through torch.compile, in place (the state-dict keys stay).
    One compiled graph serves every layer; dynamic, as batch size and length vary. With
    fixed_shapes (batches padded to a few lengths, --pad_to_multiple_of), one static graph
    per shape in mode "reduce-overhead": on CUDA each layer call then replays a CUDA graph,
    one launch for its ~20 kernels (on the CPU the mode changes nothing)."""
    problem = compile_path_problem()
    if problem and next(bert.parameters()).device.type == "cpu":
        raise ValueError(f"--compile: {problem}")
    functorch_config.donated_buffer = False  # PCGrad and SMART backpropagate twice (retain_graph)
    if fixed_shapes:
        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), FIXED_SHAPE_GRAPHS))
    for layer in bert.encoder.layer:
        if fixed_shapes:
            layer.compile(dynamic=False, mode="reduce-overhead")
        else:
            layer.compile(dynamic=True)


def compile_for_speed(model: MultitaskBert, exp: Experiment, device: torch.device) -> bool:
    """--compile: each encoder layer through torch.compile (compile_layers). Returns whether each
    update replays CUDA graphs (fixed shapes from --pad_to_multiple_of, on CUDA): the trainer
    then marks where one update's replays begin."""
    if exp.compile:
        compile_layers(model.bert, fixed_shapes=exp.pad_to_multiple_of > 0)
    return exp.compile and exp.pad_to_multiple_of > 0 and device.type == "cuda"


def read_data(exp: Experiment, tokenizer: BertTokenizer, split: str, max_examples: int = 0) -> dict[str, Encoded]:
    """{task: the split tokenized}; the first max_examples of each when > 0. Malformed rows
    are skipped or raise as exp.bad_rows says (data.read_file warns once, naming the lines)."""
    return {t: encode_split(exp, tokenizer, t, split, max_examples) for t in exp.tasks}


def encode_split(exp: Experiment, tokenizer: BertTokenizer, task: str, split: str, max_examples: int = 0) -> Encoded:
    """One task's split, read and tokenized as the experiment encodes its inputs (siamese or cross)."""
    rows = read_split(task, exp.data_dir, split, on_error=exp.bad_rows)
    if max_examples > 0:
        rows = rows[:max_examples]
    return encode(tokenizer, rows, exp.pair_input == "siamese" and TASKS[task].pair, exp.max_length)


@dataclass
class FinishedRun:
    """A run folder's configuration, tokenizer and trained model, ready to predict."""
    exp: Experiment
    tokenizer: BertTokenizer
    model: MultitaskBert
    device: torch.device
    weights: Path


def checkpoints(run_dir: Path) -> list[Path]:
    """The run folder's checkpoint-<step>/ folders, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def recorded_fingerprint(run_dir: Path, model_in_config: str) -> str | None:
    """The fingerprint of the model a run started from: its model_identity.json (a folder
    without one: run/compat.py)."""
    path = run_dir / MODEL_RECORD
    return json.loads(path.read_text())["fingerprint"] if path.exists() else fingerprint_of_unrecorded(model_in_config)


def run_weights(run_dir: Path, which: str = "best") -> Path:
    """best/model.safetensors, or the latest checkpoint's; a clear error when there is none."""
    if which == "best":
        path = run_dir / "best" / "model.safetensors"
    else:
        ckpts = checkpoints(run_dir)
        if not ckpts:
            raise FileNotFoundError(f"no checkpoint-<step>/ folder in {run_dir}")
        path = ckpts[-1] / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}; did the run evaluate at least once?")
    return path


def load_run(run_dir: str | Path, device: str = "auto", which: str = "best", model: str | None = None) -> FinishedRun:
    """A run folder -> its model with the best (or the latest checkpoint's) weights, in eval mode.
    model: where the run's pre-trained model is now (a moved checkout), instead of config.json's
    path; refused unless it is the same model (recorded_fingerprint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.json")
    exp = Experiment.from_dict(json.loads((run_dir / "config.json").read_text()))
    if model is not None:  # a moved checkout: the same model at another path
        recorded, current = recorded_fingerprint(run_dir, exp.model), model_fingerprint(model)
        if recorded is not None and current != recorded:
            why = "no model folder there" if current is None else "its config.json, tokenizer files or weights differ"
            raise ValueError(f"--model {model}: not the model {run_dir} was trained from ({exp.model}): {why}")
        exp.model = model
    exp.fast = False  # predicting: the readable attention, whatever the run trained with
    weights = run_weights(run_dir, which)
    dev = resolve_device(device)
    tokenizer, model = build_model(exp, dev)
    model.load_state_dict(load_file(str(weights), device=str(dev)))
    model.eval()
    return FinishedRun(exp, tokenizer, model, dev, weights)
