"""Resource limits a stranger can reach without the HTTP service: subject images, noise files, --threads,
the inference queue's slots and the log rate limit. Fast: no engine, except the one CLI test."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from monkey_trt.core.config import check_threads
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.images import clip_preprocess, decode_subject, load_subject
from monkey_trt.runtime.noise import (
    MAX_STEP_NOISES,
    NoisePlan,
    load_noise_file,
    save_noise_file,
)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h greyscale pixels and holds an empty IDAT: any decode fails, a size check does not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def png(w: int, h: int, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="png")
    return buf.getvalue()


# -- images -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("w, h, needle", [
    (8192, 1, "32x its short side"), (1, 8192, "32x its short side"), (33, 1, "32x its short side"),
    (4096, 8, "32x its short side"), (8192, 8192, "Mpx"), (8192, 4097, "Mpx"), (9000, 9000, "8192 px"),
])
def test_subject_refused_on_its_header_before_any_decode(w, h, needle, monkeypatch, tmp_path):
    def no_decode(self, *a, **k):
        raise AssertionError("decoded a subject the header check should have refused")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decode)
    data = png_header_only(w, h)
    for call in (lambda: decode_subject(data, "upload"), lambda: load_subject(tmp_path / "s.png")):
        (tmp_path / "s.png").write_bytes(data)
        with pytest.raises(MonkeyError, match=needle) as e:
            call()
        assert "\n" not in str(e.value) and str(e.value).startswith("subject image")


@pytest.mark.parametrize("w, h", [(32, 1), (1, 32), (8192, 256), (8192, 4096), (1, 1)])
def test_subject_sizes_at_the_limits_pass_the_check(w, h, monkeypatch):
    """Exactly 32:1 and exactly MAX_IMAGE_PIXELS pass the header check (the decode is stubbed out)."""
    class Decoded(Exception):
        pass

    def decoded(self, *a, **k):
        raise Decoded

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", decoded)
    with pytest.raises(MonkeyError, match="corrupt or truncated"):  # Decoded, reported as a decode failure
        decode_subject(png_header_only(w, h))


def test_clip_preprocess_bounds_its_resize_target(monkeypatch):
    resized = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: resized.append(size) or original(self, size, *a, **k))
    for size in [(8192, 1), (1, 8192), (2, 4096), (7169, 224)]:  # in-memory images of the Python API
        with pytest.raises(MonkeyError, match="32x its short side") as e:
            clip_preprocess(Image.new("RGB", size))
        assert "\n" not in str(e.value)
    assert resized == []  # refused before the resize allocates anything
    for size in [(32, 1), (7168, 224), (640, 480)]:  # the widest accepted: 32:1 -> 7168 x 224
        assert clip_preprocess(Image.new("RGB", size)).shape == (1, 3, 224, 224)
    assert max(w * h for w, h in resized) == 7168 * 224


def test_sixteen_bit_subject_is_still_rescaled_exactly(tmp_path):
    """The in-place float path gives the same bytes as the out-of-place one it replaced."""
    a = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "i16.png")
    got = np.asarray(load_subject(tmp_path / "i16.png"))[..., 0]
    want = np.clip(np.rint(a.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)
    f = np.linspace(-3.0, 5.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    got = np.asarray(load_subject(tmp_path / "f.tif"))[..., 0]
    want = np.clip(np.rint((f.astype(np.float64) - float(f.min())) * (255.0 / float(f.max() - f.min()))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, want)


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from PIL import Image
    from monkey_trt.core.errors import MonkeyError
    from monkey_trt.runtime.images import clip_preprocess, decode_subject, load_subject

    def hwm():
        return int(next(x.split()[1] for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")))

    base, out = hwm(), []
    for path in sys.argv[1:]:
        for run in (lambda: clip_preprocess(load_subject(path)), lambda: clip_preprocess(decode_subject(Path(path).read_bytes()))):
            try:
                run()
                out.append("accepted")
            except MonkeyError as e:
                out.append("refused" if "\\n" not in str(e) else "multi-line")
    try:
        clip_preprocess(Image.new("L", (8192, 1)))
        out.append("accepted")
    except MonkeyError:
        out.append("refused")
    print(" ".join(out), (hwm() - base) // 1024)
""")


