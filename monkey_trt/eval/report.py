"""The summary per method x precision, beside the paper's Table 1, and the files that carry it.

Per method x precision: n images, mean and 95% CI (Student t over images) of CLIP-T, CLIP-I and
DINO; for precisions other than fp32, mask IoU and PSNR against the fp32 image of the same case, and
the paired difference of each judge metric (this precision - fp32, same case) with its 95% CI. The
verdict compares those CIs with MARGINS: `equivalent` when every CI lies inside +-margin, `differs`
when one lies wholly outside, `undecided` otherwise (more cases narrow the CIs).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

from monkey_trt.eval.metrics import Stat, mean_ci, psnr_stat
from monkey_trt.eval.store import (
    CONTACT_HTML,
    PARETO_PNG,
    SUMMARY_CSV,
    SUMMARY_JSON,
    EvalStore,
    Row,
    csv_text,
)

METRICS = ("clip_t", "clip_i", "dino")
LABELS = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino": "DINO"}
# The paper's Table 1, DreamBooth columns (MONKEY's row and the five methods it compares with).
PAPER_TABLE1 = {
    "TF-121": {"clip_t": 0.247, "dino": 0.413, "clip_i": 0.723},
    "RectifID": {"clip_t": 0.273, "dino": 0.140, "clip_i": 0.543},
    "MASA": {"clip_t": 0.186, "dino": 0.511, "clip_i": 0.775},
    "FreeGraftor": {"clip_t": 0.253, "dino": 0.471, "clip_i": 0.679},
    "IP-Adapter": {"clip_t": 0.282, "dino": 0.621, "clip_i": 0.806},
    "MONKEY": {"clip_t": 0.318, "dino": 0.529, "clip_i": 0.743},
}
# our method -> its Table 1 row (the authors' script scores its all-steps image as MONKEY's: docs/eval.md)
PAPER_METHOD = {"monkey": "MONKEY", "monkey-all-steps": "MONKEY", "ipadapter@1.0": "IP-Adapter"}
# How far a precision may move a judge metric (paired, 95% CI) and still count as the fp32 engine:
# about a seventh of the smallest MONKEY-vs-IP-Adapter gap in Table 1 (CLIP-T 0.036, CLIP-I 0.063, DINO 0.092).
MARGINS = {"clip_t": 0.005, "clip_i": 0.01, "dino": 0.01}


@dataclass
class SummaryRow:
    method: str
    precision: str
    n: int
    stats: dict[str, Stat]  # METRICS
    iou: Stat | None = None  # vs fp32 (MONKEY only)
    psnr: Stat | None = None
    psnr_identical: int = 0
    deltas: dict[str, Stat] | None = None  # paired, this precision - fp32
    verdict: str | None = None

    @property
    def paper(self) -> dict | None:
        name = PAPER_METHOD.get(self.method)
        return None if name is None else PAPER_TABLE1[name]


def verdict(deltas: dict[str, Stat]) -> str:
    if any(d.n < 2 or math.isnan(d.lo) for d in deltas.values()):
        return "undecided"
    if all(-MARGINS[k] <= d.lo and d.hi <= MARGINS[k] for k, d in deltas.items()):
        return "equivalent"
    if any(d.lo > MARGINS[k] or d.hi < -MARGINS[k] for k, d in deltas.items()):
        return "differs"
    return "undecided"


def summarise(rows: list[Row], reference: dict | None = None) -> list[SummaryRow]:
    """One SummaryRow per (method, precision) in first-seen order; `reference`: key -> fp32 row
    (default: the fp32 rows among `rows`)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, r.precision), []).append(r)
    ref = reference if reference is not None else {r.key: r for r in rows if r.precision == "fp32"}
    out = []
    for (method, precision), rs in groups.items():
        s = SummaryRow(method, precision, len(rs), {k: mean_ci(getattr(r, k) for r in rs) for k in METRICS})
        if precision != "fp32":
            pairs = [(r, ref.get((r.subject, r.prompt, r.seed, r.method, "fp32"))) for r in rs]
            pairs = [(r, f) for r, f in pairs if f is not None]
            if pairs:
                s.deltas = {k: mean_ci(getattr(r, k) - getattr(f, k) for r, f in pairs) for k in METRICS}
                s.verdict = verdict(s.deltas)
                s.psnr, s.psnr_identical = psnr_stat(r.psnr_vs_fp32 for r in rs)
                if any(r.mask_iou_vs_fp32 is not None for r in rs):
                    s.iou = mean_ci(r.mask_iou_vs_fp32 for r in rs)
        out.append(s)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both maximised), by x."""
    ok = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]
    front = []
    for i in ok:
        x, y = points[i]
        if any(j != i and points[j][0] >= x and points[j][1] >= y and points[j] != (x, y) for j in ok):
            continue
        front.append(i)
    return sorted(front, key=lambda i: points[i])


# -- files ------------------------------------------------------------------------------------------
def _n(x: float | None, digits: int = 6) -> str:
    if x is None or math.isnan(x):
        return ""
    return ("inf" if x > 0 else "-inf") if math.isinf(x) else f"{x:.{digits}f}"


SUMMARY_FIELDS = (
    ["method", "precision", "n"]
    + [f"{k}_{p}" for k in METRICS for p in ("mean", "ci_low", "ci_high")]
    + ["mask_iou_mean", "mask_iou_min", "psnr_mean", "psnr_min", "psnr_identical"]
    + [f"d_{k}_{p}" for k in METRICS for p in ("mean", "ci_low", "ci_high")]
    + ["verdict"] + [f"paper_{k}" for k in METRICS]
)


def summary_csv(summary: list[SummaryRow]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_FIELDS)
    for s in summary:
        cells = [csv_text(s.method), csv_text(s.precision), str(s.n)]
        cells += [_n(v) for k in METRICS for v in (s.stats[k].mean, s.stats[k].lo, s.stats[k].hi)]
        cells += [_n(s.iou.mean) if s.iou else "", _n(s.iou.min) if s.iou else "",
                  _n(s.psnr.mean, 3) if s.psnr else "", _n(s.psnr.min, 3) if s.psnr else "", str(s.psnr_identical) if s.psnr else ""]
        for k in METRICS:
            d = s.deltas[k] if s.deltas else None
            cells += [_n(d.mean), _n(d.lo), _n(d.hi)] if d else ["", "", ""]
        cells += [s.verdict or ""] + [_n(s.paper[k], 3) if s.paper else "" for k in METRICS]
        w.writerow(cells)
    return buf.getvalue().encode("utf-8")


def summary_json(summary: list[SummaryRow], settings: dict, counts: dict, front: list[int]) -> bytes:
    rows = []
    for i, s in enumerate(summary):
        rows.append({
            "method": s.method, "precision": s.precision, "n": s.n,
            "metrics": {k: s.stats[k].to_json() for k in METRICS},
            "vs_fp32": None if s.deltas is None else {
                "mask_iou": s.iou.to_json() if s.iou else None,
                "psnr_db": s.psnr.to_json() if s.psnr else None, "psnr_identical": s.psnr_identical,
                "delta": {k: s.deltas[k].to_json() for k in METRICS}, "verdict": s.verdict},
            "paper_table1": s.paper, "pareto": i in front,
        })
    doc = {"schema": "monkey-trt-eval-summary", "schema_version": 1, "protocol": settings.get("protocol", "paper"),
           "settings": settings, "counts": counts,
           "margins": MARGINS, "paper_table1_dreambooth": PAPER_TABLE1, "rows": rows}
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def write_reports(store: EvalStore, plan, rows: list[Row]) -> tuple[list[str], list[SummaryRow]]:
    """summary.csv, summary.json, pareto.png, contact.html for this plan's rows: (their names, the summary)."""
    from monkey_trt.eval.contact import write_contact_sheet
    from monkey_trt.eval.plots import Point, render_pareto

    summary = summarise(rows, reference={k: r for k, r in store.rows.items() if k[4] == "fp32"})
    points = [(s.stats["clip_i"].mean, s.stats["clip_t"].mean) for s in summary]
    front = pareto_front(points)
    counts = {"subjects": len(plan.subjects), "prompts": len(plan.templates), "prompts_per_subject": len(plan.subject_templates(0)),
              "seeds": len(plan.job.seeds), "rows": len(rows)}
    store.write_file(SUMMARY_CSV, summary_csv(summary))
    store.write_file(SUMMARY_JSON, summary_json(summary, plan.settings, counts, front))
    chart = [Point(f"{s.method} {s.precision}", s.stats["clip_i"], s.stats["clip_t"], i in front) for i, s in enumerate(summary)]
    paper = {name: (p["clip_i"], p["clip_t"]) for name, p in PAPER_TABLE1.items()}
    store.write_file(PARETO_PNG, render_pareto(chart, paper))
    write_contact_sheet(store, plan, rows, summary)
    return [SUMMARY_CSV, SUMMARY_JSON, PARETO_PNG, CONTACT_HTML], summary


