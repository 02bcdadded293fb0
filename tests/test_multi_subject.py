"""Several subjects and a background (issue 22), without an engine: the overlap rule of runtime/mask.py on synthetic
maps, the planes runtime/method.py sends on a fake Networks, and the output files. The engines: test_multi_subject_e2e."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.networks import ModelDims
from monkey_trt.runtime.mask import extract_mask, extract_subject_masks, union_mask
from monkey_trt.runtime.method import run_ip_adapter, run_monkey
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.outputs import check_out_dir, output_names
from monkey_trt.runtime.scheduler import LCMSchedule

T = 4  # IP tokens per image


def _column_maps(columns: list[np.ndarray], steps=(1, 2)) -> dict[int, np.ndarray]:
    """One [gh, gw] pattern per image (its mask_token column 1); the other columns a constant 0.25: [Q, N*T] per step."""
    q = columns[0].size
    m = np.full((q, T * len(columns)), 0.25, np.float32)
    for n, col in enumerate(columns):
        m[:, n * T + 1] = col.reshape(-1)
    return {s: m.copy() for s in steps}


def _ramp(gh, gw, left: bool) -> np.ndarray:
    x = np.tile(np.arange(gw, dtype=np.float32), (gh, 1))
    return (gw - 1 - x) if left else x


# -- the overlap rule (runtime/mask.py) ---------------------------------------------------------------
def test_one_subject_is_exactly_extract_mask():
    rng = np.random.default_rng(0)
    maps = {s: rng.random((16, T)).astype(np.float32) for s in (1, 2)}
    want = extract_mask(maps, 64, 64, 1, 0.5)
    got = extract_subject_masks(maps, 64, 64, 1, 0.5, subjects=1, n_tokens=T)
    assert len(got.masks) == 1 and np.array_equal(got.masks[0].mask, want.mask) and got.masks[0].grid == want.grid
    assert got.overlap == 0.0 and got.lost == (0.0,) and union_mask(got) is got.masks[0]
    # a background image's columns after the subject's are not read
    wide = {s: np.concatenate([m, rng.random((16, T)).astype(np.float32)], 1) for s, m in maps.items()}
    assert np.array_equal(extract_subject_masks(wide, 64, 64, 1, 0.5, 1, T).masks[0].mask, want.mask)


def test_each_subject_reads_its_own_columns_and_overlaps_go_to_the_higher_score():
    gh = gw = 4
    left, right = _ramp(gh, gw, True), _ramp(gh, gw, False)
    maps = _column_maps([left, right])
    # alone, with threshold 0.3: left keeps columns 0..2 (norm 1, .67, .33), right columns 1..3: 1..2 overlap
    got = extract_subject_masks(maps, 32, 32, 1, 0.3, subjects=2, n_tokens=T)
    one = [extract_mask({s: m[:, n * T:(n + 1) * T] for s, m in maps.items()}, 32, 32, 1, 0.3) for n in range(2)]
    raw = [m.mask > 0 for m in one]
    contested = raw[0] & raw[1]
    assert contested.mean() == pytest.approx(0.5) and got.overlap == pytest.approx(0.5)
    # grid column 1: left 0.67 > right 0.33 -> subject 1; column 2: right wins -> subject 2 (8 px a grid cell)
    m1, m2 = (m.mask > 0 for m in got.masks)
    assert m1[:, :16].all() and not m1[:, 16:].any() and m2[:, 16:].all() and not m2[:, :16].any()
    assert not (m1 & m2).any() and np.array_equal(m1 | m2, raw[0] | raw[1])
    assert got.lost == pytest.approx((1 / 3, 1 / 3))  # each raw mask held 3 of the 4 grid columns, lost 1
    assert np.array_equal(union_mask(got).mask, (m1 | m2).astype(np.float32))


def test_ties_go_to_the_lower_index():
    same = _ramp(4, 4, True)
    got = extract_subject_masks(_column_maps([same, same]), 32, 32, 1, 0.3, subjects=2, n_tokens=T)
    assert got.masks[0].coverage == pytest.approx(0.75) and got.masks[1].coverage == 0.0
    assert got.lost == pytest.approx((0.0, 1.0)) and got.overlap == pytest.approx(0.75)


def test_a_degenerate_subject_keeps_only_what_no_located_subject_holds():
    flat = np.ones((4, 4), np.float32)  # constant at every step: full raw mask, score 0
    got = extract_subject_masks(_column_maps([flat, _ramp(4, 4, False)]), 32, 32, 1, 0.3, subjects=2, n_tokens=T)
    assert got.masks[0].degenerate_steps == (1, 2) and not got.masks[1].degenerate
    assert got.masks[0].coverage == pytest.approx(0.25) and got.masks[1].coverage == pytest.approx(0.75)
    assert union_mask(got).mask.all() and union_mask(got).degenerate_steps == (1, 2)
    both = extract_subject_masks(_column_maps([flat, flat]), 32, 32, 1, 0.3, subjects=2, n_tokens=T)
    assert both.masks[0].mask.all() and not both.masks[1].mask.any() and both.overlap == 1.0


def test_too_few_columns_for_the_subjects_is_refused():
    with pytest.raises(ValueError, match="cannot hold 2 subject"):
        extract_subject_masks({1: np.zeros((16, T), np.float32)}, 32, 32, 1, 0.5, subjects=2, n_tokens=T)


# -- the method's planes (runtime/method.py) on a fake Networks ---------------------------------------
class FakeNetworks:
    """Deterministic per-sample arithmetic (batched == sequential exactly); records what each session got."""

    backend = "fake"
    dims = ModelDims(text_len=77, text_dim=8)
    schedule = LCMSchedule(np.linspace(0.9991, 0.005, 1000).astype(np.float32))
    max_unet_batch = 2
    batch_passes_default = False

    def __init__(self, max_subjects: int = 4, max_ip_images: int | None = None):
        self.max_subjects = max_subjects
        if max_ip_images is not None:
            self.max_ip_images = max_ip_images
        self.sessions: list[dict] = []

    def prepare(self, request):
        self.size = (request.height, request.width)

    def encode_prompt(self, prompt):
        return np.zeros((1, 77, 8), np.float32), False

    def encode_subject(self, image):
        level = np.asarray(image, np.float32).mean() / 255.0
        return np.full((1, T, 8), level, np.float32)  # [1, T, D]

    def guidance(self, g):
        return np.zeros((1, 4), np.float32)

    def unet_session(self, text, ip_tokens, w_emb, masks):
        n = ip_tokens.shape[1] // T
        rec = {"n": n, "tokens": ip_tokens.copy(), "masks": [None if m is None else np.array(m) for m in masks], "calls": []}
        self.sessions.append(rec)
        H, W = self.size
        gh, gw = H // 32, W // 32
        levels = ip_tokens[0, ::T, 0]  # [N]: each image's level

        def call(latents, timesteps, scale, want_map):
            rec["calls"].append((len(latents), float(scale), want_map))
            eps = []
            for b in range(len(latents)):
                planes = np.ones((n, H, W), np.float32) if masks[b] is None else np.asarray(masks[b], np.float32).reshape(n, H, W)
                push = float(scale) * float((planes.mean(axis=(1, 2)) * levels).sum())
                eps.append(0.5 * latents[b] + push + 0.01 * timesteps[b] / 1000.0)
            maps = None
            if want_map:  # image n's token-1 column peaks in its own third of the width
                cols = np.stack([np.clip(1.0 - np.abs(np.arange(gw) - (k + 0.5) * gw / n) / gw * n, 0, 1) for k in range(n)])
                one = np.full((gh * gw, n * T), 0.25, np.float32)
                for k in range(n):
                    one[:, k * T + 1] = np.tile(cols[k], gh)
                maps = np.stack([one] * len(latents))  # [B, Q, N*T]
            return np.stack(eps).astype(np.float32), maps

        return call

    def decode(self, latents):
        up = latents[0, :3].repeat(8, axis=1).repeat(8, axis=2).transpose(1, 2, 0)  # [H, W, 3]
        return np.clip(0.5 + 0.1 * up, 0, 1).astype(np.float32)

    def noise_for(self, request):
        return NoisePlan.from_seed(request.seed, request.latent_shape(self.dims), request.config.noise_steps)

    def sync(self):
        pass


GREY = [Image.new("RGB", (16, 16), (v, v, v)) for v in (60, 120, 200)]
REQ = Request("a dog and a cat", 128, 128, seed=1, config=MonkeyConfig(subject_scales=(0.5, 1.5), background_scale=0.75))


def test_planes_sent_per_step_two_subjects_and_a_background():
    net = FakeNetworks()
    out = run_monkey(net, REQ, GREY[:2], background=GREY[2], baseline_scale=0.8)
    p1, *p2, base = net.sessions
    assert all(s["n"] == 3 for s in net.sessions)
    tokens = p1["tokens"]  # [1, 3T, D]: subjects in order, then the background
    assert tokens.shape == (1, 3 * T, 8) and np.allclose(tokens[0, ::T, 0], [60 / 255, 120 / 255, 200 / 255])
    (planes,) = p1["masks"]  # pass 1: w_s constant, the background 0
    assert planes.shape == (3, 128, 128) and (planes[0] == 0.5).all() and (planes[1] == 1.5).all() and (planes[2] == 0).all()
    assert [c[2] for c in p1["calls"]] == [False, True, True]  # steps 0..2, maps at the mask steps
    m1, m2 = out.masks[0].mask, out.masks[1].mask
    assert out.subjects == 2 and 0 < m1.mean() < 1 and 0 < m2.mean() < 1 and not (m1 * m2).any()
    (masked,) = p2[0]["masks"]  # pass 2 (one run: its leading scale-0 steps join the masked run)
    assert np.array_equal(masked[0], 0.5 * m1) and np.array_equal(masked[1], 1.5 * m2)
    assert np.array_equal(masked[2], 0.75 * (1 - np.maximum(m1, m2)))
    assert np.array_equal(out.background_mask, 1 - np.maximum(m1, m2)) and out.background_scale == 0.75
    (open_,) = base["masks"]  # the baseline: every image at its own scale, unmasked
    assert [float(open_[k].min()) for k in range(3)] == [0.5, 1.5, 0.75] and (open_.max(axis=(1, 2)) == open_.min(axis=(1, 2))).all()
    assert out.scales == (0.5, 1.5) and np.array_equal(out.mask.mask, np.maximum(m1, m2))


def test_batched_equals_sequential_with_several_subjects():
    outs = {}
    for batch in (False, True):
        net = FakeNetworks()
        outs[batch] = run_monkey(net, REQ, GREY[:2], background=GREY[2], batch_passes=batch)
        if batch:  # pass 2's scale-0 steps ride with pass 1: zeros for every image
            planes = net.sessions[0]["masks"]
            assert planes[1].shape == (3, 128, 128) and not planes[1].any() and (planes[0][0] == 0.5).all()
    seq, bat = outs[False], outs[True]
    assert bat.batched_steps == 2 and seq.batched_steps == 0
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(seq.masks, bat.masks))
    assert np.array_equal(seq.image, bat.image) and seq.image.std() > 0
    one = run_monkey(FakeNetworks(), Request(REQ.prompt, 128, 128, seed=1), GREY[:2], background=GREY[2])
    assert np.abs(one.image - seq.image).max() > 1e-3  # the scales reach the image


def test_one_subject_sends_todays_planes():
    net = FakeNetworks()
    out = run_monkey(net, Request("a dog", 128, 128, seed=1), GREY[0], batch_passes=True)
    assert all(s["n"] == 1 for s in net.sessions) and net.sessions[0]["tokens"].shape == (1, T, 8)
    assert net.sessions[0]["masks"][0] is None  # pass 1 unmasked: None, as always
    assert not net.sessions[0]["masks"][1].any()
    (masked,) = net.sessions[-1]["masks"]
    assert masked.shape == (1, 128, 128) and np.array_equal(masked[0], out.mask.mask)
    assert out.masks == (out.mask,) and out.subjects == 1 and out.background_mask is None and out.overlap == 0.0


def test_plain_ip_adapter_takes_several_images():
    net = FakeNetworks()
    out = run_ip_adapter(net, REQ, GREY[:2], 1.0, background=GREY[2])
    (planes,) = net.sessions[0]["masks"]
    assert planes.shape == (3, 128, 128) and out.subjects == 2 and out.mask.mask.all()


@pytest.mark.parametrize("call, needle", [
    (lambda n: run_monkey(n, Request("x", 64, 64), GREY * 2), "6 subject images given: this engine takes at most 4 subjects "
                                                           r"\(manifest max_subjects\); re-export with --max-subjects"),
    (lambda n: run_monkey(n, Request("x", 64, 64), []), "no subject image given"),
    (lambda n: run_monkey(n, Request("x", 64, 64), [], background=GREY[2]), "no subject image given"),
    (lambda n: run_monkey(n, Request("x", 64, 64), [GREY[0], "cat.png"]), "subject 2 must be a PIL image"),
    (lambda n: run_monkey(n, Request("x", 64, 64, config=MonkeyConfig(subject_scales=(1.0,))), GREY[:2]),
     "subject_scales has 1 entries for 2 subject image"),
    (lambda n: run_monkey(n, Request("x", 64, 64), GREY[0], background="bg.png"), "background must be a PIL image"),
    (lambda n: run_ip_adapter(n, Request("x", 64, 64), GREY * 2, 1.0), "takes at most 4 subjects"),
])
def test_bad_subjects_are_one_line_before_any_work(call, needle):
    net = FakeNetworks()
    with pytest.raises(MonkeyError, match=needle):
        call(net)
    assert net.sessions == []


def test_an_old_engine_directory_takes_one_subject_and_no_background():
    old = FakeNetworks(max_subjects=1, max_ip_images=1)
    with pytest.raises(MonkeyError, match="at most 1 subject "):
        run_monkey(old, Request("x", 64, 64), GREY[:2])
    with pytest.raises(MonkeyError, match="exported before background images"):
        run_monkey(old, Request("x", 64, 64), GREY[0], background=GREY[2])
    assert old.sessions == []
    assert run_monkey(old, Request("x", 64, 64), GREY[0]).subjects == 1


@pytest.mark.parametrize("bad", [(1.0, -0.5), (5.0,), (float("nan"),)])
def test_subject_and_background_scales_are_checked(bad):
    with pytest.raises(MonkeyError, match="subject_scales"):
        MonkeyConfig(subject_scales=bad)
    with pytest.raises(MonkeyError, match="background_scale"):
        MonkeyConfig(background_scale=-1.0)
    assert MonkeyConfig(subject_scales=[1, 0.5]).to_dict()["subject_scales"] == [1.0, 0.5]


# -- the output files (runtime/outputs.py) ------------------------------------------------------------
def test_output_names_for_several_subjects():
    assert output_names() == ["monkey.png", "mask.png", "overlay.png", "result.json"]  # today's
    assert output_names(subjects=2, background=True, baseline=True) == [
        "monkey.png", "mask.png", "overlay.png", "mask_1.png", "mask_2.png", "overlay_1.png", "overlay_2.png",
        "background_mask.png", "ipadapter.png", "grid.png", "result.json"]
    with pytest.raises(MonkeyError, match="subjects must be a positive integer"):
        output_names(subjects=0)


def test_a_users_file_of_a_subject_output_name_is_refused(tmp_path):
    (tmp_path / "mask_2.png").write_bytes(b"mine")
    check_out_dir(tmp_path, subjects=1)  # one subject writes no mask_2.png
    with pytest.raises(MonkeyError, match="mask_2.png"):
        check_out_dir(tmp_path, subjects=2)
    assert (tmp_path / "mask_2.png").read_bytes() == b"mine"


def test_saved_folder_of_two_subjects_and_a_background(tmp_path):
    net = FakeNetworks()
    out = run_monkey(net, REQ, GREY[:2], background=GREY[2], baseline_scale=1.0)
    folder = out.save(tmp_path / "o", subject=GREY[:2], save_arrays=True,
                      record={"subject": ["dog.png", "cat.png"], "background_image": "beach.png"})
    info = json.loads((folder / "result.json").read_text())
    assert info["files"] == output_names(True, True, 2, True) and "background_image" not in info
    assert [s["image"] for s in info["subjects"]] == ["dog.png", "cat.png"] and [s["scale"] for s in info["subjects"]] == [0.5, 1.5]
    assert [s["coverage"] for s in info["subjects"]] == [m.coverage for m in out.masks]
    assert info["background"] == {"image": "beach.png", "scale": 0.75, "coverage": float(out.background_mask.mean())}
    assert info["overlap"] == out.overlap and info["config"]["subject_scales"] == [0.5, 1.5]
    for k, m in enumerate(out.masks, 1):
        assert np.array_equal(np.asarray(Image.open(folder / f"mask_{k}.png")) > 0, m.mask > 0)
    overlay = np.asarray(Image.open(folder / "overlay.png")).astype(int)
    red, blue = overlay[..., 0] - overlay[..., 2], overlay[..., 2] - overlay[..., 0]
    assert (red[out.masks[0].mask > 0] > 0).all() and (blue[out.masks[1].mask > 0] > 0).all()  # distinct colours
    arrays = np.load(folder / "arrays.npz")
    assert arrays["masks"].shape == (2, 128, 128) and np.array_equal(arrays["background_mask"], out.background_mask)


def test_saved_folder_of_one_subject_is_todays(tmp_path):
    out = run_monkey(FakeNetworks(), Request("a dog", 128, 128), GREY[0])
    folder = out.save(tmp_path / "o", record={"subject": "dog.png"})
    info = json.loads((folder / "result.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(output_names())
    assert info["subject"] == "dog.png" and info["background"] is None and info["overlap"] == 0.0
    assert info["subjects"] == [{"index": 1, "image": "dog.png", "scale": 1.0, "coverage": out.mask.coverage, "lost_to_overlap": 0.0}]


def test_a_corrupt_image_among_several_is_named(tmp_path):
    from monkey_trt.runtime.pipeline import load_images

    good, bad = tmp_path / "dog.png", tmp_path / "cat.png"
    GREY[0].save(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images, recorded = load_images([str(good), GREY[1]])
    assert len(images) == 2 and recorded == [str(good), None]
    with pytest.raises(MonkeyError, match=r"^subject 2 \(cat.png\): subject image .*cat.png"):
        load_images([good, bad])
    with pytest.raises(MonkeyError, match=r"^subject image .*cat.png"):  # one image: today's line
        load_images(bad)
    with pytest.raises(MonkeyError, match=r"^background \(cat.png\): "):
        load_images(bad, "background")
    with pytest.raises(MonkeyError, match="no subject image given"):
        load_images([])


def test_unmasked_adapter_steps_send_every_image_at_its_scale_also_in_the_pass_batch():
    cfg = MonkeyConfig(adapter_steps=(0, 1), subject_scales=(0.5, 1.5), background_scale=0.75)
    req = Request("a dog and a cat", 128, 128, seed=1, config=cfg)
    outs = {}
    for batch in (False, True):
        net = FakeNetworks()
        outs[batch] = run_monkey(net, req, GREY[:2], background=GREY[2], batch_passes=batch)
        if batch:
            p1, p2 = net.sessions[0]["masks"]  # pass-2 steps 0-1 ride with pass 1, unmasked at their scales
            assert [float(p2[k].max()) for k in range(3)] == [0.5, 1.5, 0.75] and float(p1[2].max()) == 0.0
        else:
            runs = [s["masks"][0] for s in net.sessions[1:]]  # pass 2: open run (steps 0-1), then the masked run
            assert [float(runs[0][k].min()) for k in range(3)] == [0.5, 1.5, 0.75] and runs[1][0].min() == 0.0
    assert outs[True].batched_steps == 2 and np.array_equal(outs[True].image, outs[False].image)
