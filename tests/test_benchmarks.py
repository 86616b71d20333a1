"""The benchmark scripts run (one tiny step each), so the commands in docs/BENCHMARKS.md keep
working, and what they write holds together: each file records the command, date, commit and
machine it came from, ratios are the times they divide, and the padding counts add up. How
fast anything is is not checked here: timing belongs to the benchmarks themselves."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def assert_environment(env: dict, script: str):
    """Each benchmark file says where its numbers come from (docs/BENCHMARKS.md cites them)."""
    for key in ("date", "device", "torch", "threads", "commit", "command", "load_average_1min"):
        assert key in env, f"the benchmark's JSON should record its {key}: {env}"
    assert script in env["command"] and env["threads"] == 1


def test_bench_optim_runs(tmp_path):
    text = run("bench_optim.py", "--device", "cpu", "--configs", "minilm", "--contenders",
               "minbert foreach,torch foreach", "--warmup", "0", "--steps", "1", "--json", str(tmp_path / "o.json"))
    written = json.loads((tmp_path / "o.json").read_text())
    rows = written["results"]
    assert [r["optimizer"] for r in rows] == ["minbert foreach", "torch foreach"]
    assert "| minilm | 103 | 22.7M | minbert foreach |" in text
    assert_environment(written["environment"], "bench_optim.py")
    reference = float(rows[1]["min CPU ms/step"])
    assert rows[1]["vs torch foreach"] == "1.00x", "the reference's ratio to itself"
    ratio = float(rows[0]["min CPU ms/step"]) / reference
    assert abs(float(rows[0]["vs torch foreach"].rstrip("x")) - ratio) <= 0.006, \
        f"the ratio should be the min CPU times' ratio {ratio:.3f}: {rows[0]}"


def test_bench_padding_runs(tiny_model, tiny_data, tmp_path):
    text = run("bench_padding.py", "--device", "cpu", "--model", str(tiny_model), "--data_dir", str(tiny_data),
               "--batch_size", "4", "--windows", "0,4", "--time_steps", "2", "--warmup", "0",
               "--json", str(tmp_path / "p.json"))
    assert "| 4 | all |" in text and "positions vs window 0" in text
    written = json.loads((tmp_path / "p.json").read_text())
    rows = written["results"]
    assert [r["window"] for r in rows] == [0, 4] and all(r["updates"] == 2 for r in rows)
    assert_environment(written["environment"], "bench_padding.py")
    # the positions table: every batch computes at least its real tokens, and "padding" is what it says
    table = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith(("| 0 |", "| 4 |"))]
    counted = [row for row in table if len(row) >= 5 and row[2].replace(",", "").isdigit()]
    assert {row[1] for row in counted} >= {"sst", "quora", "sts", "all"}, text
    for window, task, real, computed, padding, *_ in counted:
        real, computed = int(real.replace(",", "")), int(computed.replace(",", ""))
        assert computed >= real > 0, (window, task, real, computed)
        assert padding == f"{computed / real - 1:.1%}", (window, task, padding)
    for window in ("0", "4"):
        per_task = [int(r[2].replace(",", "")) for r in counted if r[0] == window and r[1] != "all"]
        (total,) = [int(r[2].replace(",", "")) for r in counted if r[0] == window and r[1] == "all"]
        assert sum(per_task) == total, f"window {window}: the 'all' row is the sum of the tasks' rows"


def test_bench_padding_needs_data(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_padding.py"), "--data_dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and f"no CS224N data in {tmp_path}" in out.stderr


def test_mfac_step_size_first_update_is_lr_m_over_g(tiny_model, tiny_data, tmp_path):
    """From an empty buffer, M-FAC's first update is lr * F^{-1} g with F = damp I + g g^T / m, whose norm
    is lr * m |g| / (m damp + |g|^2): lr * m / |g| to a part in 1e4 at damp 1e-6. It doubles with m."""
    run("mfac_step_size.py", "--device", "cpu", "--model", str(tiny_model), "--data_dir", str(tiny_data),
        "--batch_size", "4", "--steps", "1", "--mfac", "4,8", "--json", str(tmp_path / "s.json"))
    written = json.loads((tmp_path / "s.json").read_text())
    assert_environment(written["environment"], "mfac_step_size.py")
    adamw, m4, m8 = written["results"]
    assert (adamw["optimizer"], m4["m"], m8["m"]) == ("AdamW", 4, 8)
    for row in (m4, m8):
        assert abs(float(row["‖Δθ‖ / (lr m / ‖g‖)"]) - 1) < 1e-3, \
            f"M-FAC's first update should have norm lr * m / |g| (F = damp I + g g^T / m): {row}"
    assert abs(float(m8["mean ‖Δθ‖"]) / float(m4["mean ‖Δθ‖"]) - 2) < 1e-2, "twice the buffer, twice the step"
