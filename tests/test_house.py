"""House rules that keep the next backend, knob or subject a small change (checked on the source, nothing run).

* backend fields (backend, precision, providers, threads, ...) are declared in BackendSpec only: options and
  configs hold a BackendSpec; records that *report* what ran (a result row, a tensor's dtype) are listed below
  with the reason they are not options;
* backend names are written in the backend table only (runtime/backend.py), never as literal lists elsewhere;
* one definition of each shared name (ModelSource, TensorDesc, mask_iou, ...);
* docstrings cite docs/method.md, never a file the repository does not have;
* the README's architecture map lists every module of monkey_trt/.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from monkey_trt.runtime.backend import BACKEND_TABLE, BackendSpec

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "monkey_trt"
SOURCES = sorted(PKG.rglob("*.py"))

# dataclass fields named like a backend field that are records of what ran, not options
RECORDS = {
    "MonkeyOutput.backend": "which backend produced an output (runtime/result.py)",
    "BackendResult.backend": "a bench result row names its backend",
    "TensorDesc.dtype": "a tensor's dtype",
    "StaticInputs.device": "a handle's device buffers",
    "Unit.precision": "an eval image's precision (one of the precisions compared)",
    "Row.precision": "an eval row's precision",
    "SummaryRow.precision": "an eval summary row's precision",
    "QuantSettings.precision": "the 8-bit format of a quantized graph (recorded in the manifest)",
    "QuantReport.precision": "the 8-bit format of a quantized graph (recorded in the manifest)",
    "BuildConfig.precision": "which ONNX graphs a TensorRT plan is built from (part of the plan's cache key)",
    "BuildConfig.tf32": "whether a TensorRT plan is built with TF32 (`build --tf32`; part of the plan's cache key)",
}


def _dataclass_fields() -> list[tuple[str, str, str]]:
    out = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                for st in node.body:
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                        out.append((str(path.relative_to(ROOT)), node.name, st.target.id))
    return out


def test_backend_fields_are_declared_in_backend_spec_only():
    names = {f.name for f in fields(BackendSpec)} | {"dtype"}
    found = {f"{cls}.{name}": where for where, cls, name in _dataclass_fields() if name in names and cls != "BackendSpec"}
    unexpected = sorted(set(found) - set(RECORDS))
    assert not unexpected, "declare these in BackendSpec (hold a spec instead): " + ", ".join(f"{k} ({found[k]})" for k in unexpected)
    stale = sorted(set(RECORDS) - set(found))
    assert not stale, f"records listed here but gone from the code: {stale}"


def test_one_backend_spec_and_one_of_each_shared_name():
    defs: dict[str, list[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.col_offset == 0:
                defs.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
            elif isinstance(node, ast.Assign) and node.col_offset == 0:
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id.isupper():
                        defs.setdefault(t.id, []).append(str(path.relative_to(ROOT)))
    for name in ("BackendSpec", "ModelSource", "TensorDesc", "mask_iou", "MASK_PASS_MODES", "QUANTIZED_PRECISIONS",
                 "VERIFY_MODES", "TORCH_DTYPES", "PRECISIONS", "write_bytes_atomic", "sha256_file", "open_backend"):
        assert len(defs.get(name, [])) == 1, f"{name} is defined in {defs.get(name)}"
    for gone in ("RuntimeOptions", "TensorSpec", "QUANT_PRECISIONS", "BENCH_BACKENDS", "RUNTIME_BACKENDS", "ENGINE_BACKENDS"):
        assert gone not in defs or gone == "TensorSpec" and defs[gone] == ["monkey_trt/embedded/weights.py"], (gone, defs.get(gone))


def test_backend_names_are_written_in_the_backend_table_only():
    """A literal tuple/list/set of two or more backend names outside runtime/backend.py is a copy of the table."""
    names = set(BACKEND_TABLE)
    bad = []
    for path in SOURCES:
        if path == PKG / "runtime" / "backend.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if len([i for i in items if i in names]) >= 2:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {items}")
    assert not bad, "use runtime.backend.backend_names(face) / backend_row(name):\n" + "\n".join(bad)


def test_no_file_cites_a_document_the_repository_does_not_have():
    bad = [str(p.relative_to(ROOT)) for p in [*SOURCES, *sorted((ROOT / "tests").rglob("*.py")), ROOT / "README.md"]
           if re.search(r"\bSPEC(\.md|:)", p.read_text())]
    assert not bad, bad
    for path in SOURCES:
        for cited in re.findall(r"docs/([\w.-]+\.md)", path.read_text()):
            assert (ROOT / "docs" / cited).is_file(), f"{path.relative_to(ROOT)} cites docs/{cited}"


def _readme_tree() -> dict[str, set[str]]:
    """The README's file tree (the ``` block starting `monkey_trt/`): folder -> the names listed for it."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\nmonkey_trt/\n(.*?)```", text, re.S)
    assert block, "README: the architecture map's file tree (a ``` block starting with monkey_trt/) is missing"
    tree: dict[str, set[str]] = {}
    folder = ""
    for line in block.group(1).splitlines():
        top = re.match(r" {2}(\S+)\s*(.*)", line)
        nested = re.match(r" {4}(\S+/)\s*(.*)", line)
        if top and top.group(1).endswith(".py"):
            tree.setdefault("", set()).add(top.group(1))
        elif top:
            folder = top.group(1).rstrip("/")
            tree.setdefault(folder, set()).update(re.findall(r"[\w]+\.(?:py|json)\b|\w+/", top.group(2)))
        elif nested and folder:
            sub = nested.group(1)
            tree[folder].update(sub + n for n in re.findall(r"[\w]+\.py\b", nested.group(2)))
    return tree


