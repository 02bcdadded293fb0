"""Subject image loading, CLIP preprocessing parity and the small output helpers.

Measured: `clip_preprocess` equals transformers' CLIPImageProcessor PIL backend bit for bit (max abs
diff 0.0) on square, portrait, landscape, up- and down-scaled inputs.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.images import (
    clip_preprocess,
    clip_resize_size,
    load_subject,
    mask_overlay,
    side_by_side,
    to_rgb8,
)

SD_FEATURE_EXTRACTOR = dict(  # SD 1.5 / LCM_Dreamshaper_v7 feature_extractor/preprocessor_config.json
    size={"shortest_edge": 224},
    crop_size={"height": 224, "width": 224},
    resample=3,
    do_resize=True,
    do_center_crop=True,
    do_rescale=True,
    rescale_factor=1 / 255,
    do_normalize=True,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
    do_convert_rgb=True,
)


def pil_clip_processor():
    """transformers' CLIP processor on its PIL backend, whatever the installed version prefers."""
    pytest.importorskip("transformers")
    try:
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil,
        )

        return CLIPImageProcessorPil(**SD_FEATURE_EXTRACTOR)
    except ImportError:  # older transformers: the slow CLIPImageProcessor is the PIL path
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(**SD_FEATURE_EXTRACTOR)


def smooth_image(w, h, seed=0, mode="RGB"):
    rs = np.random.RandomState(seed)
    base = rs.randint(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
    noise = rs.randint(-20, 21, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)).convert(mode)


@pytest.mark.parametrize("w,h", [(300, 300), (200, 333), (517, 301), (100, 150), (224, 224), (225, 641), (1000, 223)])
def test_clip_preprocess_matches_transformers_pil_backend(w, h):
    proc = pil_clip_processor()
    img = smooth_image(w, h, seed=w * h)
    want = proc(img, return_tensors="np").pixel_values
    got = clip_preprocess(img)
    assert got.shape == (1, 3, 224, 224) and got.dtype == np.float32
    assert np.abs(got - want).max() == 0.0


def test_clip_preprocess_rgba_matches_transformers():
    proc = pil_clip_processor()
    rgba = smooth_image(260, 300, seed=3, mode="RGBA")
    a = np.asarray(rgba).copy()
    a[..., 3] = np.linspace(0, 255, 260).astype(np.uint8)[None, :]
    rgba = Image.fromarray(a, "RGBA")
    np.testing.assert_array_equal(clip_preprocess(rgba), proc(rgba, return_tensors="np").pixel_values)


def test_clip_resize_size_is_transformers_rule():
    from transformers.image_transforms import get_resize_output_image_size

    for w, h in [(300, 300), (200, 333), (517, 301), (1, 900), (901, 3), (224, 225)]:
        want_h, want_w = get_resize_output_image_size(np.zeros((h, w, 3)), 224, default_to_square=False, input_data_format="channels_last")
        assert clip_resize_size(w, h, 224) == (want_w, want_h)


# --------------------------------------------------------------------------------------- bad files


