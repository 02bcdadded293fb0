"""The 8-bit VAE decoder's and image encoder's calibration inputs, the opt-in image encoder and its option.

The int8 VAE decoder inside an exported engine directory is tested in tests/test_int8.py (its shared int8
export); here: the pipeline's public hook (`watch_network`), the recorded inputs and their cache
(export/network_calibration.py), the opt-in image encoder's graph and what it does to the mask
(export/quantize_nets.py), and `--quantize-image-encoder` at the command line.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from monkey_trt.cli import main
from monkey_trt.core.config import Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.engine.compare import mask_iou, psnr
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.export.calibration import CalibrationSpec
from monkey_trt.export.network_calibration import collect_inputs, load_or_collect_inputs
from monkey_trt.export.quant_groups import all_8bit_networks, networks_8bit
from monkey_trt.export.quantize import QuantSettings, kept_nodes, quantized_file_names
from monkey_trt.export.quantize_nets import quantize_networks
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.pipeline import MonkeyPipeline

SPEC = dict(size=2, height=64, width=64)


def test_watch_network_sees_pass_two_latents_and_the_subject_pixels(runtime, subject):
    seen: dict[str, list] = {"vae_decoder": [], "image_encoder": []}
    req = Request("a toy on the beach", 64, 64, seed=0)
    noise = NoisePlan.from_seed(0, req.latent_shape(runtime.dims), req.config.noise_steps)
    with runtime.watch_network("vae_decoder", lambda f: seen["vae_decoder"].append(np.array(f["latents"], copy=True))), \
            runtime.watch_network("image_encoder", lambda f: seen["image_encoder"].append(np.array(f["pixel_values"], copy=True))):
        out = runtime(req, subject, noise=noise, decode_mask_pass=True)
    assert [a.shape for a in seen["vae_decoder"]] == [(1, 4, 8, 8)] * 2  # pass 2's final latents, then pass 1's
    np.testing.assert_array_equal(runtime.decode(seen["vae_decoder"][0]), out.image)  # the decoded image is pass 2's
    assert [a.shape for a in seen["image_encoder"]] == [(1, 3, 224, 224)]
    runtime(req, subject, noise=noise)  # outside the block: nothing recorded
    assert len(seen["vae_decoder"]) == 2
    with pytest.raises(MonkeyError, match="watch_network: network must be one of image_encoder, vae_decoder"):
        with runtime.watch_network("unet", print):
            pass


def test_recorded_inputs_are_deterministic_and_cached(engine_dir, tmp_path):
    spec = CalibrationSpec.build(**SPEC)
    m = load_manifest(engine_dir, verify="size")
    data, reused = load_or_collect_inputs(engine_dir, m, spec, ("vae_decoder", "image_encoder"), cache=tmp_path)
    assert not reused and data.calls("vae_decoder") == data.calls("image_encoder") == 2
    assert data.arrays["vae_decoder"].shape == (2, 4, 8, 8) and data.feeds("image_encoder")[1]["pixel_values"].shape == (1, 3, 224, 224)
    again, reused = load_or_collect_inputs(engine_dir, m, spec, ("image_encoder", "vae_decoder"), cache=tmp_path)
    assert reused and again.all_digest() == data.all_digest()
    fresh = collect_inputs(engine_dir, spec, ("vae_decoder",))
    assert fresh.digest("vae_decoder") == data.digest("vae_decoder")  # the same cases give the same latents
    # a damaged entry of ours is recorded again and replaced; another size is another entry
    npz = next(tmp_path.glob("inputs-v1-*.npz"))
    npz.write_bytes(b"not a zip")
    data2, reused = load_or_collect_inputs(engine_dir, m, spec, ("vae_decoder", "image_encoder"), cache=tmp_path)
    assert not reused and data2.all_digest() == data.all_digest()
    other, reused = load_or_collect_inputs(engine_dir, m, CalibrationSpec.build(size=1, height=64, width=64), ("vae_decoder",), cache=tmp_path)
    assert not reused and other.calls("vae_decoder") == 1 and len(list(tmp_path.glob("inputs-v1-*.npz"))) == 2


def test_the_unet_recording_also_records_the_networks_inputs_bit_for_bit(engine_dir, tmp_path, monkeypatch):
    """An export runs MONKEY once per calibration case for both recordings (load_or_collect_with_unet): the inputs
    it caches are the separate recording's bits, and the next step reads them."""
    from monkey_trt.export.calibration import collect
    from monkey_trt.export.network_calibration import load_or_collect_with_unet

    spec = CalibrationSpec.build(**SPEC)
    m = load_manifest(engine_dir, verify="size")
    opened = []
    real = MonkeyPipeline.from_engine_dir
    monkeypatch.setattr(MonkeyPipeline, "from_engine_dir", classmethod(lambda cls, *a, **k: (opened.append(a[0]), real(*a, **k))[1]))
    data, reused = load_or_collect_with_unet(engine_dir, m, spec, ("vae_decoder", "image_encoder"), cache=tmp_path)
    assert not reused and len(opened) == 1  # one pipeline, one generation per case
    inputs, reused = load_or_collect_inputs(engine_dir, m, spec, ("image_encoder", "vae_decoder"), cache=tmp_path)
    assert reused and len(opened) == 1  # nothing run again
    monkeypatch.setattr(MonkeyPipeline, "from_engine_dir", real)
    separate = collect_inputs(engine_dir, spec, ("vae_decoder", "image_encoder"))
    assert inputs.all_digest() == separate.all_digest() and inputs.calls("vae_decoder") == 2
    assert data.digest == collect(engine_dir, spec).digest  # the UNet's recording is what it was
    # an inputs entry already there is kept (and the UNet's recording alone runs when its own entry is missing)
    next(tmp_path.glob("calib-v2-*.npz")).unlink()
    next(tmp_path.glob("calib-v2-*.json")).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("inputs-v1-*")}
    load_or_collect_with_unet(engine_dir, m, spec, ("vae_decoder", "image_encoder"), cache=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("inputs-v1-*")} == before


