"""Several subjects (issue 22) on the faces: `generate` with repeated --image and --background-image (ort and torch),
its refusals (one line, exit 2, nothing written), `bench` with several subjects, benchmarks/multi_subject.py, the
top-level API's loader, the page's colours. The HTTP service and the page: tests/test_serve.py, test_serve_page.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from monkey_trt.cli import main
from monkey_trt.core.errors import MonkeyError

FAST = ["--steps-mask-pass", "2", "--mask-steps", "1", "--steps-final", "3", "--masked-steps", "1,2"]
ROOT = Path(__file__).resolve().parents[1]


def second_subject(subject: Image.Image) -> Image.Image:
    """A second subject unlike the first: mirrored, red and blue swapped."""
    r, g, b = ImageOps.mirror(subject).split()
    return Image.merge("RGB", (b, g, r))


@pytest.fixture(scope="module")
def images(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("subjects")
    first = Image.open(tiny_model_dir / "subject.png").convert("RGB")
    paths = {"toy": d / "toy.png", "robot": d / "robot.png", "beach": d / "beach.png", "bad": d / "cat.png"}
    first.save(paths["toy"])
    second_subject(first).save(paths["robot"])
    Image.new("RGB", (48, 40), (90, 160, 220)).save(paths["beach"])
    paths["bad"].write_bytes(paths["toy"].read_bytes()[:300])  # truncated
    return paths


def _refused(argv: list[str], capsys, out: Path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert not out.exists(), "nothing may be written"
    return err


# -- generate --------------------------------------------------------------------------------------
def test_generate_two_subjects_and_a_background_on_ort(engine_dir, images, tmp_path, capsys):
    out = tmp_path / "pair"
    argv = ["generate", "--engine-dir", str(engine_dir), "--image", str(images["toy"]), "--image", str(images["robot"]),
            "--background-image", str(images["beach"]), "--subject-scales", "1,0.8", "--background-scale", "0.5",
            "--prompt", "a toy and a robot on the beach", "--baseline", "--out", str(out), *FAST]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.search(r"2 subject masks cover \d+%, \d+% of the image \(overlap \d+%\)", line), line
    names = {p.name for p in out.iterdir()}
    assert {"monkey.png", "mask.png", "overlay.png", "mask_1.png", "mask_2.png", "overlay_1.png", "overlay_2.png",
            "background_mask.png", "ipadapter.png", "grid.png", "result.json"} <= names
    rec = json.loads((out / "result.json").read_text())
    assert [s["index"] for s in rec["subjects"]] == [1, 2]
    assert [s["image"] for s in rec["subjects"]] == [str(images["toy"]), str(images["robot"])]
    assert [s["scale"] for s in rec["subjects"]] == [1.0, 0.8] and rec["config"]["subject_scales"] == [1.0, 0.8]
    assert rec["background"]["image"] == str(images["beach"]) and rec["background"]["scale"] == 0.5
    m1, m2 = (np.asarray(Image.open(out / f"mask_{k}.png")) > 0 for k in (1, 2))
    union, bg = np.asarray(Image.open(out / "mask.png")) > 0, np.asarray(Image.open(out / "background_mask.png")) > 0
    assert not (m1 & m2).any() and np.array_equal(m1 | m2, union) and np.array_equal(bg, ~union)  # final masks never overlap
    for k, m in ((0, m1), (1, m2)):
        assert rec["subjects"][k]["coverage"] == pytest.approx(m.mean())
    assert 0.0 <= rec["overlap"] <= 1.0


def test_generate_one_subject_writes_todays_files(engine_dir, images, tmp_path):
    out = tmp_path / "one"
    assert main(["generate", "--engine-dir", str(engine_dir), "--image", str(images["toy"]), "--prompt", "a toy",
                 "--out", str(out), *FAST]) == 0
    assert {p.name for p in out.iterdir()} == {"monkey.png", "mask.png", "overlay.png", "result.json"}
    rec = json.loads((out / "result.json").read_text())
    assert rec["subject"] == str(images["toy"]) and len(rec["subjects"]) == 1 and rec["background"] is None


@pytest.mark.slow  # ~10 s on 2 cores: the torch reference loads the tiny model
def test_generate_two_subjects_on_torch_equals_ort_masks(engine_dir, tiny_model_dir, images, tmp_path):
    """The torch reference takes several subjects too; its masks are ORT's (the engine's own parity is i22a/i22b's)."""
    common = ["--image", str(images["toy"]), "--image", str(images["robot"]), "--prompt", "a toy and a robot", *FAST,
              "--height", "64", "--width", "64"]
    assert main(["generate", "--backend", "torch", "--base", str(tiny_model_dir / "base"),
                 "--ip-adapter", str(tiny_model_dir / "ip-adapter"), "--out", str(tmp_path / "torch"), *common]) == 0
    assert main(["generate", "--engine-dir", str(engine_dir), "--out", str(tmp_path / "ort"), *common]) == 0
    for k in (1, 2):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "torch" / f"mask_{k}.png")),
                              np.asarray(Image.open(tmp_path / "ort" / f"mask_{k}.png"))), k


