"""`bench --plot`: a PNG bar chart of per-stage p50 time per backend, drawn with PIL (no matplotlib)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from monkey_trt.bench.job import BackendResult, stage_groups
from monkey_trt.core.files import write_bytes_atomic

PNG_TAG = "monkey-trt bench"  # tEXt Software of our charts: only those are overwritten
COLOURS = {"text encoder": (86, 180, 233), "image encoder": (0, 158, 115), "UNet": (230, 159, 0), "mask": (204, 121, 167),
           "VAE decode": (0, 114, 178), "other": (170, 170, 170)}


def render_chart(results: list[BackendResult], title: str) -> Image.Image:
    """One horizontal stacked bar per backend (p50 seconds per stage), with a legend and an axis."""
    font = ImageFont.load_default()
    row, left, right, top = 34, 110, 150, 50
    width = 900
    height = top + row * len(results) + 70
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title, fill="black", font=font)
    longest = max(sum(stage_groups(r).values()) for r in results) or 1.0
    scale = (width - left - right) / longest
    for i, r in enumerate(results):
        y = top + i * row
        d.text((10, y + 8), r.backend, fill="black", font=font)
        x = float(left)
        for stage, sec in stage_groups(r).items():
            w = sec * scale
            if w >= 0.5:
                d.rectangle([x, y, x + w, y + row - 10], fill=COLOURS[stage])
            x += w
        d.text((x + 6, y + 8), f"{r.end_to_end_s.p50:.3f} s", fill="black", font=font)
    axis_y = top + row * len(results)
    d.line([left, axis_y, width - right, axis_y], fill="black")
    d.text((left, axis_y + 4), "0 s", fill="black", font=font)
    d.text((width - right - 40, axis_y + 4), f"{longest:.3f} s", fill="black", font=font)
    x = 10
    for stage, colour in COLOURS.items():
        d.rectangle([x, height - 24, x + 12, height - 12], fill=colour)
        d.text((x + 16, height - 24), stage, fill="black", font=font)
        x += 24 + int(d.textlength(stage, font=font))
    return img


def write_chart(path: Path, results: list[BackendResult], title: str) -> Path:
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("Software", PNG_TAG)
    buf = io.BytesIO()
    render_chart(results, title).save(buf, format="PNG", pnginfo=meta)
    return write_bytes_atomic(path, buf.getvalue())
