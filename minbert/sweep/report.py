"""Runs in, tables out: the CS224N table and the M-FAC comparison, from finished run folders.
Nothing here trains (sweeps.py runs several seeds and the seed search).

Every number written here is read from a run folder's all_results.json, which carries
the command, device, date and commit that produced it.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from minbert.experiments import PRESETS, Experiment
from minbert.run.compat import seconds_per_update
from minbert.sweep.plots import plot_table, table_run

TABLE_METRICS = ("eval_sst_accuracy", "eval_quora_accuracy", "eval_sts_pearson", "eval_overall")


def read_runs(runs_dir: str | Path) -> list[dict]:
    """Every finished run under runs_dir: its all_results.json plus its folder and config."""
    runs = []
    for f in sorted(Path(runs_dir).rglob("all_results.json")):
        config = json.loads((f.parent / "config.json").read_text())
        runs.append({**json.loads(f.read_text()), "dir": str(f.parent), "config": config})
    return runs


def _fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def table_row(run: dict) -> dict:
    """A finished run (read_runs) -> its row of the CS224N table, as the table's .json keeps it."""
    return {"preset": run["preset"], "ours": {m: run.get(m) for m in TABLE_METRICS},
            "epochs_done": run["global_step"] / run["steps_per_epoch"], "epochs": run["config"]["epochs"],
            **{k: run[k] for k in ("model", "train_runtime", "device", "peak_memory_mb", "date", "command")},
            "commit": run.get("commit"), "dev_subset": run.get("dev_subset"),
            "stopped_at_deadline": run.get("stopped_at_deadline", False)}


def planned_epochs(command: str) -> float:
    """The epochs a command asked for (rows written before tables kept them), else the default."""
    found = re.findall(r"--(?:epochs|num_train_epochs)[ =]([0-9.eE+-]+)", command)
    return float(found[-1]) if found else Experiment.epochs  # the last one, as argparse reads them


def earlier_rows(path: Path) -> list[dict]:
    """The rows with our numbers in a table's .json written by write_table; [] if none."""
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except ValueError:
        rows = None
    shown = {"preset", "ours", "epochs_done", "model", "train_runtime", "device", "peak_memory_mb", "date", "command"}
    if not (isinstance(rows, list) and all(isinstance(r, dict) and {"preset", "ours"} <= r.keys() for r in rows)
            and all(shown <= r.keys() for r in rows if r["ours"])):
        raise ValueError(f"{path} is not a CS224N table written by this project; write the table elsewhere "
                         f"with --out, or move {path.name} away")
    rows = [r for r in rows if r["ours"]]
    retired = [r["preset"] for r in rows if r["preset"] not in PRESETS]
    if retired:
        print(f"warning: {path}: rows of presets that no longer exist are dropped: {', '.join(retired)}")
    return [r for r in rows if r["preset"] in PRESETS]


def device_kind(row: dict) -> str:
    """"cpu" or the GPU's name: a row is replaced only by a later run of its preset on the same kind of device."""
    return row["device"].split(" (")[0]


def write_table(runs_dir, out_md, keep: bool = True):
    """results/cs224n_table.md (+ .json): our dev scores beside the paper's, one row per preset and device.

    With `keep`, the rows of the table already at out_md stay unless runs_dir holds a run of
    their preset on the same kind of device, so a table can be filled over several runs
    or machines; every row keeps its own command, device, date and commit."""
    out_md = Path(out_md)
    found = [r for r in read_runs(runs_dir) if r["preset"] in PRESETS and r["preset"] != "glue"]
    rows = [table_row(r) for r in found]
    ran = {(r["preset"], device_kind(r)) for r in rows}
    kept, replaced = [], []
    for row in earlier_rows(out_md.with_suffix(".json")) if keep else []:
        if (row["preset"], device_kind(row)) in ran:
            replaced.append(row["preset"])
        else:
            rows.append({"epochs": planned_epochs(row["command"]), **row})
            kept.append(row["preset"])
    notes = []
    if kept:
        notes.append(f"**Kept from this table's earlier version** (no run of them in {runs_dir}): {', '.join(kept)}.")
    if replaced:
        notes.append(f"**Replaced by the runs in {runs_dir}:** {', '.join(replaced)}.")
    render_table(rows, out_md, notes)
    curves = [table_run(r["dir"]) for r in found if (Path(r["dir"]) / "log.jsonl").exists()]
    if any("eval_overall" in e for c in curves for e in c["history"]):
        plot_table(curves, out_md.with_suffix(".png"))  # the overall dev score against epoch, every preset


