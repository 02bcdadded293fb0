"""The map-only UNet (issue 21, point 3): pass 1's last call runs the UNet cut after the mask layer's map.

It must give the full graph's map bit for bit on ORT CPU (so masks stay identical), be sealed in the manifest like
every network, and an engine directory exported before it must still open and run (the full UNet for that call)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from monkey_trt.cli import main
from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import MANIFEST
from monkey_trt.enginedir.networks import MAP_NETWORK, MAP_OUTPUT, NETWORKS
from monkey_trt.runtime.backend import BackendSpec
from monkey_trt.runtime.pipeline import MonkeyPipeline, open_runners


def _feeds(manifest, batch: int, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """Random UNet inputs of one request size (a pixel mask of 0/1, per-layer scales)."""
    d, g = manifest.dims, np.random.default_rng(seed)
    return {
        "sample": g.standard_normal((batch, d.latent_channels, height // 8, width // 8)).astype(np.float32),
        "timestep": np.full((batch,), 759.0, np.float32),
        "encoder_hidden_states": g.standard_normal((batch, d.text_len, d.text_dim)).astype(np.float32),
        "timestep_cond": g.standard_normal((batch, d.time_cond_dim)).astype(np.float32),
        "ip_tokens": g.standard_normal((batch, d.n_ip_tokens, d.text_dim)).astype(np.float32),
        "ip_scale": g.uniform(0.0, 1.5, (d.n_ip_layers,)).astype(np.float32),
        "ip_mask": (g.random((batch, 1, height, width)) > 0.5).astype(np.float32),
    }


def _without_map_graph(src: Path, dst: Path) -> Path:
    """`src` as an engine directory exported before the map-only UNet: fp32 only, no unet_map entry or file."""
    raw = json.loads((src / MANIFEST).read_text())
    raw["networks"] = {n: {k: v for k, v in e.items() if k != "precisions"} for n, e in raw["networks"].items() if n in NETWORKS}
    dst.mkdir(parents=True)
    for e in raw["networks"].values():
        for f in e["sha256"]:
            shutil.copy2(src / f, dst / f)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    (dst / MANIFEST).write_text(json.dumps(raw))
    return dst


def test_export_seals_a_map_only_unet_for_every_unet_precision(engine_dir):
    m = load_manifest(engine_dir)  # every file's sha256 and size, the map-only graphs' included
    entry, unet = m.networks[MAP_NETWORK], m.networks["unet"]
    assert entry.desc.output_names == [MAP_OUTPUT] and entry.desc.input_names == unet.desc.input_names
    assert set(entry.precisions) == set(unet.precisions) == {"fp16"}
    assert entry.file == "unet_map.onnx" and entry.precisions["fp16"].file == "unet_map.fp16.onnx"
    for p in ("fp32", "fp16"):  # a strict cut: fewer bytes than the UNet it comes from
        assert sum(entry.files(p)[2].values()) < 0.9 * sum(unet.files(p)[2].values())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_map_only_graph_gives_the_full_graphs_map_bits_on_ort_cpu(engine_dir, precision):
    """Through the runtime's own opener (its session options for the cut graph), several sizes and batches."""
    m = load_manifest(engine_dir)
    runners = open_runners(engine_dir, m, BackendSpec(backend="ort", precision=precision, threads=1), ("unet", MAP_NETWORK))
    try:
        for i, (b, h, w) in enumerate([(1, 64, 64), (2, 64, 64), (1, 128, 96), (2, 128, 128)]):
            feeds = _feeds(m, b, h, w, seed=i)
            full = runners["unet"].infer(feeds, outputs=(MAP_OUTPUT,))[MAP_OUTPUT]
            cut = runners[MAP_NETWORK].infer(feeds, outputs=(MAP_OUTPUT,))[MAP_OUTPUT]
            assert full.shape == cut.shape and full.dtype == cut.dtype == np.float32
            assert np.array_equal(full.view(np.uint32), cut.view(np.uint32)), f"{precision} {b}x{h}x{w}: map bits differ"
    finally:
        for r in runners.values():
            r.deactivate()


