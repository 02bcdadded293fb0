"""API conformance of the TensorRT backend: every TensorRT, Polygraphy and cuda-python name engine/trt/
touches is listed in engine/trt/api_names.py, and the list is checked against the published wheels' names
(tests/data/api_names.json, everywhere), Polygraphy's real signatures (where installed) and the
installed TensorRT / cuda-python (`gpu`)."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from monkey_trt.engine.trt import api_names as trt_api
from monkey_trt.engine.trt.cuda import require_cudart

NAMES = json.loads((Path(__file__).parent / "data" / "api_names.json").read_text())
ROOTS = {"trt": "tensorrt", "cudart": "cuda runtime", "pg": "polygraphy"}
# the backend's code: every module of engine/trt/ but the list itself
BACKEND = sorted(p for p in Path(trt_api.__file__).parent.glob("*.py") if p.name != "api_names.py")


def _backend_touched() -> dict[str, set[str]]:
    """_touched over every backend module, each parsed on its own."""
    out: dict[str, set[str]] = {r: set() for r in ROOTS}
    for path in BACKEND:
        for root, names in _touched(path.read_text()).items():
            out[root] |= names
    return out


def _touched(source: str) -> dict[str, set[str]]:
    """Dotted names reached from the local names trt / cudart / pg in `source` (e.g. trt.DataType.HALF)."""
    out: dict[str, set[str]] = {r: set() for r in ROOTS}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in ROOTS:
                out[cur.id].add(".".join(reversed(parts)))
        for child in ast.iter_child_nodes(node):
            child._parent = node  # type: ignore[attr-defined]
    return out


def test_every_name_engine_code_touches_is_listed():
    touched = _backend_touched()
    versioned = {n for name, (_since, before) in trt_api.TENSORRT_VERSIONED.items() for n in (name, before) if n}
    listed = {"trt": set(trt_api.TENSORRT) | versioned, "cudart": set(trt_api.CUDA_RUNTIME),
              "pg": {n.split(".")[0] for n in trt_api.POLYGRAPHY}}
    for root, names in touched.items():
        assert names, f"found no {root}.X use: the scan is broken"
        unlisted = sorted(n for n in names if n not in listed[root])
        assert not unlisted, f"engine/trt/ uses {ROOTS[root]} names missing from engine/trt/api_names.py: {unlisted}"


def test_scan_finds_a_new_name():
    assert _touched("def f(trt):\n    return trt.BuilderFlag.FP16\n")["trt"] == {"BuilderFlag.FP16"}


def test_engine_code_never_uses_names_removed_in_tensorrt_11():
    for name in trt_api.TENSORRT_REMOVED_IN_11:
        assert not any(name in p.read_text() for p in BACKEND), f"{name} is gone in TensorRT 11; strongly typed networks decide precision"


@pytest.mark.parametrize("version", sorted(NAMES["tensorrt"]))
def test_tensorrt_names_exist_in_published_wheels(version):
    entry = NAMES["tensorrt"][version]
    for name in trt_api.TENSORRT:
        leaf = name.split(".")[-1]
        assert leaf in entry["present"] + entry["absent"], f"{leaf} was never extracted: run tests/data/extract_api_names.py"
        assert leaf in entry["present"], f"TensorRT {version} has no {name}"
    if version.startswith("11."):  # why the engine code builds strongly typed networks without precision flags
        assert {"FP16", "EXPLICIT_BATCH"} <= set(entry["absent"])
    else:
        assert "FP16" in entry["present"]


def _release(version: str) -> tuple[int, int]:
    """'10.13.3.9 (cu12)' or '10.1' -> (10, 13) / (10, 1)."""
    major, minor = version.split()[0].split(".")[:2]
    return int(major), int(minor)


@pytest.mark.parametrize("version", sorted(NAMES["tensorrt"]))
def test_versioned_tensorrt_names_exist_where_used(version):
    """A name of some versions only is in every wheel from its first version on; before, its stand-in is."""
    entry = NAMES["tensorrt"][version]
    for name, (since, before) in trt_api.TENSORRT_VERSIONED.items():
        for n in (name, before):
            if n:
                assert n.split(".")[-1] in entry["present"] + entry["absent"], f"{n} was never extracted: run tests/data/extract_api_names.py"
        if _release(version) >= _release(since):
            assert name.split(".")[-1] in entry["present"], f"TensorRT {version} has no {name} (listed as there since {since})"
        elif before is not None:
            assert before.split(".")[-1] in entry["present"], f"TensorRT {version} has neither {name} nor its stand-in {before}"


def test_versioned_names_cover_the_oldest_and_newest_wheels():
    """The stand-ins are needed: 10.0 lacks the v2 memory API, 11 lacks device_memory_size."""
    oldest = NAMES["tensorrt"][min(NAMES["tensorrt"], key=_release)]
    newest = NAMES["tensorrt"][max(NAMES["tensorrt"], key=_release)]
    assert {"device_memory_size_v2", "set_device_memory"} <= set(oldest["absent"])
    assert "device_memory_size" in newest["absent"]


def test_published_wheels_cover_tensorrt_10_and_11_and_cuda_python_12_and_13():
    majors = {v.split(".")[0] for v in NAMES["tensorrt"]}
    assert {"10", "11"} <= majors
    assert {v.split(".")[0] for v in NAMES["cuda-bindings"]} >= {"12", "13"}


@pytest.mark.parametrize("version", sorted(NAMES["cuda-bindings"]))
def test_cuda_runtime_names_exist_in_published_wheels(version):
    entry = NAMES["cuda-bindings"][version]
    for name in trt_api.CUDA_RUNTIME + trt_api.CUDA_UTILS:
        leaf = name.split(".")[-1]
        assert leaf in entry["present"], f"cuda-bindings {version} has no {name}"


def _params(obj) -> set[str]:
    """Parameter names a callable accepts; a class's **kwargs are resolved through its bases' __init__."""
    if inspect.isclass(obj):
        names: set[str] = set()
        for cls in obj.__mro__:
            if "__init__" in vars(cls):
                ps = inspect.signature(vars(cls)["__init__"]).parameters.values()
                names |= {p.name for p in ps if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
        return names
    return set(inspect.signature(obj).parameters)


def test_polygraphy_calls_match_its_signatures():
    pg = pytest.importorskip("polygraphy.backend.trt")
    for name, kwargs in trt_api.POLYGRAPHY.items():
        obj = pg
        for part in name.split("."):
            obj = getattr(obj, part)
        missing = sorted(set(kwargs) - _params(obj))
        assert not missing, f"polygraphy.backend.trt.{name} takes no {missing}"


def test_signature_check_can_fail():
    pg = pytest.importorskip("polygraphy.backend.trt")
    assert "fp16_flag" not in _params(pg.CreateConfig) and "strongly_typed" in _params(pg.network_from_onnx_path)


def _resolve(module, dotted: str):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.gpu
def test_installed_tensorrt_has_every_name():
    trt = pytest.importorskip("tensorrt")
    missing = [n for n in trt_api.TENSORRT if not _has(trt, n)]
    assert not missing, f"TensorRT {trt.__version__} lacks {missing}"
    for name, (since, before) in trt_api.TENSORRT_VERSIONED.items():
        if _release(trt.__version__) >= _release(since):
            assert _has(trt, name), f"TensorRT {trt.__version__} lacks {name} (listed as there since {since})"
        elif before is not None:
            assert _has(trt, before), f"TensorRT {trt.__version__} lacks {before}, the stand-in for {name}"


@pytest.mark.gpu
def test_installed_cuda_python_has_every_name():
    pytest.importorskip("cuda")
    cudart = require_cudart()
    missing = [n for n in trt_api.CUDA_RUNTIME if not _has(cudart, n)]
    assert not missing, f"cuda-python lacks {missing}"


def _has(module, dotted: str) -> bool:
    try:
        _resolve(module, dotted)
    except AttributeError:
        return False
    return True
