"""A finished run -> dev metrics and prediction files.

    python evaluate.py runs/gse                 # best checkpoint, dev metrics, dev + test predictions
    python evaluate.py runs/gse --which last --device cpu

Writes into the run folder: evaluate_results.json (dev metrics, the names train_multitask
uses) and predictions/<task>-{dev,test}-output.csv in the CS224N format: a header
`id,Predicted_<what>`, then one `id,prediction` line per example. A test file that is
not in the data folder is skipped with a message.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from minbert.batches import encode
from minbert.data import TASKS, read_split
from minbert.trainer import load_run

COLUMN = {"classification": "Predicted_Label", "regression": "Predicted_Similarity"}
CS224N_NAMES = {"sst": ("sst", "Predicted_Sentiment"), "quora": ("para", "Predicted_Is_Paraphrase"),
                "sts": ("sts", "Predicted_Similarity")}


def write_predictions(path: Path, task: str, ids: list[str], preds: list):
    _, column = CS224N_NAMES.get(task, (task, COLUMN[TASKS[task].kind]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", column])
        for i, p in zip(ids, preds):
            w.writerow([i, f"{p:.4f}" if isinstance(p, float) else p])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--which", choices=["best", "last"], default="best")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--splits", default="dev,test", help="comma-separated: dev, test")
    args = ap.parse_args(argv)
    try:
        trainer = load_run(args.run_dir, device=args.device, which=args.which)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    exp = trainer.exp
    result = trainer.evaluate()
    (args.run_dir / "evaluate_results.json").write_text(
        json.dumps({f"eval_{k}": v for k, v in result.items()}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    splits = args.splits.split(",")
    for task in exp.tasks:
        short = CS224N_NAMES.get(task, (task,))[0]
        for split in splits:
            if split == "dev":
                data = trainer.dev_data[task]
            else:
                path = Path(exp.data_dir) / TASKS[task].files[split]
                if not path.exists():
                    print(f"skipping {task} {split}: no file {path}")
                    continue
                rows = read_split(task, exp.data_dir, split, on_error=exp.bad_rows)
                siamese = exp.pair_input == "siamese" and TASKS[task].pair
                data = encode(trainer.tokenizer, rows, siamese, exp.max_length)
            preds = trainer.predict({task: data})[task]
            out = args.run_dir / "predictions" / f"{short}-{split}-output.csv"
            write_predictions(out, task, data.ids, preds)
            print(f"wrote {out} ({len(preds)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