def test_pass_1s_last_call_runs_map_only_and_the_mask_and_image_stay_identical(runtime, subject, tmp_path):
    for seed in range(3):
        req = Request("a toy on the beach", 64, 64, seed, MonkeyConfig())
        fast = runtime(req, subject)
        full = runtime(req, subject, decode_mask_pass=True)  # the pass-1 image is asked for: the full UNet
        batched = runtime(req, subject, batch_passes=True)  # steps 0-1 batched with pass 2, step 2 alone
        p1 = [(c.passes, c.step, c.graph) for c in fast.unet_calls if "p1" in c.passes]
        assert p1 == [("p1", 0, "unet"), ("p1", 1, "unet"), ("p1", 2, MAP_NETWORK)]
        assert all(c.graph == "unet" for c in full.unet_calls) and full.mask_pass_image is not None
        assert [(c.passes, c.graph) for c in batched.unet_calls if "p1" in c.passes][-1] == ("p1", MAP_NETWORK)
        for other in (full, batched):
            assert np.array_equal(fast.mask.mask, other.mask.mask) and np.array_equal(fast.image, other.image)
    record = json.loads((fast.save(tmp_path / "out") / "result.json").read_text())
    assert [c["graph"] for c in record["unet_calls"]] == [c.graph for c in fast.unet_calls]
    assert record["models"]["map_only_unet"] == ["fp32"]


def test_a_batch_that_holds_pass_1s_last_call_runs_the_full_unet(runtime, subject):
    """mask steps 0-1: both of pass 1's calls ride in the batch with pass 2, which reads the noise_pred."""
    cfg = MonkeyConfig(mask_steps=(0, 1), masked_steps=(2, 3))
    req = Request("a toy", 64, 64, 0, cfg)
    out = runtime(req, subject, batch_passes=True)
    assert out.batched_steps == 2 and all(c.graph == "unet" for c in out.unet_calls)
    seq = runtime(req, subject, batch_passes=False)
    assert seq.unet_calls[1].graph == MAP_NETWORK and np.array_equal(seq.mask.mask, out.mask.mask)


def test_a_directory_exported_before_the_map_only_unet_opens_and_runs(engine_dir, runtime, subject, tmp_path):
    old = _without_map_graph(engine_dir, tmp_path / "old")
    req = Request("a toy on the beach", 64, 64, 1, MonkeyConfig())
    with MonkeyPipeline.from_engine_dir(old, backend="ort") as pipe:
        assert pipe.map_runners == {}
        out = pipe(req, subject)
    assert all(c.graph == "unet" for c in out.unet_calls)
    new = runtime(req, subject)
    assert np.array_equal(out.mask.mask, new.mask.mask) and np.array_equal(out.image, new.image)


def test_map_only_false_keeps_the_memory_and_runs_the_full_unet(engine_dir, runtime, subject):
    req = Request("a toy on the beach", 64, 64, 2, MonkeyConfig())
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", map_only=False) as pipe:
        assert pipe.map_runners == {}
        out = pipe(req, subject)
    assert all(c.graph == "unet" for c in out.unet_calls)
    new = runtime(req, subject)
    assert np.array_equal(out.mask.mask, new.mask.mask) and np.array_equal(out.image, new.image)
    with pytest.raises(MonkeyError, match="map_only must be true or false"):
        BackendSpec(backend="ort", map_only="no")
    with pytest.raises(MonkeyError, match="map_only applies to the ort/trt/openvino backends only"):
        BackendSpec(backend="torch", map_only=False)


