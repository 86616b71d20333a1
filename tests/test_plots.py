"""The figures of plots.py are written from a run's log entries, as PNGs someone can open."""
import json
import math
import random

import pytest

from minbert.experiments import PRESETS
from minbert.sweep.plots import follows_paper, plot_curves, plot_run, plot_table, read_log, table_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_history(tasks=("sst", "quora", "sts"), epochs=3.0, steps_per_epoch=200, evals_per_epoch=2,
                      seed=0, final=0.6) -> list[dict]:
    """Log entries shaped as trainer.py writes them: a loss entry every 50 steps, an evaluation
    every 1/evals_per_epoch epoch; losses fall and scores rise towards `final` with noise."""
    rng = random.Random(seed)
    start_loss = {"sst": 1.6, "quora": 0.69, "sts": 6.0, "mrpc": 0.69}
    history, total = [], int(epochs * steps_per_epoch)
    for step in range(1, total + 1):
        epoch = step / steps_per_epoch
        if step % 50 == 0 or step == total:
            losses = {t: start_loss[t] * (0.35 + 0.65 * math.exp(-epoch)) * rng.uniform(0.85, 1.15) for t in tasks}
            history.append({"step": step, "epoch": epoch, "loss": sum(losses.values()),
                            **{f"loss_{t}": v for t, v in losses.items()}, "lr": 1e-5})
        # trainer.eval_due: after each 1/evals_per_epoch of an epoch, rounded up to a step, and at the end
        k, spe = evals_per_epoch, steps_per_epoch
        if (step * k) // spe > ((step - 1) * k) // spe or step == total:
            level = final * (1 - 0.4 * math.exp(-1.5 * epoch)) + rng.uniform(-0.01, 0.01)
            if len(tasks) == 1:
                scores = {"eval_accuracy": level + 0.05, "eval_f1": level + 0.1}
                scores["eval_combined_score"] = (scores["eval_accuracy"] + scores["eval_f1"]) / 2
                scores["eval_overall"] = scores["eval_f1"]
            else:
                scores = {"eval_sst_accuracy": level - 0.1, "eval_quora_accuracy": level + 0.12,
                          "eval_quora_f1": level + 0.05, "eval_sts_pearson": 2 * level - 0.85,
                          "eval_sts_spearmanr": 2 * level - 0.88}
                scores["eval_overall"] = (scores["eval_sst_accuracy"] + scores["eval_quora_accuracy"]
                                          + (scores["eval_sts_pearson"] + 1) / 2) / 3
            history.append({"step": step, "epoch": epoch, **scores})
    return history


def assert_png(path, min_kb=15):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_kb * 1024, f"{path} is only {len(data)} bytes"


