"""Subject image I/O and CLIP preprocessing (PIL + numpy only).

`clip_preprocess` is THE image-encoder preprocessing of this project: the PyTorch reference and the
runtime both call it, so parity never depends on which backend transformers picks. It reproduces
`CLIPImageProcessor`'s PIL path (shortest edge -> `size` with PIL bicubic, centre crop, x/255, CLIP
mean/std) exactly.
"""

from __future__ import annotations

import os

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps

from monkey_trt.core.errors import MonkeyError
from monkey_trt.enginedir.networks import CLIP_MEAN, CLIP_STD

MAX_IMAGE_SIDE = 8192  # px; larger subjects are refused before decoding
MAX_IMAGE_PIXELS = 2**25  # ~33.5 Mpx (a 24 Mpx camera photo fits); checked on the header, before decoding
MAX_ASPECT_RATIO = 32  # long side / short side; the encoder's resize (short side -> 224) stays below 224 x 7168


# --------------------------------------------------------------------------------------- loading


def load_subject(path) -> Image.Image:
    """Open, fully decode and normalise a subject image to 8-bit RGB (EXIF orientation applied)."""
    if not isinstance(path, (str, os.PathLike)):
        raise MonkeyError(f"subject image must be a PIL image or a file path, got {type(path).__name__}")
    p = Path(path)
    name = repr(str(p))
    if not p.exists():
        raise MonkeyError(f"subject image {name} does not exist")
    if p.is_dir():
        raise MonkeyError(f"subject image {name} is a directory, not an image file")
    if not p.is_file():
        raise MonkeyError(f"subject image {name} is not a regular file")
    return _decode_subject(p, name)


def decode_subject(data: bytes, name: str = "upload") -> Image.Image:
    """`load_subject` for bytes already in memory (an HTTP upload): the same checks and normalisation."""
    if not data:
        raise MonkeyError(f"subject image {name} is empty")
    return _decode_subject(io.BytesIO(data), repr(name))


def image_label(index: int | None, name: str | None) -> str:
    """How an error names one of a request's images: `subject 2 (cat.png)`, `background (bg.png)`; index None: the background."""
    what = "background" if index is None else f"subject {index}"
    return f"{what} ({name})" if name else what


def decode_images(items, decode, background=None) -> tuple[list[Image.Image], Image.Image | None]:
    """Decode several subjects (and a background) with `decode(source)`: items and background are (name, source)
    pairs. A failure names which image (`subject 2 (cat.png): ...`, `background (bg.png): ...`); one subject without a
    background keeps `decode`'s own message, as before several were possible. Used by every face: the CLI (files), the
    API (runtime.pipeline.load_images: files or PIL images), the HTTP service (uploads)."""
    items = list(items)
    alone = len(items) == 1 and background is None

    def one(index: int | None, name: str | None, source) -> Image.Image:
        try:
            return decode(source)
        except MonkeyError as e:
            if alone:
                raise
            raise MonkeyError(f"{image_label(index, name)}: {e}") from None

    subjects = [one(i, name, source) for i, (name, source) in enumerate(items, 1)]
    return subjects, None if background is None else one(None, *background)


def check_subject_count(subjects: int, background: bool, max_subjects: int, background_slot: bool = True) -> None:
    """A request's images against an engine: 1..max_subjects subjects, a background only beside subjects and only
    where the engine has the background slot (a directory exported before several subjects were possible has not).
    The faces call it before any model loads; run_monkey (runtime.method.check_subjects) with the engine."""
    if subjects < 1:
        raise MonkeyError("no subject image given: MONKEY needs at least one subject image" +
                          (" (a background image goes beside subjects)" if background else ""))
    if subjects > max_subjects:
        raise MonkeyError(f"{subjects} subject images given: this engine takes at most {max_subjects} subject"
                          f"{'s' if max_subjects != 1 else ''} (manifest max_subjects); re-export with --max-subjects")
    if background and not background_slot:
        raise MonkeyError("this engine directory was exported before background images (its manifest has no "
                          "max_subjects): re-export it to use a background image")


