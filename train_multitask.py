"""Train a preset of the CS224N multitask table, or fine-tune on one GLUE task.

    python train_multitask.py --preset gse                      # a row of the table
    python train_multitask.py --preset smart-gse --epochs 1 --max_steps 100
    python train_multitask.py --task_name mrpc --optim mfac --optim_args '{"num_grads": 512}'
    python train_multitask.py --table runs/ --out results/cs224n_table.md
    python train_multitask.py --preset all --jobs 13 --fast     # every row at once (minbert/sweep/side_by_side.py)
    python train_multitask.py --task_name mrpc --grid 4,4 --epochs 1   # Dodge et al.'s init x data seed grid
    python train_multitask.py --task_name mrpc --grid 4,5 --shard 3/20  # runs 3, 23, ... of it (sweep/shards.py)
    python train_multitask.py --task_name mrpc --grid 4,5 --report      # once every shard is done

By default a run computes with the readable code (attention's math, AdamW._update); --fast
swaps in SDPA attention and the multi-tensor AdamW, each checked against the readable code
before training starts (minbert/fastpaths.py).

Every field of minbert.experiments.Experiment is a flag (`--lr`, `--epochs`, `--pooling`,
...); a preset sets some of them and the flags given here override the preset. The
resolved configuration is printed and saved as config.json in the output folder.
The run_glue spellings (--model_name_or_path, --learning_rate, --num_train_epochs,
--per_device_train_batch_size, --max_seq_length) are accepted too.

Data-parallel on N GPUs (or CPU processes), --batch_size per process (minbert/run/distributed.py):
    torchrun --standalone --nproc_per_node=N train_multitask.py --preset gse
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from minbert.data import not_found, split_path
from minbert.experiments import CHOICES, PRESETS, Experiment, preset, presets_using
from minbert.fastpaths import FastPathMismatch
from minbert.heads import HEADS
from minbert.run import distributed
from minbert.sweep.report import write_table
from minbert.sweep.shards import (
    CLAIM_TIMEOUT,
    IncompleteSweep,
    PlannedRun,
    check_runs,
    files_written,
    parse_shard,
    require_finished,
    train_shard,
    without_flags,
)
from minbert.sweep.side_by_side import run_shards, run_side_by_side
from minbert.sweep.sweeps import SWEEP_EVALS_PER_EPOCH, plan_grid, plan_seeds, plan_sweep, train_run
from minbert.trainer import Trainer
from minbert.updates import UPDATES
from minbert.weights import resolve_model_dir

RUN_GLUE_ALIASES = {"model": ["--model_name_or_path"], "lr": ["--learning_rate"], "epochs": ["--num_train_epochs"],
                    "batch_size": ["--per_device_train_batch_size"], "max_length": ["--max_seq_length"]}
# What each Experiment field does, for --help; the default and allowed values are added from
# minbert/experiments.py, where they are written once.
HELP = {
    "name": "the run's name (default: the preset's); the output folder is runs/<name>",
    "tasks": "comma-separated tasks to train, e.g. sst,quora,sts or mrpc",
    "heads": "task=head pairs, e.g. sts=cos-2d1",
    "pair_input": "how a sentence pair reaches the encoder",
    "pooling": "sentence vector from the token vectors (minbert/pooling.py)",
    "binary_logit": "binary tasks: one logit + BCE (the paper); --no-binary_logit: two logits + CE (run_glue)",
    "head_dropout": "dropout before the task heads",
    "update": "how the task losses make an update (minbert/updates.py)",
    "pcgrad_reduction": "how PCGrad combines the projected task gradients",
    "smart": "add SMART's smoothness regulariser to each task loss (minbert/smart.py)",
    "smart_weight": "SMART's lambda", "smart_sigma": "SMART's initial noise std",
    "smart_eta": "SMART's ascent step size", "smart_eps": "SMART's perturbation bound",
    "smart_steps": "SMART's ascent steps",
    "smart_reading": "how SMART finds its perturbation (minbert/smart.py, READINGS)",
    "bregman_weight": "mu of the Bregman proximal-point term; > 0 switches it on",
    "bregman_beta": "the momentum teacher's average rate",
    "optim": "the optimizer (MFAC, the model cards' spelling, also works)",
    "optim_args": 'extra optimizer arguments, JSON or k=v,k=v, e.g. \'{"num_grads": 512, "damp": 1e-6}\'',
    "lr": "peak learning rate", "weight_decay": "weight decay (none on biases and LayerNorm with AdamW)",
    "lr_schedule": "learning-rate schedule after warm-up", "warmup_ratio": "fraction of the steps spent warming up",
    "max_grad_norm": "clip the gradient norm to this; 0: no clipping",
    "epochs": "epochs to train", "batch_size": "examples per task per step (per process under torchrun)",
    "iters_mult": "steps per epoch = iters_mult * smallest training set // batch_size",
    "steps_per_epoch": "0: from iters_mult; -1: one pass over the first task's training set; > 0: this many",
    "max_steps": "> 0: stop after this many steps (smoke tests); 0: the whole run",
    "deadline": "an ISO time, e.g. 2026-12-01T09:30:00+00:00 (UTC if no zone): stop at the first step after it, "
                "evaluate, checkpoint and write the results with the step reached; the command with a later "
                "--deadline (or none) resumes",
    "max_length": "tokens per segment, longer ones are cut",
    "bucket_window": "> 1: batches of similar lengths, sorted within windows of this many batches",
    "pad_to_multiple_of": "> 0: pad each batch to a length that is a multiple of this (at most --max_length): "
                          "a few fixed shapes, so that --compile on CUDA replays CUDA graphs; 0: to the longest",
    "eval_per_epoch": "evaluations per epoch", "eval_batch_size": "examples per evaluation batch",
    "max_eval_examples": "> 0: score only the first N examples of each dev set (results say so)",
    "results_from": "which evaluation the eval_* keys of all_results.json hold",
    "logging_steps": "every N steps each task's loss goes to log.jsonl (run_glue's name)",
    "save_checkpoints": "keep the latest checkpoint, for resuming",
    "output_dir": "where the run folder goes (default runs/<name>)",
    "overwrite_output_dir": "a folder holding a run with another configuration: delete that run and start afresh "
                            "(the same configuration resumes as always)",
    "model": "a Hugging Face model folder or hub id", "data_dir": "the data folder (data/prepare_data.py)",
    "device": "auto, cpu, cuda or cuda:N",
    "fast": "fused SDPA attention and multi-tensor AdamW instead of the readable code, each checked against "
            "it at start-up (minbert/fastpaths.py)",
    "bf16": "bf16 autocast (minbert/evaluation.py, autocast); docs/GPU.md says which presets use it",
    "compile": "torch.compile each encoder layer and AdamW's update",
    "bad_rows": "malformed data rows", "nonfinite": "a NaN or inf loss or gradient",
    "seed": "the seed of everything not set apart", "init_seed": "the new heads' initial weights; -1: --seed",
    "data_seed": "the order of the training batches; -1: --seed",
}


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


def field_help(f: dataclasses.Field) -> str:
    """HELP's line, then what the registries allow (read when the parser is built), then the default."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    text = HELP[f.name]
    if f.name == "heads":
        text += "; heads: " + ", ".join(f"{name} ({'/'.join(head.task_kinds)})" for name, head in HEADS.items())
    elif f.name == "update":  # each kind, and the presets (the paper's rows) that use it
        text += "; " + "; ".join(f"{name}: {u.about} (presets: {', '.join(presets_using('update', name)) or 'none'})"
                                 for name, u in UPDATES.items())
    elif f.name in CHOICES:
        text += f"; one of: {', '.join(CHOICES[f.name])}"
    if f.name == "model":
        return text + "; default: all-MiniLM-L6-v2, from $MINBERT_MODEL (a local folder), else the installed package"
    return text + f"; default: {default!r}" if default not in ((), {}, "") else text


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (not the 40-line usage) and no abbreviated flags."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    run = ap.add_argument_group("what to run")
    run.add_argument("--preset", default=None, help=f"one of: {', '.join(PRESETS)} (default baseline); several, "
                                                    f"comma-separated, or 'all' (the CS224N table) run side by side")
    run.add_argument("--jobs", type=int, default=0, help="with several presets: how many run at once (default: "
                                                         "all); with --seeds/--sweep/--grid: K shards side by side")
    run.add_argument("--task_name", default=None, help="GLUE-style single task (mrpc, stsb, sst2, qqp, ...): "
                                                       "the 'glue' preset on this task")
    run.add_argument("--do_train", action="store_true", help="accepted for run_glue compatibility (always trains)")
    run.add_argument("--do_eval", action="store_true", help="accepted for run_glue compatibility (always evaluates)")
    run.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--seeds", default=None, help="comma-separated seeds: run each, report mean ± std")
    run.add_argument("--sweep", default=None, metavar="t,f,p",
                     help="start t runs (each its own init and data seed), stop them at fraction f, continue the "
                          f"best p (Dodge et al. 2020); evaluates {SWEEP_EVALS_PER_EPOCH}x an epoch unless "
                          "--eval_per_epoch is given")
    run.add_argument("--grid", default=None, metavar="N,M",
                     help="Dodge et al.'s grid: N init seeds x M data seeds, each pair one full run; a table of "
                          "the variance from each seed kind and a plot (evaluates as --sweep does)")
    run.add_argument("--table", default=None, metavar="RUNS_DIR", help="collect finished runs into a results table")
    run.add_argument("--out", default=None, help="with --table/--seeds/--sweep/several presets: where the report goes")
    many = ap.add_argument_group("many machines (minbert/sweep/shards.py)")
    many.add_argument("--shard", default=None, metavar="I/N",
                      help="with --seeds/--sweep/--grid/several presets: train runs I, I+N, I+2N, ... of the "
                           "sweep's run list (each under a claim file), write no report")
    many.add_argument("--report", action="store_true",
                      help="with the sweep's flags: train nothing, write the sweep's report from its run folders "
                           "(refused, naming them, while any run is not finished)")
    many.add_argument("--list_runs", action="store_true",
                      help="with the sweep's flags: check them, the model, the data and --out, print the run list "
                           "('run K NAME', one a line) and train nothing (tools/slurm/submit.sh sizes its array so)")
    many.add_argument("--claim_timeout", type=float, default=CLAIM_TIMEOUT, metavar="SECONDS",
                      help="a run's claim untouched this long is a dead process's: another may take the run over; "
                           f"default {CLAIM_TIMEOUT:g}")
    fields = ap.add_argument_group("experiment fields (override the preset's; minbert/experiments.py)")
    hints = typing.get_type_hints(Experiment)
    for f in dataclasses.fields(Experiment):
        names = [f"--{f.name}"] + RUN_GLUE_ALIASES.get(f.name, [])
        kind, help = hints[f.name], field_help(f)
        if kind is bool:
            fields.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif f.name == "bf16":  # --bf16 alone is "on", --no-bf16 "off", as when the field was a switch
            fields.add_argument(*names, dest=f.name, nargs="?", const="on", default=None, choices=list(CHOICES["bf16"]),
                                help=help + "; --bf16 alone: on")
            fields.add_argument("--no-bf16", dest=f.name, action="store_const", const="off", help="--bf16 off")
        elif f.name == "tasks":
            fields.add_argument(*names, dest=f.name, type=lambda s: tuple(s.split(",")), default=None, help=help)
        elif f.name in ("heads", "optim_args"):
            fields.add_argument(*names, dest=f.name, type=parse_heads if f.name == "heads" else parse_kv,
                                default=None, help=help)
        else:
            metavar = "{" + ",".join(CHOICES[f.name]) + "}" if f.name in CHOICES else f.name.upper()
            fields.add_argument(*names, dest=f.name, type=kind, default=None, help=help, metavar=metavar)
    return ap


