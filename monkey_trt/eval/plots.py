"""pareto.png: CLIP-T (prompt) against CLIP-I (subject), one point per method x precision with its
95% CIs, the Pareto front of this run, and the paper's Table 1 methods for reference. PIL only."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from monkey_trt.eval.metrics import Stat
from monkey_trt.eval.store import PNG_SOFTWARE


@dataclass(frozen=True)
class Point:
    label: str  # "monkey fp32"
    x: Stat  # CLIP-I
    y: Stat  # CLIP-T
    front: bool = False

W, H = 980, 660
LEFT, RIGHT, TOP, BOTTOM = 90, 300, 50, 70  # plot margins; the legend lives in the right one
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233), (120, 120, 120),
           (0, 0, 0)]
PAPER_COLOUR = (150, 150, 150)


def _font():
    try:
        return ImageFont.load_default(size=13)  # Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _dashed(d: ImageDraw.ImageDraw, a, b, fill, dash: int = 7, width: int = 2) -> None:
    (x0, y0), (x1, y1) = a, b
    length = math.hypot(x1 - x0, y1 - y0)
    n = max(int(length // dash), 1)
    for i in range(0, n, 2):
        t0, t1 = i / n, min((i + 1) / n, 1.0)
        d.line([x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0, x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1], fill=fill, width=width)


def render_pareto(points: list[Point], paper: dict[str, tuple[float, float]],
                  title: str = "CLIP-T vs CLIP-I (mean, 95% CI)") -> bytes:
    """The chart as PNG bytes (tagged as ours); `paper`: name -> (CLIP-I, CLIP-T) reference points."""
    font = _font()
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    ours = [p for p in points if not math.isnan(p.x.mean) and not math.isnan(p.y.mean)]
    xs = [v for p in ours for v in (p.x.lo, p.x.hi, p.x.mean) if not math.isnan(v)] + [x for x, _ in paper.values()]
    ys = [v for p in ours for v in (p.y.lo, p.y.hi, p.y.mean) if not math.isnan(v)] + [y for _, y in paper.values()]
    if not xs:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    pad_x, pad_y = max((max(xs) - min(xs)) * 0.08, 0.01), max((max(ys) - min(ys)) * 0.08, 0.005)
    x_lo, x_hi, y_lo, y_hi = min(xs) - pad_x, max(xs) + pad_x, min(ys) - pad_y, max(ys) + pad_y
    px0, px1, py0, py1 = LEFT, W - RIGHT, TOP, H - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return px0 + (x - x_lo) / (x_hi - x_lo) * (px1 - px0), py1 - (y - y_lo) / (y_hi - y_lo) * (py1 - py0)

    d.text((LEFT, 15), title, fill="black", font=font)
    for t in _nice_ticks(x_lo, x_hi):
        x, _ = at(t, y_lo)
        d.line([x, py0, x, py1], fill=(232, 232, 232))
        d.text((x - 12, py1 + 6), f"{t:.3g}", fill="black", font=font)
    for t in _nice_ticks(y_lo, y_hi):
        _, y = at(x_lo, t)
        d.line([px0, y, px1, y], fill=(232, 232, 232))
        d.text((px0 - 44, y - 6), f"{t:.3g}", fill="black", font=font)
    d.rectangle([px0, py0, px1, py1], outline="black")
    d.text(((px0 + px1) / 2 - 80, py1 + 28), "CLIP-I: subject similarity ->", fill="black", font=font)
    label = Image.new("RGB", (220, 16), "white")
    ImageDraw.Draw(label).text((0, 0), "CLIP-T: prompt similarity ->", fill="black", font=font)
    img.paste(label.rotate(90, expand=True), (12, (py0 + py1) // 2 - 110))

    taken: list[tuple[float, float, float, float]] = []
    for name, (px, py) in paper.items():  # hollow grey diamonds, labels placed where they overlap no other label
        x, y = at(px, py)
        d.polygon([(x, y - 6), (x + 6, y), (x, y + 6), (x - 6, y)], outline=PAPER_COLOUR)
        w = d.textlength(name, font=font)
        for dx, dy in ((8, -8), (8, 6), (-w - 8, -8), (-w / 2, -24), (-w / 2, 8)):
            box = (x + dx, y + dy, x + dx + w, y + dy + 14)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                break
        taken.append(box)
        d.text(box[:2], name, fill=PAPER_COLOUR, font=font)

    line = sorted((p for p in ours if p.front), key=lambda p: (p.x.mean, p.y.mean))
    for a, b in zip(line, line[1:]):
        _dashed(d, at(a.x.mean, a.y.mean), at(b.x.mean, b.y.mean), (60, 60, 60))
    for k, p in enumerate(ours):
        colour = PALETTE[k % len(PALETTE)]
        x, y = at(p.x.mean, p.y.mean)
        ci, ct = p.x, p.y
        if not math.isnan(ci.lo):
            xa, _ = at(ci.lo, ct.mean)
            xb, _ = at(ci.hi, ct.mean)
            d.line([xa, y, xb, y], fill=colour, width=1)
            d.line([xa, y - 4, xa, y + 4], fill=colour)
            d.line([xb, y - 4, xb, y + 4], fill=colour)
        if not math.isnan(ct.lo):
            _, ya = at(ci.mean, ct.lo)
            _, yb = at(ci.mean, ct.hi)
            d.line([x, ya, x, yb], fill=colour, width=1)
            d.line([x - 4, ya, x + 4, ya], fill=colour)
            d.line([x - 4, yb, x + 4, yb], fill=colour)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour, outline="black" if p.front else colour)

    lx, ly = W - RIGHT + 20, TOP
    d.text((lx, ly), "this run (mean CLIP-I / CLIP-T):", fill="black", font=font)
    for k, p in enumerate(ours):
        ly += 18
        colour = PALETTE[k % len(PALETTE)]
        d.ellipse([lx, ly + 2, lx + 9, ly + 11], fill=colour, outline="black" if p.front else colour)
        d.text((lx + 16, ly), f"{p.label}  {p.x.mean:.3f} / {p.y.mean:.3f}", fill="black", font=font)
    ly += 30
    _dashed(d, (lx, ly + 6), (lx + 24, ly + 6), (60, 60, 60))
    d.text((lx + 30, ly), "Pareto front of this run", fill="black", font=font)
    ly += 20
    d.polygon([(lx + 5, ly), (lx + 11, ly + 6), (lx + 5, ly + 12), (lx - 1, ly + 6)], outline=PAPER_COLOUR)
    d.text((lx + 16, ly), "paper, Table 1 (DreamBooth)", fill=PAPER_COLOUR, font=font)

    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
