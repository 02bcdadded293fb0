#!/usr/bin/env bash
# A behaviour snapshot for refactors: the same commands before and after a change must give bit-equal
# arrays, PNGs and graphs (compare two snapshots with benchmarks/golden_compare.py).
#
#   benchmarks/golden_run.sh OUT        # tiny model; export fp32+fp16+int8 (batch 2); generate torch / ort /
#                                       # ort-fp16 / ort-int8 with --baseline --save-arrays; bench JSON; --help texts
#   python benchmarks/golden_compare.py OUT_BEFORE OUT_AFTER
#
# Runs offline on the CPU in about a minute on 2 cores. The derived caches live in OUT, so no cache of an
# earlier run is reused.
set -euo pipefail
out=$(realpath -m "${1:?usage: golden_run.sh OUT}")
# OUT is ours alone: the help texts below are written with plain redirects, so a folder holding anything is refused
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then echo "golden_run.sh: $out is not empty; give a new folder" >&2; exit 2; fi
mkdir -p "$out"
PY=${PY:-python}
mt() { "$PY" -m monkey_trt.cli "$@"; }
export HF_HUB_OFFLINE=1 MONKEY_TRT_CACHE="$out/cache" MONKEY_TRT_CALIB_CACHE="$out/cache/calibration"

mt tiny-model "$out/model" > /dev/null
mt export --base "$out/model/base" --ip-adapter "$out/model/ip-adapter" --out "$out/engine" \
  --height 64 --width 64 --min 64x64 --max 96x96 --batch 2 --precision fp32,fp16,int8 --calib-size 2 > /dev/null

common=(--image "$out/model/subject.png" --prompt "a toy on the beach" --seed 3 --height 64 --width 64
        --baseline --save-arrays --threads 2)
mt generate "${common[@]}" --backend torch --base "$out/model/base" --ip-adapter "$out/model/ip-adapter" --out "$out/gen/torch" > /dev/null
mt generate "${common[@]}" --engine-dir "$out/engine" --out "$out/gen/ort" > /dev/null
mt generate "${common[@]}" --engine-dir "$out/engine" --precision fp16 --out "$out/gen/ort-fp16" > /dev/null
mt generate "${common[@]}" --engine-dir "$out/engine" --precision int8 --out "$out/gen/ort-int8" > /dev/null
mt generate "${common[@]}" --engine-dir "$out/engine" --batch-passes --out "$out/gen/ort-batched" > /dev/null

mt bench --engine-dir "$out/engine" --backends torch,ort --runs 1 --warmup 0 --threads 2 \
  --workdir "$out/bench-work" --json "$out/bench.json" > /dev/null 2>&1

mkdir -p "$out/help"
mt --help > "$out/help/main.txt" 2>&1 || true
for c in tiny-model generate demo export build doctor bench serve eval; do
  COLUMNS=200 mt "$c" --help > "$out/help/$c.txt" 2>&1 || true
done
echo "snapshot: $out"