def test_hostile_subjects_cost_no_memory(tmp_path):
    """Real files, a real decode, in a child under a 3 GiB address-space cap: before these limits the
    8192x1 PNG (104 bytes) cost 3.9 GiB and the 8192x8192 one 384 MiB; now each is refused for < 40 MiB."""
    paths = []
    for w, h in [(8192, 1), (1, 8192), (8192, 8192), (4096, 2)]:
        p = tmp_path / f"{w}x{h}.png"
        p.write_bytes(png(w, h))
        paths.append(str(p))
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *paths], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr[-2000:]
    verdicts, mib = r.stdout.split()[:-1], int(r.stdout.split()[-1])
    assert verdicts == ["refused"] * 9, verdicts
    assert mib < 40, f"refusing the hostile subjects raised the high-water mark by {mib} MiB"


# -- noise files ------------------------------------------------------------------------------------
SHAPE = (1, 4, 8, 8)


def _npz(path, members: list[tuple[str, bytes]], compress: bool = False):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npy_header(shape, descr="<f4", data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_noise_file_refusals_come_from_headers(tmp_path, monkeypatch):
    lat, sn = np.zeros(SHAPE, np.float32), np.zeros((7, *SHAPE), np.float32)
    ok = [("latents.npy", _npy(lat)), ("step_noise.npy", _npy(sn))]
    big = (1, 4, 64, 64)  # a large latent: its size limit (6.6 MB) lets a deflated bomb through to the header check
    cases = {
        "extra array": ([*ok, ("junk.npy", _npy(np.zeros(3, np.float32)))], SHAPE, "other arrays than"),
        "extra non-npy member": ([*ok, ("readme.txt", b"hello")], SHAPE, "other arrays than"),
        "repeated member": ([*ok, ("step_noise.npy", _npy(sn))], SHAPE, "twice"),
        "missing": ([ok[0]], SHAPE, "lacks"),
        "K over 49 (deflated)": ([("latents.npy", _npy(np.zeros(big, np.float32))),
                                  ("step_noise.npy", _npy(np.zeros((600, *big), np.float32)))], big, "at most 49"),
        "latents far too large (deflated)": ([("latents.npy", _npy(np.zeros((1, 4, 512, 512), np.float32))),
                                              ("step_noise.npy", _npy(np.zeros((7, *big), np.float32)))], big, "expected"),
        "header says K=10, holds 7": ([ok[0], ("step_noise.npy", _npy_header((10, *SHAPE), data=sn.tobytes()))], SHAPE, "its header says"),
        "header says 2**40 entries": ([ok[0], ("step_noise.npy", _npy_header((2**40, *SHAPE)))], SHAPE, "at most 49"),
        "int dtype": ([("latents.npy", _npy(lat.astype(np.int32))), ok[1]], SHAPE, "float array"),
        "longdouble": ([("latents.npy", _npy_header(SHAPE, "<f16", b"\0" * 16 * 256)), ok[1]], SHAPE, "float array"),
        "object dtype": ([("latents.npy", _npy_header(SHAPE, "|O")), ok[1]], SHAPE, "float array"),
        "npy version 3": ([("latents.npy", b"\x93NUMPY\x03\x00" + b"\0" * 64), ok[1]], SHAPE, "version 3.0"),
    }
    read = []
    original = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, **k: read.append(1) or original(f, **k))
    for name, (members, shape, needle) in cases.items():
        path = _npz(tmp_path / f"{len(read)}-{abs(hash(name))}.npz", members, compress=True)
        read.clear()
        with pytest.raises(MonkeyError, match=needle) as e:
            load_noise_file(path, shape, 8)
        assert "\n" not in str(e.value), name
        if name not in ("int dtype",):
            assert len(read) <= 1, (name, "read an array it should have refused on its header")
    assert MAX_STEP_NOISES == 49


