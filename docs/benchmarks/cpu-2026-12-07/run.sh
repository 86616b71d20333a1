#!/usr/bin/env bash
# The CPU benchmark batch behind docs/BENCHMARKS.md ("Results (CPU, 2026-12-07)"), and the
# short run of docs/STUDENTS.md. Run from a clean export of the commit it names (git archive),
# with ../shared beside it and MINBERT_COMMIT set to that commit, one script after another,
# on a 2-core machine that other jobs shared the whole time (each file prints its load average;
# load.txt samples it between the scripts). Fewer steps than the 2026-11-23 batch: ratios
# come from alternating rounds in one run, so they hold under load; absolute times do not.
# To repeat:  bash docs/benchmarks/cpu-2026-12-07/run.sh OUT_DIR
set -u
DEST=${1:?usage: run.sh OUT_DIR}
mkdir -p "$DEST"
P=${PYTHON:-python}
run() { local name=$1; shift; echo "== $name: $* ($(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$DEST/load.txt"
        "$P" "$@" > "$DEST/$name.txt" 2>&1; echo "rc=$?" | tee -a "$DEST/load.txt"; }
run optim benchmarks/bench_optim.py --device cpu --threads 1 --configs minilm,bert-base --warmup 2 --steps 4 --rounds 4 --json "$DEST/optim.json"
run train_step benchmarks/bench_train_step.py --device cpu --threads 1 --presets gse --mfac 32 --warmup 1 --steps 3 --rounds 3 --json "$DEST/train_step.json"
run train_step_vs_fast benchmarks/bench_train_step.py --device cpu --threads 1 --presets baseline --mfac none --vs_fast --warmup 1 --steps 3 --json "$DEST/train_step_vs_fast.json"
echo "== short_run ($(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$DEST/load.txt"
/usr/bin/time -f "%e s wall" "$P" train_multitask.py --preset gse --max_steps 20 --max_eval_examples 200 \
    --output_dir "$DEST/short_run" > "$DEST/short_run.txt" 2>&1; echo "rc=$?" | tee -a "$DEST/load.txt"
cp "$DEST/short_run/all_results.json" "$DEST/short_run_all_results.json" 2>/dev/null
rm -rf "$DEST/short_run"   # its checkpoint and weights are not committed
# needs transformers (requirements-dev.txt): it runs last, as it did here
run enc_minilm benchmarks/bench_encoder.py --device cpu --threads 1 --configs minilm --batch 8 --seq_len 128 --warmup 1 --steps 4 --rounds 4 --json "$DEST/enc_minilm.json"
echo "== done ($(date -u '+%F %T') UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$DEST/load.txt"