def check_image_options(config, subjects: int, background: bool) -> None:
    """The knobs about a request's images (MonkeyConfig `config`): `subject_scales` one per subject (or none), and
    `background_scale` only beside a background image (else it would silently do nothing)."""
    config.subject_weights(subjects)
    if not background and config.background_scale != type(config)().background_scale:
        raise MonkeyError("background_scale applies to a background image: give one (--background-image, the "
                          "background_image part) or drop background_scale")


def load_subjects(paths, background=None) -> tuple[list[Image.Image], Image.Image | None]:
    """`load_subject` for each file of `paths` (and `background`): an error names which (`subject 2 (cat.png): ...`)."""
    return decode_images([(Path(p).name, p) for p in paths], load_subject,
                         None if background is None else (Path(background).name, background))


def check_subject_size(width: int, height: int, name: str) -> None:
    """Refuse a subject by its header size, before anything is allocated for its pixels: zero or over
    MAX_IMAGE_SIDE a side, over MAX_IMAGE_PIXELS in all, or longer than MAX_ASPECT_RATIO times its short side."""
    w, h = width, height
    if w <= 0 or h <= 0:
        raise MonkeyError(f"subject image {name} has zero size ({w}x{h})")
    if max(w, h) > MAX_IMAGE_SIDE:
        raise MonkeyError(f"subject image {name} is {w}x{h}; at most {MAX_IMAGE_SIDE} px a side is accepted")
    if w * h > MAX_IMAGE_PIXELS:
        raise MonkeyError(f"subject image {name} is {w}x{h} ({w * h / 1e6:.1f} Mpx); at most {MAX_IMAGE_PIXELS / 1e6:.1f} Mpx are accepted")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise MonkeyError(f"subject image {name} is {w}x{h}; its long side may be at most {MAX_ASPECT_RATIO}x its short side")


