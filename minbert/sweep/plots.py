"""Figures of a run's log: training loss and dev scores against epoch (one run), and the
overall dev score of every CS224N preset beside the paper's numbers (Cortes, Hsieh & Fu,
"An Exploration of Fine-Tuning Techniques on minBERT Optimizations").

Both read the entries of a run's log.jsonl (trainer.py):
  training   {"step", "epoch", "loss", "loss_<task>", ..., "lr"}
  evaluation {"step", "epoch", "eval_<metric>", ..., "eval_overall"}
and write a PNG with matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot loads)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from minbert.data import TASKS  # noqa: E402
from minbert.experiments import PRESETS, Experiment  # noqa: E402

# The Experiment's defaults are the paper's setup: its final numbers are after 10 epochs.
PAPER_EPOCHS = Experiment.epochs
PAPER_SETUP = {k: getattr(Experiment, k) for k in ("lr", "batch_size", "optim", "steps_per_epoch", "max_steps",
                                                    "max_eval_examples")}
DPI = 120


def read_log(path: str | Path) -> list[dict]:
    """log.jsonl -> its entries; a line cut off by a killed run is skipped."""
    entries = []
    for line in Path(path).read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only the last line of an interrupted write can be partial
    return entries


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one log key, in step order."""
    points = sorted((e["step"], e["epoch"], e[key]) for e in history if key in e and e[key] is not None)
    return [p[1] for p in points], [p[2] for p in points]


def _metric_style(name: str, index: int) -> dict:
    """Line style of a dev metric (without its eval_ prefix): one colour per task, the task's
    main metric solid and its others dashed; a single task's metrics each get their own colour."""
    if name == "overall":
        # Drawn first and wide: for one task it equals the main metric, which stays visible on top.
        return dict(color="black", lw=3.0, ls="-", zorder=1, alpha=0.75, label="overall")
    task, _, metric = name.partition("_")
    tasks = list(TASKS)
    if task in TASKS and metric:
        main = metric == TASKS[task].metric
        return dict(color=plt.cm.tab10(tasks.index(task) % 10), lw=1.6 if main else 1.1, ls="-" if main else "--",
                    zorder=2, label=f"{task} {metric}")
    return dict(color=plt.cm.tab10(index % 10), lw=1.4, ls="-", zorder=2, label=name.replace("_", " "))


def _save(fig, out_png: str | Path) -> Path:
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)
    return out_png


