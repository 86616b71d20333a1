"""The benchmark scripts still run (one tiny step each), so the commands in README and
docs/BENCHMARKS.md keep working. The numbers they print are not checked here."""
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


def test_bench_optim_runs(tmp_path):
    text = run("bench_optim.py", "--device", "cpu", "--configs", "minilm", "--contenders",
               "minbert foreach,torch foreach", "--warmup", "0", "--steps", "1", "--json", str(tmp_path / "o.json"))
    rows = json.loads((tmp_path / "o.json").read_text())["results"]
    assert [r["optimizer"] for r in rows] == ["minbert foreach", "torch foreach"]
    assert "| minilm | 103 | 22.7M | minbert foreach |" in text


def test_bench_padding_runs(tiny_model, tiny_data, tmp_path):
    text = run("bench_padding.py", "--device", "cpu", "--model", str(tiny_model), "--data_dir", str(tiny_data),
               "--batch_size", "4", "--windows", "0,4", "--time_steps", "2", "--warmup", "0",
               "--json", str(tmp_path / "p.json"))
    assert "| 4 | all |" in text and "positions vs window 0" in text
    rows = json.loads((tmp_path / "p.json").read_text())["results"]
    assert [r["window"] for r in rows] == [0, 4] and all(r["updates"] == 2 for r in rows)


def test_bench_padding_needs_data(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_padding.py"), "--data_dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and f"no CS224N data in {tmp_path}" in out.stderr
