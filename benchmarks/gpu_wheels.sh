#!/usr/bin/env bash
# The carry recipe of the GPU check: the wheels the GPU box lacks for the torch rows, in one git-ignored folder that
# travels with the repository (benchmarks/gpu_check.sh installs them with --no-deps --no-index, and shows failures).
#
# The box (the project's lent H100/H200 machines): PyTorch + CUDA, cupy, onnx, CPU onnxruntime, transformers 5.x and
# what it pulls in (huggingface-hub, tokenizers, safetensors, typer, rich, numpy, pillow, ...); no diffusers; no
# package registry; at most 64 MiB carried with the repository. What the torch path imports that such a box lacks:
# diffusers (pinned to a release that runs with transformers 5.x) and the distributions diffusers checks for at
# import (requests with urllib3, certifi, charset-normalizer; importlib_metadata with zipp). All pure Python
# (py3-none-any); diffusers 0.42 needs Python >= 3.11 on the box (the install says so in one line if not). Checked here by a fresh venv holding only torch,
# transformers 5.x, numpy, onnx, onnxruntime and pillow plus these wheels: `monkey-trt doctor`, `tiny-model` and
# the torch row of benchmarks/gpu_check_backend.py run.
#
# Usage: benchmarks/gpu_wheels.sh [--out DIR] [--check]
#   --out    the folder (default .whl/gpu-box, git-ignored); wheels already there are kept
#   --check  download nothing: check DIR (pure-Python wheels only, installable, total under the limit) and list it
# Environment: DIFFUSERS (0.42.1), LIMIT_MIB (64: the carry limit; the repository's tracked files count too), PYTHON
# Exit: 0 ok; 1 a download failed or the folder is over the limit / not installable; 2 usage.
set -uo pipefail

out=""; check=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift ;;
    --check) check=1 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
here=$(cd "$(dirname "$0")/.." && pwd) || exit 2
out=${out:-$here/.whl/gpu-box}
PY=${PYTHON:-python3}
DIFFUSERS=${DIFFUSERS:-0.42.1}
LIMIT_MIB=${LIMIT_MIB:-64}
WANT=("diffusers==$DIFFUSERS" requests urllib3 certifi charset-normalizer importlib_metadata zipp)

if [[ $check == 0 ]]; then
  mkdir -p "$out" || exit 1
  echo "== downloading ${#WANT[@]} pure-Python wheels into $out"
  if ! "$PY" -m pip download --no-deps --only-binary=:all: --platform any --implementation py --python-version 3.11 \
       -d "$out" "${WANT[@]}" 2>&1 | grep -v "^WARNING: Location"; then :; fi
fi
[[ -d "$out" ]] || { echo "error: no wheel folder $out (run benchmarks/gpu_wheels.sh first)" >&2; exit 1; }

"$PY" - "$out" "$LIMIT_MIB" "$here" "${WANT[@]}" <<'PYEOF'
import re, subprocess, sys
from pathlib import Path

out, limit, repo, want = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
wheels = sorted(out.glob("*.whl"))
bad = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
names = {re.split(r"-\d", w.name, 1)[0].lower().replace("_", "-") for w in wheels}
missing = [n for n in want if re.split(r"[=<>]", n, 1)[0].lower().replace("_", "-") not in names]
wheel_mib = sum(w.stat().st_size for w in wheels) / 2**20
try:
    tracked = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    repo_mib = sum((repo / t.decode()).stat().st_size for t in tracked if t and (repo / t.decode()).is_file()) / 2**20
except (OSError, subprocess.CalledProcessError):
    repo_mib = 0.0
print(f"{'wheel':60} {'MiB':>7}")
for w in wheels:
    print(f"{w.name:60} {w.stat().st_size / 2**20:7.2f}")
total = wheel_mib + repo_mib
print(f"{len(wheels)} wheels, {wheel_mib:.1f} MiB; with the repository's tracked files ({repo_mib:.1f} MiB): {total:.1f} MiB of {limit:.0f} MiB")
ok = True
if bad:
    print(f"error: not pure-Python (the box's Python is not known here): {', '.join(bad)}"); ok = False
if missing:
    print(f"error: missing from {out}: {', '.join(missing)}"); ok = False
if total > limit:
    print(f"error: {total:.1f} MiB is over the {limit:.0f} MiB carry limit"); ok = False
if wheels:
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--ignore-installed",
                        "--quiet", *map(str, wheels)], capture_output=True, text=True)
    if r.returncode != 0:
        print("error: pip cannot install them:\n" + r.stderr.strip()[-2000:]); ok = False
sys.exit(0 if ok else 1)
PYEOF
