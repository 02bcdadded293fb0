"""`monkey-trt bench` end to end on the tiny model, one run (no timing assertions): JSON schema, stages, chart."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from monkey_trt.bench.measure import REQUIRED_STAGES, validate_report
from monkey_trt.cli import main


def _check_report(doc: dict, backends: list[str]) -> None:
    validate_report(doc)
    assert [r["backend"] for r in doc["results"]] == backends
    for r in doc["results"]:
        assert set(REQUIRED_STAGES) <= set(r["stages_s"]) and r["end_to_end_s"]["p50"] > 0
        assert r["mask_equals_first"] is True and r["two_pass_overhead"] > 0
        steps = {(c["passes"], c["step"]) for c in r["unet_calls"]}
        assert {("p2", i) for i in range(2, 8)} <= steps and ("p1", 2) in steps  # every UNet call is listed


def test_bench_preset_tiny_one_run(tmp_path):
    """`--preset tiny` writes the embedded model (cached in --workdir); published vs our torch backend."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", "--preset", "tiny", "--workdir", str(tmp_path / "cache"), "--backends", "published,torch",
            "--height", "64", "--width", "64", "--runs", "1", "--warmup", "0", "--no-cold", "--json", str(out), "--plot", str(png)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    _check_report(doc, ["published", "torch"])
    assert doc["settings"]["cold_process"] is False and all(r["cold"] is None for r in doc["results"])
    assert doc["results"][0]["ratio_to_published"] == 1.0 and len(doc["results"][0]["unet_calls"]) == 12
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert main(argv[:-4] + ["--json", str(out)]) == 0  # our own earlier output may be replaced


