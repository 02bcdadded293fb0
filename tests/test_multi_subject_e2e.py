"""Several subjects and a background on the tiny engine (issue 22): ONNX Runtime against the torch reference, pass
batching, the one-subject call unchanged, engine directories exported before several subjects, the CUDA-graph fake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.reference.pipeline import torch_noise_plan

ORT_TOL = 2e-3  # ORT fp32 vs the reference (tests/test_export_ort.py); measured ~1e-6


@pytest.fixture(scope="module")
def images(subject):
    """Three distinct pictures from the tiny model's subject: it, its mirror, a colour-shifted copy (the background)."""
    shifted = Image.fromarray(np.roll(np.asarray(subject), 40, axis=2).astype(np.uint8))
    return subject, ImageOps.mirror(subject).rotate(90), shifted


CASES = {
    "two": (2, False, MonkeyConfig()),
    "two+background": (2, True, MonkeyConfig(subject_scales=(0.8, 1.2), background_scale=0.6)),
    "three": (3, False, MonkeyConfig(threshold=0.4)),
}


def _run(pipe, req, images, n, background, **kw):
    return pipe(req, list(images[:n]), background=images[2] if background else None, **kw)


@pytest.mark.parametrize("case", [pytest.param("two", marks=pytest.mark.slow), "two+background",
                                  pytest.param("three", marks=pytest.mark.slow)])  # each ~6-15 s (the reference) on 2 busy cores
def test_ort_matches_the_reference(case, runtime, reference, images):
    """Masks identical per subject (and the background's), image within ORT's fp32 tolerance; identical noise."""
    n, background, cfg = CASES[case]
    req = Request("a toy and a toy on the beach", 96, 96, seed=0, config=cfg)  # a 3x3 map grid: the subjects overlap
    noise = torch_noise_plan(req.seed, req.latent_shape(runtime.dims), cfg.noise_steps)
    ref = _run(reference, req, images, n, background, noise=noise)
    got = _run(runtime, req, images, n, background, noise=noise)
    assert got.subjects == ref.subjects == n and len(got.masks) == n
    for a, b in zip(got.masks, ref.masks):
        assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(got.mask.mask, ref.mask.mask) and got.overlap == ref.overlap and got.lost == ref.lost
    assert (got.background_mask is None) == (not background)
    if background:
        assert np.array_equal(got.background_mask, ref.background_mask)
    assert np.abs(got.image - ref.image).max() <= ORT_TOL
    assert 0 < got.overlap < 1 and sum(got.lost) > 0  # the overlap rule had work to do
    if n == 2:  # measured: both subjects keep part of the picture (0.111 and 0.222 of it)
        assert all(0 < m.coverage < 1 for m in got.masks)


@pytest.mark.parametrize("case", ["two", "two+background"])
def test_batched_equals_sequential(case, runtime, images):
    n, background, cfg = CASES[case]
    req = Request("a toy and a toy", 64, 64, seed=4, config=cfg)
    seq = _run(runtime, req, images, n, background, batch_passes=False)
    bat = _run(runtime, req, images, n, background, batch_passes=True)
    assert bat.batched_steps == 2 and len(bat.unet_calls) == len(seq.unet_calls) - 2
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(seq.masks, bat.masks))
    assert np.abs(seq.image - bat.image).max() <= 1e-5


def test_one_subject_as_a_list_is_todays_call(runtime, images):
    """[subject] and subject: the same calls, bits and record; no background, no overlap."""
    req = Request("a toy on the beach", 64, 64, seed=1)
    one, listed = runtime(req, images[0]), runtime(req, [images[0]])
    assert np.array_equal(one.mask.mask, listed.mask.mask) and np.array_equal(one.image, listed.image)
    assert [(c.passes, c.step, c.graph) for c in one.unet_calls] == [(c.passes, c.step, c.graph) for c in listed.unet_calls]
    assert one.masks == (one.mask,) and one.subjects == 1 and one.overlap == 0.0 and one.background_mask is None


