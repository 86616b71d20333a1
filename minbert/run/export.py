"""A finished run -> a Hugging Face model folder of its fine-tuned encoder, heads beside it.

    out_dir/config.json              BertConfig as transformers reads it (model_type "bert")
    out_dir/model.safetensors        the encoder, Hugging Face BertModel key names
    out_dir/vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json
                                     the tokenizer of the model the run started from
    out_dir/heads.safetensors        the task heads' tensors, keyed "<task>.<parameter>"
    out_dir/heads.json               per task: head, pooling, input, labels, loss; the run's config

`minbert.BertModel.from_pretrained(out_dir)` and `transformers.BertModel.from_pretrained(out_dir)`
both load the encoder with no missing or unexpected keys; `load_multitask(out_dir)` rebuilds
the whole MultitaskBert, heads included. Because our module names are Hugging Face's
(model.py), the only key change is dropping the run's "bert." prefix.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from minbert.config import BertConfig
from minbert.data import TASKS
from minbert.heads import loss_kind
from minbert.model import BertModel
from minbert.multitask import MultitaskBert
from minbert.run import build
from minbert.weights import resolve_model_dir

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")  # at least one must be there
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}
USAGE = ("The encoder loads with minbert.BertModel.from_pretrained(DIR) or transformers.BertModel."
         "from_pretrained(DIR); minbert.run.export.load_multitask(DIR) rebuilds the fine-tuned model, heads "
         "included: MultitaskBert(encoder, heads={task: head}, pooling, dropout, binary_logit) from this "
         "file, then model.heads.load_state_dict(safetensors.torch.load_file(DIR / 'heads.safetensors')).")


class ExportError(ValueError):
    """The run cannot be exported, or the output folder is in the way; the message names the path."""


def run_weights(run_dir: Path, which: str) -> Path:
    """best/model.safetensors ("best") or the latest checkpoint-<step>/model.safetensors ("last")."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    try:
        return build.run_weights(run_dir, which)
    except FileNotFoundError as e:
        raise ExportError(f"{run_dir} is not a finished run: {e}") from None


def hf_config(config: BertConfig) -> dict:
    """Our BertConfig -> config.json as transformers' BertConfig reads it. attn_implementation is
    ours (which attention code runs), not a field of the checkpoint, so it is left out."""
    fields = {k: v for k, v in config.to_dict().items() if k != "attn_implementation"}
    return {"architectures": ["BertModel"], "model_type": "bert", **fields, "position_embedding_type": "absolute"}


def head_info(task: str, head: str, exp: dict) -> dict:
    """What a reader needs to use one task's head: its input, output and labels (heads.py)."""
    spec = TASKS[task]
    loss = loss_kind(task, exp.get("binary_logit", True))
    if head == "cos-emb":
        loss, output = "cosine_embedding", "cos(u, v) in [-1, 1]; the score on 0..5 is (cos + 1) * 2.5"
    elif loss == "mse":
        output = f"one score on the data's scale ({spec.label_range[0]}..{spec.label_range[1]})"
    elif loss == "bce":
        output = "one logit; label 1 where it is > 0"
    else:
        output = f"{spec.num_labels} logits; the label is their argmax"
    pair = "one sentence" if not spec.pair else (
        "a pair as one segment, [CLS] A [SEP] B [SEP]" if exp.get("pair_input") == "cross"
        else "a pair, each sentence encoded apart (u, v)")
    return {"head": head, "pooling": exp.get("pooling", "cls"), "input": pair, "kind": spec.kind,
            "num_labels": spec.num_labels, "label_range": list(spec.label_range), "loss": loss, "output": output,
            "metric": spec.metric}