def test_bench_engine_dir_defaults_from_manifest(engine_dir, tmp_path, capsys):
    """Model source and size come from the manifest (64x64 opt); --soak reports memory drift. Off a terminal
    every step is a line (before: a minute of silence), the tables name each backend's precision and the JSON
    says how busy the machine was."""
    out = tmp_path / "b.json"
    argv = ["bench", "--engine-dir", str(engine_dir), "--backends", "ort,torch", "--runs", "1", "--warmup", "0",
            "--soak", "2", "--workdir", str(tmp_path / "cache"), "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for line in ("bench: ort fp32: loading + first image ...", "bench: ort fp32: run 1/1 ...", "bench: torch fp32: soak 1/2 ..."):
        assert line in printed.splitlines(), printed
    assert [ln.split()[:2] for ln in printed.splitlines() if ln.strip().startswith(("ort ", "torch "))] == [["ort", "fp32"], ["torch", "fp32"]] * 2
    doc = json.loads(out.read_text())
    _check_report(doc, ["ort", "torch"])
    load = doc["machine"]["load"]
    assert len(load["load_average_before"]) == 3 and load["others_cores"] >= 0 and load["cpu_count"] >= 1
    assert doc["settings"]["height"] == 64 and doc["results"][0]["soak"]["generations"] == 2
    assert doc["results"][1]["image_max_abs_diff_vs_first"] <= 2e-3
    assert len(list((tmp_path / "cache" / "ort-optimized").iterdir())) == 5  # ORT's optimised graphs (+ the map-only UNet's), cached atomically
    for r in doc["results"]:  # issue 21: a real cold start, open and first image apart, in a fresh process
        c = r["cold"]
        assert c["process"] == "fresh" and c["open_s"] > 0 and c["first_image_s"] > 0
        assert c["total_s"] >= c["imports_s"] + c["open_s"] + c["first_image_s"]
    assert main(argv[:4] + ["ort"] + argv[5:]) == 0  # second load from the cache: same figures, same mask
    again = json.loads(out.read_text())["results"][0]
    assert again["mask_sha256"] == doc["results"][0]["mask_sha256"]


@pytest.mark.parametrize("make", ["dir", "missing", "foreign"])
def test_bench_bad_output_path_is_one_line_exit_2_before_work(tmp_path, capsys, make):
    target = {"dir": tmp_path, "missing": tmp_path / "no" / "b.json", "foreign": tmp_path / "mine.json"}[make]
    if make == "foreign":
        target.write_text('{"not": "ours"}')
    code = main(["bench", "--preset", "tiny", "--workdir", str(tmp_path / "cache"), "--json", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # checked before any work
    if make == "foreign":
        assert json.loads(target.read_text()) == {"not": "ours"}


# -- issue 16: no third-party progress bars, a table that fits 100 columns, a chart of named stages ------------
def _result(name: str, p50: float, ratio: float | None):
    from monkey_trt.bench.measure import BackendResult, Spread

    return BackendResult(
        backend=name, info={}, cold_start_s=55.7, load_s=50.0, end_to_end_s=Spread(p50 * 0.98, p50, p50 * 1.05),
        images_per_s=1 / p50, stages_s={"encode_prompt": 0.146, "encode_subject": 0.061, "mask_pass": 0.3 * p50,
                                         "final_pass": 0.5 * p50, "scheduler": 0.0123, "mask": 0.0006, "decode": 0.384},
        unet_calls=[{"label": f"unet p2 s{i}", "passes": "p2", "step": i, "batch": 1, "p50_s": 0.08 * p50} for i in range(10)],
        ip_adapter_s=Spread(1, 1, 1), two_pass_overhead=1.40, peak_rss_mib=12345.0, peak_gpu_mib=None, batched_steps=0,
        mask_sha256="0" * 64, ratio_to_published=ratio, mask_equals_first=True,
    )


RESULTS = [_result("published", 118.221, 1.0), _result("torch", 122.776, 0.96), _result("ort", 10.770, 10.98)]


def test_bench_tables_fit_100_columns():
    from rich.console import Console

    from monkey_trt.bench.cli import results_tables
    from monkey_trt.bench.measure import BenchSettings

    s = BenchSettings.from_options(("published", "torch", "ort"), 512, 512, {}, runs=1000)
    console = Console(width=300, record=True, file=open("/dev/null", "w"))  # wide: the tables must be narrow on their own
    for t in results_tables(RESULTS, s):
        console.print(t)
    text = console.export_text()
    width = max(len(line.rstrip()) for line in text.splitlines())
    assert width <= 100, text
    for needle in ("published", "10.98x", "2-pass", "between", "sched", "UNet"):
        assert needle in text, needle


def test_bench_stage_groups_add_up_and_are_named():
    from monkey_trt.bench.chart import COLOURS
    from monkey_trt.bench.measure import STAGE_GROUPS, stage_groups

    for r in RESULTS:
        g = stage_groups(r)
        assert list(g) == list(STAGE_GROUPS) and "other" not in g
        assert abs(sum(g.values()) - r.end_to_end_s.p50) < 1e-9
        assert g["LCM scheduler"] == r.stages_s["scheduler"]
    assert set(COLOURS) == set(STAGE_GROUPS), "every stage has a legend entry"


def test_bench_chart_shows_ratios_and_axis_ticks(tmp_path, monkeypatch):
    import monkey_trt.bench.chart as chart

    texts = []
    real = chart.ImageDraw.ImageDraw.text
    monkeypatch.setattr(chart.ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: (texts.append(text), real(self, xy, text, *a, **k))[1])
    img = chart.render_chart(RESULTS, "MONKEY 512x512")
    assert img.size[0] >= 1000
    joined = "\n".join(texts)
    assert "10.98x published" in joined and "2-pass 1.40x" in joined
    ticks = [t for t in texts if t.endswith(" s") and t[:-2].replace(".", "").isdigit()]
    assert len(ticks) >= 4 and "0 s" in ticks, texts
    assert "other" not in texts and "between stages" in texts


def test_published_backend_prints_no_progress_bars(tiny_model_dir, capfd):
    """diffusers' 'Loading pipeline components' and transformers' 'Loading weights' bars stay off the bench output,
    even when nothing else has turned them off in this process."""
    import diffusers
    import transformers

    from monkey_trt.baselines.published import PublishedPipeline

    diffusers.utils.logging.enable_progress_bar()
    transformers.utils.logging.enable_progress_bar()
    capfd.readouterr()
    PublishedPipeline.from_pretrained(str(tiny_model_dir / "base"), str(tiny_model_dir / "ip-adapter"))
    captured = capfd.readouterr()
    for stream in (captured.out, captured.err):
        assert "it/s" not in stream and "%|" not in stream and "Loading" not in stream, stream[-500:]


def test_busy_machine_is_measured_and_warned_about(monkeypatch):
    """Others' CPU time = the machine's busy time less bench's own, over the wall time (here: made-up /proc figures)."""
    import monkey_trt.bench.machine_load as ml

    hz = __import__("os").sysconf("SC_CLK_TCK")
    ticks = iter([(0, 0), (3 * hz, 4 * hz)])  # 3 s of busy CPU time in all ...
    own = iter([10.0, 11.0])  # ... of which 1 s was bench's own
    clock = iter([100.0, 102.0])  # over 2 s of wall time: others used 1 core
    monkeypatch.setattr(ml, "_cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(ml, "_own_seconds", lambda: next(own))
    monkeypatch.setattr(ml.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(ml.os, "getloadavg", lambda: (0.1, 0.2, 0.3))
    w = ml.LoadWatch.start().stop()
    assert w.others_cores == 1.0 and w.to_json()["load_average_before"] == [0.1, 0.2, 0.3]
    assert "other processes used 1.00 of" in w.busy_warning()
    w.others_cores = 0.0
    assert w.busy_warning() is None
    w.before = (40.0, 1.0, 1.0)
    assert "the load average was 40.00 when it started" in w.busy_warning()
