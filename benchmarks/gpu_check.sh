#!/usr/bin/env bash
# The GPU check of monkey-trt: every GPU backend this machine can run, on the same work with the same options,
# against the CPU fp32 reference, then a soak, then one table.
#   1. monkey-trt doctor
#   2. the sd15-size model (random weights, real shapes) and the CPU fp32 reference generation (PyTorch)
#   3. an engine directory exported at batch 2 (fp32 + fp16 graphs; pass batching on every backend), when a
#      backend runs it here (TensorRT, ORT CUDA, ORT TensorRT EP); TensorRT plans fp32 and fp16
#   4. one row per backend, each opened from a BackendSpec by the same code (benchmarks/gpu_check_backend.py):
#      trt-fp32, trt-fp16, ort-cuda, ort-trt-ep, torch-fp32, torch-fp16, torch-fp32-graph (CUDA graphs on every
#      GPU row but torch-fp32, batched passes, TF32 off for fp32): seed 0 at SIZE, mask and image against the
#      reference (mask identical? IoU, PSNR), then SOAK generations (p50 end to end and per stage; CUDA graphs
#      captured once: the count after the first generation equals the count after the soak; memory flat)
#   5. with TensorRT: the int8/fp8 rows (benchmarks/gpu_int8.sh, reusing the engine directory, its own budget)
#   6. one table; every row that did not run says why
# It refuses nothing it can run, and it does not pass by skipping: with a GPU visible and no GPU row run it exits 4
# with the reasons. Sized for BUDGET (480 s) on the project's GPU box (PyTorch + CUDA, transformers, no diffusers, no
# TensorRT, no onnxruntime-gpu, no registry): there the torch rows run, with diffusers & co. from the carried wheel
# folder (benchmarks/gpu_wheels.sh makes it). `--cpu` runs the same logic on CPU stand-ins (tiny model, ort-cpu and
# torch-cpu rows), for the tests.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--cpu] [--work DIR] [--model DIR] [--engine DIR]
#   --dry-run  detect and print the plan, check the wheel folder (benchmarks/gpu_wheels.sh --check); run nothing heavy
#   --cpu      CPU stand-ins: the tiny model at SIZE 64, rows ort-cpu and torch-cpu (the GPU rows are skipped)
#   --work     where models, engines, rows and logs go (default: a new temporary folder; an existing one is reused)
#   --model    an existing `monkey-trt tiny-model` folder;  --engine  an existing engine directory (batch >= 2)
# Environment: SIZE (512; 64 with --cpu), SOAK (20), OPT_LEVEL (2), STEP_TIMEOUT (300 s), BUDGET (480 s: no step
#   starts after it, each ends by it), PYTHON (python), WHEELS (the carried wheels: default .whl/gpu-box when it
#   exists; each wheel whose distribution is not installed is installed --no-deps --no-index, failures shown).
# Exit: 0 every row that ran passed; 1 a row or step failed (a wheel install included); 2 usage; 3 no NVIDIA GPU
#   stack found (not with --cpu); 4 a GPU is visible but no GPU row ran (or, dry run, would run).
set -uo pipefail

dry_run=0; cpu=0; work=""; model=""; engine=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --cpu) cpu=1 ;;
    --work) work="${2:?--work needs a folder}"; shift ;;
    --model) model="${2:?--model needs a folder}"; shift ;;
    --engine) engine="${2:?--engine needs a folder}"; shift ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python}
if [[ $cpu == 1 ]]; then SIZE=${SIZE:-64}; else SIZE=${SIZE:-512}; fi
SOAK=${SOAK:-20}
OPT_LEVEL=${OPT_LEVEL:-2}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
BUDGET=${BUDGET:-480}
here=$(cd "$(dirname "$0")/.." && pwd) || exit 2
WHEELS=${WHEELS-$( [[ -d "$here/.whl/gpu-box" ]] && echo "$here/.whl/gpu-box" )}  # set but empty: none
cd "$here" || exit 2
work=${work:-$(mktemp -d -t monkey-gpu-check.XXXXXX)}
mkdir -p "$work/logs" "$work/rows" || exit 2
work=$(cd "$work" && pwd)
t_start=$(date +%s)
CLI=("$PY" -m monkey_trt.cli)  # never an activated venv's `monkey-trt`: this interpreter's package
probe() { "$PY" -c "$1" >/dev/null 2>&1; }