def test_too_many_subjects_is_one_line(runtime, images):
    most = runtime.max_subjects
    assert most >= 4
    with pytest.raises(MonkeyError, match=rf"takes at most {most} subjects \(manifest max_subjects\); re-export with --max-subjects"):
        runtime(Request("x", 64, 64), [images[0]] * (most + 1))


def _old_layout(engine_dir: Path, tmp_path: Path) -> Path:
    """A copy of `engine_dir` as an export from before several subjects: no `max_subjects` in the manifest, the fp32
    UNet graphs' IP inputs and map fixed to one image (ip_tokens [B, T, D], ip_mask [B, 1, H, W], map [B, Q, T])."""
    import hashlib

    import onnx

    eng = tmp_path / "old-engine"
    shutil.copytree(engine_dir, eng, symlinks=True)
    raw = json.loads((eng / "manifest.json").read_text())
    raw.pop("max_subjects", None)
    T = raw["dims"]["n_ip_tokens"]
    fixed = {"ip_tokens": (1, T), "ip_mask": (1, 1), "ip_attn_map": (2, T)}  # name -> (axis, size)
    for net in ("unet", "unet_map"):
        e = raw["networks"].get(net)
        if e is None:
            continue
        for t in e["inputs"] + e["outputs"]:
            if t["name"] in fixed:
                axis, size = fixed[t["name"]]
                t["shape"][axis] = size
        path = eng / e["file"]
        model = onnx.load(str(path), load_external_data=False)
        for v in list(model.graph.input) + list(model.graph.output):
            if v.name in fixed:
                axis, size = fixed[v.name]
                v.type.tensor_type.shape.dim[axis].Clear()
                v.type.tensor_type.shape.dim[axis].dim_value = size
        onnx.save(model, str(path))
        e["sha256"][e["file"]] = hashlib.sha256(path.read_bytes()).hexdigest()
        e["sizes"][e["file"]] = path.stat().st_size
    (eng / "manifest.json").write_text(json.dumps(raw))
    return eng


def test_an_old_engine_directory_runs_one_subject_and_refuses_more(engine_dir, runtime, images, tmp_path):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    old = _old_layout(engine_dir, tmp_path)
    req = Request("a toy on the beach", 64, 64, seed=1)
    with MonkeyPipeline.from_engine_dir(old, backend="ort", ort_cache=False) as pipe:
        assert pipe.max_subjects == 1 and pipe.max_ip_images == 1
        out, want = pipe(req, images[0]), runtime(req, images[0])
        assert np.array_equal(out.mask.mask, want.mask.mask) and np.abs(out.image - want.image).max() <= 1e-6
        with pytest.raises(MonkeyError, match=r"^2 subject images given: this engine takes at most 1 subject \(manifest"):
            pipe(req, list(images[:2]))
        with pytest.raises(MonkeyError, match="^this engine directory was exported before background images"):
            pipe(req, images[0], background=images[2])


def test_cached_encoders_take_several_images(runtime, images):
    from monkey_trt.serve.encoder_cache import with_encoder_caches

    cached = with_encoder_caches(runtime, subject_capacity=4, prompt_capacity=2)
    req = Request("a toy and a toy", 64, 64, seed=5)
    first = cached(req, list(images[:2]), background=images[2])
    again = cached(req, list(images[:2]), background=images[2])
    plain = runtime(req, list(images[:2]), background=images[2])
    assert cached.caches.counters()["subject"] == (3, 3)  # one entry per image
    assert np.array_equal(first.image, plain.image) and np.array_equal(again.image, plain.image)


