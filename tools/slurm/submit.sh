#!/usr/bin/env bash
# Submit a sweep to SLURM: a job array of shards sized to it, then its report (docs/CLUSTER.md).
#
#   tools/slurm/submit.sh [--max_tasks T] [--at_once K] [--cpus_per_task C] [--logs DIR] SWEEP_FLAGS...
#   tools/slurm/submit.sh --task_name mrpc --grid 4,4 --epochs 1 --out results/grid_mrpc
#
# Run it from the repository root, after `make data`. The sweep's flags are checked here
# first (train_multitask.py --list_runs): a typo, a missing model or data, or an --out that
# holds another sweep stops it before anything is queued. The array has one task per run,
# at most T (default 20); task I trains runs I, I+T, I+2T, ...; K tasks at a time with
# --at_once K; C cores a task (default: shard.sbatch's 2). The report job waits for the array however it ends (afterany). Logs:
# DIR/shard-<array job>_<task>.out and DIR/report-<job>.out (DIR: logs). The same command
# again resubmits: finished runs are skipped, the others resume from their checkpoints.
# sbatch's own settings come from its environment: SBATCH_PARTITION, SBATCH_TIMELIMIT, ...
set -euo pipefail
max_tasks=20 at_once="" cpus="" logs=logs
while [[ $# -gt 0 ]]; do
    case $1 in
        --max_tasks) max_tasks=${2:?--max_tasks T}; shift 2 ;;
        --at_once) at_once=${2:?--at_once K}; shift 2 ;;
        --cpus_per_task) cpus=${2:?--cpus_per_task C}; shift 2 ;;
        --logs) logs=${2:?--logs DIR}; shift 2 ;;
        *) break ;;
    esac
done
fail() { echo "error: $*; nothing was queued" >&2; exit 2; }
[[ $max_tasks =~ ^[1-9][0-9]*$ ]] || fail "--max_tasks $max_tasks: give a whole number >= 1"
[[ -z $at_once || $at_once =~ ^[1-9][0-9]*$ ]] || fail "--at_once $at_once: give a whole number >= 1"
[[ -z $cpus || $cpus =~ ^[1-9][0-9]*$ ]] || fail "--cpus_per_task $cpus: give a whole number >= 1"
[[ -f train_multitask.py ]] || fail "run this from the repository root (the jobs start where sbatch is run)"
py=${MINBERT_PYTHON:-.venv/bin/python}
[[ -x $py ]] || fail "no $py: run make setup and make data first (or set MINBERT_PYTHON)"
command -v sbatch >/dev/null || fail "sbatch is not on the PATH (no SLURM here)"
here=$(dirname "$0")
for word in "$@"; do
    case $word in
        --shard | --shard=* | --jobs | --jobs=* | --report)
            fail "leave out $word: each task of the array gets its --shard, and the report is a job after them" ;;
    esac
done

if ! listed=$("$py" train_multitask.py "$@" --list_runs); then
    echo "nothing was queued: the sweep's flags were refused (above)" >&2
    exit 2
fi
runs=$(grep -c '^run ' <<<"$listed") || fail "train_multitask.py --list_runs listed no runs"
tasks=$(( runs < max_tasks ? runs : max_tasks ))
per=$(( runs / tasks ))
if (( runs % tasks )); then each="$per or $(( per + 1 )) runs each"; elif (( per > 1 )); then each="$per runs each"
else each="one run each"; fi
echo "sweep: $runs runs; a job array of $tasks tasks, $each (one task a run, at most --max_tasks $max_tasks;" \
     "task I trains runs I, I+$tasks, ...)"

mkdir -p "$logs"
array=$(sbatch --parsable --array="0-$((tasks - 1))${at_once:+%$at_once}" ${cpus:+--cpus-per-task=$cpus} \
               --output="$logs/shard-%A_%a.out" "$here/shard.sbatch" "$@")
array=${array%%;*}
if ! report=$(sbatch --parsable --dependency="afterany:$array" --output="$logs/report-%j.out" \
                     "$here/report.sbatch" "$@"); then
    echo "error: the array (job $array) is queued but its report is not; once it ends:" \
         "$py train_multitask.py $* --report" >&2
    exit 1
fi
report=${report%%;*}
echo "submitted: array job $array ($tasks tasks), report job $report (after the array, however it ends)"
echo "logs: $logs/shard-${array}_<task>.out, $logs/report-$report.out"
echo "states: squeue -j $array,$report; scontrol show job $array (docs/CLUSTER.md)"