def test_readme_architecture_map_lists_every_module():
    tree = _readme_tree()
    missing, extra = [], []
    on_disk: dict[str, set[str]] = {}
    for path in SOURCES:
        rel = path.relative_to(PKG)
        if rel.name == "__init__.py" and len(rel.parts) > 1:
            continue  # a package's __init__ (the top-level one, the public API, is listed)
        top = rel.parts[0] if len(rel.parts) > 1 else ""
        name = "/".join(rel.parts[1:]) if top else rel.name
        on_disk.setdefault(top, set()).add(name)
    for folder, names in on_disk.items():
        listed = tree.get(folder, set())
        missing += [f"{folder}/{n}" for n in sorted(names) if n not in listed]
        extra += [f"{folder}/{n}" for n in sorted(listed) if n.endswith(".py") and n not in names]
    assert not missing, f"README's architecture map leaves out: {missing}"
    assert not extra, f"README's architecture map lists modules that do not exist: {extra}"


@pytest.mark.parametrize("package", sorted({p.relative_to(PKG).parts[0] for p in SOURCES if len(p.relative_to(PKG).parts) > 1}))
def test_readme_architecture_table_has_every_package(package):
    text = (ROOT / "README.md").read_text()
    assert f"| `{package}/` |" in text, f"README's architecture table has no row for {package}/"


def test_a_new_backend_is_one_row(monkeypatch, engine_dir, subject):
    """Adding an engine-directory backend is a row of the table plus its opener: every check and face takes it.
    Here the row reuses ORT's opener under another name, and must give exactly ORT's output."""
    import dataclasses

    import numpy as np

    from monkey_trt.commands.backends import open_backend
    from monkey_trt.core.config import Request
    from monkey_trt.runtime import backend as backend_mod
    from monkey_trt.runtime.pipeline import MonkeyPipeline
    from monkey_trt.serve.service import ServeConfig

    row = dataclasses.replace(BACKEND_TABLE["ort"], name="ort2", note="a new backend")
    monkeypatch.setitem(backend_mod.BACKEND_TABLE, "ort2", row)
    assert "ort2" in backend_mod.backend_names("serve") and "ort2" in backend_mod.applies_to("providers")
    assert backend_mod.backend_choices("generate", notes=True).endswith("ort2 (a new backend)")
    spec = BackendSpec("ort2", providers=("cpu",), threads=1)
    assert ServeConfig(engine_dir, spec=spec).spec.backend == "ort2"
    with pytest.raises(Exception, match="--device applies to"):
        BackendSpec("ort2", device="cuda")
    request = Request("a toy", 64, 64, seed=1)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cpu",), threads=1) as ort:
        want = ort(request, subject)
    pipe = open_backend(spec, engine_dir, face="eval")
    try:
        got = pipe(request, subject)
    finally:
        pipe.close()
    assert got.backend == "ort2" and np.array_equal(got.mask.mask, want.mask.mask) and np.array_equal(got.image, want.image)