def resolve(args) -> Experiment:
    """The preset with the flags given; every check is Experiment.validate's."""
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
    return preset(name, **overrides)


def parse_grid(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 2 for p in parts):
        raise ValueError(f"--grid {text!r}: give N,M, two whole numbers >= 2 (init seeds, data seeds)")
    return int(parts[0]), int(parts[1])


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
    """Several presets, one process each (minbert/sweep/side_by_side.py), or one shard of them here,
    or their table (--report); each preset is checked first."""
    if args.task_name or args.seeds or args.sweep or args.grid or args.name or args.table:
        raise ValueError("several presets run one plain run each: leave out --task_name, --seeds, --sweep, "
                         "--grid, --name and --table")
    if distributed.launched():
        raise ValueError("several presets start one process each: run the command without torchrun")
    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 0, got {args.jobs}")
    runs_dir = Path(args.output_dir or "runs")
    runs = []
    for name in names:  # every preset's configuration is checked before any starts
        try:
            exp = resolve(argparse.Namespace(**{**vars(args), "preset": name}))
        except ValueError as e:
            raise ValueError(f"preset {name}: {e}") from None
        if args.print_config:
            print(json.dumps(exp.to_dict(), indent=2))
            continue
        runs.append(PlannedRun(name, dataclasses.replace(exp, output_dir=str(runs_dir / name))))
        if not args.report:
            check_inputs(exp)  # what would stop every preset is said once, before any starts
    if args.print_config:
        return 0
    if args.list_runs:
        check_runs(runs)
        print("\n".join(f"run {k} {run.name}" for k, run in enumerate(runs)))
        return 0
    table = Path(args.out or runs_dir / "cs224n_table.md")
    if args.report:  # the table the side-by-side command writes, once every preset is finished
        require_finished(runs, f"the table of {runs_dir} (--table {runs_dir} writes the finished rows alone)")
        _, wrote = files_written(table.parent, lambda: write_table(runs_dir, table))
        print(f"report of {len(runs)} runs: wrote {', '.join(map(str, wrote))}")
        return 0
    if args.shard:
        check_runs(runs)
        train_shard(runs, parse_shard(args.shard), args.claim_timeout, train_run)
        return 0
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Experiment)
                 if getattr(args, f.name) is not None and f.name != "output_dir"}
    return run_side_by_side(names, overrides, min(args.jobs or len(names), len(names)), runs_dir, table)