def png_bytes(w, h, color_type=2, bit_depth=8, raw=None, idat=None):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    if raw is None:
        raw = b"".join(b"\x00" + bytes(3 * w) for _ in range(min(h, 4)))
    idat = zlib.compress(raw) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_files(tmp_path):
    good = io.BytesIO()
    smooth_image(64, 64).save(good, format="PNG")
    jpg = io.BytesIO()
    smooth_image(64, 64).save(jpg, format="JPEG", quality=90)
    files = {
        "missing": tmp_path / "nope.png",
        "directory": tmp_path,
        "text": ("notes.png", b"hello, I am not an image\n" * 10),
        "empty": ("empty.png", b""),
        "corrupt png": ("corrupt.png", good.getvalue()[:40] + bytes(range(256)) * 4),
        "corrupt data": ("data.png", png_bytes(8, 8, idat=b"this is not zlib data at all")),
        "truncated png": ("trunc.png", good.getvalue()[: len(good.getvalue()) // 2]),
        "truncated jpeg": ("trunc.jpg", jpg.getvalue()[: len(jpg.getvalue()) // 2]),
        "zero size": ("zero.png", png_bytes(0, 16)),
        "too wide": ("wide.png", png_bytes(9000, 2)),
        "bomb": ("bomb.png", png_bytes(20000, 20000)),
    }
    out = {}
    for k, v in files.items():
        if isinstance(v, tuple):
            p = tmp_path / v[0]
            p.write_bytes(v[1])
            v = p
        out[k] = v
    return out


def test_every_bad_image_is_a_one_line_monkey_error(tmp_path):
    from PIL import ImageFile

    for case, path in bad_files(tmp_path).items():
        with pytest.raises(MonkeyError) as e:
            load_subject(path)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("subject image"), (case, msg)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # restored


def test_truncated_image_fails_even_if_caller_enabled_truncated_loading(tmp_path):
    from PIL import ImageFile

    path = bad_files(tmp_path)["truncated jpeg"]
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(MonkeyError, match="truncated"):
            load_subject(path)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


# --------------------------------------------------------------------------------------- odd modes


def save(tmp_path, img, name, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def rgb_at(img, x, y):
    return tuple(int(v) for v in np.asarray(img)[y, x])


def test_alpha_modes_composite_over_white(tmp_path):
    a = np.zeros((4, 3, 4), np.uint8)
    a[..., 0] = 200  # red
    a[:, 0, 3], a[:, 1, 3], a[:, 2, 3] = 0, 255, 128
    img = load_subject(save(tmp_path, Image.fromarray(a, "RGBA"), "rgba.png"))
    assert img.mode == "RGB" and np.asarray(img).dtype == np.uint8
    assert rgb_at(img, 0, 0) == (255, 255, 255) and rgb_at(img, 1, 0) == (200, 0, 0)
    assert rgb_at(img, 2, 0) == (227, 127, 127)  # PIL's alpha_composite rounding
    la = Image.fromarray(np.stack([np.full((2, 2), 10, np.uint8), np.array([[0, 255], [255, 255]], np.uint8)], -1), "LA")
    img = load_subject(save(tmp_path, la, "la.png"))
    assert rgb_at(img, 0, 0) == (255, 255, 255) and rgb_at(img, 1, 0) == (10, 10, 10)
    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    img = load_subject(save(tmp_path, p, "p.png", transparency=0))
    assert rgb_at(img, 0, 0) == (255, 255, 255) and rgb_at(img, 1, 0) == (0, 255, 0)
    img = load_subject(save(tmp_path, p, "p.gif", transparency=0))
    assert rgb_at(img, 0, 0) == (255, 255, 255) and rgb_at(img, 1, 0) == (0, 255, 0)


def test_grey_and_bilevel(tmp_path):
    img = load_subject(save(tmp_path, Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L"), "l.png"))
    assert [rgb_at(img, x, 0) for x in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]
    one = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    img = load_subject(save(tmp_path, one, "one.png"))
    assert [rgb_at(img, x, 0) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_high_bit_depth_is_rescaled_not_clipped(tmp_path):
    v16 = np.array([[0, 257 * 100, 32768, 65535]], np.uint16)
    want = [0, 100, 128, 255]
    img16 = Image.fromarray(v16)  # I;16
    assert img16.mode == "I;16"
    for name, im in [("i16.png", img16), ("i16.tif", img16), ("i16b.tif", Image.frombytes("I;16B", (4, 1), v16.astype(">u2").tobytes()))]:
        got = load_subject(save(tmp_path, im, name))
        assert [rgb_at(got, x, 0)[0] for x in range(4)] == want, name
    i32 = Image.fromarray(v16.astype(np.int32), "I")
    assert [rgb_at(load_subject(save(tmp_path, i32, "i32.tif")), x, 0)[0] for x in range(4)] == want
    f = Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], np.float32), "F")
    assert [rgb_at(load_subject(save(tmp_path, f, "f.tif")), x, 0)[0] for x in range(4)] == [0, 64, 128, 255]
    # Out-of-convention values fall back to min-max; 8-bit range ints stay as they are.
    assert [rgb_at(to_rgb8(Image.fromarray(np.array([[-3.0, 1.0, 5.0]], np.float32), "F")), x, 0)[0] for x in range(3)] == [0, 128, 255]
    assert [rgb_at(to_rgb8(Image.fromarray(np.array([[0, 9, 200]], np.int32), "I")), x, 0)[0] for x in range(3)] == [0, 9, 200]
    nan = Image.fromarray(np.array([[0.0, np.nan]], np.float32), "F")
    with pytest.raises(MonkeyError, match="NaN") as e:
        load_subject(save(tmp_path, nan, "nan.tif"))
    assert str(e.value).startswith("subject image") and "\n" not in str(e.value)


def test_cmyk_and_exif_orientation(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 255, 255, 0))
    for name in ("c.tif", "c.jpg"):
        img = load_subject(save(tmp_path, cmyk.resize((16, 8), Image.Resampling.NEAREST), name, **({"quality": 100} if name.endswith("jpg") else {})))
        assert np.abs(np.array(rgb_at(img, 2, 4)) - (255, 255, 255)).max() <= 3
        assert np.abs(np.array(rgb_at(img, 13, 4)) - (255, 0, 0)).max() <= 3
    # 16x8, left half red, right half blue; EXIF orientation 6 = display rotated 90 degrees clockwise.
    a = np.zeros((8, 16, 3), np.uint8)
    a[:, :8] = (255, 0, 0)
    a[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    img = load_subject(save(tmp_path, Image.fromarray(a), "rot.jpg", quality=100, exif=exif.tobytes()))
    assert img.size == (8, 16)
    assert rgb_at(img, 4, 2)[0] > 200 and rgb_at(img, 4, 13)[2] > 200  # red on top, blue below


def test_loaded_image_is_detached_and_rgb(tmp_path):
    p = save(tmp_path, smooth_image(40, 30), "ok.png")
    img = load_subject(p)
    p.unlink()  # the file is not needed any more
    assert img.mode == "RGB" and img.size == (40, 30)
    assert np.asarray(img).shape == (30, 40, 3)


# --------------------------------------------------------------------------------------- outputs


def test_overlay_and_grid_helpers(tmp_path):
    img = smooth_image(32, 24)
    mask = np.zeros((24, 32), np.uint8)
    mask[4:10, 5:20] = 1
    over = mask_overlay(img, mask)
    assert over.size == img.size and over.mode == "RGB"
    diff = np.abs(np.asarray(over).astype(int) - np.asarray(img).astype(int)).sum(-1)
    assert (diff[mask == 1] > 0).mean() > 0.9 and (diff[mask == 0] == 0).all()
    assert mask_overlay(img, np.ones((6, 8), np.uint8)).size == img.size  # coarse mask: nearest upsample

    row = side_by_side([img, over, smooth_image(64, 48)], ["subject", "mask", "out"], height=48)
    assert row.mode == "RGB" and row.height > 48 and row.width >= 64 + 64 + 64
    with pytest.raises(MonkeyError):
        side_by_side([img], ["a", "b"])
