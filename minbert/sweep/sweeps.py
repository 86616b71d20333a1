"""Many runs of one experiment: several seeds (mean ± std, as the M-FAC model cards report),
and Dodge et al.'s seed search (seeds.py has the arithmetic; this file trains).

Dodge et al. 2020 vary two seeds apart: the weight-initialisation seed (here: the new task
heads; the encoder is pre-trained) and the data-order seed (the batches). Every run of a
sweep or grid has its own pair, written into its config.json, and evaluates
`evals_per_epoch` times an epoch (10 by default, as in the article). The third seed,
`seed` (dropout, SMART noise), stays the experiment's in every run, so the grid's residual
holds its effect and the two seed kinds' interaction.

Every kind is a fixed list of runs (a `Sweep`) and a report read from their folders, so that
the runs can be trained by many processes (shards.py: --shard I/N, --jobs K) and the report
written once they are all finished (--report). The unsharded command is shard 0/1 followed
by the report. The seed search trains every run to the end, in the two segments the search
would (to f, then on): the runs do not depend on one another, and the report replays the
search's choice on their recorded curves, beside the expected best of full runs at equal budget.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minbert.experiments import Experiment
from minbert.run.compat import seconds_per_update
from minbert.sweep.report import summarize
from minbert.sweep.seed_grid import SeedGrid, write_grid_report
from minbert.sweep.seeds import check_search, start_many_stop_early, write_report
from minbert.sweep.shards import (
    CLAIM_TIMEOUT,
    PlannedRun,
    check_sweep_folder,
    require_finished,
    sweep_command,
    total_steps,
    train_shard,
)
from minbert.trainer import Trainer

SWEEP_EVALS_PER_EPOCH = 10  # Dodge et al. 2020 evaluate ten times an epoch




@dataclass
class Sweep:
    """Several seeds, the seed search or the grid: the sweep's folder, its fixed run list, and
    its report (a function of the finished run folders alone)."""
    exp: Experiment
    out: Path
    spec: dict  # sweep.json: the kind, its shape and the run list, compared by every later process
    runs: list[PlannedRun]
    write_report: Callable[[], object]

    def check(self):
        """Before any work: the folder holds this sweep or none (shards.check_sweep_folder)."""
        check_sweep_folder(self.out, self.exp, self.spec, self.runs)

    def train(self, shard: tuple[int, int] = (0, 1), timeout: float = CLAIM_TIMEOUT) -> list[str]:
        """This shard's runs (shards.train_shard); returns those skipped as another process's."""
        self.check()
        return train_shard(self.runs, shard, timeout, train_run)

    def report(self):
        """The report, once every run is finished; otherwise an error naming the others."""
        require_finished(self.runs, f"{self.spec['kind']} in {self.out}")
        return self.write_report()


def train_run(run: PlannedRun):
    """One run: to its end, or segment by segment as the seed search trains it."""
    e = run.exp
    print(f"{run.name}: seed {e.seed}, init seed {e.init_seed if e.init_seed >= 0 else e.seed}, data seed "
          f"{e.data_seed if e.data_seed >= 0 else e.seed}", flush=True)
    for stop in run.stops or [None]:
        trainer = Trainer(e)  # its own progress bar; a later segment resumes from the checkpoint
        trainer.train(stop_step=None if stop is None else max(1, int(stop * trainer.total_steps + 1e-9)))


def results_of(run: PlannedRun) -> dict:
    return json.loads((run.dir / "all_results.json").read_text())


def evaluations(run: PlannedRun) -> list[dict]:
    """A finished run's evaluations as seeds.py takes them: {"fraction" of the run, "step", "score"
    (eval_overall)}, read from its trainer_state.json."""
    total = total_steps(results_of(run))
    history = json.loads((run.dir / "trainer_state.json").read_text())["log_history"]
    return [{"fraction": e["step"] / total, "step": e["step"], "score": e["eval_overall"]}
            for e in history if "eval_overall" in e]


def seed_pair(exp: Experiment, run_id: int) -> tuple[int, int]:
    """Run i of a sweep: init seed and data seed each counted on from the experiment's own."""
    init = exp.seed if exp.init_seed < 0 else exp.init_seed
    data = exp.seed if exp.data_seed < 0 else exp.data_seed
    return init + run_id, data + run_id


