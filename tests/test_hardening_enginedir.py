"""The engine directory, a seal with no gaps (issue 16): every external-data location of every graph is
checked against the manifest before any session opens; manifest.json stays inside; no two entries reach
one file by any route; declared inputs/outputs match the graphs and the runtime; every number has a range.

Fast: copies of the session's tiny engine directory, graphs edited with `onnx`, no session opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from monkey_trt.cli import main
from monkey_trt.core.errors import EngineDirError
from monkey_trt.enginedir.load import load_manifest, read_manifest
from monkey_trt.enginedir.manifest import MANIFEST

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def copy_engine(engine_dir: Path, tmp_path: Path) -> Path:
    eng = tmp_path / "engine"
    shutil.copytree(engine_dir, eng, symlinks=True)
    return eng


def edit_manifest(eng: Path, edit) -> None:
    raw = json.loads((eng / MANIFEST).read_text())
    edit(raw)
    (eng / MANIFEST).write_text(json.dumps(raw))


def reseal(eng: Path, net: str, precision: str = "fp32", data_file: str | None = None) -> None:
    """Make the manifest agree with the graph on disk (digests, sizes, data_file): only the graph's content is at fault."""
    def edit(raw):
        e = raw["networks"][net]
        e = e if precision == "fp32" else e["precisions"][precision]
        e["data_file"] = data_file
        names = [e["file"]] + ([data_file] if data_file else [])
        e["sha256"] = {n: _sha(eng / n) for n in names}
        e["sizes"] = {n: (eng / n).stat().st_size for n in names}
    edit_manifest(eng, edit)


def graph_file(net: str, precision: str) -> str:
    return f"{net}.onnx" if precision == "fp32" else f"{net}.{precision}.onnx"


def _external(t, location: str, offset: int = 0, length: int | None = None) -> None:
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        if v is not None and v != "None":
            e = t.external_data.add()
            e.key, e.value = k, v


def move_weights(eng: Path, net: str, location: str, *, where: str = "initializer", precision: str = "fp32",
                 declare: str | None = None, write: bool = True, length_extra: int = 0, offset: int | str = 0) -> None:
    """Edit one graph so that a tensor's data lives in `location`, write that file (when it is a plain
    name), and reseal the manifest (declaring `declare` as the network's data file)."""
    path = eng / graph_file(net, precision)
    m = onnx.load(str(path), load_external_data=False)
    if where == "initializer":
        t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    else:
        arr = np.arange(16, dtype=np.float32)
        t = numpy_helper.from_array(arr, "moved")
        if where == "constant":
            m.graph.node.append(helper.make_node("Constant", [], ["moved_out"], value=t))
            t = m.graph.node[-1].attribute[0].t
        elif where == "subgraph":
            sub = helper.make_graph([helper.make_node("Identity", ["moved"], ["sub_out"])], "branch", [],
                                    [helper.make_tensor_value_info("sub_out", TensorProto.FLOAT, [16])], [t])
            m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
            m.graph.node.append(helper.make_node("If", ["cond"], ["if_out"], then_branch=sub, else_branch=sub))
            t = m.graph.node[-1].attribute[0].g.initializer[0]
        elif where == "function":
            fn = helper.make_function("local", "Moved", [], ["y"], [helper.make_node("Constant", [], ["y"], value=t)],
                                      [helper.make_opsetid("", 17)])
            m.functions.append(fn)
            t = m.functions[-1].node[0].attribute[0].t
        elif where == "sparse":
            sp = helper.make_sparse_tensor(t, numpy_helper.from_array(np.arange(16, dtype=np.int64), "idx"), [16])
            m.graph.sparse_initializer.append(sp)
            t = m.graph.sparse_initializer[-1].values
    data = bytes(t.raw_data) if t.raw_data else numpy_helper.to_array(t).tobytes()
    _external(t, location, offset, len(data) + length_extra)
    if write and "/" not in location and not location.startswith("*"):
        (eng / location).write_bytes(data)
    path.write_bytes(m.SerializeToString())
    reseal(eng, net, precision, declare)


