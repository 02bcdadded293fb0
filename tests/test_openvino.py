"""--backend openvino (engine/openvino.py): the mask exact at f32, bf16 opt-in with its mask pass in f32, the
compiled-model cache keyed in the user cache (a corrupt entry replaced), and bad input as one line, exit 2.

The runner contract itself (names, shapes, profile, static handles) is tests/test_runner_contract.py's
"openvino-cpu"; int8 on OpenVINO is in tests/test_int8.py (it needs that module's quantized engine)."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from monkey_trt.core.config import Request
from monkey_trt.core.errors import BackendUnavailable, MonkeyError
from monkey_trt.engine.compare import psnr
from monkey_trt.reference.pipeline import torch_noise_plan
from monkey_trt.runtime.backend import BackendSpec

pytest.importorskip("openvino")

IMAGE_ATOL = 2e-3  # today's ORT tolerance against the reference (tests/test_export_ort.py)
BF16_PSNR_FLOOR_DB = 25.0  # a floor against broken kernels; measured 35-39 dB on the tiny model (docs/openvino.md)
PROMPT = "a toy on the beach"


@pytest.fixture(scope="module", autouse=True)
def user_cache(tmp_path_factory):
    """One user cache for the module (compiled models shared between tests); tests that count hits use their own."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("ov-user-cache")
        mp.setenv("MONKEY_TRT_CACHE", str(d))
        yield d


def _tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _open(engine_dir, **kw):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    return MonkeyPipeline.from_engine_dir(engine_dir, backend="openvino", **kw)


def test_f32_matches_the_reference_mask_exact(engine_dir, reference, subject, user_cache):
    """f32 (the default): the mask identical to the PyTorch reference, the image within ORT's tolerance; the
    compiled models go to the user cache, nothing into the engine directory."""
    before = _tree(engine_dir)
    with _open(engine_dir) as pipe:
        assert all(r.config()["INFERENCE_PRECISION_HINT"] == "f32" for r in pipe.runners.values())
        for seed, (h, w) in ((1, (64, 96)),):
            req = Request(PROMPT, h, w, seed=seed)
            noise = torch_noise_plan(seed, req.latent_shape(reference.dims), 8)
            want, got = reference(req, subject, noise=noise), pipe(req, subject, noise=noise)
            assert np.array_equal(got.mask.mask, want.mask.mask)
            assert np.abs(got.image - want.image).max() <= IMAGE_ATOL
        assert pipe.info()["providers"]["unet"] == ["OpenVINO CPU (f32)"]
    assert _tree(engine_dir) == before
    assert list((user_cache / "openvino").glob("*/model.blob"))


def test_bf16_is_opt_in_and_keeps_the_mask_pass_f32(engine_dir, subject):
    """bf16: the fp32 UNet and VAE decoder graphs on bf16 kernels for pass 2 and the decode; pass 1 (the mask) and the
    encoders that feed it on f32 with mask_pass=exact, so the mask is the f32 mask; the image within a PSNR floor of f32."""
    from monkey_trt.engine.openvino import cpu_abilities

    if "BF16" not in cpu_abilities().get("capabilities", []):
        pytest.skip("this CPU has no bf16 kernels")
    req = Request(PROMPT, 64, 96, seed=1)
    with _open(engine_dir) as f32:
        want = f32(req, subject)
    with _open(engine_dir, precision="bf16") as pipe:
        assert pipe.unet_roles == {"mask": "fp32", "final": "bf16", "baseline": "bf16"}
        assert pipe.unet_runners["bf16"].config()["INFERENCE_PRECISION_HINT"] == "bf16"
        assert pipe.unet_runners["fp32"].config()["INFERENCE_PRECISION_HINT"] == "f32"
        assert pipe.runners["vae_decoder"].config()["INFERENCE_PRECISION_HINT"] == "bf16"  # after the mask
        assert {pipe.runners[n].config()["INFERENCE_PRECISION_HINT"] for n in ("text_encoder", "image_encoder")} == {"f32"}
        assert pipe.map_runners["fp32"].config()["INFERENCE_PRECISION_HINT"] == "f32"  # pass 1's last call
        got = pipe(req, subject)
    assert np.array_equal(got.mask.mask, want.mask.mask)
    assert not np.array_equal(got.image, want.image)  # bf16 did run
    assert psnr(got.image, want.image) >= BF16_PSNR_FLOOR_DB


def test_bf16_on_a_cpu_without_it_is_one_line(engine_dir, monkeypatch):
    from monkey_trt.engine import openvino as ovb

    monkeypatch.setattr(ovb, "_capabilities", lambda core: ["FP32", "INT8"])
    with pytest.raises(MonkeyError, match="bf16 needs a CPU with bf16") as ei:
        _open(engine_dir, precision="bf16")
    assert "\n" not in str(ei.value)
    _open(engine_dir).close()  # f32 still runs