def test_generate_names_files_and_records_them(runtime, images, tmp_path):
    paths = []
    for k, im in enumerate(images):
        paths.append(tmp_path / f"img{k}.png")
        im.save(paths[-1])
    out = runtime.generate("a toy and a toy", [paths[0], paths[1]], background_image=paths[2], height=64, width=64, seed=3)
    assert out.record["subject"] == [str(paths[0]), str(paths[1])] and out.record["background_image"] == str(paths[2])
    folder = out.save(tmp_path / "out")
    info = json.loads((folder / "result.json").read_text())
    assert [s["image"] for s in info["subjects"]] == [str(paths[0]), str(paths[1])]
    assert info["background"]["image"] == str(paths[2]) and (folder / "mask_2.png").is_file()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MonkeyError, match=r"^subject 2 \(bad.png\): "):
        runtime.generate("x", [paths[0], tmp_path / "bad.png"], height=64, width=64)


@pytest.mark.slow  # ~10 s; the runner-level fakes (test_engine_ort/test_engine_trt: ip_image_axis) run by default
def test_gpu_cuda_graphs_one_per_image_count(engine_dir, runtime, images, fake_ort_gpu):
    """The (simulated) CUDA-graph ORT path: S = 1, 2, 1, 2 + background: one graph per UNet input-shape set (N is in
    the key), each generation equal to the CPU runtime's."""
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    req = Request("a toy and a toy", 64, 64, seed=0)
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cuda",), cuda_graph=True) as pipe:
        for n, background in ((1, False), (2, False), (1, False), (2, True)):
            got = _run(pipe, req, images, n, background, batch_passes=False)
            want = _run(runtime, req, images, n, background, batch_passes=False)
            assert all(np.array_equal(a.mask, b.mask) for a, b in zip(got.masks, want.masks))
            np.testing.assert_allclose(got.image, want.image, rtol=0, atol=1e-5)
        assert pipe.runners["unet"].graphs_captured == 3  # N = 1, 2, 3 at batch 1


@pytest.fixture
def fake_ort_gpu(monkeypatch, tmp_path):
    from tests.fakes import ort as fakes

    monkeypatch.setenv("MONKEY_TRT_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "unset")
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    return fakes.install(monkeypatch)


@pytest.fixture
def fake_gpu(monkeypatch):
    """tests/fakes/trt.py's TensorRT, Polygraphy and CUDA runtime (as tests/test_int8.py installs them)."""
    pytest.importorskip("polygraphy.backend.trt")
    from tests.fakes.trt import install_fake_gpu

    fake_trt, cudart = install_fake_gpu(monkeypatch)
    return cudart


@pytest.mark.slow  # the fake runs every plan with onnx's reference evaluator
def test_tensorrt_fake_runs_two_subjects_and_a_background(engine_dir, runtime, images, fake_gpu, tmp_path):
    """`build` on the session's engine, then the TensorRT runtime (fakes modelled on TensorRT/CUDA) with CUDA graphs and
    pass batching: one subject, then two and a background; masks equal the CPU runtime's, one graph per UNet shape."""
    from monkey_trt.engine.trt.build import build_engine_dir
    from monkey_trt.enginedir.load import load_manifest
    from monkey_trt.enginedir.plans import BuildConfig
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    m = load_manifest(d)
    build_engine_dir(d, m, BuildConfig(profile=m.profile, workspace_gib=1))
    with MonkeyPipeline.from_engine_dir(d, backend="trt", cuda_graph=True) as pipe:
        assert pipe.max_ip_images == m.max_subjects + 1 == 5
        for n, background in ((1, False), (2, True)):
            req = Request("a toy and a toy", 64, 64, seed=0, config=CASES["two+background"][2] if n == 2 else MonkeyConfig())
            got = _run(pipe, req, images, n, background, batch_passes=True)
            want = _run(runtime, req, images, n, background, batch_passes=True)
            assert got.batched_steps == 2 and all(np.array_equal(a.mask, b.mask) for a, b in zip(got.masks, want.masks))
            np.testing.assert_allclose(got.image, want.image, rtol=0, atol=1e-4)
        shapes = {(s["ip_tokens"][:2], s["ip_mask"][:2]) for s in pipe.runners["unet"].shape_sets}
        assert shapes == {((2, 4), (2, 1)), ((1, 4), (1, 1)), ((2, 12), (2, 3)), ((1, 12), (1, 3))}