def refused(eng: Path, needle: str, verify: str = "sha256") -> str:
    with pytest.raises(EngineDirError) as e:
        load_manifest(eng, verify=verify)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    return msg


# -- every file ONNX Runtime or TensorRT would open ------------------------------------------------
EXTERNAL_FAULTS = {  # name -> (move_weights kwargs, needle)
    "unlisted file": (dict(net="text_encoder", location="evil.bin"), "evil.bin"),
    "unlisted file, fp16 graph": (dict(net="text_encoder", location="evil.bin", precision="fp16"), "evil.bin"),
    "another entry's file": (dict(net="text_encoder", location="tokenizer/tokenizer.json", write=False), "tokenizer/tokenizer.json"),
    "another network's graph": (dict(net="text_encoder", location="vae_decoder.onnx", write=False), "vae_decoder.onnx"),
    "outside the directory": (dict(net="text_encoder", location="../outside.bin", write=False), "../outside.bin"),
    "absolute path": (dict(net="text_encoder", location="/etc/passwd", write=False), "/etc/passwd"),
    "ORT in-memory address": (dict(net="text_encoder", location="*/_ORT_MEM_ADDR_/*", write=False), "_ORT_MEM_ADDR_"),
    "in a Constant node": (dict(net="vae_decoder", location="evil.bin", where="constant"), "evil.bin"),
    "in a subgraph": (dict(net="vae_decoder", location="evil.bin", where="subgraph"), "evil.bin"),
    "in a model-local function": (dict(net="vae_decoder", location="evil.bin", where="function"), "evil.bin"),
    "in a sparse initializer": (dict(net="vae_decoder", location="evil.bin", where="sparse"), "evil.bin"),
    "listed but past its end": (dict(net="text_encoder", location="text_encoder.onnx.data", declare="text_encoder.onnx.data",
                                     length_extra=4096), "past the end"),
    "a negative offset": (dict(net="text_encoder", location="text_encoder.onnx.data", declare="text_encoder.onnx.data",
                               offset=-8), "bad offset"),
}


@pytest.mark.parametrize("verify", ["sha256", "size"])
@pytest.mark.parametrize("case", sorted(EXTERNAL_FAULTS))
def test_external_data_outside_the_manifest_is_refused(case, verify, engine_dir, tmp_path):
    kwargs, needle = EXTERNAL_FAULTS[case]
    eng = copy_engine(engine_dir, tmp_path)
    move_weights(eng, **kwargs)
    refused(eng, needle, verify)


def test_external_data_the_manifest_lists_is_accepted(engine_dir, tmp_path):
    eng = copy_engine(engine_dir, tmp_path)
    move_weights(eng, "unet", "unet.onnx.data", declare="unet.onnx.data")
    move_weights(eng, "unet", "unet.fp16.onnx.data", precision="fp16", declare="unet.fp16.onnx.data")
    m = load_manifest(eng)
    assert m.networks["unet"].data_file == "unet.onnx.data"
    load_manifest(eng, verify="size")


