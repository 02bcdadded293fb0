#!/usr/bin/env bash
# The 8-bit rows of the GPU check: TensorRT int8 / fp8 plans from the GPU-shaped graphs (fp16 base) against fp16,
# with the fp32-based int8 graph for contrast; speed and fidelity.
# Separate from gpu_check.sh, which can call it as one step:  benchmarks/gpu_int8.sh --work "$work"
#   1. the engine directory: --engine (gpu_check.sh passes its own: fp32 + fp16 graphs and plans already there) or an
#      sd15-size one exported at SIZE; the 8-bit graphs are added with both bases (`export --precision int8
#      --quant-base both`: the GPU graph, and the CPU graph for the contrast row), calibrated on CALIB_SIZE cases
#      (11 UNet calls each); nothing already there is exported again
#   2. the UNet step per graph (benchmarks/gpu_int8_unet.py: one static plan each at the opt size, p50 of STEP_RUNS):
#      fp16, int8-fp16, fp8-fp16 (FP8=1 on compute capability >= 8.9), then int8 (fp32 base, CONTRAST=1), while
#      STEP_SHARE % of the BUDGET is left to them
#   3. TensorRT plans per precision (`monkey-trt build --precision P`: 8-bit plans build the fp16-based graphs; a plan
#      already built is kept), `bench --backends trt` and `generate --save-arrays` on SEEDS per precision, then mask
#      IoU / PSNR / max|diff| against fp16 and fp32 (mask pass exact: the fp32 plans, masks equal fp32)
#   4. MASK_PASS_FP16=1: int8 with mask_pass="fp16" (pass 1 on the fp16 plans): its mask IoU against fp32
#   5. two tables: the UNet step per graph (speed-up over fp16), and end to end per precision with fidelity
# Every step is bounded by what is left of BUDGET; a step that cannot start is a failure, named.
# NVIDIA's diffusion recipes report ~1.7x (INT8) and ~1.95x (FP8) UNet speed-ups over fp16 on Hopper-class GPUs.
#
# Usage: benchmarks/gpu_int8.sh [--dry-run] [--work DIR] [--engine DIR] [--model DIR]
# Environment: SIZE (512), RUNS (2), SEEDS (0), CALIB_SIZE (1), FP8 (0: fp8 is opt-in), OPT_LEVEL (2),
#   STEP_RUNS (20), STEP_SHARE (70), CONTRAST (1), MASK_PASS_FP16 (1), BUDGET (420 s), PYTHON (python)
# Exit: 0 every step that ran passed; 1 a step failed (or the budget ran out); 2 usage; 3 no TensorRT/GPU here.
set -uo pipefail

dry_run=0
work=""; engine=""; model=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --work) work="${2:?--work needs a folder}"; shift ;;
    --engine) engine="${2:?--engine needs a folder}"; shift ;;
    --model) model="${2:?--model needs a folder}"; shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