def check_encoder_keys(config: BertConfig, encoder: dict[str, torch.Tensor], source: Path):
    """The keys and shapes BertModel(config) expects, compared on the meta device (no memory used)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in BertModel(config).state_dict().items()}
    missing = sorted(set(expected) - set(encoder))
    unexpected = sorted(set(encoder) - set(expected))
    wrong = sorted(k for k in set(expected) & set(encoder) if tuple(encoder[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = [f"{name}: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ExportError(f"the encoder in {source} does not fit its bert_config.json; " + "; ".join(parts))


def export_hf(run_dir: str | Path, out_dir: str | Path, which: str = "best",
              model_dir: str | Path | None = None) -> Path:
    """Writes the run's fine-tuned encoder (and its heads) as a Hugging Face model folder; returns out_dir.

    which: "best" (best/model.safetensors) or "last" (the latest checkpoint-<step>/).
    model_dir: where the tokenizer files are; default the folder (or hub id) in the run's
    config.json "model", which a run copied from another machine may not find here.
    Raises ExportError, before anything is written, when run_dir has no config.json or no
    weights, out_dir exists and is not empty, or the tokenizer files cannot be found. The
    folder is written under a temporary name and renamed, so it is whole or absent."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "config.json").is_file():
        raise ExportError(f"{run_dir} is not a finished run: no config.json")
    weights = run_weights(run_dir, which)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir} exists and is not empty; export into a new folder")
    exp = json.loads((run_dir / "config.json").read_text())

    source = Path(model_dir) if model_dir is not None else None
    if source is None:
        try:
            source = resolve_model_dir(exp["model"], need_weights=False)
        except (OSError, KeyError) as e:
            raise ExportError(f"the run's model folder {exp.get('model')!r} (tokenizer files) is not here "
                              f"({type(e).__name__}); pass model_dir=") from None
    if not any((source / f).is_file() for f in TOKENIZER_FILES):
        raise ExportError(f"no {' or '.join(TOKENIZER_FILES)} in {source}; pass model_dir= a folder that has them")
    bert_json = run_dir / "bert_config.json" if (run_dir / "bert_config.json").exists() else source / "config.json"
    config = BertConfig.from_json(bert_json)

    state = load_file(str(weights))
    encoder = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    heads = {k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")}
    other = sorted(set(state) - {f"bert.{k}" for k in encoder} - {f"heads.{k}" for k in heads})
    if other:  # a model part this export would silently drop
        raise ExportError(f"{weights} holds keys that are neither bert.* nor heads.*: {', '.join(other[:10])}")
    check_encoder_keys(config, encoder, weights)

    progress = {}
    if (run_dir / "trainer_state.json").exists():
        trainer_state = json.loads((run_dir / "trainer_state.json").read_text())
        progress = {"step": trainer_state.get("best_step") if which == "best" else trainer_state.get("global_step")}
    if which == "best" and (run_dir / "eval_results.json").exists():
        progress["dev_results"] = json.loads((run_dir / "eval_results.json").read_text())
    heads_json = {
        "tasks": {t: head_info(t, h, exp) for t, h in exp.get("heads", {}).items()},
        "pooling": exp.get("pooling", "cls"), "dropout": exp.get("head_dropout", 0.1),
        "binary_logit": exp.get("binary_logit", True),
        "source": {"run_dir": str(run_dir.resolve()), "which": which, "weights": str(weights.resolve()), **progress},
        "usage": USAGE, "experiment": exp,
    }
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                        "model_max_length": config.max_position_embeddings}
    if (source / "tokenizer_config.json").exists():
        tokenizer_config.update(json.loads((source / "tokenizer_config.json").read_text()))

    # Every check passed: write into a temporary sibling, then rename it into place.
    tmp = out_dir.parent / f".{out_dir.name}.export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(hf_config(config), indent=2) + "\n")
        # metadata format "pt": transformers checks it to know the tensors' layout
        save_file({k: v.contiguous() for k, v in encoder.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        for name in (*TOKENIZER_FILES, "special_tokens_map.json"):
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        if not (tmp / "special_tokens_map.json").exists():
            (tmp / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in heads.items()}, str(tmp / "heads.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "heads.json").write_text(json.dumps(heads_json, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_multitask(export_dir: str | Path, attn_implementation: str = "math") -> MultitaskBert:
    """An export_hf folder -> the fine-tuned MultitaskBert (encoder and heads), in eval mode."""
    export_dir = Path(export_dir)
    info = json.loads((export_dir / "heads.json").read_text())
    bert = BertModel.from_pretrained(export_dir, attn_implementation=attn_implementation)
    model = MultitaskBert(bert, {t: v["head"] for t, v in info["tasks"].items()}, pooling=info["pooling"],
                          dropout=info["dropout"], binary_logit=info["binary_logit"])
    model.heads.load_state_dict(load_file(str(export_dir / "heads.safetensors")), strict=True)
    return model.eval()