def test_tampered_external_weights_never_reach_a_session(engine_dir, tiny_model_dir, tmp_path, capsys):
    """The issue's case through the CLI: weights moved to a file the manifest does not list."""
    eng = copy_engine(engine_dir, tmp_path)
    move_weights(eng, "unet", "weights.bin")
    argv = ["generate", "--engine-dir", eng, "--image", tiny_model_dir / "subject.png", "--prompt", "a toy",
            "--out", tmp_path / "o", "--verify", "sha256"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "weights.bin" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_the_graph_scan_needs_no_onnx(engine_dir, tmp_path, monkeypatch):
    """The lean runtime has onnxruntime, not onnx: the scan reads the protobuf itself."""
    eng = copy_engine(engine_dir, tmp_path)
    move_weights(eng, "unet", "unet.onnx.data", declare="unet.onnx.data")
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails
    load_manifest(eng)
    monkeypatch.undo()
    move_weights(eng, "text_encoder", "evil.bin")
    monkeypatch.setitem(sys.modules, "onnx", None)
    refused(eng, "evil.bin")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_graph_scan_agrees_with_onnx(precision, engine_dir, tmp_path):
    """Names, dtypes and ranks of inputs and outputs, and every external location, as onnx reads them."""
    from onnx.external_data_helper import _get_all_tensors

    from monkey_trt.enginedir.onnx_scan import scan_graph

    eng = copy_engine(engine_dir, tmp_path)
    move_weights(eng, "unet", "unet.w", where="initializer", precision=precision, declare="unet.w")
    for net in ("text_encoder", "image_encoder", "unet", "vae_decoder"):
        path = eng / graph_file(net, precision)
        scan = scan_graph(path)
        m = onnx.load(str(path), load_external_data=False)

        def io(vs):
            return [(v.name, v.type.tensor_type.elem_type,
                     tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim)) for v in vs]

        inits = {t.name for t in m.graph.initializer}
        assert [(v.name, v.elem_type, v.dims) for v in scan.inputs] == [x for x in io(m.graph.input) if x[0] not in inits]
        assert [(v.name, v.elem_type, v.dims) for v in scan.outputs] == io(m.graph.output)
        want = sorted((e.value for t in _get_all_tensors(m) for e in t.external_data if e.key == "location"))
        assert sorted(scan.locations) == want


def _graph_bytes(kind: str, original: bytes) -> bytes:
    def field(num: int, payload: bytes) -> bytes:
        def varint(n: int) -> bytes:
            out = bytearray()
            while True:
                out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
                n >>= 7
                if not n:
                    return bytes(out)
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    if kind == "truncated":
        return original[: len(original) // 2]
    if kind == "garbage":
        return bytes(range(256)) * 40
    if kind == "empty":
        return b""
    g = b""
    for _ in range(5000):  # graph { node { attribute { g: graph { ... } } } }
        g = field(1, field(5, field(6, g)))
    return field(7, g)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "nested 5000 deep"])
def test_a_graph_that_cannot_be_read_is_one_line(kind, engine_dir, tmp_path):
    eng = copy_engine(engine_dir, tmp_path)
    path = eng / "vae_decoder.onnx"
    path.write_bytes(_graph_bytes(kind, path.read_bytes()))
    reseal(eng, "vae_decoder")
    refused(eng, "vae_decoder.onnx", verify="size")


# -- manifest.json and shared files ------------------------------------------------------------------
def test_a_manifest_symlink_leaving_the_directory_is_refused(engine_dir, tmp_path):
    eng = copy_engine(engine_dir, tmp_path)
    shutil.move(eng / MANIFEST, tmp_path / "elsewhere.json")
    (eng / MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(EngineDirError, match="manifest.json is a symlink leaving"):
        read_manifest(eng)


def test_a_manifest_symlink_inside_the_directory_is_read(engine_dir, tmp_path):
    eng = copy_engine(engine_dir, tmp_path)
    shutil.move(eng / MANIFEST, eng / "manifest.real.json")
    (eng / MANIFEST).symlink_to("manifest.real.json")
    read_manifest(eng)


def _alias(eng: Path, how: str) -> None:
    """vae_decoder.onnx becomes another route to unet.onnx; the manifest agrees (digests and sizes)."""
    (eng / "vae_decoder.onnx").unlink()
    if how == "symlink":
        (eng / "vae_decoder.onnx").symlink_to("unet.onnx")
    elif how == "symlinked folder":
        (eng / "sub").symlink_to(".")
        edit_manifest(eng, lambda raw: raw["networks"]["vae_decoder"].update(file="sub/unet.onnx"))
        reseal(eng, "vae_decoder")
        return
    else:
        os.link(eng / "unet.onnx", eng / "vae_decoder.onnx")
    reseal(eng, "vae_decoder")


@pytest.mark.parametrize("how", ["symlink", "hard link", "symlinked folder"])
def test_two_networks_never_resolve_to_one_file(how, engine_dir, tmp_path):
    eng = copy_engine(engine_dir, tmp_path)
    _alias(eng, how)
    with pytest.raises(EngineDirError, match="same file") as e:
        read_manifest(eng)
    assert "\n" not in str(e.value)


# -- declared inputs and outputs ---------------------------------------------------------------------
def _graph_io(eng: Path, net: str, edit) -> None:
    path = eng / f"{net}.onnx"
    m = onnx.load(str(path), load_external_data=False)
    edit(m.graph)
    path.write_bytes(m.SerializeToString())
    reseal(eng, net)


IO_FAULTS = {
    "graph input renamed": (lambda eng: _graph_io(eng, "text_encoder", lambda g: setattr(g.input[0], "name", "ids")), "input_ids"),
    "graph input dtype": (lambda eng: _graph_io(eng, "text_encoder", lambda g: setattr(g.input[0].type.tensor_type, "elem_type", TensorProto.INT32)), "int32"),
    "graph output rank": (lambda eng: _graph_io(eng, "text_encoder", lambda g: g.output[0].type.tensor_type.shape.dim.pop()), "rank"),
    "graph static size": (lambda eng: _graph_io(eng, "text_encoder", lambda g: setattr(g.input[0].type.tensor_type.shape.dim[1], "dim_value", 78)), "78"),
    "graph has an extra input": (lambda eng: _graph_io(eng, "vae_decoder", lambda g: g.input.append(
        helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))), "extra"),
    "fp16 graph output dtype": (lambda eng: _fp16_output_dtype(eng), "float16"),
    "manifest and graph agree, runtime does not": (lambda eng: _both_int32(eng), "int32"),
    "manifest drops an output": (lambda eng: edit_manifest(eng, lambda raw: raw["networks"]["unet"]["outputs"].pop()), "ip_attn_map"),
}


