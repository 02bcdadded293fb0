#!/usr/bin/env bash
# Real SD1.5/LCM sizes (random weights: compute shape matches the real model). The sd15 preset is written
# and exported once into WORK (~6 GB, minutes, ~10 GB RAM) at the requested size only.
# CPU: published vs ORT at 256x256. On an NVIDIA GPU: DEVICE=cuda DTYPE=fp16 CUDA_GRAPH=1, backends published,torch.
# Usage: benchmarks/bench_sd15.sh [SIZE] [RUNS] [BACKENDS]   (PRECISION=fp16: the fp16 graphs for ort/trt)
set -euo pipefail
size=${1:-256}
runs=${2:-1}
backends=${3:-published,ort}
work=${WORK:-$HOME/.cache/monkey-trt}
monkey-trt bench --preset sd15 --workdir "$work" --backends "$backends" --height "$size" --width "$size" \
  --runs "$runs" --warmup "${WARMUP:-0}" --device "${DEVICE:-cpu}" --dtype "${DTYPE:-fp32}" ${CUDA_GRAPH:+--cuda-graph} \
  --precision "${PRECISION:-fp32}" --json "$work/bench-sd15-$size.json" --plot "$work/bench-sd15-$size.png"