def check_inputs(exp: Experiment):
    """The model and the data files a run reads: missing, they would stop it at its start."""
    resolve_model_dir(exp.model)
    for t in exp.tasks:
        for path in (split_path(t, exp.data_dir, "train"), split_path(t, exp.data_dir, "dev")):
            if not path.exists():
                raise not_found(t, path)


def plan(args, exp: Experiment):
    """--seeds, --sweep or --grid -> its sweeps.Sweep (run list, folder, report)."""
    evals = args.eval_per_epoch or SWEEP_EVALS_PER_EPOCH
    if args.seeds:
        return plan_seeds(exp, [int(s) for s in args.seeds.split(",")], args.out)
    if args.sweep:
        t, f, p = args.sweep.split(",")
        return plan_sweep(exp, int(t), float(f), int(p), args.out, evals_per_epoch=evals)
    return plan_grid(exp, *parse_grid(args.grid), args.out, evals_per_epoch=evals)


def many_runs(args, exp: Experiment, argv: list[str]) -> int:
    """A sweep: one shard of it, all of it here (shard 0/1 then the report), K shards side by
    side then the report (--jobs), or the report alone (--report)."""
    sweep = plan(args, exp)
    if args.list_runs:  # what a job array will train, checked before it is queued (tools/slurm/submit.sh)
        sweep.check(write=False)
        check_inputs(exp)
        print("\n".join(f"run {k} {run.name}" for k, run in enumerate(sweep.runs)))
    elif args.report:
        sweep.report()
    elif args.jobs:
        sweep.check()  # before any process starts
        failed = run_shards(without_flags(argv, ("--jobs",)), args.jobs, sweep.out, sweep.runs)
        if failed:
            print(f"error: {', '.join(failed)} failed; see {sweep.out}/shard-*.log", file=sys.stderr)
            return 1
        sweep.report()
    elif args.shard:
        i, n = parse_shard(args.shard)
        skipped = sweep.train((i, n), args.claim_timeout)
        print(f"shard {i}/{n} done" + (f"; left to the processes holding them: {'; '.join(skipped)}" if skipped else "")
              + f". Once every shard is done: the same command with --report instead of --shard {args.shard}")
    else:
        sweep.train(timeout=args.claim_timeout)
        sweep.report()
    return 0


