"""Train a preset of the CS224N multitask table, or fine-tune on one GLUE task.

    python train_multitask.py --preset gse                      # a row of the table
    python train_multitask.py --preset smart-gse --epochs 1 --max_steps 100
    python train_multitask.py --task_name mrpc --optim mfac --optim_args '{"num_grads": 512}'
    python train_multitask.py --table runs/ --out results/cs224n_table.md
    python train_multitask.py --preset all --jobs 13            # every row at once (minbert/side_by_side.py)

Every field of minbert.experiments.Experiment is a flag (`--lr`, `--epochs`, `--pooling`,
...); a preset sets some of them and the flags given here override the preset. The
resolved configuration is printed and saved as config.json in the output folder.
The run_glue spellings (--model_name_or_path, --learning_rate, --num_train_epochs,
--per_device_train_batch_size, --max_seq_length) are accepted too.

Data-parallel on N GPUs (or CPU processes), --batch_size per process (minbert/distributed.py):
    torchrun --standalone --nproc_per_node=N train_multitask.py --preset gse
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from minbert import distributed
from minbert.experiments import PRESETS, Experiment, preset

ADAMW_ARGS = {"betas", "eps", "foreach", "compile"}
RUN_GLUE_ALIASES = {"model": ["--model_name_or_path"], "lr": ["--learning_rate"], "epochs": ["--num_train_epochs"],
                    "batch_size": ["--per_device_train_batch_size"], "max_length": ["--max_seq_length"]}


def parse_kv(text: str) -> dict:
    """'{"lr": 1e-4}' (JSON), 'lr=1e-4,num_grads=512', or the model cards' 'lr: 1e-4, num_grads: 512'
    -> dict, numbers parsed as numbers. Lists need the JSON form."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    out = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=") if "=" in part else part.partition(":")
        if not eq:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def parse_heads(text: str) -> dict:
    return {k: str(v) for k, v in parse_kv(text).items()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default baseline); several, "
                                                   f"comma-separated, or 'all' (the CS224N table) run side by side")
    ap.add_argument("--jobs", type=int, default=0, help="with several presets: how many run at once (default: all)")
    ap.add_argument("--task_name", default=None, help="GLUE-style single task (mrpc, stsb, sst2, qqp, ...): "
                                                      "the 'glue' preset on this task")
    ap.add_argument("--do_train", action="store_true", help="accepted for run_glue compatibility (always trains)")
    ap.add_argument("--do_eval", action="store_true", help="accepted for run_glue compatibility (always evaluates)")
    ap.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds: run each, report mean ± std")
    ap.add_argument("--sweep", default=None, metavar="t,f,p",
                    help="start t runs, stop them at fraction f, continue the best p (Dodge et al. 2020)")
    ap.add_argument("--table", default=None, metavar="RUNS_DIR", help="collect finished runs into a results table")
    ap.add_argument("--out", default=None, help="with --table/--seeds/--sweep/several presets: where the report goes")
    hints = typing.get_type_hints(Experiment)
    for f in dataclasses.fields(Experiment):
        names = [f"--{f.name}"] + RUN_GLUE_ALIASES.get(f.name, [])
        kind = hints[f.name]
        if kind is bool:
            ap.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "tasks":
            ap.add_argument(*names, dest=f.name, type=lambda s: tuple(s.split(",")), default=None)
        elif f.name == "heads":
            ap.add_argument(*names, dest=f.name, type=parse_heads, default=None, help="e.g. sts=cos-2d1")
        elif f.name == "optim_args":
            ap.add_argument(*names, dest=f.name, type=parse_kv, default=None,
                            help='JSON or k=v,k=v, e.g. \'{"num_grads": 512, "damp": 1e-6}\'')
        else:
            ap.add_argument(*names, dest=f.name, type=kind, default=None)
    return ap