def test_adding_a_precision_to_an_old_directory_adds_the_map_only_unet(engine_dir, tmp_path):
    from monkey_trt.export.onnx_export import add_precisions

    old = _without_map_graph(engine_dir, tmp_path / "old")
    assert add_precisions(old, ("fp16",)) == ("fp16",)
    m = load_manifest(old)
    assert m.networks[MAP_NETWORK].file == "unet_map.onnx" and set(m.networks[MAP_NETWORK].precisions) == {"fp16"}
    for p in ("fp32", "fp16"):  # the same cut as a fresh export's
        f = m.networks[MAP_NETWORK].files(p)[0]
        assert (old / f).read_bytes() == (engine_dir / f).read_bytes()


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_a_map_only_graph_that_does_not_match_its_manifest_entry_is_one_line(engine_dir, tiny_model_dir, tmp_path, capsys, damage):
    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    f = d / "unet_map.onnx"
    if damage == "missing":
        f.unlink()
    else:  # the same size, one byte changed: the sha256 check finds it
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    out = tmp_path / "out"
    code = main(["generate", "--engine-dir", str(d), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "a toy",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "unet_map.onnx" in err and ("missing" if damage == "missing" else "sha256") in err
    assert not out.exists()


@pytest.fixture
def fake_gpu(monkeypatch):
    """tests/fakes/trt.py's TensorRT, Polygraphy and CUDA runtime (a compute capability 9.0 GPU)."""
    pytest.importorskip("polygraphy.backend.trt")
    from tests.fakes.trt import install_fake_gpu

    fake_trt, cudart = install_fake_gpu(monkeypatch)
    return fake_trt


def test_tensorrt_builds_and_opens_the_map_only_plan(engine_dir, fake_gpu, tmp_path):
    """`build` makes unet_map.plan beside the four; a plan set without it is incomplete (one line: build); the
    pipeline opens it (verified like every plan) and a UNet session offers it for pass 1's last call."""
    from monkey_trt.core.errors import EngineDirError
    from monkey_trt.engine.trt.build import build_engine_dir
    from monkey_trt.engine.trt.engine_dir import find_plan_dir
    from monkey_trt.enginedir.plans import BUILD_JSON, BuildConfig

    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    m = load_manifest(d)
    folder = build_engine_dir(d, m, BuildConfig(profile=m.profile, workspace_gib=1))
    assert sorted(p.name for p in folder.glob("*.plan")) == sorted(f"{n}.plan" for n in (*NETWORKS, MAP_NETWORK))
    assert json.loads((folder / BUILD_JSON).read_text())["networks"][MAP_NETWORK]["onnx"] == "unet_map.onnx"
    with MonkeyPipeline.from_engine_dir(d, backend="trt") as pipe:
        assert set(pipe.map_runners) == {"fp32"} and pipe.map_runners["fp32"].is_active
        assert [s.name for s in pipe.map_runners["fp32"].output_specs] == [MAP_OUTPUT]
        text, ip, w = np.zeros((1, 77, m.dims.text_dim), np.float32), np.zeros((1, 4, m.dims.text_dim), np.float32), pipe.guidance(8.0)
        assert callable(pipe.unet_session(text, ip, w, [None]).map_only)
    (folder / f"{MAP_NETWORK}.plan").unlink()
    with pytest.raises(EngineDirError, match="run `monkey-trt build") as ei:
        find_plan_dir(d, m, "fp32")
    assert "\n" not in str(ei.value)


def test_the_cut_of_a_graph_with_external_weights_copies_only_the_weights_it_keeps(engine_dir, tmp_path):
    """sd15-size UNets keep their weights in `unet.onnx.data`: the cut streams the tensors it keeps into its own
    data file (nothing else), and the graph is the same as the cut of the inline graph."""
    import onnx

    from monkey_trt.export.map_graph import write_map_graph
    from monkey_trt.export.onnx_files import save_onnx

    src = tmp_path / "big"
    src.mkdir()
    assert save_onnx(onnx.load(str(engine_dir / "unet.onnx")), src / "unet.onnx", external=True) == ["unet.onnx", "unet.onnx.data"]
    assert write_map_graph(src / "unet.onnx", src / "unet_map.onnx") == ["unet_map.onnx", "unet_map.onnx.data"]
    cut, inline = onnx.load(str(src / "unet_map.onnx")), onnx.load(str(engine_dir / "unet_map.onnx"))
    assert [n.name for n in cut.graph.node] == [n.name for n in inline.graph.node]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in cut.graph.initializer}
    want = {t.name: onnx.numpy_helper.to_array(t) for t in inline.graph.initializer}
    assert weights.keys() == want.keys() and all(np.array_equal(weights[k], want[k]) for k in want)
    kept = sum(a.nbytes for a in want.values() if a.nbytes > 1024)
    assert (src / "unet_map.onnx.data").stat().st_size < kept + 4096 * len(want)  # the kept tensors (+ page alignment)
    assert (src / "unet_map.onnx.data").stat().st_size < (src / "unet.onnx.data").stat().st_size
