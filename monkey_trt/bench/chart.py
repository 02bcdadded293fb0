"""`bench --plot`: a PNG bar chart of per-stage p50 time per backend, drawn with PIL (no matplotlib).

One stacked bar per backend, every segment a named stage (`stage_groups`: the remainder of the
end-to-end time that no stage timed is its own, named segment), an axis with ticks in seconds, and per
bar its p50, its speed-up over `published` and its two-pass overhead.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from monkey_trt.bench.measure import STAGE_GROUPS, BackendResult, stage_groups
from monkey_trt.core.atomic import write_bytes_atomic

PNG_TAG = "monkey-trt bench"  # tEXt Software of our charts: only those are overwritten
COLOURS = {"text encoder": (86, 180, 233), "image encoder": (0, 158, 115), "UNet": (230, 159, 0),
           "LCM scheduler": (240, 228, 66), "mask": (204, 121, 167), "VAE decode": (0, 114, 178),
           "between stages": (170, 170, 170)}
assert set(COLOURS) == set(STAGE_GROUPS)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font, no file needed
    except TypeError:
        return ImageFont.load_default()


def _ticks(longest: float) -> list[float]:
    """About five round tick values from 0 to at least `longest`."""
    raw = longest / 5 or 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(longest / step)) + 1)]


def _bar_note(r: BackendResult) -> str:
    parts = [f"{r.end_to_end_s.p50:.3f} s"]
    if r.ratio_to_published is not None:
        parts.append(f"{r.ratio_to_published:.2f}x published")
    parts.append(f"2-pass {r.two_pass_overhead:.2f}x")
    return ", ".join(parts)


def render_chart(results: list[BackendResult], title: str, labels: list[str] | None = None) -> Image.Image:
    """One horizontal stacked bar per backend (p50 seconds per stage), axis ticks, ratios, a legend; `labels`:
    the bars' names (default: the backends')."""
    font, small = _font(16), _font(13)
    labels = labels or [r.backend for r in results]
    row, left, right, top = 44, 150, 330, 60
    width = 1200
    legend_h = 70
    height = top + row * len(results) + 40 + legend_h
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((12, 14), title, fill="black", font=font)
    longest = max(sum(stage_groups(r).values()) for r in results) or 1.0
    ticks = _ticks(longest)
    scale = (width - left - right) / ticks[-1]
    axis_y = top + row * len(results)
    for t in ticks:  # grid lines and labels
        x = left + t * scale
        d.line([x, top - 6, x, axis_y], fill=(225, 225, 225))
        d.line([x, axis_y, x, axis_y + 5], fill="black")
        label = f"{t:g} s"
        d.text((x - d.textlength(label, font=small) / 2, axis_y + 8), label, fill="black", font=small)
    for i, r in enumerate(results):
        y = top + i * row
        d.text((12, y + 10), labels[i], fill="black", font=font)
        x = float(left)
        for stage, sec in stage_groups(r).items():
            w = sec * scale
            if w >= 0.5:
                d.rectangle([x, y + 4, x + w, y + row - 8], fill=COLOURS[stage])
            x += w
        d.text((x + 8, y + 11), _bar_note(r), fill="black", font=small)
    d.line([left, axis_y, left + ticks[-1] * scale, axis_y], fill="black")
    d.text((left, axis_y + 26), "p50 seconds per stage (end to end = the whole bar)", fill=(90, 90, 90), font=small)
    x, y = 12, height - legend_h + 18
    for stage, colour in COLOURS.items():
        w = 24 + int(d.textlength(stage, font=small))
        if x + w > width - 12:
            x, y = 12, y + 22
        d.rectangle([x, y + 2, x + 12, y + 14], fill=colour)
        d.text((x + 16, y), stage, fill="black", font=small)
        x += w + 10
    return img


def write_chart(path: Path, results: list[BackendResult], title: str, labels: list[str] | None = None) -> Path:
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("Software", PNG_TAG)
    buf = io.BytesIO()
    render_chart(results, title, labels).save(buf, format="PNG", pnginfo=meta)
    return write_bytes_atomic(path, buf.getvalue())
