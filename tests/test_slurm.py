"""A real scheduler: a one-machine SLURM cluster (tools/slurm/local_cluster.sh) and the one
submit command (tools/slurm/submit.sh: a job array of shards, then the report with
--dependency=afterany). A typo is refused before anything is queued; a task cancelled mid-run
leaves the report job's log naming the runs not finished; the same command again ends with
the full report. Skips where slurm-wlm and munge are not installed or the tests do not run
as root (CI need not have them)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "tools" / "slurm"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")

pytestmark = [
    pytest.mark.skipif(not all(shutil.which(t) for t in DAEMONS),
                       reason="SLURM is not installed here (apt-get install slurm-wlm munge; "
                              f"needs {', '.join(DAEMONS)} on the PATH)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM cluster runs its daemons as root"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    start = subprocess.run([str(SLURM / "local_cluster.sh"), "start", str(folder)], capture_output=True, text=True)
    assert start.returncode == 0, start.stdout + start.stderr
    yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "OMP_NUM_THREADS": "1",
           "MINBERT_PYTHON": sys.executable}
    subprocess.run([str(SLURM / "local_cluster.sh"), "stop", str(folder)])


def submit(env, logs: Path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([str(SLURM / "submit.sh"), "--max_tasks", "2", "--cpus_per_task", "1", "--logs", str(logs),
                           *flags],
                          cwd=REPO, env=env, capture_output=True, text=True)


def job_ids(submitted: subprocess.CompletedProcess) -> tuple[str, str]:
    found = re.search(r"array job (\d+) .*report job (\d+)", submitted.stdout)
    assert submitted.returncode == 0 and found, submitted.stdout + submitted.stderr
    return found.group(1), found.group(2)


def queue(env) -> str:
    return subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, check=True).stdout


def wait_for(env, jobs: tuple[str, str], seconds: float = 300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], env=env, capture_output=True,
                              text=True).stdout.strip():
            return
        time.sleep(1)
    pytest.fail(f"jobs {jobs} did not end in {seconds:g} s: {queue(env)}")


def exit_code(env, job: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return re.search(r"\bExitCode=(\S+)", shown).group(1)


def test_a_typo_in_the_sweeps_flags_is_refused_before_anything_is_queued(cluster, tiny_model, tiny_data, tmp_path):
    before = queue(cluster)
    typo = submit(cluster, tmp_path / "logs", "--task_name", "mrpc", "--model", str(tiny_model), "--data_dir",
                  str(tiny_data), "--grid", "2,2", "--max_step", "3", "--out", str(tmp_path / "grid"))
    assert typo.returncode == 2 and "--max_step" in typo.stderr and "nothing was queued" in typo.stderr, \
        typo.stdout + typo.stderr
    assert queue(cluster) == before and not (tmp_path / "logs").exists() and not (tmp_path / "grid").exists(), \
        "submit.sh must check the flags (train_multitask.py --list_runs) before sbatch"


@pytest.fixture(scope="module")
def cancelled_then_resubmitted(cluster, tiny_model, tiny_data, tmp_path_factory):
    """A 2 x 2 grid as an array of 2 tasks (task 1 trains runs 1 and 3); task 1 cancelled once
    run 1 has a checkpoint; the report job runs all the same; then the same command again."""
    tmp = tmp_path_factory.mktemp("cancelled")
    flags = ["--task_name", "mrpc", "--model", str(tiny_model), "--data_dir", str(tiny_data), "--device", "cpu",
             "--batch_size", "4", "--max_steps", "30", "--max_eval_examples", "8", "--grid", "2,2",
             "--out", str(tmp / "grid")]
    logs = tmp / "logs"
    first = job_ids(submit(cluster, logs, *flags))
    runs, sweep = tmp / "grid" / "runs", tmp / "grid" / "sweep.json"
    deadline = time.time() + 300
    while time.time() < deadline and not sweep.exists():
        time.sleep(0.05)
    names = json.loads(sweep.read_text())["runs"]
    while time.time() < deadline and not list((runs / names[1]).glob("checkpoint-*")):
        time.sleep(0.05)
    subprocess.run(["scancel", f"{first[0]}_1"], env=cluster, check=True)
    wait_for(cluster, first)
    cancelled = (logs / f"shard-{first[0]}_1.out").read_text()
    report = (logs / f"report-{first[1]}.out").read_text(), exit_code(cluster, first[1])
    claims = [p for p in runs.glob("*/claim")]
    second = job_ids(submit(cluster, logs, *flags))
    wait_for(cluster, second)
    return tmp / "grid", names, cancelled, report, claims, (logs / f"report-{second[1]}.out").read_text(), \
        [(logs / f"shard-{second[0]}_{k}.out").read_text() for k in (0, 1)]


def test_a_cancelled_task_stops_cleanly_and_the_report_job_names_the_runs_not_finished(cancelled_then_resubmitted):
    out, names, cancelled, (report, code), claims, *_ = cancelled_then_resubmitted
    assert "stopped by SIGTERM" in cancelled and f"run 1 {names[1]}" in cancelled, cancelled[-2000:]
    assert claims == [], "the cancelled task must release its claim (shards.train_shard on SIGTERM)"
    assert code == "1:0" and "runs are not finished, so no report is written" in report, report
    assert f"run 1 {names[1]} (unfinished)" in report and f"run 3 {names[3]} (missing)" in report, report


def test_the_same_command_again_ends_with_the_full_report(cancelled_then_resubmitted):
    out, names, *_, report, shard_logs = cancelled_then_resubmitted
    assert "report of 4 runs: wrote" in report and str(out / "grid.md") in report, report
    assert re.search(r"resumed from \S*checkpoint-\d+", shard_logs[1]), "the cancelled run resumes from its checkpoint"
    assert f"run 0 {names[0]}: finished, skipped" in shard_logs[0]
    grid = json.loads((out / "grid.json").read_text())
    assert len(grid["scores"]) == 2 and "--shard" not in grid["meta"]["command"]
