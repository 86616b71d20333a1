"""A finished run -> dev metrics and prediction files.

    python evaluate.py runs/gse                 # best checkpoint, whole dev sets, dev + test predictions
    python evaluate.py runs/gse --which last --device cpu
    python evaluate.py runs/gse --max_eval_examples 200   # the first 200 of each dev set (said in the results)
    python evaluate.py runs/gse --format cs224n           # prediction files exactly as the CS224N starter writes them
    python evaluate.py runs/gse --export exported/gse     # a Hugging Face model folder of the fine-tuned encoder
    python evaluate.py runs/gse --curves                  # redraw runs/gse/curves.png from its log.jsonl

Writes into the run folder: evaluate_results.json (dev metrics, the names train_multitask
uses; "dev_subset" when only part of a dev set was scored) and
predictions/<task>-{dev,test}-output.csv, named as the CS224N starter names them (sst,
para, sts): by default plain CSV, a header `id,Predicted_<what>` and one `id,prediction`
line per example; with `--format cs224n`, byte for byte what the starter's
`test_model_multitask` writes, for graders that read those files:

    id \t Predicted_Sentiment \n            (para: Predicted_Is_Paraphrase, sts: Predicted_Similiary)
    <id> , <prediction> \n                  (sst: 3; para: 1.0; sts: 0.46074217557907104)

A test file that is not in the data folder is skipped with a message. Only the model and
the dev and test files are read: no training data, no optimizers (minbert/run/build.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from minbert.data import TASKS, split_path
from minbert.evaluation import predict, score
from minbert.run.build import encode_split, load_run, read_data
from minbert.run.export import export_hf
from minbert.sweep.plots import plot_run

COLUMN = {"classification": "Predicted_Label", "regression": "Predicted_Similarity"}
CS224N_NAMES = {"sst": ("sst", "Predicted_Sentiment"), "quora": ("para", "Predicted_Is_Paraphrase"),
                "sts": ("sts", "Predicted_Similarity")}
# The starter's evaluation.py spells the STS column this way; graders of its files expect it.
STARTER_COLUMNS = {**{t: c for t, (_, c) in CS224N_NAMES.items()}, "sts": "Predicted_Similiary"}
FORMATS = ("csv", "cs224n")


def starter_value(task: str, p) -> str:
    """A prediction as the starter prints a numpy scalar with f"{s}": class ids of 5-way
    sentiment as ints (argmax), binary ones as floats (sigmoid().round(): 1.0), scores as
    the float32 value widened to a Python float (0.46074217557907104)."""
    spec = TASKS[task]
    if spec.kind == "classification" and spec.num_labels > 2:
        return str(int(p))
    return repr(float(p))


def write_predictions(path: Path, task: str, ids: list[str], preds: list, fmt: str = "csv"):
    _, column = CS224N_NAMES.get(task, (task, COLUMN[TASKS[task].kind]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        if fmt == "cs224n":  # the starter's f.write(f"id \t {column} \n"), then f"{p} , {s} \n"
            f.write(f"id \t {STARTER_COLUMNS.get(task, column)} \n")
            f.writelines(f"{i} , {starter_value(task, p)} \n" for i, p in zip(ids, preds))
            return
        w = csv.writer(f)
        w.writerow(["id", column])
        for i, p in zip(ids, preds):
            w.writerow([i, f"{p:.4f}" if isinstance(p, float) else p])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("run_dir", type=Path, help="a run folder written by train_multitask.py")
    ap.add_argument("--which", choices=["best", "last"], default="best",
                    help="best: best/model.safetensors; last: the latest checkpoint (default: best)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--splits", default="dev,test", help="comma-separated: dev, test (default: dev,test)")
    ap.add_argument("--max_eval_examples", type=int, default=0,
                    help="> 0: score only the first N examples of each dev set (default: 0, the whole set)")
    ap.add_argument("--format", choices=FORMATS, default="csv",
                    help="prediction files: csv (a plain CSV, the default) or cs224n (byte for byte the CS224N "
                         "starter's: 'id \\t Predicted_Sentiment ' then 'id , prediction ' lines)")
    ap.add_argument("--model", default=None, metavar="PATH",
                    help="where the run's pre-trained model is now, when config.json's path is gone (a moved "
                         "checkout); refused unless it is the same model (the run's model_identity.json)")
    ap.add_argument("--export", type=Path, default=None, metavar="DIR",
                    help="write the fine-tuned encoder as a Hugging Face model folder (config.json, "
                         "model.safetensors, tokenizer files) and the heads beside it (heads.safetensors, "
                         "heads.json) into DIR, a new or empty folder; then stop")
    ap.add_argument("--curves", action="store_true", help="redraw curves.png from the run's log.jsonl; then stop")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    try:
        if args.export or args.curves:
            if args.export:
                print(f"wrote {export_hf(args.run_dir, args.export, which=args.which, model_dir=args.model)}")
            if args.curves:
                print(f"wrote {plot_run(args.run_dir)}")
            return 0
        if not splits or set(splits) - {"dev", "test"}:
            raise ValueError(f"--splits {args.splits!r}: give dev, test or both, comma-separated")
        if args.max_eval_examples < 0:
            raise ValueError(f"--max_eval_examples must be >= 0, got {args.max_eval_examples}")
        run = load_run(args.run_dir, device=args.device, which=args.which, model=args.model)
        exp = run.exp
        dev = read_data(exp, run.tokenizer, "dev", args.max_eval_examples)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batch = (exp.eval_batch_size, run.tokenizer.pad_token_id, run.device, exp.bf16)
    dev_preds = predict(run.model, dev, *batch)
    result = {f"eval_{k}": v for k, v in score(dev_preds, dev).items()}
    if args.max_eval_examples > 0:
        result["dev_subset"] = {t: len(d) for t, d in dev.items()}
    result["weights"] = str(run.weights)
    (args.run_dir / "evaluate_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for task in exp.tasks:
        short = CS224N_NAMES.get(task, (task,))[0]
        for split in splits:
            if split == "dev":
                data, preds = dev[task], dev_preds[task]
            else:
                path = split_path(task, exp.data_dir, split)
                if not path.exists():
                    print(f"skipping {task} {split}: no file {path}")
                    continue
                data = encode_split(exp, run.tokenizer, task, split)
                preds = predict(run.model, {task: data}, *batch)[task]
            out = args.run_dir / "predictions" / f"{short}-{split}-output.csv"
            write_predictions(out, task, data.ids, preds, args.format)
            print(f"wrote {out} ({len(preds)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
