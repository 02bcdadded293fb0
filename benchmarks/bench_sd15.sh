#!/usr/bin/env bash
# Real SD1.5/LCM sizes (random weights: compute shape matches the real model).
# CPU: torch vs ORT at 256x256. On an NVIDIA GPU add trt (after `monkey-trt build`) and --device cuda.
# Usage: benchmarks/bench_sd15.sh [SIZE] [RUNS] [BACKENDS]
set -euo pipefail
size=${1:-256}
runs=${2:-3}
backends=${3:-torch,ort}
work=${WORK:-$(mktemp -d)}
monkey-trt tiny-model "$work/model" --preset sd15 >/dev/null
monkey-trt export --base "$work/model/base" --ip-adapter "$work/model/ip-adapter" --out "$work/engine" \
  --height "$size" --width "$size" --no-fold --force >/dev/null
if [[ "$backends" == *trt* ]]; then monkey-trt build --engine-dir "$work/engine" --fp16; fi
monkey-trt bench --engine-dir "$work/engine" --backends "$backends" --base "$work/model/base" \
  --ip-adapter "$work/model/ip-adapter" --height "$size" --width "$size" --runs "$runs" --warmup 1 \
  --device "${DEVICE:-cpu}" --json "$work/bench.json"
echo "results: $work/bench.json"
