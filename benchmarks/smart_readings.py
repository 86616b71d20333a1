"""SMART's readings (minbert/smart.py, READINGS) on the default model and real dev sentences:
the regulariser's size per task at the paper's values, what bf16 autocast does to each reading
and to the Bregman term, and what running SMART's passes in float32 under autocast costs.

    python benchmarks/smart_readings.py --threads 1 --batches 3 --json docs/benchmarks/smart-readings-cpu.json
    git show 769a6fc:minbert/smart.py > /tmp/smart_769a6fc.py    # the form of commit 769a6fc, measured beside:
    python benchmarks/smart_readings.py --threads 1 --batches 3 --also /tmp/smart_769a6fc.py --no_timing

R is smart_regularizer(...) at lambda-free paper values (sigma = eps = 1e-5, eta = 1e-3, one
step) on batches of --batch_size consecutive dev examples of each task, dropout off (eval mode),
each batch with the same noise draw for every reading and precision. "dropout on" runs the
same in train mode, where each pass draws its own dropout mask, as in training.
bf16 is torch.autocast(device, dtype=torch.bfloat16): "alone" with float32=False (what autocast
gives), "fixed" with float32=True (the default: SMART's passes in float32).
Bregman: a student one AdamW-sized step (lr 1e-5 per weight, random signs) from its teacher.
The timing: one SST task loss with lambda R, forward and backward, under bf16 autocast with and
without the float32 passes, and in float32, interleaved (benchmarks/common.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import add_common_args, clock, environment, interleave, report, setup  # noqa: E402
from minbert.batches import collate, to_device  # noqa: E402
from minbert.experiments import preset  # noqa: E402
from minbert.run.build import build_model, encode_split  # noqa: E402
from minbert.smart import DEFAULTS, READINGS, MomentumTeacher, bregman_term, smart_regularizer  # noqa: E402

PAPER = {k: v for k, v in DEFAULTS.items() if k != "weight"}


def regulariser(model, task, batch, seed, reading, bf16=False, float32=True, smart_fn=None):
    """R at the paper's values; smart_fn: another smart.py's smart_regularizer (--also), as it is."""
    head = model.heads[task]
    kw = dict(reading=reading, float32=float32) if smart_fn is None else {}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        embeds = model.embed(task, batch)
        clean = model.from_embeds(task, batch, embeds)
        torch.manual_seed(seed)
        return (smart_fn or smart_regularizer)(lambda es: model.from_embeds(task, batch, es), embeds, clean,
                                               head.smart_kind, **PAPER, **kw).item()


def bregman(model, teacher, task, batch, bf16=False, float32=True):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(task, batch)
        return bregman_term(lambda: model(task, batch), lambda: teacher(task, batch), out,
                            model.heads[task].smart_kind, float32=float32).item()


def span(values):
    return f"{statistics.mean(values):.2e} ({min(values):.1e} to {max(values):.1e})"


def ratios(values, ref):
    r = [v / w for v, w in zip(values, ref)]
    return f"{min(r):.3g} to {max(r):.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--batches", type=int, default=3, help="dev batches per task")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--data_dir", default="data")
    ap.add_argument("--also", default=None, help="another smart.py, whose smart_regularizer is measured as 'other'")
    ap.add_argument("--no_timing", action="store_true", help="skip the Bregman term and the timing")
    args = ap.parse_args()
    other = None
    if args.also:
        spec = importlib.util.spec_from_file_location("other_smart", args.also)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
    device = setup(args)
    exp = preset("smart", device=str(device), data_dir=args.data_dir)
    tokenizer, model = build_model(exp, device)
    n = args.batches * args.batch_size
    batches = {t: [to_device(collate(d, list(range(i, i + args.batch_size)), tokenizer.pad_token_id), device)
                   for i in range(0, n, args.batch_size)]
               for t, d in ((t, encode_split(exp, tokenizer, t, "dev", n)) for t in exp.tasks)}
    env = environment(device)

    rows = []
    for task, bs in batches.items():
        for reading in [*READINGS, *(["other"] if other else [])]:
            kw = {"smart_fn": other.smart_regularizer} if reading == "other" else {}
            model.eval()
            r32 = [regulariser(model, task, b, i, reading, **kw) for i, b in enumerate(bs)]
            alone = [regulariser(model, task, b, i, reading, bf16=True, float32=False, **kw) for i, b in enumerate(bs)]
            fixed = [regulariser(model, task, b, i, reading, bf16=True) for i, b in enumerate(bs)] if not kw else []
            model.train()
            drop = [regulariser(model, task, b, i, reading, **kw) for i, b in enumerate(bs)]
            label = f"{reading} ({args.also})" if other and reading == "other" else reading
            rows.append({"task": task, "reading": label,
                         "R float32": span(r32), "R dropout on": span(drop),
                         "bf16 alone / float32": ratios(alone, r32),
                         "bf16 fixed / float32": "—" if reading == "other" else ratios(fixed, r32)})
    model.eval()
    report("SMART's regulariser R at the paper's values, per task and reading (dropout off unless said)",
           env, rows, ["task", "reading", "R float32", "R dropout on", "bf16 alone / float32", "bf16 fixed / float32"],
           args.json if args.no_timing else None)
    if args.no_timing:
        return

    teacher = MomentumTeacher(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.where(torch.rand(p.shape, generator=g) < 0.5, -1e-5, 1e-5).to(p.device))
    brows = []
    for task, bs in batches.items():
        b32 = [bregman(model, teacher, task, b) for b in bs]
        alone = [bregman(model, teacher, task, b, bf16=True, float32=False) for b in bs]
        fixed = [bregman(model, teacher, task, b, bf16=True) for b in bs]
        brows.append({"task": task, "D_Breg float32": span(b32), "bf16 alone / float32": ratios(alone, b32),
                      "bf16 fixed / float32": ratios(fixed, b32)})
    report("The Bregman term (eq. 5), a student one AdamW-sized step from its teacher", env, brows,
           ["task", "D_Breg float32", "bf16 alone / float32", "bf16 fixed / float32"], None)

    model.train()
    batch, head = batches["sst"][0], model.heads["sst"]

    def update(bf16, float32):
        def step():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                embeds = model.embed("sst", batch)
                out = model.from_embeds("sst", batch, embeds)
                r = smart_regularizer(lambda es: model.from_embeds("sst", batch, es), embeds, out, head.smart_kind,
                                      **PAPER, reading=exp.smart_reading, float32=float32)
                loss = head.loss(out, batch["labels"], []) + DEFAULTS["weight"] * r
            loss.backward()
        return step

    times = interleave({"bf16, float32 passes (fixed)": update(True, True), "bf16 alone": update(True, False),
                        "float32": update(False, True)}, device, args.warmup, args.steps, args.rounds)
    ref = times["bf16 alone"].ms
    trows = [{"contender": k, "ms": f"{t.ms:.0f}", "median wall ms": f"{t.wall_ms:.0f}",
              "x bf16 alone": f"{t.ms / ref:.2f}"}
             for k, t in times.items()]
    report(f"One SMART update of the SST loss (forward + backward, {clock(device)} time), reading {exp.smart_reading}",
           env, trows, ["contender", "ms", "median wall ms", "x bf16 alone"], args.json)


if __name__ == "__main__":
    main()