def merge_rows(new_rows: list[dict], out_md, source: str) -> list[str]:
    """Add rows (a GPU day's table, gpu/day.py) to the table at out_md, keeping every earlier row
    but one of the same preset, device and day (the same rows merged again); returns the presets added."""
    out_md = Path(out_md)
    day = lambda r: (r["preset"], device_kind(r), r["date"][:10])  # noqa: E731
    new_rows = [r for r in new_rows if r.get("ours")]
    fresh = {day(r) for r in new_rows}
    earlier = [{"epochs": planned_epochs(r["command"]), **r} for r in earlier_rows(out_md.with_suffix(".json"))]
    render_table([r for r in earlier if day(r) not in fresh] + new_rows, out_md,
                 [f"**Added from {source}:** {', '.join(r['preset'] for r in new_rows)}."] if new_rows else [])
    return [r["preset"] for r in new_rows]


def render_table(rows: list[dict], out_md: Path, notes: list[str]):
    """The table's .md and .json from its rows (table_row's form): presets in PRESETS order,
    a preset's rows by date; presets with none say "not run"."""
    lines = ["| preset | SST | QQP | STS | overall | paper SST / QQP / STS / overall | model | epochs | "
             "wall time | device | peak memory | date | commit |", "|" + "---|" * 13]
    table = []
    for name, (_, paper) in PRESETS.items():
        if name == "glue":
            continue
        paper_txt = "N/A (out of memory)" if paper is None else " / ".join(f"{p:.3f}" for p in paper)
        mine = sorted((r for r in rows if r["preset"] == name), key=lambda r: r["date"])
        if not mine:
            lines.append(f"| {name} | not run | | | | {paper_txt} | | | | | | | |")
            table.append({"preset": name, "paper": paper, "ours": None})
        for r in mine:
            stop = " (deadline)" if r.get("stopped_at_deadline") else ""
            lines.append(
                f"| {name} | " + " | ".join(_fmt(r["ours"][m]) for m in TABLE_METRICS) + f" | {paper_txt} | "
                f"{Path(r['model']).name} | {r['epochs_done']:.2f} of {r['epochs']:g}{stop} | "
                f"{r['train_runtime'] / 60:.1f} min | {r['device']} | {r['peak_memory_mb'] / 1024:.2f} GiB | "
                f"{r['date']} | {r.get('commit') or '?'} |")
            table.append({**r, "paper": paper})
    ran = [r for r in table if r["ours"]]
    commands = [f"- {r['preset']}: `{r['command']}`" for r in ran]
    short = [f"{r['preset']} ({r['epochs_done']:.2f} epochs on {device_kind(r)})" for r in ran if r["epochs_done"] < 10]
    deadline = [f"{r['preset']} on {device_kind(r)}" for r in ran if r.get("stopped_at_deadline")]
    missing = [r["preset"] for r in table if not r["ours"]]
    subsets = [f"{r['preset']} ({', '.join(f'{t} {n}' for t, n in r['dev_subset'].items())} examples)"
               for r in ran if r.get("dev_subset")]
    caveats = ""
    if subsets:
        caveats += f"\n**Scored on part of the dev sets only:** {', '.join(subsets)}.\n"
    if short:
        caveats += f"\n**Shorter than the paper's 10 epochs:** {', '.join(short)}; not comparable to its numbers.\n"
    if deadline:
        caveats += (f"\n**Stopped at a deadline** (the epochs column says how far they got): "
                    f"{', '.join(deadline)}.\n")
    caveats += "".join(f"\n{n}\n" for n in notes)
    if missing:
        caveats += f"\n**Not run yet:** {', '.join(missing)}.\n"
    title = "# CS224N multitask table: our runs beside the paper's\n\n"
    earlier = out_md.read_text() if out_md.exists() else ""
    kept_note = earlier[len(title):earlier.find("Dev set scores")] \
        if earlier.startswith(title) and "Dev set scores" in earlier else ""
    text = (title + kept_note +  # a note written by hand above the generated text stays
            "Dev set scores of the best checkpoint (by overall score). overall = (SST + QQP + (STS + 1) / 2) / 3.\n"
            "Paper: Cortes, Hsieh & Fu, CS224N, bert-base-uncased, 10 epochs. Ours: the model and epochs in the row.\n"
            "Peak memory is GPU memory allocated on CUDA, the process's peak RSS on CPU.\n" + caveats + "\n"
            + "\n".join(lines) + "\n\n## Commands\n\n" + "\n".join(commands) + "\n")
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    out_md.with_suffix(".json").write_text(json.dumps(table, indent=2) + "\n")
    print(text)


