"""contact.html: per subject, one line per prompt: subject, each IP-Adapter scale, MONKEY, its mask,
with each image's CLIP-T / CLIP-I / DINO (first seed; fp32, else the first precision). The summary
table and pareto.png head the page. Every text is HTML-escaped and every link is relative to --out."""

from __future__ import annotations

import html
import math
from urllib.parse import quote

import numpy as np

from monkey_trt.eval.store import (
    CONTACT_HTML,
    PARETO_PNG,
    ROWS,
    SUMMARY_CSV,
    EvalStore,
    thumbnail_name,
)

THUMB = 256
STYLE = """body{font-family:sans-serif;margin:20px;color:#222}table{border-collapse:collapse;margin-bottom:24px}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:12px}img.t{width:160px;height:auto;display:block}
.s{color:#666;font-size:11px}td.p{max-width:220px}"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _img(path: str, alt: str) -> str:
    return f'<img class="t" loading="lazy" src="{_e(quote(path))}" alt="{_e(alt)}">'


def _scores(row) -> str:
    return f'<div class="s">T {row.clip_t:.3f} · I {row.clip_i:.3f} · D {row.dino:.3f}</div>'


def _thumbnail(store: EvalStore, subject) -> str:
    """subjects/<id>.png (at most THUMB px a side), written once."""
    from PIL import Image

    name, key = thumbnail_name(subject.id), (subject.id, "", 0, "subject", "")
    if store.probe(name, key, "subject") is None:
        im = subject.image.copy()
        im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        store.write_png(name, np.asarray(im), key, "subject")
    return name


def _f(x, digits=3) -> str:
    return "-" if x is None or math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.{digits}f}")


def _summary_html(summary) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("method", "precision", "n", "CLIP-T", "CLIP-I", "DINO", "IoU vs fp32",
                                              "PSNR vs fp32", "verdict", "paper T / I / D"))
    lines = [f"<table><tr>{head}</tr>"]
    for s in summary:
        paper = "-" if s.paper is None else " / ".join(f"{s.paper[k]:.3f}" for k in ("clip_t", "clip_i", "dino"))  # the run's order
        cells = [s.method, s.precision, s.n] + [_f(s.stats[k].mean) for k in ("clip_t", "clip_i", "dino")]
        cells += [_f(s.iou.mean) if s.iou else "-", _f(s.psnr.mean, 1) if s.psnr else "-", s.verdict or "-", paper]
        lines.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(lines) + "</table>"


def render_contact(store: EvalStore, plan, rows, summary) -> str:
    job = plan.job
    seed = job.seeds[0]
    precision = "fp32" if "fp32" in job.precisions else job.precisions[0]
    methods = sorted(job.methods, key=lambda m: (m.kind == "monkey", m.scale or 0.0))
    by_key = {r.key: r for r in rows}
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>monkey-trt eval</title><style>{STYLE}</style></head><body>",
           "<h1>monkey-trt eval</h1>",
           f'<p><a href="{ROWS}">rows.csv</a> · <a href="{SUMMARY_CSV}">summary.csv</a> · seed {seed}, {_e(precision)} images below</p>',
           _summary_html(summary), f'<p><img src="{PARETO_PNG}" alt="CLIP-T vs CLIP-I" style="max-width:100%"></p>']
    head = "<th>prompt</th><th>subject</th>" + "".join(f"<th>{_e(m.name)}</th>" for m in methods)
    head += "<th>mask</th>" if any(m.kind == "monkey" for m in methods) else ""
    for index, subject in enumerate(plan.subjects):
        thumb = _img(_thumbnail(store, subject), subject.id)
        out.append(f"<h2>{_e(subject.id)} <span class='s'>({_e(subject.word)})</span></h2><table><tr>{head}</tr>")
        for template in plan.subject_templates(index):
            cells, mask_cell = [], ""
            prompt = None
            for m in methods:
                row = by_key.get((subject.id, plan.prompt(subject, template), seed, m.name, precision))
                if row is None:
                    cells.append("<td>-</td>")
                    continue
                prompt = row.prompt
                cells.append(f"<td>{_img(row.image, m.name)}{_scores(row)}</td>")
                if m.kind == "monkey" and row.mask:
                    cover = "" if row.mask_coverage is None else f'<div class="s">covers {100 * row.mask_coverage:.0f}%</div>'
                    mask_cell = f"<td>{_img(row.mask, 'mask')}{cover}</td>"
            if any(m.kind == "monkey" for m in methods):
                cells.append(mask_cell or "<td>-</td>")
            out.append(f"<tr><td class='p'>{_e(prompt or plan.prompt(subject, template))}</td><td>{thumb}</td>{''.join(cells)}</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_contact_sheet(store: EvalStore, plan, rows, summary) -> None:
    store.write_file(CONTACT_HTML, render_contact(store, plan, rows, summary).encode("utf-8"))