def test_noise_file_size_is_checked_before_the_zip_is_opened(tmp_path, monkeypatch):
    p = tmp_path / "huge.npz"
    p.write_bytes(b"\0" * 200_000)  # bigger than any plan for 8x8 latents can be
    monkeypatch.setattr(zipfile, "ZipFile", lambda *a, **k: pytest.fail("opened a zip that is too large to be a noise plan"))
    with pytest.raises(MonkeyError, match="takes at most"):
        load_noise_file(p, SHAPE, 8)


def test_noise_files_that_fit_still_load(tmp_path):
    plan = NoisePlan.from_seed(3, SHAPE, 50)  # the most steps a pass has: 49 step noises
    save_noise_file(tmp_path / "max.npz", plan)
    back = load_noise_file(tmp_path / "max.npz", SHAPE, 8)
    np.testing.assert_array_equal(back.step_noise, plan.step_noise)
    np.savez_compressed(tmp_path / "c.npz", latents=plan.latents.astype(np.float16), step_noise=plan.step_noise[:3])
    assert load_noise_file(tmp_path / "c.npz", SHAPE, 4).step_noise.shape == (3, *SHAPE)
    f = np.asfortranarray(plan.step_noise[:7])
    np.savez(tmp_path / "f.npz", latents=plan.latents, step_noise=f)
    np.testing.assert_array_equal(load_noise_file(tmp_path / "f.npz", SHAPE, 8).step_noise, plan.step_noise[:7])