def test_the_8bit_networks_and_the_files_they_may_write():
    assert networks_8bit() == ("vae_decoder",) and networks_8bit(image_encoder=True) == ("vae_decoder", "image_encoder")
    assert set(all_8bit_networks()) == {"unet", "vae_decoder", "image_encoder"}
    names = set(quantized_file_names())
    assert {f"{n}.{p}.onnx{x}" for n in all_8bit_networks() for p in ("int8", "fp8") for x in ("", ".data")} == names
    assert QuantSettings("int8", network="image_encoder").keep == ("projection", "attention")
    assert QuantSettings("fp8", network="vae_decoder").keep == ("io",)
    with pytest.raises(MonkeyError, match="no 8-bit graph for 'text_encoder'"):
        QuantSettings("int8", network="text_encoder")


def test_opt_in_image_encoder_graph_and_the_mask_it_moves(engine_dir, subject, tmp_path):
    """The opt-in 8-bit image encoder: Q/DQ on its layers but the token projection and attention products; run
    in place of the fp32 encoder the tokens stay close and the mask IoU is what docs/int8.md reports (not 1 by
    construction: the tokens feed the map)."""
    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    m = load_manifest(d, verify="size")
    say = lambda *a: None
    entries = quantize_networks(d, m, d, ["int8"], CalibrationSpec.build(**SPEC), ("image_encoder",), m.networks, say,
                                cache=tmp_path / "cache")
    rec = entries["image_encoder"].precisions["int8"]
    assert rec.file == "image_encoder.int8.onnx" and rec.quantization["settings"]["network"] == "image_encoder"
    assert rec.quantization["calibration"]["calls"] == 2 and "vae_decoder" not in {n for n, e in entries.items() if e.precisions.get("int8")}
    fp32 = onnx.load(str(d / "image_encoder.onnx")).graph
    g = onnx.load(str(d / "image_encoder.int8.onnx")).graph
    producers = {o: n for n in g.node for o in n.output}
    dq = {n.name: any(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input) for n in g.node}
    groups = kept_nodes(fp32, QuantSettings("int8", network="image_encoder").keep)
    assert len(groups["projection"]) == 2 and groups["attention"]
    assert not any(dq[n] for names in groups.values() for n in names)
    assert any(dq[n.name] for n in g.node if "/mlp/fc1/" in n.name)
    with MonkeyPipeline.from_engine_dir(d, backend="ort", providers=("cpu",), verify="size") as p:
        from monkey_trt.engine.ort import OrtRunner

        req = Request("a toy in the snow", 64, 64, seed=2)
        noise = NoisePlan.from_seed(2, req.latent_shape(p.dims), req.config.noise_steps)
        ref, t32 = p(req, subject, noise=noise), p.encode_subject(subject)
        r8 = OrtRunner(d / "image_encoder.int8.onnx", providers="cpu", name="image_encoder", int8=True)
        r8.activate()
        p.runners["image_encoder"], r32 = r8, p.runners["image_encoder"]
        try:
            t8, got = p.encode_subject(subject), p(req, subject, noise=noise)
        finally:
            p.runners["image_encoder"] = r32
            r8.deactivate()
    assert 0 < np.abs(t8 - t32).max() < 0.25 * np.abs(t32).max()  # 8-bit tokens, close to fp32's
    assert 0.5 <= mask_iou(ref.mask.mask, got.mask.mask) <= 1.0 and psnr(ref.image, got.image) > 20


def test_quantize_image_encoder_option(tiny_model_dir, engine_dir, tmp_path, capsys, monkeypatch):
    """--quantize-image-encoder: refused without an 8-bit precision (one line, exit 2, nothing written); with one
    it reaches the 8-bit export (a failure there leaves the directory as it was)."""
    base = ["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2"]
    out = tmp_path / "new"
    assert main([*base, "--out", str(out), "--precision", "fp32,fp16", "--quantize-image-encoder"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --quantize-image-encoder applies to --precision int8 or fp8 only" and not out.exists()
    from monkey_trt.export import onnx_export

    asked = []

    def fake_add_8bit(root, manifest, dst_dir, precisions, spec, progress=None, image_encoder=False, cache=None):
        asked.append((tuple(precisions), image_encoder))
        raise MonkeyError("stopped by the test")

    monkeypatch.setattr(onnx_export, "add_8bit", fake_add_8bit)
    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    assert main([*base, "--out", str(d), "--precision", "int8", "--quantize-image-encoder"]) == 2
    assert asked == [(("int8",), True)] and "stopped by the test" in capsys.readouterr().err
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in engine_dir.iterdir())  # nothing half-written