# -- what this machine has ---------------------------------------------------------------------------
has_gpu=0; torch_cuda=0; has_trt=0; ort_cuda=0; ort_trt=0; has_torch=0; has_diffusers=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then has_gpu=1; fi
probe "import torch" && has_torch=1
probe "import diffusers, transformers" && has_diffusers=1
wheels_state=""; wheels_note=""  # the carried wheels: a step of the table (ok / FAILED / planned)
if [[ -n "$WHEELS" && $cpu == 0 && ( $has_gpu == 1 || $dry_run == 1 ) ]]; then  # nothing to install without a GPU
  if [[ ! -d "$WHEELS" ]]; then wheels_state=FAILED; wheels_note="WHEELS=$WHEELS is not a folder"
  elif [[ $dry_run == 1 ]]; then
    if PYTHON="$PY" bash benchmarks/gpu_wheels.sh --out "$WHEELS" --check > "$work/logs/wheels.log" 2>&1; then wheels_state=planned
    else wheels_state=FAILED; fi
    wheels_note="$(tail -1 "$work/logs/wheels.log")"; cat "$work/logs/wheels.log"
  else
    # only the distributions this Python lacks: the box's own packages stay as they are
    todo=$("$PY" -c 'import re, sys
from importlib import metadata
from pathlib import Path
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    try:
        metadata.version(re.split(r"-[0-9]", w.name, maxsplit=1)[0])
    except metadata.PackageNotFoundError:
        print(w)' "$WHEELS")
    if [[ -z "$todo" ]]; then wheels_state=ok; wheels_note="nothing to install: every carried distribution is here"
    else
      echo "== installing carried wheels (--no-deps --no-index): $(echo "$todo" | xargs -n1 basename | tr '\n' ' ')"
      # shellcheck disable=SC2086
      if "$PY" -m pip install --no-deps --no-index $todo > "$work/logs/wheels.log" 2>&1; then
        wheels_state=ok; wheels_note="installed $(echo "$todo" | wc -l) wheels, log: logs/wheels.log"
      else
        wheels_state=FAILED; wheels_note="pip install failed: $(grep -v '^WARNING' "$work/logs/wheels.log" | tail -1)"
        echo "== carried wheels: install FAILED:"; tail -5 "$work/logs/wheels.log"
      fi
    fi
    probe "import diffusers, transformers" && has_diffusers=1
  fi
fi
if [[ $has_gpu == 1 ]]; then
  probe "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && torch_cuda=1
  probe "from monkey_trt.engine.trt.lib import require_tensorrt; from monkey_trt.engine.trt.cuda import require_cuda_device; require_tensorrt(); require_cuda_device()" && has_trt=1
  probe "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" && ort_cuda=1
  probe "import onnxruntime as o, sys; sys.exit(0 if 'TensorrtExecutionProvider' in o.get_available_providers() else 1)" && ort_trt=1
fi
gpu_name=$( [[ $has_gpu == 1 ]] && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo "none")

# -- steps and rows --------------------------------------------------------------------------------------
# every step and row: name|state|seconds|note, in $work/steps.txt (the table reads it)
: > "$work/steps.txt"
record() { printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" >> "$work/steps.txt"; }
[[ -n "$wheels_state" ]] && record wheels "$wheels_state" 0 "$wheels_note"
skip() { record "$1" skipped 0 "$2"; echo "== $1: skipped ($2)"; }
run() {  # run NAME COMMAND...: logged to $work/logs/NAME.log, bounded by STEP_TIMEOUT
  local name=$1; shift
  if [[ $dry_run == 1 ]]; then record "$name" planned 0 "$*"; echo "== $name: would run: $*"; return 0; fi
  local left=$(( BUDGET - ($(date +%s) - t_start) ))
  if (( left < 10 )); then record "$name" FAILED 0 "not started: the check's ${BUDGET}s budget is spent"; echo "== $name: over budget"; return 1; fi
  local limit=$(( left < STEP_TIMEOUT ? left : STEP_TIMEOUT ))
  echo "== $name: $*"
  local t0; t0=$(date +%s)
  timeout "$limit" "$@" > >(tee "$work/logs/$name.log") 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [[ $rc == 0 ]]; then record "$name" ok "$dt" "log: logs/$name.log"
  elif [[ $rc == 124 ]]; then record "$name" FAILED "$dt" "timed out after ${limit}s (step limit ${STEP_TIMEOUT}s, budget ${BUDGET}s)"
  else record "$name" FAILED "$dt" "exit $rc, log: logs/$name.log"; fi
  return $rc
}

echo "monkey-trt GPU check: GPU=$gpu_name torch=$has_torch torch-cuda=$torch_cuda diffusers=$has_diffusers tensorrt=$has_trt ort-cuda=$ort_cuda ort-trt-ep=$ort_trt cpu-mode=$cpu size=$SIZE work=$work"
run doctor "${CLI[@]}" doctor

preset=sd15; [[ $cpu == 1 ]] && preset=tiny
need_engine=0; [[ $has_trt == 1 || $ort_cuda == 1 || $ort_trt == 1 || $cpu == 1 ]] && need_engine=1
torch_ok=0; [[ $has_torch == 1 && $has_diffusers == 1 ]] && torch_ok=1
why_torch="PyTorch with diffusers and transformers is not installed (carry the wheels: benchmarks/gpu_wheels.sh)"
[[ $has_torch == 0 ]] && why_torch="PyTorch is not installed"

have_model=0
if [[ -n "$model" ]]; then have_model=1; record model ok 0 "given: $model"
elif [[ $torch_ok == 0 ]]; then skip model "$why_torch"
elif [[ $has_gpu == 0 && $cpu == 0 ]]; then skip model "no NVIDIA GPU: nothing to check here (--cpu runs the CPU stand-ins)"
else model="$work/$preset-model"; run model "${CLI[@]}" tiny-model "$model" --preset "$preset" && have_model=1; fi

have_ref=0
if [[ $have_model == 0 && $dry_run == 0 ]]; then skip reference "no model"
elif [[ $torch_ok == 0 ]]; then skip reference "$why_torch"
else
  run reference "$PY" benchmarks/gpu_check_backend.py --spec '{"backend": "torch"}' --model "$model" --size "$SIZE" \
      --save "$work/reference.npz" --out "$work/rows/reference.json" && have_ref=1
fi

have_engine=0
if [[ -n "$engine" ]]; then have_engine=1; record export ok 0 "given: $engine"
elif [[ $need_engine == 0 ]]; then skip export "no TensorRT, ORT CUDA or ORT TensorRT EP here: nothing runs an engine directory"
elif [[ $have_model == 0 && $dry_run == 0 ]]; then skip export "no model"
else
  engine="$work/$preset-engine-$SIZE"
  run export "${CLI[@]}" export --base "$model/base" --ip-adapter "$model/ip-adapter" --out "$engine" --height "$SIZE" \
      --width "$SIZE" --batch 2 --precision fp32,fp16 --no-fold && have_engine=1
fi

for p in fp32 fp16; do
  if [[ $has_trt == 0 ]]; then skip "build-$p" "TensorRT (or cuda-python, or a GPU) is not available"
  elif [[ $have_engine == 0 && $dry_run == 0 ]]; then skip "build-$p" "no engine directory"
  else run "build-$p" "${CLI[@]}" build --engine-dir "$engine" --precision "$p" --opt-level "$OPT_LEVEL" || true; fi
done

# name | available (1/0) | why not | BackendSpec (JSON): the same options everywhere they apply
rows=()
if [[ $cpu == 1 ]]; then
  rows+=("ort-cpu|1||{\"backend\": \"ort\", \"providers\": [\"cpu\"], \"batch_passes\": true, \"verify\": \"size\"}")
  rows+=("torch-cpu|$torch_ok|$why_torch|{\"backend\": \"torch\", \"batch_passes\": true}")
fi
no_gpu="no NVIDIA GPU visible (nvidia-smi)"
why_trt=$([[ $has_gpu == 0 ]] && echo "$no_gpu" || echo "TensorRT or cuda-python is not installed")
why_ort_cuda=$([[ $has_gpu == 0 ]] && echo "$no_gpu" || echo "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)")
why_ort_trt=$([[ $has_gpu == 0 ]] && echo "$no_gpu" || echo "onnxruntime has no TensorrtExecutionProvider")
why_torch_cuda=$([[ $has_gpu == 0 ]] && echo "$no_gpu" || { [[ $torch_ok == 0 ]] && echo "$why_torch" || echo "PyTorch has no CUDA"; })
torch_cuda_ok=0; [[ $torch_cuda == 1 && $torch_ok == 1 ]] && torch_cuda_ok=1
rows+=("trt-fp32|$has_trt|$why_trt|{\"backend\": \"trt\", \"precision\": \"fp32\", \"cuda_graph\": true, \"batch_passes\": true, \"verify\": \"size\"}")
rows+=("trt-fp16|$has_trt|$why_trt|{\"backend\": \"trt\", \"precision\": \"fp16\", \"cuda_graph\": true, \"batch_passes\": true, \"verify\": \"size\"}")
rows+=("ort-cuda|$ort_cuda|$why_ort_cuda|{\"backend\": \"ort\", \"providers\": [\"cuda\"], \"cuda_graph\": true, \"batch_passes\": true, \"verify\": \"size\"}")
rows+=("ort-trt-ep|$ort_trt|$why_ort_trt|{\"backend\": \"ort\", \"providers\": [\"tensorrt\"], \"cuda_graph\": true, \"batch_passes\": true, \"verify\": \"size\"}")
rows+=("torch-fp32|$torch_cuda_ok|$why_torch_cuda|{\"backend\": \"torch\", \"device\": \"cuda\", \"precision\": \"fp32\", \"batch_passes\": true}")
rows+=("torch-fp16|$torch_cuda_ok|$why_torch_cuda|{\"backend\": \"torch\", \"device\": \"cuda\", \"precision\": \"fp16\", \"cuda_graph\": true, \"batch_passes\": true}")
rows+=("torch-fp32-graph|$torch_cuda_ok|$why_torch_cuda|{\"backend\": \"torch\", \"device\": \"cuda\", \"precision\": \"fp32\", \"cuda_graph\": true, \"batch_passes\": true}")

gpu_rows=""
for r in "${rows[@]}"; do
  n=${r%%|*}; [[ $n != ort-cpu && $n != torch-cpu ]] && gpu_rows+="$n "
done
for r in "${rows[@]}"; do
  IFS='|' read -r name ok why spec <<< "$r"
  if [[ $ok == 0 ]]; then skip "$name" "$why"; continue; fi
  if [[ $dry_run == 0 && $have_model == 0 ]]; then skip "$name" "no model"; continue; fi
  args=(--spec "$spec" --model "$model" --size "$SIZE" --soak "$SOAK" --out "$work/rows/$name.json")
  [[ $spec != *'"torch"'* ]] && { [[ $have_engine == 1 || $dry_run == 1 ]] || { skip "$name" "no engine directory"; continue; }; args+=(--engine-dir "$engine"); }
  [[ $have_ref == 1 ]] && args+=(--reference "$work/reference.npz")
  run "$name" "$PY" benchmarks/gpu_check_backend.py "${args[@]}" || true
done

if [[ $has_trt == 1 ]]; then
  int8_args=(--work "$work/int8"); [[ $have_engine == 1 ]] && int8_args+=(--engine "$engine")
  [[ $have_model == 1 ]] && int8_args+=(--model "$model"); [[ $dry_run == 1 ]] && int8_args+=(--dry-run)
  run trt-int8-fp8 bash benchmarks/gpu_int8.sh "${int8_args[@]}" || true
else
  skip trt-int8-fp8 "$why_trt"
fi

# -- one table ----------------------------------------------------------------------------------------------
total=$(( $(date +%s) - t_start ))
echo
echo "== summary ($gpu_name; ${SIZE}x${SIZE}; ${total}s of a ${BUDGET}s budget; work folder $work)"
"$PY" - "$work" "$SOAK" <<'PYEOF'
import json, math, sys
from pathlib import Path

work, soak = Path(sys.argv[1]), int(sys.argv[2])
MIN_IOU, MIN_PSNR = 0.98, 35.0  # fp16 floors (export/fidelity.py); fp32 rows: mask identical
FLAT_MIB = 64.0  # memory drift over the soak that still counts as flat
head = ("row", "result", "secs", "mask=ref", "IoU", "PSNR dB", "max|diff|", "p50 s", "graphs", "GPU MiB", "RSS MiB", "note")
lines, failed, stages = [], False, []
for line in (work / "steps.txt").read_text().splitlines():
    name, state, secs, note = line.split("|", 3)
    cells = dict.fromkeys(head, "-")
    cells.update(row=name, result=state, secs=secs, note=note)
    f = work / "rows" / f"{name}.json"
    if state in ("ok", "FAILED") and f.is_file():
        r = json.loads(f.read_text())
        if r.get("status") != "ok":
            cells.update(result="FAILED", note=r.get("error", "")[:120])
        else:
            fp16 = r["spec"].get("precision") == "fp16"
            if "mask_identical" in r:
                cells["mask=ref"] = "yes" if r["mask_identical"] else "NO"
                cells["IoU"] = f"{r['mask_iou']:.3f}"
                cells["PSNR dB"] = "inf" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f}"
                cells["max|diff|"] = f"{r['max_abs_diff']:.1e}"
                good = (r["mask_iou"] >= MIN_IOU and r["psnr_db"] >= MIN_PSNR) if fp16 else r["mask_identical"]
                if not good:
                    cells.update(result="FAILED", note="below the fidelity floor" + (" (IoU 0.98, 35 dB)" if fp16 else " (mask must be identical)"))
            cells["p50 s"] = f"{r.get('p50_s', 0):.3f}"
            g0, g1 = r.get("graphs_after_first"), r.get("graphs_after_soak")
            if g0 is not None and g1 is not None:
                cells["graphs"] = f"{g0}->{g1}"
                if r["spec"].get("cuda_graph") and g1 != g0:
                    cells.update(result="FAILED", note="CUDA graphs captured again during the soak")
            for key, a, b in (("GPU MiB", "gpu_start_mib", "gpu_end_mib"), ("RSS MiB", "rss_start_mib", "rss_end_mib")):
                if r.get(a) is not None and r.get(b) is not None:
                    cells[key] = f"{r[a]:.0f}->{r[b]:.0f}"
                    if soak and r[b] - r[a] > FLAT_MIB and cells["result"] == "ok":
                        cells.update(result="FAILED", note=f"{key.split()[0]} memory grew {r[b] - r[a]:.0f} MiB over {r['soak']} generations")
            if cells["result"] == "ok":
                cells["note"] = f"soak {r.get('soak', 0)}, batched steps {r.get('batched_steps')}"
            if r.get("stages_p50_s"):
                stages.append((name, r["stages_p50_s"]))
    failed |= cells["result"] == "FAILED"
    lines.append(cells)
widths = {h: max(len(h), *(len(str(c[h])) for c in lines)) for h in head[:-1]}
print("  ".join(h.ljust(widths[h]) for h in head[:-1]) + "  note")
for c in lines:
    print("  ".join(str(c[h]).ljust(widths[h]) for h in head[:-1]) + "  " + c["note"])
if stages:  # per-stage p50 over the soak (the first generation when there is none)
    names = list(dict.fromkeys(k for _row, st in stages for k in st))
    w = {n: max(8, len(n)) for n in names}
    print("\nper-stage p50 s  " + "  ".join([f"{'row':16}", *(f"{n:>{w[n]}}" for n in names)]))
    for row, st in stages:
        print("                 " + "  ".join([f"{row:16}", *(f"{st[n]:{w[n]}.3f}" if n in st else f"{'-':>{w[n]}}" for n in names)]))
(work / "failed").write_text("1" if failed else "0")
PYEOF
failed=$(cat "$work/failed" 2>/dev/null || echo 1)
if [[ $dry_run == 1 ]]; then echo "dry run: nothing heavy ran"; fi
if [[ $failed == 1 ]]; then exit 1; fi
if [[ $cpu == 0 && $has_gpu == 0 ]]; then echo "no NVIDIA GPU stack found: only doctor ran"; exit 3; fi
if [[ $cpu == 0 ]]; then  # a GPU is visible: the check passes only if a GPU row ran (dry run: would run)
  ran=$(awk -F'|' -v rows="$gpu_rows" 'BEGIN { n = split(rows, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
        want[$1] && ($2 == "ok" || $2 == "planned") { c++ } END { print c + 0 }' "$work/steps.txt")
  if [[ $ran == 0 ]]; then
    why=$(awk -F'|' '$2 == "skipped" && $1 ~ /^(trt|ort|torch)-/ { printf "%s%s: %s", sep, $1, $4; sep = "; " }' "$work/steps.txt")
    echo "error: a GPU is visible ($gpu_name) but no GPU row $([[ $dry_run == 1 ]] && echo "would run" || echo ran): $why" >&2
    exit 4
  fi
fi
exit 0