def _fp16_output_dtype(eng):
    path = eng / "vae_decoder.fp16.onnx"
    m = onnx.load(str(path), load_external_data=False)
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    path.write_bytes(m.SerializeToString())
    reseal(eng, "vae_decoder", "fp16")


def _both_int32(eng):
    _graph_io(eng, "text_encoder", lambda g: setattr(g.input[0].type.tensor_type, "elem_type", TensorProto.INT32))
    edit_manifest(eng, lambda raw: raw["networks"]["text_encoder"]["inputs"][0].update(dtype="int32"))


@pytest.mark.parametrize("case", sorted(IO_FAULTS))
def test_declared_inputs_and_outputs_match_the_graphs(case, engine_dir, tmp_path):
    edit, needle = IO_FAULTS[case]
    eng = copy_engine(engine_dir, tmp_path)
    edit(eng)
    refused(eng, needle, verify="size")


# -- every number has a range ---------------------------------------------------------------------------
def _set(path: str, value):
    def edit(raw):
        *parents, key = path.split("/")
        d = raw
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        d[key] = value
    return edit


def _raw_text(path: str, text: str):
    """Put `text` (not JSON that json.dumps would write) at `path`."""
    return _set(path, "@@RAW@@"), text


NUMBER_FAULTS = {
    "token length 10**9": _set("dims/text_len", 10**9),
    "text width 10**9": _set("dims/text_dim", 10**9),
    "image encoder size 10**6": _set("dims/image_size", 10**6),
    "preprocess size 10**6": _set("preprocess/size", 10**6),
    "preprocess size not the encoder's": _set("preprocess/size", 225),
    "std 0": _set("preprocess/std", [0.0, 0.3, 0.3]),
    "mean NaN": _set("preprocess/mean", [float("nan"), 0.4, 0.4]),
    "vae scaling Infinity": _set("vae_scaling_factor", float("inf")),
    "vae scaling 1e999": _raw_text("vae_scaling_factor", "1e999"),
    "vae scaling 0": _set("vae_scaling_factor", 0.0),
    "timestep scaling NaN": _set("scheduler/timestep_scaling", float("nan")),
    "sigma_data -1": _set("scheduler/sigma_data", -1.0),
    "final alpha 2": _set("scheduler/final_alpha_cumprod", 2.0),
    "alphas table 300000 long": _set("scheduler/alphas_cumprod", [0.5] * 300000),
    "alphas table shorter than T": _set("scheduler/alphas_cumprod", [0.5] * 10),
    "alphas value 0": lambda raw: raw["scheduler"]["alphas_cumprod"].__setitem__(3, 0.0),
    "coeffs table wrong length": _set("scheduler/coeffs", [0.5] * 7),
    "guidance freqs wrong length": _set("scheduler/guidance_freqs", [0.5] * 3),
    "T 10**9": _set("scheduler/num_train_timesteps", 10**9),
    "original steps 0": _set("scheduler/original_inference_steps", 0),
    "original steps 10**12": _set("scheduler/original_inference_steps", 10**12),
    "original steps above T": _set("scheduler/original_inference_steps", 1001),
    "profile max 10**9": _set("profile/height", [64, 64, 10**9]),
    "batch max 10**6": _set("profile/batch", [1, 1, 10**6]),
    "5000-digit integer": _raw_text("dims/text_len", "9" * 5000),
    "nested 100000 deep": _raw_text("source", "[" * 100000 + "]" * 100000),
    "shape symbol unknown": lambda raw: raw["networks"]["unet"]["inputs"][0]["shape"].__setitem__(0, "Z"),
    "shape size 10**12": lambda raw: raw["networks"]["unet"]["inputs"][5]["shape"].__setitem__(0, 10**12),
    "rank 10000": lambda raw: raw["networks"]["unet"]["inputs"][5].update(shape=[1] * 10000),
    "ip layers count": _set("dims/n_ip_layers", 15),
    "mask layer not an ip layer": _set("mask_layer", "down_blocks.0.attn2"),
    "negative file size": lambda raw: raw["networks"]["unet"]["sizes"].update({"unet.onnx": -1}),
    "150000 digests": lambda raw: raw["networks"]["unet"]["sha256"].update({f"f{i}": "0" * 64 for i in range(150_000)}),
    "many mid-sized lists": lambda raw: raw["networks"]["unet"]["inputs"].extend(
        [{"name": "x", "dtype": "float32", "shape": [1] * 30000} for _ in range(40)]),
}


