"""Many runs of one experiment: several seeds (mean ± std, as the M-FAC model cards report),
and Dodge et al.'s seed search (seeds.py has the arithmetic; this file trains).

Dodge et al. 2020 vary two seeds apart: the weight-initialisation seed (here: the new task
heads; the encoder is pre-trained) and the data-order seed (the batches). Every run of a
sweep or grid has its own pair, written into its config.json, and evaluates
`evals_per_epoch` times an epoch (10 by default, as in the article). The third seed,
`seed` (dropout, SMART noise), stays the experiment's in every run, so the grid's residual
holds its effect and the two seed kinds' interaction.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from minbert.experiments import Experiment
from minbert.report import summarize
from minbert.seed_grid import SeedGrid, write_grid_report
from minbert.seeds import start_many_stop_early, write_report
from minbert.trainer import Trainer

SWEEP_EVALS_PER_EPOCH = 10  # Dodge et al. 2020 evaluate ten times an epoch


def run_seeds(exp: Experiment, seeds: list[int], out: str | None):
    """The same experiment once per seed; writes <out>/seeds.json and seeds.md (mean ± std)."""
    out_dir = Path(out or f"runs/{exp.name}-seeds")
    results = []
    for s in seeds:
        run = dataclasses.replace(exp, seed=s, output_dir=str(out_dir / f"seed-{s}"))
        results.append({"seed": s, **Trainer(run).train()})
    return write_seeds(exp, results, out_dir)


def write_seeds(exp: Experiment, results: list[dict], out_dir: Path):
    """<out_dir>/seeds.json and seeds.md from the records of one run per seed ({"seed": s, **all_results})."""
    seeds = [r["seed"] for r in results]
    summary = summarize(results)
    timing = {k: statistics.mean(r[k] for r in results) for k in ("train_runtime", "peak_memory_mb")}
    # Time of one update without evaluation (older runs lack update_ms: then wall time per step).
    step_time = statistics.mean(r["update_ms"] / 1000 if "update_ms" in r else r["train_runtime"] / max(1, r["train_steps"])
                                for r in results)
    lines = [f"# {exp.name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "| metric | mean ± std |", "|---|---|"]
    lines += [f"| {k} | {100 * m:.2f} ± {100 * s:.2f} |" for k, (m, s) in summary.items()]
    lines += ["", f"- mean wall time per run: {timing['train_runtime'] / 60:.1f} min; mean time per step: "
              f"{1000 * step_time:.0f} ms; peak memory: {timing['peak_memory_mb'] / 1024:.2f} GiB",
              f"- device: {results[0]['device']}; date: {results[0]['date']}; commit: {results[0].get('commit')}",
              f"- command: `{results[0]['command']}`"]
    if "dev_subset" in results[0]:
        lines.append(f"- dev subset scored: {results[0]['dev_subset']} examples per task, not the whole dev set")
    (out_dir / "seeds.md").write_text("\n".join(lines) + "\n")
    (out_dir / "seeds.json").write_text(json.dumps({"config": exp.to_dict(), "runs": results,
                                                    "summary": summary, "step_time_s": step_time}, indent=2) + "\n")
    print("\n".join(lines))
    return summary


def evaluations(trainer: Trainer) -> list[dict]:
    """A run's evaluations as seeds.py takes them: {"fraction" of the run, "step", "score" (eval_overall)}."""
    return [{"fraction": e["step"] / trainer.total_steps, "step": e["step"], "score": e["eval_overall"]}
            for e in trainer.history if "eval_overall" in e]


def seed_pair(exp: Experiment, run_id: int) -> tuple[int, int]:
    """Run i of a sweep: init seed and data seed each counted on from the experiment's own."""
    init = exp.seed if exp.init_seed < 0 else exp.init_seed
    data = exp.seed if exp.data_seed < 0 else exp.data_seed
    return init + run_id, data + run_id


