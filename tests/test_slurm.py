"""A real scheduler: a one-machine SLURM cluster (tools/slurm/local_cluster.sh) runs a grid as a
3-task job array of shards (tools/slurm/shard.sbatch) and the report as a job that waits for
the array (tools/slurm/report.sbatch, --dependency=afterok). Skips where slurm-wlm and munge
are not installed or the tests do not run as root (CI need not have them)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "tools" / "slurm"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")

pytestmark = [
    pytest.mark.skipif(not all(shutil.which(t) for t in DAEMONS),
                       reason="SLURM is not installed here (apt-get install slurm-wlm munge; "
                              f"needs {', '.join(DAEMONS)} on the PATH)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM cluster runs its daemons as root"),
]


@pytest.fixture
def cluster(tmp_path):
    folder = tmp_path / "slurm"
    start = subprocess.run([str(SLURM / "local_cluster.sh"), "start", str(folder)], capture_output=True, text=True)
    assert start.returncode == 0, start.stdout + start.stderr
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "OMP_NUM_THREADS": "1"}
    yield env
    subprocess.run([str(SLURM / "local_cluster.sh"), "stop", str(folder)])


def sbatch(env, *args) -> str:
    run = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().split(";")[0]


def test_a_slurm_job_array_of_shards_then_the_report(cluster, tiny_model, tiny_data, tmp_path):
    out = tmp_path / "grid"
    flags = ["--task_name", "mrpc", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--device", "cpu",
             "--batch_size", "4", "--max_steps", "2", "--max_eval_examples", "8", "--eval_per_epoch", "1",
             "--grid", "2,2", "--out", str(out)]
    env = {**cluster, "MINBERT_PYTHON": sys.executable}
    logs = tmp_path / "logs"
    logs.mkdir()
    array = sbatch(env, "--array=0-2", "--cpus-per-task=1", f"--output={logs}/shard-%a.out",
                   str(SLURM / "shard.sbatch"), *flags)
    report = sbatch(env, f"--dependency=afterok:{array}", f"--output={logs}/report.out",
                    str(SLURM / "report.sbatch"), *flags)
    deadline = time.time() + 600
    while time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", f"{array},{report}"], env=env, capture_output=True, text=True)
        if not queue.stdout.strip():
            break
        time.sleep(2)
    else:
        pytest.fail(f"the jobs did not finish in 10 minutes: {queue.stdout}")
    shard_logs = [(logs / f"shard-{k}.out").read_text() for k in range(3)]
    names = json.loads((out / "sweep.json").read_text())["runs"]
    for k, name in enumerate(names):  # 4 runs over 3 tasks: task 0 trains runs 0 and 3
        assert f"{name}: seed" in shard_logs[k % 3], f"array task {k % 3} must train run {k} ({name})"
    assert "shard 0/3 done" in shard_logs[0] and "shard 2/3 done" in shard_logs[2]
    grid = json.loads((out / "grid.json").read_text())
    assert grid["init_seeds"] == [11711, 11712] and len(grid["scores"]) == 2, (logs / "report.out").read_text()
    assert "--shard" not in grid["meta"]["command"] and (out / "grid.md").exists()