SIZE=${SIZE:-512}
RUNS=${RUNS:-2}
SEEDS=${SEEDS:-0}
CALIB_SIZE=${CALIB_SIZE:-1}
FP8=${FP8:-0}
OPT_LEVEL=${OPT_LEVEL:-2}
BUDGET=${BUDGET:-420}
STEP_RUNS=${STEP_RUNS:-20}
STEP_SHARE=${STEP_SHARE:-70}
CONTRAST=${CONTRAST:-1}
MASK_PASS_FP16=${MASK_PASS_FP16:-1}
PY=${PYTHON:-python}
for v in SIZE RUNS CALIB_SIZE OPT_LEVEL BUDGET STEP_RUNS STEP_SHARE; do
  [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || { echo "error: $v must be a positive integer, got '${!v}'" >&2; exit 2; }
done
for v in FP8 CONTRAST MASK_PASS_FP16; do
  [[ ${!v} == 0 || ${!v} == 1 ]] || { echo "error: $v must be 0 or 1, got '${!v}'" >&2; exit 2; }
done
[[ $SEEDS =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "error: SEEDS must be a comma list of integers, got '$SEEDS'" >&2; exit 2; }
(( STEP_SHARE <= 100 )) || { echo "error: STEP_SHARE must be a percentage (1..100), got '$STEP_SHARE'" >&2; exit 2; }
cd "$(dirname "$0")/.." || exit 2
work=${work:-$(mktemp -d -t monkey-gpu-int8.XXXXXX)}
mkdir -p "$work/logs" || exit 2
t_start=$(date +%s)
model=${model:-"$work/sd15-model"}
engine=${engine:-"$work/sd15-engine-${SIZE}"}
CLI=("$PY" -m monkey_trt.cli)  # an array, not a function: `timeout` runs it

cc=$("$PY" - <<'EOF' 2>/dev/null
try:
    from monkey_trt.engine.trt import cuda, lib
    lib.require_tensorrt()
    print(cuda.require_cuda_device().compute_capability)
except Exception:
    print("")
EOF
)
if [[ -z "$cc" ]]; then
  echo "gpu_int8: no TensorRT + NVIDIA GPU here: nothing to run"
  exit 3
fi
precisions="fp16 int8"
fp8_ok=0
"$PY" -c "import sys; a, b = map(int, '$cc'.split('.')); sys.exit(0 if (a, b) >= (8, 9) else 1)" && fp8_ok=1
[[ $FP8 == 1 && $fp8_ok == 1 ]] && precisions="fp16 int8 fp8"
echo "gpu_int8: compute capability $cc, precisions: fp32 $precisions, size ${SIZE}, budget ${BUDGET}s, engine $engine, work $work"
graphs="fp16 int8-fp16"
[[ $precisions == *fp8* ]] && graphs+=" fp8-fp16"
[[ $CONTRAST == 1 ]] && graphs+=" int8"
if [[ $dry_run == 1 ]]; then
  echo "would: add ${precisions#fp16 } graphs (both bases) to $engine (calibration: $CALIB_SIZE case(s)) -> UNet step" \
       "plans ${graphs// /,} ($STEP_RUNS runs) -> build the missing plans -> bench trt per precision ($RUNS runs) ->" \
       "generate + compare seeds $SEEDS$([[ $MASK_PASS_FP16 == 1 ]] && echo ' -> int8 with the fp16 mask pass')"
  exit 0
fi

fail=0
step() {  # step NAME CMD...: run, log, report; bounded by what is left of BUDGET
  local name=$1; shift
  local left=$(( BUDGET - ($(date +%s) - t_start) ))
  if (( left < 10 )); then echo "== $name: FAILED (not started: the ${BUDGET}s budget is spent)"; fail=1; return 1; fi
  echo "== $name"
  if timeout "$left" "$@" >"$work/logs/$name.log" 2>&1; then echo "   ok"
  else echo "   FAILED (see $work/logs/$name.log)"; tail -3 "$work/logs/$name.log"; fail=1; fi
}

[[ -f "$model/tiny-model.json" ]] || step model "${CLI[@]}" tiny-model "$model" --preset sd15
# the same profile as gpu_check.sh's export: on an existing directory export adds only the precisions it lacks
step export "${CLI[@]}" export --out "$engine" --base "$model/base" --ip-adapter "$model/ip-adapter" --height "$SIZE" \
  --width "$SIZE" --batch 2 --precision "fp32,${precisions// /,}" --calib-size "$CALIB_SIZE" --quant-base both
# the UNet step per graph first (the comparison this script is for), within STEP_SHARE % of the budget
step_budget=$(( BUDGET * STEP_SHARE / 100 - ($(date +%s) - t_start) ))
(( step_budget < 10 )) && step_budget=10
step unet-steps "$PY" benchmarks/gpu_int8_unet.py --engine-dir "$engine" --graphs "${graphs// /,}" \
  --work "$work/unet-plans" --runs "$STEP_RUNS" --opt-level "$OPT_LEVEL" --budget "$step_budget" --json "$work/logs/unet-steps.json"
for p in fp32 $precisions; do
  step "build-$p" "${CLI[@]}" build --engine-dir "$engine" --precision "$p" --opt-level "$OPT_LEVEL"
  step "bench-$p" "${CLI[@]}" bench --engine-dir "$engine" --backends trt --precision "$p" --runs "$RUNS" --json "$work/logs/bench-$p.json"
  for s in ${SEEDS//,/ }; do
    step "generate-$p-$s" "${CLI[@]}" generate --backend trt --engine-dir "$engine" --precision "$p" --image "$model/subject.png" \
      --prompt "a toy on the beach" --seed "$s" --save-arrays --out "$work/gen-$p-$s"
  done
done
if [[ $MASK_PASS_FP16 == 1 ]]; then  # pass 1 on the fp16 plans (built above): the mask's IoU against fp32
  for s in ${SEEDS//,/ }; do
    step "generate-int8maskfp16-$s" "$PY" benchmarks/gpu_int8_unet.py --mask-pass-fp16 --engine-dir "$engine" \
      --subject "$model/subject.png" --seed "$s" --out "$work/gen-int8maskfp16-$s" --work "$work/unet-plans"
  done
fi
# fp8 below compute capability 8.9: one line, exit 2 (shown, not a failure)
if [[ $fp8_ok == 0 ]]; then
  echo "== fp8 refused below compute capability 8.9:"
  "${CLI[@]}" build --engine-dir "$engine" --precision fp8 2>&1 | tail -1
fi

[[ -f $work/logs/unet-steps.json ]] && "$PY" benchmarks/gpu_int8_unet.py --table "$work/logs/unet-steps.json"
extra=""; [[ $MASK_PASS_FP16 == 1 ]] && extra="int8maskfp16"
"$PY" - "$work" "$SEEDS" fp32 $precisions $extra <<'EOF'

import json, sys
from pathlib import Path
import numpy as np
from monkey_trt.engine.compare import mask_iou, psnr
work, seeds, precisions = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3:]
def arrays(p, s):
    f = work / f"gen-{p}-{s}" / "arrays.npz"
    return np.load(f) if f.is_file() else None
def bench(p):
    f = work / "logs" / f"bench-{p}.json"
    if not f.is_file():
        return None
    r = json.loads(f.read_text())["results"][0]
    return r["end_to_end_s"]["p50"], sum(c["p50_s"] for c in r["unet_calls"])
print("| precision | p50 end to end s | UNet s | vs fp16 (UNet) | mask IoU vs fp32 (min) | PSNR vs fp16 dB (min) | PSNR vs fp32 dB (min) | max abs vs fp32 |")
print("|---|---|---|---|---|---|---|---|")
b16 = bench("fp16")
for p in precisions:
    b = bench(p)
    iou, p16, p32, mx = [], [], [], []
    for s in seeds:
        a, r16, r32 = arrays(p, s), arrays("fp16", s), arrays("fp32", s)
        if a is None or r32 is None:
            continue
        iou.append(mask_iou(r32["mask"], a["mask"]))
        p32.append(psnr(r32["image"], a["image"]))
        mx.append(float(np.abs(r32["image"] - a["image"]).max()))
        if r16 is not None:
            p16.append(psnr(r16["image"], a["image"]))
    f = lambda xs, d=1: "-" if not xs else f"{np.mean(xs):.{d}f} ({min(xs):.{d}f})"
    speed = "-" if not (b and b16) else f"{b16[1] / b[1]:.2f}x"
    print(f"| {p} | {'-' if not b else f'{b[0]:.3f}'} | {'-' if not b else f'{b[1]:.3f}'} | {speed} | {f(iou, 3)} | {f(p16)} | {f(p32)} | {'-' if not mx else f'{max(mx):.3f}'} |")
EOF
exit $fail
