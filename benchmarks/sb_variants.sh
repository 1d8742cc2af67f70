#!/usr/bin/env bash
# Benchmark: Selective-Backprop variants beside the online pipeline's runs (run `make online`
# first): fp32 vs bf16 selection forwards, and eval- vs train-mode selection. Seeds interleaved;
# the report (with Traditional, SB and Stale-SB from the pipeline) goes to bench-out/sb-variants.
set -euo pipefail
cd "$(dirname "$0")/../pipelines/online-fashion-mnist"
PY=../../.venv/bin/python
for seed in 0 1 2; do
  for m in sb-fp32 sb-train-mode; do
    $PY ../../stages/train.py --params params.yaml --store data/store --method $m --seed $seed \
        --out runs/$m-$seed --resume never
  done
done
$PY ../../stages/report.py --params params.yaml --out ../../bench-out/sb-variants \
    --runs 'runs/{method}-{seed}' 'runs/sb-fp32-{seed}' 'runs/sb-train-mode-{seed}'
