"""Compare two snapshots of benchmarks/golden_run.sh: arrays, PNGs and graphs must be bit-equal.

    python benchmarks/golden_compare.py BEFORE AFTER

Prints one line per compared item and a summary; exits 1 if an array, PNG or ONNX graph differs.
Timings, paths and versions (result.json, bench.json) are compared on their stable fields only;
`--help` texts are diffed and shown (a renamed option is a review item, not a failure).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

STABLE_RESULT_KEYS = ("seed", "height", "width", "prompt", "config", "mask", "batched_steps", "files")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _arrays_equal(a: Path, b: Path) -> tuple[bool, str]:
    with np.load(a) as x, np.load(b) as y:
        if sorted(x.files) != sorted(y.files):
            return False, f"keys {sorted(x.files)} vs {sorted(y.files)}"
        for k in x.files:
            if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape or x[k].tobytes() != y[k].tobytes():
                diff = np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)).max() if x[k].shape == y[k].shape else "shape"
                return False, f"{k}: max abs diff {diff}"
    return True, ""


def _same_graph(a: Path, b: Path) -> tuple[bool, str]:
    """Byte-equal, or the same graph but for the names of symbolic dims (nodes, weights, inputs and outputs by name,
    type and rank): exports before the canonical dims named derived dims after the process's hash seed."""
    if _sha(a) == _sha(b):
        return True, ""
    import onnx

    x, y = onnx.load(str(a), load_external_data=False), onnx.load(str(b), load_external_data=False)
    sig = lambda vs: [(v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)) for v in vs]  # noqa: E731
    same = (list(x.graph.node) == list(y.graph.node) and list(x.graph.initializer) == list(y.graph.initializer)
            and sig(x.graph.input) == sig(y.graph.input) and sig(x.graph.output) == sig(y.graph.output)
            and x.opset_import == y.opset_import)
    return same, "" if same else "nodes, weights or signature differ"


def _stable(doc: dict, keys) -> dict:
    return {k: doc.get(k) for k in keys}


def main(before: Path, after: Path) -> int:
    failures: list[str] = []

    def check(label: str, ok: bool, why: str = "") -> None:
        print(f"{'same' if ok else 'DIFF'}  {label}{'' if ok else '  ' + why}")
        if not ok:
            failures.append(label)

    for gen in sorted((before / "gen").iterdir()):
        other = after / "gen" / gen.name
        for f in sorted(gen.iterdir()):
            g = other / f.name
            label = f"gen/{gen.name}/{f.name}"
            if not g.exists():
                check(label, False, "missing after")
            elif f.suffix == ".npz":
                check(label, *_arrays_equal(f, g))
            elif f.suffix == ".png":
                check(label, _sha(f) == _sha(g), "bytes differ")
            elif f.name == "result.json":
                a, b = json.loads(f.read_text()), json.loads(g.read_text())
                same = _stable(a, STABLE_RESULT_KEYS) == _stable(b, STABLE_RESULT_KEYS)
                check(label + " (stable fields)", same, "seed/size/prompt/config/mask/files differ")
    for f in sorted((before / "engine").rglob("*")):
        if f.is_file() and (f.suffix in (".onnx", ".data", ".json", ".txt") or f.name.endswith(".onnx.data")):
            rel = f.relative_to(before)
            g = after / rel
            if f.name == "manifest.json":
                a, b = json.loads(f.read_text()), json.loads(g.read_text())
                for m in (a, b):  # where the snapshot was written, when, and with which library versions
                    for k in ("created", "created_unix", "versions", "export_seconds", "source"):
                        m.pop(k, None)
                    for entry in m.get("networks", {}).values():  # graph digests: compared graph by graph above
                        entry.pop("sha256", None), entry.pop("sizes", None)
                        for prec in entry.get("precisions", {}).values():
                            prec.pop("sha256", None), prec.pop("sizes", None)
                            prec.get("quantization", {}).get("calibration", {}).pop("networks_sha256", None)
                    for entry in m.get("networks", {}).values():
                        for prec in entry.get("precisions", {}).values():
                            prec.get("quantization", {}).get("calibration", {}).pop("reused_cache", None)
                check(str(rel) + " (without times/versions)", a == b, "manifest fields differ")
            elif f.suffix == ".onnx":
                ok, why = _same_graph(f, g) if g.exists() else (False, "missing after")
                check(str(rel) + ("" if ok and _sha(f) == _sha(g) else " (same graph; symbolic dim names differ)" if ok else ""), ok, why)
            else:
                check(str(rel), g.exists() and _sha(f) == _sha(g), "bytes differ")
    a, b = json.loads((before / "bench.json").read_text()), json.loads((after / "bench.json").read_text())
    masks = [[r["backend"], r["mask_sha256"], r["batched_steps"], r["mask_equals_first"]] for r in a["results"]]
    masks_b = [[r["backend"], r["mask_sha256"], r["batched_steps"], r["mask_equals_first"]] for r in b["results"]]
    check("bench.json (backends, masks, batched steps)", masks == masks_b, f"{masks} vs {masks_b}")
    check("bench.json (keys of each result)", [sorted(r) for r in a["results"]] == [sorted(r) for r in b["results"]],
          "result keys differ")
    for f in sorted((before / "help").iterdir()):
        g = after / "help" / f.name
        old, new = f.read_text().splitlines(), (g.read_text().splitlines() if g.exists() else [])
        if old != new:
            print(f"help  {f.name} changed:")
            for line in difflib.unified_diff(old, new, lineterm="", n=0):
                if not line.startswith(("---", "+++", "@@")):
                    print("      " + line)
        else:
            print(f"same  help/{f.name}")
    print(f"\n{len(failures)} difference(s)" + (": " + ", ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