# -- --threads ---------------------------------------------------------------------------------------
def test_threads_upper_bound():
    most = 4 * (os.cpu_count() or 1)
    assert check_threads(0) == 0 and check_threads(most) == most
    for bad in (most + 1, 10**6, 2**63):
        with pytest.raises(MonkeyError, match=f"at most {most}") as e:
            check_threads(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(MonkeyError, match=">= 0"):
        check_threads(-1)


def test_cli_refuses_hostile_inputs_in_one_line(engine_dir, tmp_path, capsys):
    from monkey_trt.cli import main

    (tmp_path / "wide.png").write_bytes(png(8192, 1))
    np.savez(tmp_path / "extra.npz", latents=np.zeros((1, 4, 8, 8), np.float32),
             step_noise=np.zeros((7, 1, 4, 8, 8), np.float32), junk=np.zeros(3))
    (tmp_path / "ok.png").write_bytes(png(64, 64, "RGB"))
    base = ["generate", "--backend", "ort", "--engine-dir", str(engine_dir), "--prompt", "x", "--height", "64", "--width", "64"]
    assert main([*base, "--image", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o1")]) == 2
    assert main([*base, "--image", str(tmp_path / "ok.png"), "--noise", str(tmp_path / "extra.npz"), "--out", str(tmp_path / "o2")]) == 2
    assert main([*base, "--image", str(tmp_path / "ok.png"), "--threads", str(10**6), "--out", str(tmp_path / "o3")]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 3 and all(x.startswith("error: ") for x in lines), lines
    assert "32x its short side" in lines[0] and "other arrays" in lines[1] and "--threads must be at most" in lines[2]


# -- the inference queue's slots ------------------------------------------------------------------------
def test_slot_is_held_by_handler_and_job_until_both_release():
    from monkey_trt.serve.worker import InferenceWorker, QueueFull

    w = InferenceWorker(max_queue=0)
    try:
        slot = w.admit()
        assert w.depth == 1
        with pytest.raises(QueueFull):
            w.admit()
        gate = threading.Event()
        fut = w.submit_sync(lambda: gate.wait(30), slot=slot)
        slot.release()  # the handler is done (e.g. it answered 504); the job still runs
        slot.release()  # a second release by the same holder changes nothing
        assert w.depth == 1
        gate.set()
        assert fut.result(timeout=30) is True
        assert w.depth == 0
        with w.admit():  # the room is back
            assert w.depth == 1
        assert w.depth == 0
    finally:
        w.close()


def test_cancelled_job_releases_its_share_of_the_slot():
    from monkey_trt.serve.worker import InferenceWorker

    w = InferenceWorker(max_queue=2)
    try:
        gate = threading.Event()
        running = w.submit_sync(lambda: gate.wait(30))
        slot = w.admit()
        queued = w.submit_sync(lambda: None, slot=slot)
        assert w.depth == 2 and queued.cancel()
        slot.release()
        assert w.depth == 1
        gate.set()
        running.result(timeout=30)
        assert w.depth == 0
    finally:
        w.close()


# -- log rate limit --------------------------------------------------------------------------------------
def test_log_rate_limit_drops_repeats_and_says_how_many():
    pytest.importorskip("uvicorn")
    from monkey_trt.serve.limits import RateLimitFilter
    from monkey_trt.serve.metrics import PROCESS

    now = [0.0]
    f = RateLimitFilter(burst=5, interval_s=60, total=8, clock=lambda: now[0])
    before = PROCESS.get("log_lines_dropped")

    def rec(msg, name="uvicorn.error"):
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)

    passed = [f.filter(rec("Invalid HTTP request received.")) for _ in range(1000)]
    assert sum(passed) == 5 and f.dropped == 995
    assert sum(f.filter(rec(f"other {i}", "x")) for i in range(10)) == 3  # the total budget (8) is shared
    assert PROCESS.get("log_lines_dropped") - before == 995 + 7
    now[0] = 61.0
    r = rec("Invalid HTTP request received.")
    assert f.filter(r) and "(995 similar lines dropped in the previous 60s)" in r.getMessage()


def test_log_rate_limit_bounds_a_flood_through_a_real_handler():
    pytest.importorskip("uvicorn")
    from monkey_trt.serve.limits import RateLimitFilter, install_log_rate_limit

    stream = io.StringIO()
    logger = logging.getLogger("monkey_trt.test_flood")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_rate_limit(RateLimitFilter(burst=10, interval_s=3600), loggers=("monkey_trt.test_flood",))
        for i in range(5000):
            logger.error("request %s: internal error", i)
        assert len(stream.getvalue().splitlines()) == 10
    finally:
        logger.removeHandler(handler)


# -- service fields (no server) --------------------------------------------------------------------------
def test_json_and_field_size_limits():
    pytest.importorskip("fastapi")
    from monkey_trt.serve.app import check_field_sizes, parse_json
    from monkey_trt.serve.schema import ApiError

    for raw, needle in [(b'{"seed": 1' + b"0" * 5000 + b"}", "5001 digits"), (b'{"a": -' + b"9" * 41 + b"}", "41 digits"),
                        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b"{not json", "not valid JSON"),
                        (b"\xff\xfe", "not valid JSON")]:
        with pytest.raises(ApiError, match=needle) as e:
            parse_json(raw)
        assert e.value.status == 400 and len(e.value.message) < 300
    assert parse_json(b'{"seed": 9223372036854775807, "x": -1e999}')["seed"] == 2**63 - 1
    for fields in [{"seed": "9" * 5000}, {"mask_steps": list(range(200_000))}, {"seed": json.loads("[" * 900 + "]" * 900)},
                   {"mask_layer": "a" * 500_000}, {"a" * 1000: 1}, {"prompt": ["x"] * 10_000}, {"seed": {str(i): i for i in range(500)}}]:
        with pytest.raises(ApiError) as e:
            check_field_sizes(fields)
        assert e.value.status == 400 and len(e.value.message) < 200
    check_field_sizes({"prompt": "x" * 100_000, "mask_steps": [1, 2], "masked_steps": "2,3,4,5", "seed": 2**62,
                       "mask_layer": "up_blocks.1.attentions.1.transformer_blocks.0.attn2", "threshold": 0.5, "baseline": True})
