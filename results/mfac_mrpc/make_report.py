"""Writes results/mfac_mrpc.md from the run folders beside this file and note.md (its text, with
the numbers filled in from the runs). Run from the repository root:

    python results/mfac_mrpc/make_report.py
"""
import json
import statistics
from pathlib import Path

from minbert.sweep.report import compare_optimizers

HERE = Path(__file__).resolve().parent
MAJORITY_F1 = 81.22  # F1 of answering "paraphrase" for every pair of MRPC's dev set (279 of 408)

runs = {o: [json.loads(p.read_text()) for p in sorted((HERE / o).glob("seed-*/all_results.json"))]
        for o in ("adam", "mfac")}
f1 = {o: [100 * r["eval_f1"] for r in rs] for o, rs in runs.items()}
gap = statistics.mean(f1["adam"]) - statistics.mean(f1["mfac"])
# Adam's three seeds and M-FAC's first two ran at the same time (one load); M-FAC's third after.
same_load = {"adam": runs["adam"], "mfac": runs["mfac"][:2]}
ms = {o: statistics.mean(r["update_ms"] for r in rs) for o, rs in same_load.items()}
bench = {r["optimizer"]: float(r["min CPU ms/update"])
         for r in json.loads((HERE / "step_time.json").read_text())["results"]}
majority = all(abs(x - MAJORITY_F1) < 0.005 for x in f1["mfac"])
# One more M-FAC run with lr scaled so that its updates match AdamW's in length (note.md says why).
scaled = [json.loads(p.read_text()) for p in sorted((HERE / "mfac-lr7e-4").glob("seed-*/all_results.json"))]
adam_seed1 = runs["adam"][0]  # seed-1, the scaled run's seed

note = (HERE / "note.md").read_text().format(
    peak=max(r["peak_memory_mb"] for r in runs["mfac"]) / 1024,
    gap=gap, gap_in_std=gap / statistics.stdev(f1["adam"]),
    majority=(" All three M-FAC runs end at the majority class: accuracy 68.38% and F1 81.22, the score of a "
              "model that calls every pair a paraphrase (279 of the 408 dev pairs are). Their mean training "
              "loss is {:.2f}-{:.2f}, against {:.2f}-{:.2f} for Adam (`train_loss` in all_results.json).".format(
                  *sorted(r["train_loss"] for r in runs["mfac"])[::len(runs["mfac"]) - 1],
                  *sorted(r["train_loss"] for r in runs["adam"])[::len(runs["adam"]) - 1]))
    if majority else "",
    ms_mfac=ms["mfac"], ms_adam=ms["adam"], ratio_runs=ms["mfac"] / ms["adam"],
    ms_mfac_third=runs["mfac"][2]["update_ms"],
    bench_mfac=bench["M-FAC m=128"], bench_adam=bench["AdamW"], ratio_bench=bench["M-FAC m=128"] / bench["AdamW"],
    mfac_end=runs["mfac"][-1]["date"][11:16],
    scaled_f1=" / ".join(f"{100 * r['eval_f1']:.2f}" for r in scaled),
    scaled_acc=" / ".join(f"{100 * r['eval_accuracy']:.2f}" for r in scaled),
    adam_seed1_f1=100 * adam_seed1["eval_f1"], adam_seed1_acc=100 * adam_seed1["eval_accuracy"])
compare_optimizers("mrpc", {"adam": HERE / "adam", "mfac": HERE / "mfac", "mfac-lr7e-4": HERE / "mfac-lr7e-4"},
                   HERE.parent / "mfac_mrpc.md", note=note.strip(), timed_alike=False,
                   pairs=(("adam", "mfac"), ("adam", "mfac-lr7e-4")))