TABLE_WIDTH = 100  # the summary fits a 100-column terminal (and a log)


def summary_tables(summary: list[SummaryRow], title: str) -> list:
    """rich Tables of at most TABLE_WIDTH columns: the scores beside the paper's (in the run's own order,
    CLIP-T/CLIP-I/DINO), then, when a precision was compared with fp32, the comparison and its verdict."""
    from rich import box
    from rich.table import Table

    def ci(st: Stat | None) -> str:
        if st is None or st.n == 0 or math.isnan(st.mean):
            return "-"
        return f"{st.mean:.3f}" if math.isnan(st.lo) else f"{st.mean:.3f} ±{st.half_width:.3f}"

    def table(heading: str, cols: tuple[str, ...]) -> Table:
        t = Table(title=heading, box=box.SIMPLE_HEAD, title_justify="left", collapse_padding=True, pad_edge=False)
        for col in cols:
            t.add_column(col, justify="left" if col in ("method", "precision", "verdict") else "right", no_wrap=True)
        return t

    scores = table(title, ("method", "precision", "n", "CLIP-T", "CLIP-I", "DINO", "paper T/I/D"))
    for s in summary:
        paper = "-" if s.paper is None else "/".join(f"{s.paper[k]:.3f}" for k in METRICS)
        scores.add_row(s.method, s.precision, str(s.n), *(ci(s.stats[k]) for k in METRICS), paper)
    compared = [s for s in summary if s.iou is not None or s.psnr is not None or s.deltas is not None]
    if not compared:
        return [scores]
    versus = table("against fp32, same noise (Δ: this precision - fp32, mean)",
                   ("method", "precision", "IoU (min)", "PSNR dB (min)", "Δ CLIP-T/CLIP-I/DINO", "verdict"))
    for s in compared:
        psnr = "-" if s.psnr is None else ("identical" if math.isinf(s.psnr.mean) else f"{s.psnr.mean:.1f} ({s.psnr.min:.1f})")
        delta = "-" if s.deltas is None else "/".join(f"{s.deltas[k].mean:+.3f}" for k in METRICS)
        iou = "-" if s.iou is None else f"{s.iou.mean:.3f} ({s.iou.min:.2f})"
        versus.add_row(s.method, s.precision, iou, psnr, delta, s.verdict or "-")
    return [scores, versus]