def _hostile(engine_dir, tmp_path, case) -> Path:
    eng = copy_engine(engine_dir, tmp_path)
    edit = NUMBER_FAULTS[case]
    raw_text = None
    if isinstance(edit, tuple):
        edit, raw_text = edit
    raw = json.loads((eng / MANIFEST).read_text())
    edit(raw)
    text = json.dumps(raw)  # NaN / Infinity written as such
    if raw_text is not None:
        text = text.replace('"@@RAW@@"', raw_text)
    (eng / MANIFEST).write_text(text)
    return eng


@pytest.mark.parametrize("case", sorted(NUMBER_FAULTS))
def test_every_number_has_a_range(case, engine_dir, tmp_path):
    eng = _hostile(engine_dir, tmp_path, case)
    with pytest.raises(EngineDirError) as e:
        read_manifest(eng)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)


@pytest.mark.parametrize("case", ["nested 100000 deep", "5000-digit integer", "original steps 10**12", "mean NaN"])
def test_a_hostile_manifest_is_one_line_and_exit_2(case, engine_dir, tiny_model_dir, tmp_path, capsys):
    eng = _hostile(engine_dir, tmp_path, case)
    argv = ["generate", "--engine-dir", eng, "--image", tiny_model_dir / "subject.png", "--prompt", "a toy", "--out", tmp_path / "o"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err


def test_a_huge_manifest_is_refused_unread(engine_dir, tmp_path):
    """Refused by its size (a 16 GiB manifest read whole would be the out-of-memory kill; 64 MiB here, sparse)."""
    eng = copy_engine(engine_dir, tmp_path)
    with open(eng / MANIFEST, "r+b") as f:
        f.truncate(64 << 20)
    with pytest.raises(EngineDirError, match="too large"):
        read_manifest(eng)


def test_the_exported_manifest_is_within_every_range(engine_dir):
    m = load_manifest(engine_dir, verify="size")
    assert m.dims.text_len == 77 and m.scheduler.num_train_timesteps == len(m.scheduler.alphas_cumprod)
