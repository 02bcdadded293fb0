"""`monkey-trt bench` end to end on the tiny model, one run (no timing assertions): JSON schema, stages, chart."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from monkey_trt.bench.job import REQUIRED_STAGES, validate_report
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
            "--height", "64", "--width", "64", "--runs", "1", "--warmup", "0", "--json", str(out), "--plot", str(png)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    _check_report(doc, ["published", "torch"])
    assert doc["results"][0]["ratio_to_published"] == 1.0 and len(doc["results"][0]["unet_calls"]) == 12
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert main(argv[:-4] + ["--json", str(out)]) == 0  # our own earlier output may be replaced


def test_bench_engine_dir_defaults_from_manifest(engine_dir, tmp_path):
    """Model source and size come from the manifest (64x64 opt); --soak reports memory drift."""
    out = tmp_path / "b.json"
    argv = ["bench", "--engine-dir", str(engine_dir), "--backends", "ort,torch", "--runs", "1", "--warmup", "0",
            "--soak", "2", "--workdir", str(tmp_path / "cache"), "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    _check_report(doc, ["ort", "torch"])
    assert doc["settings"]["height"] == 64 and doc["results"][0]["soak"]["generations"] == 2
    assert doc["results"][1]["image_max_abs_diff_vs_first"] <= 2e-3
    assert len(list((tmp_path / "cache" / "ort-optimized").iterdir())) == 4  # ORT's optimised graphs, cached atomically
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