# ---------------------------------------------------------------- several seeds

def plan_seeds(exp: Experiment, seeds: list[int], out: str | None) -> Sweep:
    """The same experiment once per seed, in <out>/seed-<s>; the report: seeds.json and seeds.md."""
    out_dir = Path(out or f"runs/{exp.name}-seeds")
    runs = [PlannedRun(f"seed-{s}", dataclasses.replace(exp, seed=s, output_dir=str(out_dir / f"seed-{s}")))
            for s in seeds]
    return Sweep(exp, out_dir, {"kind": "seeds", "runs": [r.name for r in runs]}, runs,
                 lambda: write_seeds(exp, [{"seed": s, **results_of(run)} for s, run in zip(seeds, runs)], out_dir))


def write_seeds(exp: Experiment, results: list[dict], out_dir: Path):
    """<out_dir>/seeds.json and seeds.md from the records of one run per seed ({"seed": s, **all_results}):
    mean ± std of every metric over the seeds."""
    seeds = [r["seed"] for r in results]
    summary = summarize(results)
    timing = {k: statistics.mean(r[k] for r in results) for k in ("train_runtime", "peak_memory_mb")}
    step_time = statistics.mean(seconds_per_update(r) for r in results)  # one update without evaluation
    lines = [f"# {exp.name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "| metric | mean ± std |", "|---|---|"]
    lines += [f"| {k} | {100 * m:.2f} ± {100 * s:.2f} |" for k, (m, s) in summary.items()]
    lines += ["", f"- mean wall time per run: {timing['train_runtime'] / 60:.1f} min; mean time per step: "
              f"{1000 * step_time:.0f} ms; peak memory: {timing['peak_memory_mb'] / 1024:.2f} GiB",
              f"- device: {results[0]['device']}; date: {results[0]['date']}; commit: {results[0].get('commit')}",
              f"- command: `{sweep_command(results[0]['command'])}`"]
    if "dev_subset" in results[0]:
        lines.append(f"- dev subset scored: {results[0]['dev_subset']} examples per task, not the whole dev set")
    (out_dir / "seeds.md").write_text("\n".join(lines) + "\n")
    (out_dir / "seeds.json").write_text(json.dumps({"config": exp.to_dict(), "runs": results,
                                                    "summary": summary, "step_time_s": step_time}, indent=2) + "\n")
    print("\n".join(lines))
    return summary


def run_seeds(exp: Experiment, seeds: list[int], out: str | None):
    """Train every seed here, then the report; returns {metric: (mean, std)}."""
    sweep = plan_seeds(exp, seeds, out)
    sweep.train()
    return sweep.report()


# ---------------------------------------------------------------- start many, stop early

def plan_sweep(exp: Experiment, t: int, f: float, p: int, out: str | None,
               evals_per_epoch: int = SWEEP_EVALS_PER_EPOCH) -> Sweep:
    """Dodge et al. 2020 on one experiment: t runs, each with its own init and data seed
    (seed_pair), each trained to fraction f and then to the end; the report ranks them at f,
    continues the best p (seeds.start_many_stop_early), and sets the expected best of k fully
    trained runs beside the search at equal budget."""
    check_search(t, f, p)  # before any run trains
    out_dir = Path(out or f"results/seeds_{exp.name}")
    runs = []
    for run_id in range(t):
        init, data = seed_pair(exp, run_id)
        runs.append(PlannedRun(f"run-{run_id}", dataclasses.replace(
            exp, init_seed=init, data_seed=data, eval_per_epoch=evals_per_epoch,
            output_dir=str(out_dir / "runs" / f"run-{run_id}")), stops=(f, 1.0) if f < 1.0 else (1.0,)))
    spec = {"kind": "sweep", "t": t, "f": f, "p": p, "evals_per_epoch": evals_per_epoch,
            "runs": [r.name for r in runs]}
    return Sweep(exp, out_dir, spec, runs, lambda: sweep_report(exp, t, f, p, out_dir, runs))


def sweep_report(exp: Experiment, t: int, f: float, p: int, out_dir: Path, runs: list[PlannedRun]):
    """The search replayed on the runs' curves: runs.json, table.md and the plots (seeds.write_report)."""
    curves = [evaluations(run) for run in runs]

    def run_fn(run_id: int, start: float, stop: float) -> list[dict]:  # what training to `stop` evaluated
        init, data = seed_pair(exp, run_id)
        return [{**e, "seed": f"{init}/{data}"} for e in curves[run_id] if start < e["fraction"] <= stop + 1e-9]

    result = start_many_stop_early(run_fn, t=t, f=f, p=p, epochs=exp.epochs)
    full_scores = [max(e["score"] for e in evals) for evals in curves]  # best checkpoint of each full run
    write_report(result, out_dir, title=f"{exp.name}: start {t}, stop at {f:g}, continue {p}",
                 full_run_scores=full_scores)
    return result


def run_sweep(exp: Experiment, t: int, f: float, p: int, out: str | None,
              evals_per_epoch: int = SWEEP_EVALS_PER_EPOCH):
    """Train every run of the seed search here, then its report; returns the SearchResult."""
    sweep = plan_sweep(exp, t, f, p, out, evals_per_epoch)
    sweep.train()
    return sweep.report()


# ---------------------------------------------------------------- the init x data seed grid

def plan_grid(exp: Experiment, n_init: int, n_data: int, out: str | None,
              evals_per_epoch: int = SWEEP_EVALS_PER_EPOCH) -> Sweep:
    """Dodge et al. 2020's grid: every one of n_init init seeds with every one of n_data data
    seeds, trained in full (run i * n_data + j: init seed i, data seed j, counted from seed_pair)."""
    out_dir = Path(out or f"results/grid_{exp.name}")
    first_init, first_data = seed_pair(exp, 0)
    runs = []
    for i in range(n_init):
        for j in range(n_data):
            init, data = first_init + i, first_data + j
            name = f"init{init}-data{data}"
            runs.append(PlannedRun(name, dataclasses.replace(exp, init_seed=init, data_seed=data,
                                                             eval_per_epoch=evals_per_epoch,
                                                             output_dir=str(out_dir / "runs" / name))))
    spec = {"kind": "grid", "init_seeds": n_init, "data_seeds": n_data, "evals_per_epoch": evals_per_epoch,
            "runs": [r.name for r in runs]}
    return Sweep(exp, out_dir, spec, runs, lambda: grid_report(exp, n_init, n_data, out_dir, evals_per_epoch, runs))


def grid_report(exp: Experiment, n_init: int, n_data: int, out_dir: Path, evals_per_epoch: int,
                runs: list[PlannedRun]) -> dict:
    """Each run's best dev score (eval_overall) into <out>/grid.md, grid.json and grid.png
    (seed_grid.write_grid_report); returns {(init_seed, data_seed): best score}."""
    scores, curves, results = {}, {}, []
    for run in runs:
        key = run.exp.init_seed, run.exp.data_seed
        results.append(results_of(run))
        curves[key] = evaluations(run)
        scores[key] = max(e["score"] for e in curves[key])
    first = results[0]
    meta = {"task": ",".join(exp.tasks), "model": Path(exp.model).name, "epochs": exp.epochs,
            "evaluations per epoch": evals_per_epoch, "score": "eval_overall (best evaluation of each run)",
            "command": sweep_command(first["command"]), "device": first["device"], "date": first["date"],
            "commit": first["commit"],
            "wall time of all runs (min)": round(sum(r["train_runtime"] for r in results) / 60, 1)}
    if "dev_subset" in first:
        meta["dev subset scored"] = first["dev_subset"]
    write_grid_report(SeedGrid.from_runs(scores, curves), str(out_dir),
                      title=f"{exp.name}: {n_init} init seeds x {n_data} data seeds", meta=meta)
    return scores


def run_grid(exp: Experiment, n_init: int, n_data: int, out: str | None,
             evals_per_epoch: int = SWEEP_EVALS_PER_EPOCH):
    """Train every run of the grid here, then its report; returns {(init_seed, data_seed): best score}."""
    sweep = plan_grid(exp, n_init, n_data, out, evals_per_epoch)
    sweep.train()
    return sweep.report()