def _empty_panel(ax, text: str):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_curves(history: list[dict], out_png: str | Path, title: str = "training curves") -> Path:
    """One run's curves -> out_png (11 x 4 in, 120 dpi); returns its path.

    Left: training loss of each task (the loss_<task> keys; "loss" where a log has no
    per-task keys) against epoch, on a log scale. Right: every dev metric and the overall
    score at each evaluation, the best overall point starred and annotated. A history
    without evaluations (a run before its first one) gets a loss-only figure, and one
    without training-loss entries a scores-only figure; an empty history, or one with
    neither, raises ValueError."""
    loss_keys = [k for k in dict.fromkeys(k for e in history for k in e) if k.startswith("loss_")]
    if not loss_keys and any("loss" in e for e in history):
        loss_keys = ["loss"]
    eval_keys = [k for k in dict.fromkeys(k for e in history for k in e)
                 if k.startswith("eval_") and k != "eval_overall"]
    has_overall = any("eval_overall" in e for e in history)
    if not loss_keys and not eval_keys and not has_overall:
        raise ValueError(f"nothing to plot for {out_png}: the history has no training-loss or evaluation "
                         f"entries ({len(history)} entries)")

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    if loss_keys:
        all_losses = []
        for i, key in enumerate(loss_keys):
            x, y = _series(history, key)
            all_losses += y
            ax_loss.plot(x, y, color=plt.cm.tab10(list(TASKS).index(key[5:]) % 10 if key[5:] in TASKS else i),
                         lw=1.4, marker="o" if len(x) <= 20 else None, ms=3,
                         label=key[5:] if key != "loss" else "total")
        if all(v > 0 for v in all_losses):
            ax_loss.set_yscale("log")  # the tasks' losses differ by orders of magnitude (MSE vs CE)
            ax_loss.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax_loss.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5, not 5 x 10^-1
            ax_loss.yaxis.set_minor_formatter(NullFormatter())
        ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss per task")
        ax_loss.set_xlim(left=0)
        ax_loss.grid(alpha=0.3, which="both")
        ax_loss.legend(fontsize="small", title="task", title_fontsize="small", loc="best")
    else:
        _empty_panel(ax_loss, "no training loss logged")

    if eval_keys or has_overall:
        overall = _series(history, "eval_overall")
        for i, key in enumerate(eval_keys + (["eval_overall"] if has_overall else [])):
            x, y = _series(history, key)
            style = _metric_style(key[5:], i)
            if key == "eval_overall":
                same = [k[5:] for k in eval_keys if _series(history, k) == overall]
                style["label"] += f" (= {same[0].replace('_', ' ')})" if same else ""
            ax_eval.plot(x, y, marker="o", ms=3.5, **style)
        ax_eval.set(xlabel="epoch", ylabel="dev score", title="dev metrics at each evaluation")
        ax_eval.set_xlim(left=0)
        if has_overall:
            x, y = _series(history, "eval_overall")
            best = max(range(len(y)), key=lambda i: y[i])  # the first of equal bests, as the trainer keeps it
            ax_eval.plot(x[best], y[best], marker="*", ms=16, color="gold", markeredgecolor="black", zorder=4,
                         ls="none")
            # The label goes towards the middle of the axes, so it stays inside them.
            (x0, x1), (y0, y1) = ax_eval.get_xlim(), ax_eval.get_ylim()
            right, top = x[best] > (x0 + x1) / 2, y[best] > (y0 + y1) / 2
            ax_eval.annotate(f"best overall {y[best]:.3f}\nepoch {x[best]:.2f}", (x[best], y[best]),
                             xytext=(-12 if right else 12, -34 if top else 34), textcoords="offset points",
                             ha="right" if right else "left", va="top" if top else "bottom", fontsize="small",
                             arrowprops=dict(arrowstyle="-", color="grey", lw=0.8),
                             bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="grey", lw=0.5, alpha=0.9))
        ax_eval.grid(alpha=0.3)
        # Beside the axes: inside, six metric lines leave it no free corner.
        ax_eval.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        _empty_panel(ax_eval, "no evaluation logged yet")

    fig.suptitle(title)
    return _save(fig, out_png)


def plot_run(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """run_dir/log.jsonl -> run_dir/curves.png (or out_png), titled with the run's preset and model."""
    run_dir = Path(run_dir)
    log = run_dir / "log.jsonl"
    if not log.exists():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}; is it a run folder?")
    title = run_dir.name
    if (run_dir / "config.json").exists():
        config = json.loads((run_dir / "config.json").read_text())
        name = config.get("name", run_dir.name)
        title = (f"{name}{'' if name == run_dir.name else f' ({run_dir.name})'}: "
                 f"{Path(str(config.get('model', '?'))).name}, lr {config.get('lr', '?')}, "
                 f"batch {config.get('batch_size', '?')}")
    return plot_curves(read_log(log), out_png or run_dir / "curves.png", title=title)


def follows_paper(config: dict, history: list[dict]) -> bool:
    """Whether a run can be set beside the paper's final numbers: the paper's optimizer, lr,
    batch size and iterations per epoch, on full dev sets, evaluated at its 10th epoch. The
    encoder is not checked (the paper used bert-base-uncased); the figure's title names it."""
    reached = max((e["epoch"] for e in history if "eval_overall" in e), default=0.0)
    return (all(config.get(k) == v for k, v in PAPER_SETUP.items())
            and config.get("epochs", 0) >= PAPER_EPOCHS and reached >= PAPER_EPOCHS - 1e-6)