def test_compiled_model_cache_is_reused_and_a_corrupt_entry_replaced(engine_dir, tmp_path, monkeypatch):
    from monkey_trt.engine.openvino import OpenVinoRunner
    from monkey_trt.enginedir.load import load_manifest

    m = load_manifest(engine_dir)
    path, entry = engine_dir / m.networks["vae_decoder"].file, m.networks["vae_decoder"]
    latents = np.random.default_rng(0).standard_normal((1, m.dims.latent_channels, 8, 8)).astype(np.float32)
    feeds = {entry.desc.inputs[0].name: latents}

    def run():
        with OpenVinoRunner(path, name="vae_decoder") as r:
            out = r.infer(feeds)
            # a hit imports from a private map of the blob (weights as file pages, no copy in anonymous memory)
            assert [Path(m.filename).name for m in r._maps] == ["model.blob"] * r.cache_hits
            return out, r

    user_cache = tmp_path / "cache"
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(user_cache))
    want, first = run()
    assert first.cache_hits == 0
    (folder,) = [p.parent for p in (user_cache / "openvino").glob("*/model.blob")]
    assert folder == first.cache_folder(tuple((n, a.shape) for n, a in feeds.items()))
    got, second = run()
    assert second.cache_hits == 1 and np.array_equal(got[next(iter(got))], want[next(iter(want))])
    blob = folder / "model.blob"
    blob.write_bytes(b"not a compiled model" + blob.read_bytes()[20:])  # corrupted on disk
    got, third = run()
    assert third.cache_hits == 0 and np.array_equal(got[next(iter(got))], want[next(iter(want))])
    record = json.loads((folder / "monkey-derived.json").read_text())
    assert record["files"] == {"model.blob": hashlib.sha256(blob.read_bytes()).hexdigest()}  # replaced, recorded anew
    before = blob.read_bytes()
    _, fourth = run()
    assert fourth.cache_hits == 1 and not fourth._maps and blob.read_bytes() == before  # unmapped, never written


def test_runners_hold_no_read_model_between_activation_and_compile(engine_dir, tmp_path, monkeypatch):
    """A pipeline activates every runner before the first compile: each reads its graph for the names and drops it
    (no ov.Model kept: at sd15 size the read UNet graphs alone are GBs each); a compile reads it again, a cache hit never."""
    import openvino as ov

    from monkey_trt.engine.openvino import OpenVinoRunner
    from monkey_trt.enginedir.load import load_manifest

    reads = []
    real_read = ov.Core.read_model
    monkeypatch.setattr(ov.Core, "read_model", lambda self, *a, **k: reads.append(a[0]) or real_read(self, *a, **k))
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    m = load_manifest(engine_dir)
    path, entry = engine_dir / m.networks["vae_decoder"].file, m.networks["vae_decoder"]
    feeds = {entry.desc.inputs[0].name: np.zeros((1, m.dims.latent_channels, 8, 8), np.float32)}
    for compiles in (True, False):  # a cache miss, then a hit
        reads.clear()
        with OpenVinoRunner(path, name="vae_decoder") as r:
            assert [i.name for i in r.input_specs] == [entry.desc.inputs[0].name]
            assert not [v for v in vars(r).values() if isinstance(v, ov.Model)] and len(reads) == 1
            r.infer(feeds)
            assert not [v for v in vars(r).values() if isinstance(v, ov.Model)]
            assert len(reads) == (2 if compiles else 1) and r.cache_hits == (0 if compiles else 1)


def test_the_spec_refuses_what_openvino_does_not_run():
    for kw, says in (({"precision": "fp16"}, "runs fp32, int8, bf16"), ({"precision": "fp8"}, "--backend openvino has no fp8 kernels"),
                     ({"providers": ("cuda",)}, "--providers applies to --backend ort only"),
                     ({"cuda_graph": True}, "--cuda-graph applies to")):
        with pytest.raises(MonkeyError, match=says):
            BackendSpec(backend="openvino", **kw)
    with pytest.raises(MonkeyError, match="--backend ort runs fp32, fp16, int8 graphs, not bf16"):
        BackendSpec(backend="ort", precision="bf16")
    assert BackendSpec(backend="openvino", precision="bf16", threads=2).threads == 2