def is_sweep(args) -> bool:
    return bool(args.seeds or args.sweep or args.grid)


def check_flags(args):
    """Combinations of flags that cannot run together, each refused with one line before any
    work (a preset's fields are Experiment.validate's to check; several presets' side_by_side's)."""
    sweep = is_sweep(args)
    if args.shard:
        parse_shard(args.shard)
    if not args.claim_timeout > 0:
        raise ValueError(f"--claim_timeout must be > 0 seconds, got {args.claim_timeout}")
    if args.shard and (args.jobs or args.report):
        raise ValueError("--shard is one process's part of the sweep: leave out --jobs and --report")
    if args.list_runs and (args.shard or args.jobs or args.report):
        raise ValueError("--list_runs lists the whole sweep: leave out --shard, --jobs and --report")
    if several_presets(args):
        return
    if args.jobs and not sweep:
        raise ValueError("--jobs is for several presets (--preset a,b,c or --preset all) or a sweep "
                         "(--seeds, --sweep, --grid)")
    if args.jobs < 0 or (args.jobs and args.report):
        raise ValueError(f"--jobs K runs K shards of the sweep, K >= 1 (got {args.jobs}), and not with --report")
    if (args.shard or args.report or args.list_runs) and not sweep:
        raise ValueError("--shard, --report and --list_runs are for a sweep (--seeds, --sweep, --grid) or several "
                         "presets (--preset a,b,c or --preset all)")
    if args.grid:
        parse_grid(args.grid)
    if sum(bool(x) for x in (args.seeds, args.sweep, args.grid)) > 1:
        raise ValueError("--seeds, --sweep and --grid each run many runs: choose one")
    if sweep and distributed.launched():
        raise ValueError("--seeds, --sweep and --grid train their runs one process each; split them with "
                         "--shard or --jobs, and torchrun one big run alone")


def dispatch(args, argv: list[str]) -> int:
    """What the flags ask for: several presets side by side, a results table, a sweep, or one run."""
    names = several_presets(args)
    if names:
        return side_by_side(args, names)
    if args.table:
        write_table(args.table, args.out or "results/cs224n_table.md")
        return 0
    exp = resolve(args)
    if distributed.is_main() and not args.list_runs:
        print(json.dumps(exp.to_dict(), indent=2))
    if args.print_config:
        return 0
    if is_sweep(args):
        return many_runs(args, exp, argv)
    Trainer(exp).train()
    distributed.teardown()  # under torchrun; nothing otherwise
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        return dispatch(args, argv)
    except IncompleteSweep as e:  # --report while a run of the sweep is not finished
        print(f"error: {e}", file=sys.stderr)
        return 1
    # before any work: a bad flag or field, another run's folder, bad data or weights (OSError: a
    # hub id while offline), M-FAC memory, a fast path that disagrees with the readable code;
    # during: an unreadable checkpoint, a NaN that stopped the run
    except (ValueError, OSError, FastPathMismatch, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