def run_sweep(exp: Experiment, t: int, f: float, p: int, out: str | None, complete_all: bool = True,
              evals_per_epoch: int = SWEEP_EVALS_PER_EPOCH):
    """Dodge et al. 2020 on one experiment: t runs, each with its own init and data seed
    (seed_pair), stopped at fraction f, the best p continued. With complete_all, the stopped
    runs are then also trained to the end so that the expected best of k fully trained runs
    can be set beside the search at equal budget (those extra epochs are not part of the
    search's cost)."""
    out_dir = Path(out or f"results/seeds_{exp.name}")

    def run_fn(run_id: int, start: float, stop: float) -> list[dict]:
        init, data = seed_pair(exp, run_id)
        run = dataclasses.replace(exp, init_seed=init, data_seed=data, eval_per_epoch=evals_per_epoch,
                                  output_dir=str(out_dir / "runs" / f"run-{run_id}"))
        print(f"sweep: run {run_id} (init seed {init}, data seed {data}) from {start:.2f} to {stop:.2f} "
              f"of its budget", flush=True)
        trainer = Trainer(run)  # its own progress bar
        trainer.train(stop_step=max(1, int(stop * trainer.total_steps + 1e-9)))  # last evaluation at or before `stop`
        return [{**e, "seed": f"{init}/{data}"} for e in evaluations(trainer) if start < e["fraction"] <= stop + 1e-9]

    result = start_many_stop_early(run_fn, t=t, f=f, p=p, epochs=exp.epochs)
    full_scores = None
    if complete_all:
        full_scores = []
        for run in result.runs:
            evals = run.evals if not run.stopped_early else run.evals + run_fn(run.run_id, f, 1.0)
            full_scores.append(max(e["score"] for e in evals))  # best checkpoint of the full run
    write_report(result, out_dir, title=f"{exp.name}: start {t}, stop at {f:g}, continue {p}",
                 full_run_scores=full_scores)
    (out_dir / "config.json").write_text(json.dumps(exp.to_dict(), indent=2) + "\n")
    return result


def run_grid(exp: Experiment, n_init: int, n_data: int, out: str | None,
             evals_per_epoch: int = SWEEP_EVALS_PER_EPOCH):
    """Dodge et al. 2020's grid: every one of n_init init seeds with every one of n_data data
    seeds, trained in full; each run's best dev score (exp's main metric, eval_overall) goes
    into <out>/grid.md, grid.json and grid.png (seed_grid.write_grid_report)."""
    out_dir = Path(out or f"results/grid_{exp.name}")
    first_init, first_data = seed_pair(exp, 0)
    scores, curves, results = {}, {}, []
    for i in range(n_init):
        for j in range(n_data):
            init, data = first_init + i, first_data + j
            run = dataclasses.replace(exp, init_seed=init, data_seed=data, eval_per_epoch=evals_per_epoch,
                                      output_dir=str(out_dir / "runs" / f"init{init}-data{data}"))
            print(f"grid: run {i * n_data + j + 1} of {n_init * n_data} (init seed {init}, data seed {data})",
                  flush=True)
            trainer = Trainer(run)
            results.append(trainer.train())
            evals = evaluations(trainer)
            scores[init, data], curves[init, data] = max(e["score"] for e in evals), evals
    first = results[0]
    meta = {"task": ",".join(exp.tasks), "model": Path(exp.model).name, "epochs": exp.epochs,
            "evaluations per epoch": evals_per_epoch, "score": "eval_overall (best evaluation of each run)",
            "command": first["command"], "device": first["device"], "date": first["date"], "commit": first["commit"],
            "wall time of all runs (min)": round(sum(r["train_runtime"] for r in results) / 60, 1)}
    if "dev_subset" in first:
        meta["dev subset scored"] = first["dev_subset"]
    write_grid_report(SeedGrid.from_runs(scores, curves), str(out_dir),
                      title=f"{exp.name}: {n_init} init seeds x {n_data} data seeds", meta=meta)
    (out_dir / "config.json").write_text(json.dumps(exp.to_dict(), indent=2) + "\n")
    return scores
