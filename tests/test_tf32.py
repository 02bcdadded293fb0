"""fp32 means fp32 on GPUs (issue 24): TF32 off for every fp32 GPU session unless asked for, on fakes whose defaults
are upstream's (tests/fakes/ort.py: the CUDA EP's use_tf32 on by default, the TensorRT EP with no option and
TensorRT's TF32 on; a session with TF32 on rounds to TF32, so it misses the CPU reference)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from monkey_trt.core.errors import MonkeyError
from monkey_trt.engine.ort import OrtRunner
from monkey_trt.runtime.backend import BackendSpec

RNG = np.random.default_rng(24)
W = RNG.standard_normal((16, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def matmul_path(tmp_path_factory) -> str:
    """y = x @ W, batch dynamic: the kind of op TF32 changes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "mm", [x], [y],
                              [onnx.numpy_helper.from_array(W, "W")])
    path = tmp_path_factory.mktemp("tf32") / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _fake(monkeypatch, tmp_path, **kw):
    from tests.fakes import ort as fakes

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "unset")  # recorded: whatever a runner sets is undone after the test
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    return fakes.install(monkeypatch, **kw)


def _profile():
    return {"x": ((1, 16), (2, 16), (4, 16))}


X = RNG.standard_normal((2, 16)).astype(np.float32)


def _run(path, **kw) -> tuple[np.ndarray, OrtRunner]:
    r = OrtRunner(path, **kw)
    with r:
        return r.infer({"x": X})["y"], r


def test_the_fake_rounds_when_tf32_is_on(matmul_path, monkeypatch, tmp_path):
    """The fake's TF32 is visible: with the opt-in the result moves away from the CPU's by more than fp32 noise."""
    fake = _fake(monkeypatch, tmp_path)
    want, _ = _run(matmul_path, providers=("cpu",))
    got, r = _run(matmul_path, providers=("cuda",), tf32=True)
    assert fake.stats.tf32_sessions == 1 and r.tf32_mode == "allowed"
    assert fake.stats.session_log[-1][2]["CUDAExecutionProvider"]["use_tf32"] == "1"
    assert np.abs(got - want).max() > 1e-4


@pytest.mark.parametrize("providers, mode", [("cuda", "off: use_tf32=0"), ("tensorrt", "off: NVIDIA_TF32_OVERRIDE=0")])
def test_fp32_sessions_run_fp32_on_every_gpu_provider(matmul_path, monkeypatch, tmp_path, providers, mode):
    fake = _fake(monkeypatch, tmp_path)
    want, _ = _run(matmul_path, providers=("cpu",))
    got, r = _run(matmul_path, providers=providers, trt_profile=_profile())
    assert fake.stats.tf32_sessions == 0 and r.tf32_mode == mode
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    cuda_opts = fake.stats.session_log[-1][2]["CUDAExecutionProvider"]
    assert cuda_opts["use_tf32"] == "0"  # the CUDA EP's own option, also behind the TensorRT EP
    if providers == "tensorrt":
        assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"  # the TensorRT EP has no option: the documented switch


def test_an_ort_without_use_tf32_gets_the_environment_switch(matmul_path, monkeypatch, tmp_path):
    """ORT 1.17's CUDA EP rejects the "use_tf32" key: the runner does not pass it and sets NVIDIA_TF32_OVERRIDE=0."""
    fake = _fake(monkeypatch, tmp_path, version="1.17.3")
    want, _ = _run(matmul_path, providers=("cpu",))
    got, r = _run(matmul_path, providers=("cuda",))
    assert "use_tf32" not in fake.stats.session_log[-1][2]["CUDAExecutionProvider"]
    assert fake.stats.tf32_sessions == 0 and r.tf32_mode == "off: NVIDIA_TF32_OVERRIDE=0"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_contradicting_environment_is_one_line(matmul_path, monkeypatch, tmp_path):
    _fake(monkeypatch, tmp_path)
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    with pytest.raises(MonkeyError, match=r"NVIDIA_TF32_OVERRIDE=1 .* pass --tf32") as e:
        OrtRunner(matmul_path, providers=("tensorrt",), trt_profile=_profile()).activate()
    assert "\n" not in str(e.value)
    _run(matmul_path, providers=("tensorrt",), trt_profile=_profile(), tf32=True)  # the opt-in: the user's value stands


def test_tf32_is_part_of_the_tensorrt_ep_cache_key(matmul_path, monkeypatch, tmp_path):
    _fake(monkeypatch, tmp_path)
    off = OrtRunner(matmul_path, providers=("tensorrt",), trt_profile=_profile()).trt_cache_folder()
    on = OrtRunner(matmul_path, providers=("tensorrt",), trt_profile=_profile(), tf32=True).trt_cache_folder()
    assert off != on


def test_result_records_tf32(engine_dir, subject, monkeypatch, tmp_path):
    from monkey_trt.core.config import Request
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    _fake(monkeypatch, tmp_path)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cuda",)) as pipe:
        out = pipe(Request("a toy", 64, 64, seed=0), subject)
        info = pipe.info()
    assert set(info["options"]["tf32"].values()) == {"off: use_tf32=0"} and info["spec"]["tf32"] is False
    assert out is not None


def test_spec_tf32_and_int8_graphs():
    assert BackendSpec(backend="ort", providers=("cuda",), tf32=True).tf32
    assert BackendSpec(backend="torch", device="cpu", tf32=True).to_dict()["tf32"] is True
    with pytest.raises(MonkeyError, match="--tf32 applies to the torch/ort backends only, not --backend trt"):
        BackendSpec(backend="trt", tf32=True)
    with pytest.raises(MonkeyError, match=r"^--cuda-graph with --precision int8 is refused on ORT's CUDA EP.*15260"):
        BackendSpec(backend="ort", providers=("cuda",), precision="int8", cuda_graph=True)
    with pytest.raises(MonkeyError, match="refused on ORT's CUDA EP"):
        BackendSpec(backend="ort", precision="int8", cuda_graph=True)  # the default provider may be CUDA
    assert BackendSpec(backend="ort", providers=("tensorrt",), precision="int8", cuda_graph=True).cuda_graph


def test_torch_tf32_switches(monkeypatch):
    torch = pytest.importorskip("torch")
    from monkey_trt.reference.device import torch_tf32

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    try:
        torch_tf32("cpu", True)
        assert (matmul.fp32_precision, conv.fp32_precision) == before  # nothing on the CPU
        torch_tf32("cuda", False)
        assert matmul.fp32_precision == conv.fp32_precision == "ieee"
        torch_tf32("cuda:0", True)
        assert matmul.fp32_precision == conv.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision, conv.fp32_precision = before
