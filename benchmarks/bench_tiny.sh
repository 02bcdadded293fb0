#!/usr/bin/env bash
# published vs torch reference vs ONNX Runtime (CPU) on the embedded tiny model, one process.
# Usage: benchmarks/bench_tiny.sh [SIZE] [RUNS]
set -euo pipefail
size=${1:-128}
runs=${2:-10}
work=${WORK:-$(mktemp -d)}
monkey-trt bench --preset tiny --workdir "$work" --backends published,torch,ort --height "$size" --width "$size" \
  --runs "$runs" --json "$work/bench.json" --plot "$work/bench.png"
echo "results: $work/bench.json $work/bench.png"
