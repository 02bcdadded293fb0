#!/usr/bin/env bash
# Real SD1.5/LCM sizes (random weights: compute shape matches the real model).
# CPU: torch vs ORT at 256x256. On an NVIDIA GPU add trt and DEVICE=cuda (benchmarks/gpu_check.sh does all of it).
# Usage: benchmarks/bench_sd15.sh [SIZE] [RUNS] [BACKENDS]   (PRECISION=fp16: the fp16 graphs for ort/trt)
set -euo pipefail
size=${1:-256}
runs=${2:-3}
backends=${3:-torch,ort}
precision=${PRECISION:-fp32}
work=${WORK:-$(mktemp -d)}
monkey-trt tiny-model "$work/model" --preset sd15 >/dev/null
monkey-trt export --base "$work/model/base" --ip-adapter "$work/model/ip-adapter" --out "$work/engine" \
  --height "$size" --width "$size" --no-fold --force --precision "fp32,$precision" >/dev/null
if [[ "$backends" == *trt* ]]; then monkey-trt build --engine-dir "$work/engine" --precision "$precision"; fi
monkey-trt bench --engine-dir "$work/engine" --backends "$backends" --base "$work/model/base" \
  --ip-adapter "$work/model/ip-adapter" --height "$size" --width "$size" --runs "$runs" --warmup 1 \
  --device "${DEVICE:-cpu}" --precision "$precision" --json "$work/bench.json"
echo "results: $work/bench.json"