@pytest.mark.parametrize("case, needle", [
    ("five", "at most 4 subject"),
    ("scales", "subject_scales has 3 entries for 2 subject"),
    ("bg-scale", "background_scale applies to a background image"),
    ("corrupt", "subject 2 (cat.png): "),
    ("corrupt-bg", "background (cat.png): "),
])
def test_generate_bad_subject_input_is_one_line_exit_2_nothing_written(engine_dir, images, tmp_path, capsys, monkeypatch, case, needle):
    import monkey_trt.commands.generate as generate

    monkeypatch.setattr(generate, "load_backend", lambda job: pytest.fail("refused before any model loads"))
    two = ["--image", str(images["toy"]), "--image", str(images["robot"])]
    extra = {"five": ["--image", str(images["toy"])] * 5, "scales": [*two, "--subject-scales", "1,1,1"],
             "bg-scale": [*two, "--background-scale", "0.5"], "corrupt": ["--image", str(images["toy"]), "--image", str(images["bad"])],
             "corrupt-bg": [*two, "--background-image", str(images["bad"])]}[case]
    out = tmp_path / "out"
    err = _refused(["generate", "--engine-dir", str(engine_dir), "--prompt", "x", "--out", str(out), *extra], capsys, out)
    assert needle in err, err


def test_subject_count_rules():
    from monkey_trt.runtime.images import check_subject_count

    check_subject_count(4, True, 4, True)
    for args, needle in [((0, False, 4, True), "no subject image"), ((0, True, 4, True), "beside subjects"),
                         ((5, False, 4, True), "at most 4 subject"), ((1, True, 1, False), "exported before background")]:
        with pytest.raises(MonkeyError, match=re.escape(needle)):
            check_subject_count(*args)


def test_load_subjects_names_the_bad_one(images):
    import monkey_trt

    subjects, bg = monkey_trt.load_subjects([images["toy"], images["robot"]], images["beach"])
    assert len(subjects) == 2 and bg.size == (48, 40) and all(s.mode == "RGB" for s in subjects)
    with pytest.raises(MonkeyError, match=r"^subject 3 \(cat\.png\): subject image .* corrupt or truncated"):
        monkey_trt.load_subjects([images["toy"], images["robot"], images["bad"]])
    with pytest.raises(MonkeyError, match=r"^subject image .* corrupt or truncated"):  # one subject: the message as before
        monkey_trt.load_subjects([images["bad"]])


# -- bench and the benchmark -------------------------------------------------------------------------
def test_bench_two_subjects_records_s(engine_dir, images, tmp_path):
    out = tmp_path / "b.json"
    argv = ["bench", "--engine-dir", str(engine_dir), "--backends", "ort", "--image", str(images["toy"]), "--image",
            str(images["robot"]), "--background-image", str(images["beach"]), "--runs", "1", "--warmup", "0", "--no-cold",
            "--workdir", str(tmp_path / "cache"), "--json", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    from monkey_trt.bench.measure import validate_report

    validate_report(doc)
    assert doc["settings"]["subjects"] == 2 and doc["settings"]["background"] is True
    assert doc["source"]["subjects"] == [str(images["toy"]), str(images["robot"])]


def test_bench_refuses_published_with_several_subjects(images, tmp_path, capsys):
    out = tmp_path / "b.json"
    err = _refused(["bench", "--preset", "tiny", "--workdir", str(tmp_path / "cache"), "--backends", "published,ort",
                    "--image", str(images["toy"]), "--image", str(images["robot"]), "--json", str(out)], capsys, out)
    assert "one-subject code" in err
    assert not (tmp_path / "cache").exists()  # before the preset is written


def test_multi_subject_benchmark_smoke(engine_dir, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import multi_subject
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "ms.json"
    assert multi_subject.main(["--engine-dir", str(engine_dir), "--subjects", "1,2,4", "--runs", "1", "--fast", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert [r["subjects"] for r in rows] == [1, 2, 4] and rows[0]["extra_per_added_subject"] is None
    assert all(r["p50_s"] > 0 and len(r["coverage"]) == r["subjects"] for r in rows)
    assert doc["open_s"] > 0 and len(doc["load"]["load_average_before"]) == 3
    assert "per added subject" in capsys.readouterr().out


# -- the page's colours are the output files' -----------------------------------------------------------
def test_page_colours_are_the_overlay_colours():
    from monkey_trt.runtime.outputs import SUBJECT_COLOURS

    html = (ROOT / "monkey_trt" / "serve" / "page.html").read_text()
    found = re.search(r"const COLOURS = (\[\[.*?\]\]);", html).group(1)
    assert [tuple(c) for c in json.loads(found)] == [tuple(c) for c in SUBJECT_COLOURS]


def test_generate_on_an_old_engine_directory_refuses_more_before_loading(engine_dir, images, tmp_path, capsys, monkeypatch):
    """A directory exported before several subjects (its manifest without max_subjects, its UNet one IP image wide):
    one subject as before; two, or a background, are one line from the manifest before any model loads."""
    import monkey_trt.commands.generate as generate
    from tests.test_multi_subject_e2e import _old_layout

    old = _old_layout(engine_dir, tmp_path)
    monkeypatch.setattr(generate, "load_backend", lambda job: pytest.fail("refused before any model loads"))
    out = tmp_path / "out"
    base = ["generate", "--engine-dir", str(old), "--prompt", "x", "--out", str(out), "--image", str(images["toy"])]
    assert "takes at most 1 subject (manifest max_subjects); re-export with --max-subjects" in \
        _refused([*base, "--image", str(images["robot"])], capsys, out)
    assert "exported before background images" in _refused([*base, "--background-image", str(images["beach"])], capsys, out)


def test_api_refuses_what_the_cli_refuses(runtime, images):
    """The Python API's checks are the faces': scales of another length, a background_scale without a background."""
    with pytest.raises(MonkeyError, match="subject_scales has 1 entries for 2 subject"):
        runtime.generate("x", [images["toy"], images["robot"]], subject_scales=(1.0,))
    with pytest.raises(MonkeyError, match="background_scale applies to a background image"):
        runtime.generate("x", [images["toy"], images["robot"]], background_scale=0.5)
    with pytest.raises(MonkeyError, match=r"^subject 2 \(cat\.png\): "):
        runtime.generate("x", [images["toy"], images["bad"]])