def test_cli_bad_input_is_one_line_exit_2(engine_dir, tmp_path, monkeypatch, capsys):
    """OpenVINO missing (names the extra), a shape outside the engine's profile: one line, exit 2, nothing written."""
    from monkey_trt.cli import main

    subject = tmp_path / "s.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(subject)
    base = ["generate", "--engine-dir", str(engine_dir), "--backend", "openvino", "--image", str(subject), "--prompt", "a toy"]
    out = tmp_path / "out"
    assert main([*base, "--out", str(out), "--height", "256", "--width", "256"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "profile" in err and "\n" not in err, err
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'monkey-trt\[openvino\]'"):
        _open(engine_dir)
    assert main([*base, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "monkey-trt[openvino]" in err and "\n" not in err, err
    assert not out.exists()


def test_serve_runs_openvino_over_http(engine_dir, tiny_model_dir):
    """The HTTP face: ServeConfig's spec names the backend; a generation comes back as a PNG."""
    from fastapi.testclient import TestClient

    from monkey_trt.serve.app import create_app
    from monkey_trt.serve.service import MonkeyService, ServeConfig

    service = MonkeyService(ServeConfig(engine_dir, spec=BackendSpec(backend="openvino"), warmup=False)).load()
    with TestClient(create_app(service)) as client:
        files = {"prompt": (None, PROMPT), "seed": (None, "3"),
                 "image": ("subject.png", (tiny_model_dir / "subject.png").read_bytes(), "image/png")}
        r = client.post("/v1/generate", files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert base64.b64decode(body["image_png"]).startswith(b"\x89PNG") and 0 <= body["mask"]["coverage"] <= 1
    assert service.pipe is None


def test_eval_and_doctor_know_openvino():
    from monkey_trt.commands.doctor import doctor_report
    from monkey_trt.eval.options import check_precisions

    check_precisions(("fp32", "bf16", "int8"), "openvino", ("fp32", "int8"), "eng")  # bf16 runs the fp32 graphs
    with pytest.raises(MonkeyError, match="--backend ort has no bf16 kernels"):
        check_precisions(("fp32", "bf16"), "ort", ("fp32",), "eng")
    with pytest.raises(MonkeyError, match="no int8 graphs"):
        check_precisions(("fp32", "int8"), "openvino", ("fp32",), "eng")
    rows = {r.name: r for r in doctor_report()}
    assert rows["openvino"].ok is True and "FP32" in rows["openvino"].detail and "CPU flags" in rows["openvino"].detail
    assert "openvino-cpu" in rows["backends"].detail


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_compiled_models_carry_the_asked_precision_threads_and_hint(engine_dir, precision, tmp_path, monkeypatch):
    """What OpenVINO compiled (and what it imports from the cache) runs at the asked precision, never its own default."""
    import openvino as ov

    from monkey_trt.engine.openvino import OpenVinoRunner, cpu_abilities
    from monkey_trt.enginedir.load import load_manifest

    if precision == "bf16" and "BF16" not in cpu_abilities().get("capabilities", []):
        pytest.skip("this CPU has no bf16 kernels")
    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    m = load_manifest(engine_dir)
    feeds = {"latents": np.zeros((1, m.dims.latent_channels, 8, 8), np.float32)}
    for attempt in range(2):  # compiled, then imported from the cache
        with OpenVinoRunner(engine_dir / m.networks["vae_decoder"].file, inference_precision=precision, threads=1) as r:
            feeds = {r.input_specs[0].name: feeds[next(iter(feeds))]}
            r.infer(feeds)
            assert r.cache_hits == attempt
            (compiled, _), = r._compiled.values()
            assert compiled.get_property("INFERENCE_PRECISION_HINT") == {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[precision]
            assert int(compiled.get_property("NUM_STREAMS")) == 1 and int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
            assert "LATENCY" in str(compiled.get_property("PERFORMANCE_HINT"))


def test_ip_image_axis_compiles_per_count(tmp_path, monkeypatch):
    """Issue 22: the UNet's IP-image axis (ip_tokens [B, N*T, D], ip_mask [B, N, ...]) is part of the compiled
    model's key: N = 1, 2, 1, 2 compiles twice, outputs equal ONNX Runtime's; N past the profile is refused."""
    import onnxruntime as ort

    from monkey_trt.engine.openvino import OpenVinoRunner
    from tests.test_engine_trt import _ip_axis_onnx, _ip_feeds

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "cache"))
    path = _ip_axis_onnx(tmp_path / "ip_axis.onnx")
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    profile = {"tokens": ((1, 4, 2), (1, 4, 2), (2, 8, 2)), "mask": ((1, 1, 3), (1, 1, 3), (2, 2, 3))}
    with OpenVinoRunner(path, profile=profile, cache_root=tmp_path / "cache") as r:
        for n in (1, 2, 1, 2):
            f = _ip_feeds(1, n)
            got = r.infer(f)
            np.testing.assert_allclose(got["y"], want.run(["y"], f)[0], rtol=1e-5, atol=1e-5)
            assert got["m"].shape == (1, 4 * n, 2)
        assert len(r._compiled) == 2
        with pytest.raises(MonkeyError, match="outside the engine profile"):
            r.infer(_ip_feeds(1, 3))