def _decode_subject(source, name: str) -> Image.Image:
    """Fully decode `source` (a path or a binary file object) to 8-bit RGB; every failure is a MonkeyError.

    The size is checked on the header (`check_subject_size`) before the pixels are decoded, and the
    opened file's pixels are released before the conversion: at most two full-size copies live at once."""
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut-off file must fail, not decode to grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                check_subject_size(*opened.size, name)
                opened.load()  # force the full decode here: truncation and corruption surface now
                img = ImageOps.exif_transpose(opened)  # a new, detached image
            check_subject_size(*img.size, name)  # a transpose keeps the size set; a plugin may not
            try:
                return img if img.mode == "RGB" else to_rgb8(img)
            except MonkeyError as e:
                raise MonkeyError(f"subject image {name}: {e}") from None
    except MonkeyError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MonkeyError(f"subject image {name} is too large to decode safely ({_one_line(e)})") from None
    except Image.UnidentifiedImageError:
        raise MonkeyError(f"subject image {name} is not a readable image (unknown format or damaged header)") from None
    except PermissionError:
        raise MonkeyError(f"subject image {name} cannot be read (permission denied)") from None
    except MemoryError:
        raise MonkeyError(f"subject image {name} is too large to decode (out of memory)") from None
    except Exception as e:  # truncated / corrupt data: OSError, SyntaxError, ValueError, zlib.error, ...
        raise MonkeyError(f"subject image {name} is corrupt or truncated ({type(e).__name__}: {_one_line(e)})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def _scale_to_u8(a: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map a single-channel numeric array to uint8: x * 255 / full_scale, or min-max if full_scale is None.
    One float64 working copy, updated in place (the same operations, in the same order, as out of place)."""
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise MonkeyError("image holds NaN or infinite pixel values")
    if full_scale is None:
        lo, hi = float(a.min()), float(a.max())
        a -= lo
        full_scale = (hi - lo) or 1.0
    a *= 255.0 / full_scale
    np.rint(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited over white (like transformers'
    `convert_to_rgb`); 16-bit, 32-bit int and float greyscale are rescaled, not clipped."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img)  # [H, W]
        if mode.startswith("I;16"):
            full = 65535.0
        elif mode == "I":
            lo, hi = int(a.min()), int(a.max())
            full = 255.0 if 0 <= lo and hi <= 255 else 65535.0 if 0 <= lo and hi <= 65535 else None
        else:
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            full = 1.0 if 0.0 <= lo and hi <= 1.0 else 255.0 if 0.0 <= lo and hi <= 255.0 else None
        return Image.fromarray(_scale_to_u8(a, full), "L").convert("RGB")
    if "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if mode != "RGB" else img.copy()


# --------------------------------------------------------------------------------------- CLIP


def clip_resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h): transformers' `get_resize_output_image_size(size, default_to_square=False)`."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def clip_preprocess(img: Image.Image, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """PIL image -> [1, 3, size, size] float32: CLIPImageProcessor's PIL path (bicubic shortest edge,
    centre crop, x/255 in float64 then float32, (x - mean) / std in float32).

    The resize target is refused (MonkeyError) beyond MAX_ASPECT_RATIO: an 8192x1 image would resize
    to size x 1.8M pixels (gigabytes) only to keep the centre size x size."""
    if img.width <= 0 or img.height <= 0:
        raise MonkeyError(f"image has zero size ({img.width}x{img.height})")
    new_w, new_h = clip_resize_size(img.width, img.height, size)
    if max(new_w, new_h) > MAX_ASPECT_RATIO * size:
        raise MonkeyError(f"image is {img.width}x{img.height}; its long side may be at most {MAX_ASPECT_RATIO}x its short side "
                          f"(the encoder's preprocessing would resize it to {new_w}x{new_h})")
    rgb = to_rgb8(img) if img.mode != "RGB" else img
    a = np.asarray(rgb.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))  # [h, w, 3] uint8
    top, left = (new_h - size) // 2, (new_w - size) // 2  # both >= 0: the short side equals `size`
    a = a[top : top + size, left : left + size]  # [size, size, 3]
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # [size, size, 3] float32
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # [1, 3, size, size]


# --------------------------------------------------------------------------------------- output


def mask_overlay(image: Image.Image, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.45) -> Image.Image:
    """Tint the subject region (mask [H, W] in {0, 1}; resized nearest if its size differs) of `image`."""
    rgb = np.asarray(to_rgb8(image)).astype(np.float32)  # [H, W, 3]
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MonkeyError(f"mask must be [H, W], got shape {list(m.shape)}")
    if m.shape != rgb.shape[:2]:
        m = np.asarray(Image.fromarray((m > 0).astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST))
    sel = (m > 0)[..., None]  # [H, W, 1]
    tinted = (1 - alpha) * rgb + alpha * np.asarray(color, np.float32)
    return Image.fromarray(np.rint(np.where(sel, tinted, rgb)).astype(np.uint8), "RGB")


def side_by_side(images: list[Image.Image], labels: list[str], height: int | None = None, gap: int = 6) -> Image.Image:
    """One row of images, each scaled to a common height, with its label in a strip above it."""
    if not images or len(images) != len(labels):
        raise MonkeyError(f"side_by_side needs one label per image, got {len(images)} images and {len(labels)} labels")
    h = height or max(im.height for im in images)
    tiles = [to_rgb8(im).resize((max(1, round(im.width * h / im.height)), h), Image.Resampling.LANCZOS) for im in images]
    font = ImageFont.load_default()
    strip = 22
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) + 1), h + strip + gap), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = gap
    for tile, label in zip(tiles, labels):
        out.paste(tile, (x, strip))
        draw.text((x + 2, 4), str(label), fill=(0, 0, 0), font=font)
        x += tile.width + gap
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float in [0,1] -> uint8, rounding like diffusers' numpy_to_pil ((x * 255).round())."""
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