def summarize(results: list[dict]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, sample std) over runs, for every numeric eval_* key."""
    keys = [k for k in results[0] if k.startswith("eval_") and isinstance(results[0][k], (int, float))]
    out = {}
    for k in keys:
        xs = [r[k] for r in results]
        out[k] = (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)
    return out


# The M-FAC model cards (bert-tiny, 5 runs, GLUE dev): (F1 mean, std, accuracy mean, std).
MFAC_CARDS = {
    "mrpc": {"adam": (81.68, 0.33, 69.90, 0.32), "mfac": (82.77, 0.22, 72.94, 0.37)},
    "qqp": {"adam": (77.58, 0.08, 81.09, 0.15), "mfac": (79.71, 0.13, 84.29, 0.08)},
}


READABLE = {"adam": "Adam", "mfac": "M-FAC"}  # the labels compare_optimizers' lines spell out


def difference_line(adam: list[dict], mfac: list[dict], key: str = "eval_f1",
                    names: tuple[str, str] = ("Adam", "M-FAC")) -> str:
    """The second set's mean minus the first's (M-FAC - Adam by default), with the standard error
    of that difference (Welch: se = sqrt(s_a^2 / n_a + s_m^2 / n_m)), so a reader can tell a gap
    from seed noise."""
    a, m = [100 * r[key] for r in adam], [100 * r[key] for r in mfac]
    ref, other = names
    if len(a) < 2 or len(m) < 2:
        return f"{other} - {ref}, {key}: {statistics.mean(m) - statistics.mean(a):+.2f} (too few seeds for a spread)"
    diff = statistics.mean(m) - statistics.mean(a)
    se = (statistics.variance(a) / len(a) + statistics.variance(m) / len(m)) ** 0.5
    verdict = ("within two standard errors: not told apart from seed noise" if abs(diff) < 2 * se
               else f"{other if diff > 0 else ref} ahead by more than two standard errors")
    return (f"{other} - {ref}, {key}: {diff:+.2f} points, standard error {se:.2f} "
            f"({len(m)} and {len(a)} runs): {verdict}.")


def read_block(folder: str | Path) -> dict:
    """A sweep's runs as {"runs", "summary", "step_time_s", "config"}: a --seeds folder's seeds.json,
    or, for any other sweep (a --grid), the all_results.json of every run under it."""
    folder = Path(folder)
    if (folder / "seeds.json").exists():
        return json.loads((folder / "seeds.json").read_text())
    runs = read_runs(folder)
    if not runs:
        raise FileNotFoundError(f"{folder}: neither seeds.json nor a finished run (all_results.json) under it")
    return {"runs": runs, "summary": summarize(runs), "config": runs[0]["config"],
            "step_time_s": statistics.mean(seconds_per_update(r) for r in runs)}


def run_label(run: dict) -> str:
    """The seed column: a --seeds run's seed, a grid run's init/data seeds."""
    config = run.get("config", {})
    if config.get("init_seed", -1) >= 0 or config.get("data_seed", -1) >= 0:
        return f"init {config['init_seed']}, data {config['data_seed']}"
    return str(run.get("seed", config.get("seed", "—")))


def compare_optimizers(task: str, seed_dirs: dict[str, str | Path], out_md: str | Path, note: str = "",
                       timed_alike: bool = True, pairs: tuple[tuple[str, str], ...] = (("adam", "mfac"),)):
    """Multi-seed runs of Adam and M-FAC beside the model cards: seed_dirs maps a label to a --seeds
    folder or a grid's (read_block); the cards' columns fill the rows labelled adam and mfac. Each
    pair (reference, other) present gets a difference line, and a step-time ratio when timed_alike.

    timed_alike=False: the runs did not share the same load (other work on the machine), so
    their step times are not divided; the note then says where the ratio comes from."""
    blocks = {name: read_block(d) for name, d in seed_dirs.items()}
    cards = MFAC_CARDS.get(task, {})
    lines = [f"# M-FAC vs Adam on {task.upper()} (dev set)", "", note, "",
             "| optimizer | runs | epochs | F1 | accuracy | card F1 (bert-tiny) | card accuracy (bert-tiny) | "
             "time / step | wall time / run | peak memory |", "|" + "---|" * 10]
    for name, b in blocks.items():
        s, runs = b["summary"], b["runs"]
        f1, acc = s.get("eval_f1", (float("nan"), 0)), s.get("eval_accuracy", (float("nan"), 0))
        card = cards.get(name)
        card_txt = (f"{card[0]:.2f} ± {card[1]:.2f} | {card[2]:.2f} ± {card[3]:.2f}" if card else "— | —")
        lines.append(f"| {name} | {len(runs)} | {b['config'].get('epochs', '—'):g} | "
                     f"{100 * f1[0]:.2f} ± {100 * f1[1]:.2f} | {100 * acc[0]:.2f} ± {100 * acc[1]:.2f} | "
                     f"{card_txt} | {1000 * b['step_time_s']:.0f} ms | "
                     f"{statistics.mean(r['train_runtime'] for r in runs) / 60:.1f} min | "
                     f"{max(r['peak_memory_mb'] for r in runs) / 1024:.2f} GiB |")
    for ref, other in [(a, b) for a, b in pairs if a in blocks and b in blocks]:
        names = (READABLE.get(ref, ref), READABLE.get(other, other))
        ratio = blocks[other]["step_time_s"] / blocks[ref]["step_time_s"]
        lines += ["", f"{names[1]} step time / {names[0]} step time: {ratio:.2f}x (same machine, same runs as "
                  "above)." if timed_alike else f"{names[1]} step time / {names[0]} step time: not the ratio of the "
                  "column above, whose runs did not all share one load (the note above says which did)."]
        lines += ["", difference_line(blocks[ref]["runs"], blocks[other]["runs"], names=names)]
    lines += ["", "Per seed (dev set; best: the best of the run's evaluations):", "",
              "| optimizer | seed | F1 | accuracy | best F1 | best accuracy | steps |", "|" + "---|" * 7]
    for name, b in blocks.items():
        for r in b["runs"]:
            pct = lambda k: "—" if r.get(k) is None else f"{100 * r[k]:.2f}"  # noqa: E731
            lines.append(f"| {name} | {run_label(r)} | {pct('eval_f1')} | {pct('eval_accuracy')} | "
                         f"{pct('best_eval_f1')} | {pct('best_eval_accuracy')} | {r.get('global_step', '—')} |")
    which = {b["config"].get("results_from", "best") for b in blocks.values()}
    lines += ["", "Scores: " + ("the final model's dev scores (the eval_* keys, as run_glue's --do_eval reports them)"
                                if which == {"final"} else "each run's best evaluation" if which == {"best"}
                                else f"mixed ({', '.join(sorted(which))}): compare with care")]
    lines += ["", "time / step: the mean time of one update (`update_ms` in all_results.json) where the run "
              "recorded it, else the run's wall time over its steps, evaluation included."]
    lines += ["", "## Runs", ""]
    for name, b in blocks.items():
        r = b["runs"][0]
        lines.append(f"- {name}: `{r['command']}` — {len(b['runs'])} runs, model "
                     f"{Path(r['model']).name}, device {r['device']}, {r['date']}, commit {r.get('commit')}; "
                     f"{b['config'].get('epochs'):g} epochs of {r.get('steps_per_epoch', '—')} steps")
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
