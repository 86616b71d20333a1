#!/usr/bin/env bash
# The CPU benchmark batch behind docs/BENCHMARKS.md ("Results (CPU, 2026-11-23)").
# Ran at commit e53fd33 (a clean checkout of it, the data and model beside it), one script
# after another on a 2-core machine (each file prints its load average). To repeat:  bash docs/benchmarks/cpu-2026-11-23/run.sh OUT_DIR
set -u
DIR=${1:?usage: run.sh OUT_DIR}
mkdir -p "$DIR"
P=${PYTHON:-.venv/bin/python}
run() { local name=$1; shift; echo "== $name: $*"; "$P" "$@" > "$DIR/$name.txt" 2>&1; echo "rc=$?"; }
run enc_minilm benchmarks/bench_encoder.py --device cpu --threads 1 --configs minilm --batch 8 --seq_len 128 --warmup 1 --steps 8 --rounds 8 --json "$DIR/enc_minilm.json"
run enc_minilm_ragged benchmarks/bench_encoder.py --device cpu --threads 1 --configs minilm --batch 8 --seq_len 128 --warmup 1 --steps 8 --rounds 8 --ragged --json "$DIR/enc_minilm_ragged.json"
run enc_bertbase benchmarks/bench_encoder.py --device cpu --threads 1 --configs bert-base --batch 4 --seq_len 64 --warmup 1 --steps 6 --rounds 6 --json "$DIR/enc_bertbase.json"
run optim benchmarks/bench_optim.py --device cpu --threads 1 --configs minilm,bert-base --warmup 2 --steps 6 --rounds 6 --json "$DIR/optim.json"
run padding_counts benchmarks/bench_padding.py --device cpu --threads 1 --windows 0,8,32,128
run padding_time benchmarks/bench_padding.py --device cpu --threads 1 --windows 0,32 --time_steps 30 --warmup 2 --rounds 6 --json "$DIR/padding_time.json"
run train_step benchmarks/bench_train_step.py --device cpu --threads 1 --presets gse --mfac 32,256,1024 --compile --warmup 2 --steps 4 --rounds 4 --json "$DIR/train_step.json"
run memory benchmarks/bench_memory.py --device cpu --threads 1 --presets baseline,gse,cos-2d1-mean,smart,smart-gse --steps 2 --json "$DIR/memory.json"