def resolve(args) -> Experiment:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Experiment)
                 if getattr(args, f.name) is not None}
    if args.task_name:
        if args.preset not in (None, "glue"):
            raise ValueError("--task_name picks the 'glue' preset; leave out --preset")
        overrides["tasks"] = (args.task_name,)
        overrides.setdefault("name", f"glue-{args.task_name}")
        name = "glue"
    else:
        name = args.preset or "baseline"
    exp = preset(name, **overrides)
    if exp.optim == "mfac":
        from minbert.optim.mfac import MFAC
        import inspect
        known = set(inspect.signature(MFAC).parameters) - {"params"} | {"only"}
        unknown = set(exp.optim_args) - known
        if unknown:
            raise ValueError(f"unknown M-FAC argument(s) {sorted(unknown)}; known: {sorted(known)}")
    elif set(exp.optim_args) - ADAMW_ARGS:
        raise ValueError(f"unknown AdamW argument(s) {sorted(set(exp.optim_args) - ADAMW_ARGS)}; "
                         f"known: {', '.join(sorted(ADAMW_ARGS))} (lr and weight_decay have their own flags)")
    return exp


def several_presets(args) -> list[str]:
    """--preset a,b,c or --preset all -> the names; one preset -> []."""
    if args.preset == "all":
        return [p for p in PRESETS if p != "glue"]
    if not args.preset or "," not in args.preset:
        return []
    names = [n.strip() for n in args.preset.split(",")]
    if "" in names or len(set(names)) < len(names):
        raise ValueError(f"--preset {args.preset!r}: give each preset once, comma-separated, no empty names")
    return names


def side_by_side(args, names: list[str]) -> int:
    """Several presets, one process each (minbert/side_by_side.py); each is checked first."""
    from minbert.data import not_found, split_path
    from minbert.side_by_side import run_side_by_side
    from minbert.weights import resolve_model_dir
    if args.task_name or args.seeds or args.sweep or args.name or args.table:
        raise ValueError("several presets run one plain run each: leave out --task_name, --seeds, --sweep, "
                         "--name and --table")
    if distributed.launched():
        raise ValueError("several presets start one process each: run the command without torchrun")
    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 0, got {args.jobs}")
    for name in names:  # every preset's configuration is checked before any starts
        try:
            exp = resolve(argparse.Namespace(**{**vars(args), "preset": name}))
        except ValueError as e:
            raise ValueError(f"preset {name}: {e}") from None
        if args.print_config:
            print(json.dumps(exp.to_dict(), indent=2))
            continue
        resolve_model_dir(exp.model)  # what would stop every preset is said once, before any starts
        for t in exp.tasks:
            for path in (split_path(t, exp.data_dir, "train"), split_path(t, exp.data_dir, "dev")):
                if not path.exists():
                    raise not_found(t, path)
    if args.print_config:
        return 0
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Experiment)
                 if getattr(args, f.name) is not None and f.name != "output_dir"}
    runs_dir = Path(args.output_dir or "runs")
    return run_side_by_side(names, overrides, min(args.jobs or len(names), len(names)), runs_dir,
                            Path(args.out or runs_dir / "cs224n_table.md"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        names = several_presets(args)
        if names:
            return side_by_side(args, names)
        if args.jobs:
            raise ValueError("--jobs is for several presets (--preset a,b,c or --preset all)")
        if args.table:
            from minbert.report import write_table
            write_table(args.table, args.out or "results/cs224n_table.md")
            return 0
        exp = resolve(args)
    except (ValueError, OSError) as e:  # FileNotFoundError included; OSError: a hub id while offline
        print(f"error: {e}", file=sys.stderr)
        return 2
    if distributed.is_main():
        print(json.dumps(exp.to_dict(), indent=2))
    if args.print_config:
        return 0
    if distributed.launched() and (args.seeds or args.sweep):
        print("error: --seeds and --sweep run one process; start one torchrun per seed instead", file=sys.stderr)
        return 2
    if args.seeds:
        from minbert.report import run_seeds
        run_seeds(exp, [int(s) for s in args.seeds.split(",")], args.out)
        return 0
    if args.sweep:
        from minbert.report import run_sweep
        t, f, p = args.sweep.split(",")
        run_sweep(exp, int(t), float(f), int(p), args.out)
        return 0
    from minbert.trainer import CheckpointError, Trainer
    try:
        trainer = Trainer(exp)
    except (ValueError, FileNotFoundError, OSError) as e:  # bad data, weights, or M-FAC memory: before any work
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except (CheckpointError, FloatingPointError) as e:  # an unreadable checkpoint; a NaN that stopped the run
        print(f"error: {e}", file=sys.stderr)
        return 2
    distributed.teardown()  # under torchrun; nothing otherwise
    return 0


if __name__ == "__main__":
    sys.exit(main())
