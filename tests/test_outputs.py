"""What a run leaves to look at and take elsewhere: curves.png, the table's figure, the
Hugging Face export through evaluate.py, the loss every --logging_steps in log.jsonl, and
progress as short lines when the output is a file."""
import io
import json

import pytest

import evaluate
import train_multitask
from minbert.run.progress import Progress

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"


def argv(tiny_model, tiny_data, out, *extra):
    return ["--preset", "gse", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--output_dir", str(out),
            "--device", "cpu", "--batch_size", "4", "--max_eval_examples", "8", "--lr", "1e-3", *extra]


@pytest.fixture(scope="module")
def run(tiny_model, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "gse"
    assert train_multitask.main(argv(tiny_model, tiny_data, out, "--max_steps", "7", "--logging_steps", "3",
                                     "--eval_per_epoch", "6", "--steps_per_epoch", "6")) == 0
    return out


def test_loss_of_each_task_every_logging_steps(run):
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [e for e in log if "loss" in e]
    assert [e["step"] for e in losses] == [3, 6, 7]  # every 3 steps, and the last
    assert all({"loss_sst", "loss_quora", "loss_sts"} <= e.keys() for e in losses)


def drawn_lines(ax) -> dict:
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines() if not line.get_label().startswith("_")}


def logged(run, key) -> list:
    return [e[key] for e in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if key in e]


def test_every_run_writes_curves_png(run):
    """curves.png is the run's final log drawn: plot_run on log.jsonl now draws the same picture."""
    from minbert.sweep.plots import plot_run
    data = (run / "curves.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000
    again = plot_run(run, run.parent / "again.png").read_bytes()
    assert again == data, "curves.png should be the figure of the run's whole log.jsonl, drawn at its end"


def test_evaluate_redraws_the_curves(run, drawn):
    (run / "curves.png").unlink()
    assert evaluate.main([str(run), "--curves"]) == 0
    assert (run / "curves.png").read_bytes().startswith(PNG)
    ax_loss, ax_eval = drawn[0].axes[:2]
    assert drawn_lines(ax_loss)["sts"] == logged(run, "loss_sts"), "the redrawn loss curve is the run's logged loss"
    overall = [y for label, y in drawn_lines(ax_eval).items() if label.startswith("overall")]
    assert overall == [logged(run, "eval_overall")], "the redrawn dev curve is the run's logged overall score"


def test_table_is_drawn_beside_the_table(run, tmp_path, drawn):
    out = tmp_path / "table.md"
    assert train_multitask.main(["--table", str(run.parent), "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes().startswith(PNG)
    curves = drawn_lines(drawn[-1].axes[0])
    assert [y for label, y in curves.items() if label.split()[0] == "gse"] == [logged(run, "eval_overall")], \
        f"the table's figure should draw the gse run's overall score at each evaluation: {curves}"


def test_evaluate_exports_a_hugging_face_folder(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert evaluate.main([str(run), "--export", str(out)]) == 0
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "heads.safetensors",
            "heads.json"} <= {p.name for p in out.iterdir()}
    assert evaluate.main([str(run), "--export", str(out)]) == 2  # not into a non-empty folder
    assert "is not empty" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "nothing"), "--export", str(tmp_path / "e2")]) == 2
    assert not (tmp_path / "e2").exists()


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_in_a_file_is_a_line_every_so_many_seconds(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("minbert.run.progress.time.time", clock)
    stream = io.StringIO()  # not a terminal: no carriage-return bar
    bar = Progress(100, 0, "gse", every=30.0, stream=stream)
    for step in range(100):
        clock.t = step * 1.0  # one step a second
        bar.update(2.0)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 4  # at 30, 60, 90 s, and the last step
    assert lines[-1].startswith("gse: step 100/100 (100%)") and "loss_avg 2.0000" in lines[-1]
