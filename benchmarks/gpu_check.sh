#!/usr/bin/env bash
# One check of monkey-trt on an NVIDIA GPU machine, after `pip install '.[export,gpu,dev]'` (with a
# CUDA build of PyTorch). Runs what the machine can, says what it skipped, ends with a summary:
#   1. monkey-trt doctor
#   2. the `gpu` tests (pytest -m gpu)
#   3. an sd15-size export (random weights, real shapes) at 512x512, fp32 + fp16 graphs
#   4. TensorRT plans for both precisions                         (needs tensorrt + cuda-python)
#   5. monkey-trt bench at 512x512: torch (cuda), ort (CUDA provider), trt, per precision
# Target: under 10 minutes on one H100-class GPU. Where TensorRT is absent but torch has CUDA it
# runs 1-3 and the torch/ort parts of 5; without any NVIDIA GPU it runs 1 only.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--work DIR]
#   --dry-run  detect and print the plan (what would run, what would be skipped); run nothing heavy
#   --work     where the model, engine directory and logs go (default: a new temporary folder);
#              an existing folder is reused (the export and builds are cached there)
# Environment: SIZE (512), RUNS (3), OPT_LEVEL (TensorRT builder level, 2), STEP_TIMEOUT (seconds, 420).
# Exit: 0 every step that ran passed and a GPU step ran; 1 a step failed; 2 usage; 3 no NVIDIA GPU stack found.
set -uo pipefail

dry_run=0
work=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --work) work="${2:?--work needs a folder}"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
SIZE=${SIZE:-512}
RUNS=${RUNS:-3}
OPT_LEVEL=${OPT_LEVEL:-2}
STEP_TIMEOUT=${STEP_TIMEOUT:-420}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.." || exit 2
work=${work:-$(mktemp -d -t monkey-gpu-check.XXXXXX)}
mkdir -p "$work/logs" || exit 2
t_start=$(date +%s)

# -- what this machine has -------------------------------------------------------------------
probe() { "$PY" -c "$1" >/dev/null 2>&1; }
has_gpu=0; has_torch_cuda=0; has_trt=0; has_ort_cuda=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then has_gpu=1; fi
probe "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && has_torch_cuda=1
probe "from monkey_trt.engine.trt.lib import require_tensorrt; from monkey_trt.engine.trt.cuda import require_cuda_device; require_tensorrt(); require_cuda_device()" && has_trt=1
probe "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" && has_ort_cuda=1
if [[ $has_gpu == 0 ]]; then has_torch_cuda=0; has_trt=0; has_ort_cuda=0; fi
gpu_name=$( [[ $has_gpu == 1 ]] && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo "none")

backends=(); [[ $has_torch_cuda == 1 ]] && backends+=(published torch); [[ $has_ort_cuda == 1 ]] && backends+=(ort); [[ $has_trt == 1 ]] && backends+=(trt)
join() { local IFS=,; echo "$*"; }

# -- steps -------------------------------------------------------------------------------------
names=(); states=(); secs=(); notes=()
record() { names+=("$1"); states+=("$2"); secs+=("$3"); notes+=("$4"); }
skip() { record "$1" skipped 0 "$2"; echo "== $1: skipped ($2)"; }
run() {  # run NAME COMMAND...: logged to $work/logs/NAME.log, bounded by STEP_TIMEOUT
  local name=$1; shift
  if [[ $dry_run == 1 ]]; then record "$name" planned 0 "$*"; echo "== $name: would run: $*"; return 0; fi
  echo "== $name: $*"
  local t0; t0=$(date +%s)
  timeout "$STEP_TIMEOUT" "$@" > >(tee "$work/logs/$name.log") 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [[ $rc == 0 ]]; then record "$name" ok "$dt" "log: logs/$name.log"
  elif [[ $rc == 124 ]]; then record "$name" FAILED "$dt" "timed out after ${STEP_TIMEOUT}s"
  else record "$name" FAILED "$dt" "exit $rc, log: logs/$name.log"; fi
  return $rc
}