def table_run(run_dir: str | Path) -> dict:
    """A run folder -> the dict plot_table takes: {"preset", "history", "paper_protocol"}."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    history = read_log(run_dir / "log.jsonl")
    return {"preset": config["name"], "history": history, "paper_protocol": follows_paper(config, history)}


def _preset_style(name: str) -> dict:
    """A fixed colour per preset, so every figure colours a preset alike: the ten 1x presets
    take tab20's ten dark colours in PRESETS order, and each 3x preset the light shade of its
    1x preset's colour, dashed (gse-3x beside gse)."""
    base, light = (name.removesuffix("-3x"), True) if name.endswith("-3x") else (name, False)
    order = [n for n in PRESETS if n != "glue" and not n.endswith("-3x")]
    i = order.index(base) if base in order else sum(map(ord, base))  # other names: stable too
    return dict(color=plt.cm.tab20((2 * i) % 20 + light), ls="--" if light else "-")


def plot_table(runs: list[dict], out_png: str | Path, paper: dict[str, float | None] | None = None,
               title: str = "CS224N multitask presets: overall dev score") -> Path:
    """The overall dev score (eval_overall) against epoch of every preset run -> out_png.

    runs: [{"preset": name, "history": log entries, "paper_protocol": bool, "label": optional
    legend text}] (table_run builds one from a run folder). paper: preset -> the paper's final
    overall dev score, or None where it has none; default: experiments.PRESETS. The paper's
    number is drawn as a star at epoch 10 in the run's colour, only for runs with
    paper_protocol set, since the others (fewer epochs, other settings) are not comparable.
    Runs without evaluations are left out; if none has one, ValueError."""
    if paper is None:
        paper = {n: (p[3] if p else None) for n, (_, p) in PRESETS.items()}
    shown = [r for r in runs if any("eval_overall" in e for e in r["history"])]
    if not shown:
        raise ValueError(f"nothing to plot for {out_png}: none of the {len(runs)} runs has an evaluation "
                         f"(eval_overall) in its history")
    fig, ax = plt.subplots(figsize=(11, 5))
    marks = []  # (paper's overall, colour) of the runs that follow its protocol
    for run in shown:
        name = run["preset"]
        style = _preset_style(name)
        x, y = _series(run["history"], "eval_overall")
        label = run.get("label") or name
        if run.get("paper_protocol"):
            mark = paper.get(name)
            label += f"  (paper {mark:.3f})" if mark is not None else "  (paper: N/A)"
            if mark is not None:
                marks.append((mark, style["color"]))
        ax.plot(x, y, marker="o", ms=3, lw=1.6, label=label, **style)
    # The paper's numbers lie within a few thousandths of each other: the stars are spread
    # sideways around epoch 10, left to right in legend order, so that each stays visible.
    for k, (mark, color) in enumerate(marks):
        ax.plot(PAPER_EPOCHS + 0.12 * (k - (len(marks) - 1) / 2), mark, marker="*", ms=14, color=color,
                markeredgecolor="black", markeredgewidth=0.6, ls="none", zorder=4)
    handles, labels = ax.get_legend_handles_labels()
    if marks:
        handles.append(Line2D([], [], marker="*", ms=12, color="grey", markeredgecolor="black", ls="none"))
        labels.append(f"paper's final dev score\n({PAPER_EPOCHS} epochs, bert-base;\n"
                      f"spread around epoch {PAPER_EPOCHS})")
    ax.legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="preset", title_fontsize="small")
    note = ("stars: the paper's number, for runs that follow its protocol" if marks
            else "no run follows the paper's 10-epoch protocol: its numbers are not drawn")
    ax.set(xlabel="epoch", ylabel="overall dev score\n(SST + QQP + (STS + 1) / 2) / 3", title=f"{title}\n{note}")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    return _save(fig, out_png)