def lines(ax) -> dict:
    """label -> (x, y) of each labelled line of an axes."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def series(history, key):
    points = sorted((e["step"], e["epoch"], e[key]) for e in history if key in e)
    return [p[1] for p in points], [p[2] for p in points]


def assert_curves(fig, history, tasks):
    """The loss panel draws each task's logged loss, the dev panel each logged metric and the
    overall score, and the star sits on the best overall evaluation."""
    ax_loss, ax_eval = fig.axes[:2]
    drawn_losses = lines(ax_loss)
    for t in tasks:
        assert drawn_losses.get(t) == series(history, f"loss_{t}"), f"the loss panel should draw loss_{t} against epoch"
    drawn_evals = lines(ax_eval)
    metrics = sorted({k for e in history for k in e if k.startswith("eval_") and k != "eval_overall"})
    for k in metrics:
        label = k[5:].replace("_", " ")
        assert drawn_evals.get(label) == series(history, k), f"the dev panel should draw {k} as {label!r}"
    overall = [v for label, v in drawn_evals.items() if label.startswith("overall")]
    assert overall == [series(history, "eval_overall")], "the dev panel should draw eval_overall"
    x, y = series(history, "eval_overall")
    best = y.index(max(y))
    stars = [line for line in ax_eval.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 1 and (list(stars[0].get_xdata()), list(stars[0].get_ydata())) == ([x[best]], [y[best]]), \
        "the star should mark the best overall evaluation"


def test_curves_of_a_multitask_run_are_a_png(tmp_path, drawn):
    history = synthetic_history()
    out = plot_curves(history, tmp_path / "curves.png", title="gse (synthetic)")
    assert out == tmp_path / "curves.png"
    assert_png(out)
    assert_curves(drawn[0], history, ("sst", "quora", "sts"))
    assert drawn[0].axes[0].get_yscale() == "log", "the tasks' losses differ by orders of magnitude: a log scale"


def test_curves_of_a_single_task_run_are_a_png(tmp_path, drawn):
    history = synthetic_history(tasks=("mrpc",), epochs=5)
    assert_png(plot_curves(history, tmp_path / "mrpc.png"))
    assert_curves(drawn[0], history, ("mrpc",))
    overall = [label for label in lines(drawn[0].axes[1]) if label.startswith("overall")]
    assert overall == ["overall (= f1)"], f"a single task's overall is its F1, and the legend says so: {overall}"


def test_a_short_run_with_one_point_each_still_plots(tmp_path, drawn):
    history = [{"step": 4, "epoch": 0.5, "loss": 2.0, "loss_sst": 1.5, "loss_quora": 0.5, "lr": 1e-3},
               {"step": 4, "epoch": 0.5, "eval_sst_accuracy": 0.3, "eval_quora_accuracy": 0.6, "eval_overall": 0.45}]
    assert_png(plot_curves(history, tmp_path / "short.png"), min_kb=10)
    assert_curves(drawn[0], history, ("sst", "quora"))
    assert all(line.get_marker() == "o" for line in drawn[0].axes[0].get_lines()), "one point each: marked"


def test_a_run_before_its_first_evaluation_gets_a_loss_only_figure(tmp_path, drawn):
    history = [e for e in synthetic_history() if "loss" in e]
    assert_png(plot_curves(history, tmp_path / "loss_only.png"))
    ax_loss, ax_eval = drawn[0].axes[:2]
    assert set(lines(ax_loss)) == {"sst", "quora", "sts"} and not ax_eval.get_lines(), \
        "before the first evaluation: the losses, and an empty dev panel"
    assert "no evaluation logged yet" in [t.get_text() for t in ax_eval.texts]


def test_an_empty_history_is_refused_and_nothing_written(tmp_path):
    for history in ([], [{"step": 1, "epoch": 0.1, "lr": 1e-5}]):
        with pytest.raises(ValueError, match="nothing to plot"):
            plot_curves(history, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_plot_run_reads_the_log_and_writes_curves_png(tmp_path, drawn):
    run = tmp_path / "runs" / "gse"
    run.mkdir(parents=True)
    history = synthetic_history()
    # A run killed mid-write leaves a partial last line; it is skipped.
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history) + '{"step": 6')
    (run / "config.json").write_text(json.dumps({"name": "gse", "model": "/models/all-MiniLM-L6-v2",
                                                 "lr": 1e-5, "batch_size": 8}))
    assert read_log(run / "log.jsonl") == history
    assert plot_run(run) == run / "curves.png"
    assert_png(run / "curves.png")
    assert_curves(drawn[0], history, ("sst", "quora", "sts"))
    assert "gse" in drawn[0].texts[0].get_text(), "the figure is titled with the run's name"
    with pytest.raises(FileNotFoundError, match="no log.jsonl"):
        plot_run(tmp_path)


def paper_config(name, **kw):
    return {"name": name, "lr": 1e-5, "batch_size": 8, "optim": "adamw", "steps_per_epoch": 0, "max_steps": 0,
            "max_eval_examples": 0, "epochs": 10, **kw}


def test_only_full_paper_setup_runs_are_set_beside_the_paper():
    ten = synthetic_history(epochs=10, steps_per_epoch=100, evals_per_epoch=1)
    assert follows_paper(paper_config("gse"), ten)
    assert not follows_paper(paper_config("gse", epochs=1), synthetic_history(epochs=1))
    assert not follows_paper(paper_config("gse", lr=1e-4), ten)
    assert not follows_paper(paper_config("gse"), synthetic_history(epochs=4))  # stopped early


def test_table_figure_of_every_preset(tmp_path, drawn):
    presets = [n for n in PRESETS if n != "glue"]
    runs = []
    for i, name in enumerate(presets):
        full = i % 2 == 0  # half of them ran the paper's 10 epochs, half were cut short
        history = synthetic_history(epochs=10 if full else 2, steps_per_epoch=100, evals_per_epoch=1, seed=i,
                                    final=0.55 + 0.006 * i)
        runs.append({"preset": name, "history": history, "paper_protocol": full})
    out = plot_table(runs, tmp_path / "table.png")
    assert_png(out, min_kb=30)
    ax = drawn[0].axes[0]
    drawn_runs = lines(ax)
    for run in runs:
        label = next(name for name in drawn_runs if name.split("  ")[0] == run["preset"])
        assert drawn_runs[label] == series(run["history"], "eval_overall"), f"{run['preset']}: its overall score"
        assert ("(paper" in label) == run["paper_protocol"], f"{label}: the paper's number only beside a 10-epoch run"
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    expected = [PRESETS[r["preset"]][1][3] for r in runs if r["paper_protocol"] and PRESETS[r["preset"]][1]]
    assert sorted(float(line.get_ydata()[0]) for line in stars) == sorted(expected), \
        "a star at the paper's overall for each run that follows its protocol"


def test_table_table_run_and_refusals(tmp_path, drawn):
    run = tmp_path / "gse"
    run.mkdir()
    history = synthetic_history(epochs=10, steps_per_epoch=100, evals_per_epoch=1)
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in history))
    (run / "config.json").write_text(json.dumps(paper_config("gse")))
    entry = table_run(run)
    assert entry["preset"] == "gse" and entry["paper_protocol"] and entry["history"] == history
    assert_png(plot_table([entry], tmp_path / "one.png", paper={"gse": 0.644}))
    assert [float(line.get_ydata()[0]) for line in drawn[0].axes[0].get_lines() if line.get_marker() == "*"] == [0.644]
    no_eval = {"preset": "gse", "history": [e for e in history if "loss" in e], "paper_protocol": False}
    with pytest.raises(ValueError, match="none of the 1 runs has an evaluation"):
        plot_table([no_eval], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