echo "monkey-trt GPU check: GPU=$gpu_name torch-cuda=$has_torch_cuda tensorrt=$has_trt ort-cuda=$has_ort_cuda work=$work"
run doctor monkey-trt doctor

if [[ $has_gpu == 1 ]]; then
  run gpu-tests "$PY" -m pytest -m gpu -q -p no:cacheprovider
else
  skip gpu-tests "no NVIDIA GPU visible (nvidia-smi)"
fi

model="$work/sd15-model"; engine="$work/sd15-engine"
exported=0
if [[ $has_torch_cuda == 1 || $has_gpu == 1 ]]; then
  if run sd15-model monkey-trt tiny-model "$model" --preset sd15 &&
     run export-${SIZE} monkey-trt export --base "$model/base" --ip-adapter "$model/ip-adapter" --out "$engine" \
         --height "$SIZE" --width "$SIZE" --precision fp32,fp16 --no-fold; then exported=1; fi
else
  skip sd15-model "no NVIDIA GPU: the sd15 export is only needed for the GPU backends"
  skip export-${SIZE} "no NVIDIA GPU"
fi

for p in fp32 fp16; do
  if [[ $has_trt == 0 ]]; then skip "build-$p" "TensorRT (or cuda-python, or a GPU) is not available"
  elif [[ $exported == 0 && $dry_run == 0 ]]; then skip "build-$p" "the export did not succeed"
  else run "build-$p" monkey-trt build --engine-dir "$engine" --precision "$p" --opt-level "$OPT_LEVEL" || true; fi
done

# fp32: every backend in fp32; fp16: published/torch with --dtype fp16 (+ CUDA graphs for ours), ort/trt on the fp16 graphs
for p in fp32 fp16; do
  list=("${backends[@]}")
  if [[ ${#list[@]} == 0 ]]; then skip "bench-$p" "no GPU backend can run $p here"; continue; fi
  if [[ $exported == 0 && $dry_run == 0 ]]; then skip "bench-$p" "the export did not succeed"; continue; fi
  graphs=(); [[ $p == fp16 ]] && graphs=(--cuda-graph)
  run "bench-$p" monkey-trt bench --engine-dir "$engine" --backends "$(join "${list[@]}")" --base "$model/base" \
      --ip-adapter "$model/ip-adapter" --height "$SIZE" --width "$SIZE" --runs "$RUNS" --warmup 1 --device cuda \
      --precision "$p" --dtype "$p" "${graphs[@]}" --json "$work/bench-$p.json" || true
done

# -- summary -----------------------------------------------------------------------------------
total=$(( $(date +%s) - t_start ))
echo
echo "== summary ($gpu_name; ${total}s; work folder $work)"
printf '%-14s %-8s %6s  %s\n' step result secs note
failed=0; ran_gpu=0
for i in "${!names[@]}"; do
  printf '%-14s %-8s %6s  %s\n' "${names[$i]}" "${states[$i]}" "${secs[$i]}" "${notes[$i]}"
  [[ ${states[$i]} == FAILED ]] && failed=1
  [[ ${states[$i]} == ok && ${names[$i]} != doctor ]] && ran_gpu=1
done
for p in fp32 fp16; do
  [[ -f "$work/bench-$p.json" ]] && "$PY" - "$work/bench-$p.json" "$p" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
rows, s = d.get("results", []), d.get("settings", {})
if rows:
    base = rows[0]["end_to_end_s"]["p50"]
    print(f"bench {sys.argv[2]} {s.get('width')}x{s.get('height')} (p50, ratio to {rows[0]['backend']}; mask equal): " + ", ".join(
        f"{r['backend']} {r['end_to_end_s']['p50']:.3f}s ({base / r['end_to_end_s']['p50']:.2f}x; {r['mask_equals_first']})" for r in rows))
PYEOF
done
if [[ $dry_run == 1 ]]; then echo "dry run: nothing heavy ran"; fi
if [[ $failed == 1 ]]; then exit 1; fi
if [[ $has_gpu == 0 ]]; then echo "no NVIDIA GPU stack found: only doctor ran"; exit 3; fi
if [[ $dry_run == 0 && $ran_gpu == 0 ]]; then exit 3; fi
exit 0
