"""Regenerate tests/data/api_names.json from the published wheels (run by hand; needs network + unzip).

    pip download --no-deps -d W/trt-10.0.1 tensorrt-cu12-bindings==10.0.1     (and the other versions)
    pip download --no-deps -d W/cb-13.4.4 cuda-bindings==13.4.4
    python tests/data/extract_api_names.py W > tests/data/api_names.json

For each wheel it records which leaf names of engine/trt/api_names.py (plus the names removed in 11 and the
versioned names with their stand-ins)
are defined by the bindings (whole strings of `tensorrt.so` + its `__init__.py`; `cuda/bindings/runtime*.so` and
`cuda/bindings/utils/*.py`): "present" and "absent", so a name nobody extracted is "unknown".
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

from monkey_trt.engine.trt import api_names as trt_api


def leaves(names) -> set[str]:
    return {n.split(".")[-1] for n in names}


def strings(name: str, blob: bytes) -> set[str]:
    """Identifiers defined by one file: whole NUL-terminated strings of a shared object (pybind11/Cython
    register each name as its own string; prose in docstrings does not count), any identifier of a .py."""
    if name.endswith((".py", ".pxd", ".pyx")):
        return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", blob.decode("utf-8", "replace")))
    return {s.decode() for s in blob.split(b"\0") if re.fullmatch(rb"[A-Za-z_][A-Za-z0-9_]*", s)}


def has(name: str, found: set[str]) -> bool:
    """`name` is defined: a whole identifier string, or the tail of one (linkers merge "ERROR" into "kERROR")."""
    return name in found or any(s.endswith(name) for s in found)


def main(folder: str) -> None:
    out: dict = {"tensorrt": {}, "cuda-bindings": {}}
    versioned = [n for name, (_since, before) in trt_api.TENSORRT_VERSIONED.items() for n in (name, before) if n]
    want_trt = leaves(trt_api.TENSORRT + trt_api.TENSORRT_REMOVED_IN_11 + tuple(versioned))
    want_cuda = leaves(trt_api.CUDA_RUNTIME + trt_api.CUDA_UTILS)
    for whl in sorted(Path(folder).rglob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            version = whl.name.split("-")[1]
            if whl.name.startswith("tensorrt_cu"):
                found = set().union(*(strings(n, z.read(n)) for n in z.namelist()
                                      if re.search(r"tensorrt[^/]*/(tensorrt\.so|__init__\.py)$", n)))
                kind, want = "tensorrt", want_trt
                version = f"{version} ({whl.name.split('-')[0].replace('tensorrt_', '').replace('_bindings', '')})"
            elif whl.name.startswith("cuda_bindings"):
                found = set().union(*(strings(n, z.read(n)) for n in z.namelist()
                                      if re.search(r"cuda/bindings/(runtime[^/]*\.so|(cy)?runtime\.pxd|utils/__init__\.py)$", n)))
                kind, want = "cuda-bindings", want_cuda
            else:
                continue
        present = {n for n in want if has(n, found)}
        out[kind][version] = {"present": sorted(present), "absent": sorted(want - present)}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
