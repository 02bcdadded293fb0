#!/usr/bin/env bash
# Torch reference vs ONNX Runtime (CPU) on the embedded tiny model, one process, identical noise.
# Usage: benchmarks/bench_tiny.sh [SIZE] [RUNS]
set -euo pipefail
size=${1:-128}
runs=${2:-10}
work=${WORK:-$(mktemp -d)}
monkey-trt tiny-model "$work/model" >/dev/null
monkey-trt export --base "$work/model/base" --ip-adapter "$work/model/ip-adapter" --out "$work/engine" \
  --height "$size" --width "$size" --force >/dev/null
monkey-trt bench --engine-dir "$work/engine" --backends torch,ort --base "$work/model/base" \
  --ip-adapter "$work/model/ip-adapter" --image "$work/model/subject.png" --height "$size" --width "$size" \
  --runs "$runs" --json "$work/bench.json"
echo "results: $work/bench.json"
