"""`monkey-trt eval`, offline: tiny random CLIP/DINO judges written in their hub layouts, metrics against
hand-computed cosines, the protocol end to end (a fast stand-in generator, and the real tiny diffusion
model through the CLI), resume after Ctrl-C and after kill -9, the --out rule, bad inputs."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monkey_trt.cli import main
from monkey_trt.core.errors import MonkeyError
from monkey_trt.eval import store as store_mod
from monkey_trt.eval.generation import EvalBackend, Generated
from monkey_trt.eval.options import (
    check_precisions,
    parse_methods,
    parse_precisions,
    parse_seeds,
)
from monkey_trt.eval.metrics import cosines, mask_iou, mean_ci, psnr_u8, t975
from monkey_trt.eval.prompts import PAPER_PROMPTS, build_prompt, load_prompts
from monkey_trt.eval.protocol import EvalJob, prepare, run_eval
from monkey_trt.eval.report import pareto_front, verdict
from monkey_trt.eval.store import ROW_FIELDS, csv_text, csv_text_back, read_rows_csv
from monkey_trt.eval.subjects import discover_subjects, word_from_name
from monkey_trt.runtime.images import clip_preprocess, to_uint8

ROOT = Path(__file__).resolve().parents[1]


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> tuple[Path, Path]:
    from monkey_trt.eval.tiny_judges import write_tiny_judges

    return write_tiny_judges(tmp_path_factory.mktemp("judges"))


def _draw_subject(path: Path, colour, size=(96, 80)) -> None:
    im = Image.new("RGB", size, (235, 235, 235))
    a = np.asarray(im).copy()
    a[20:60, 25:70] = colour
    Image.fromarray(a).save(path)


@pytest.fixture()
def subjects(tmp_path) -> Path:
    d = tmp_path / "subjects"
    d.mkdir()
    _draw_subject(d / "red_box2.png", (220, 30, 30))
    (d / "dog3").mkdir()
    _draw_subject(d / "dog3" / "00.jpg", (120, 80, 40))
    _draw_subject(d / "dog3" / "01.jpg", (0, 0, 0))
    return d


@pytest.fixture()
def prompts(tmp_path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("# two of the paper's\non the beach\n\nin the snow\n")
    return p


class FakeGenerator:
    """A fast stand-in for a backend: images from the noise plan and the subject, deterministic; fp16
    adds a tiny perturbation. Records which noise each call got."""

    calls: list[tuple] = []

    def __init__(self, spec, precision, request):
        from monkey_trt.enginedir.networks import ModelDims

        self.precision, self.dims = precision, ModelDims()

    def __call__(self, method, request, subject, noise) -> Generated:
        h, w = request.height, request.width
        lat = np.kron(noise.latents[0, :3], np.ones((8, 8), np.float32)).transpose(1, 2, 0)  # [H, W, 3]
        subj = np.asarray(subject.resize((w, h)), np.float32) / 255
        weight = 0.6 if method.kind == "monkey" else 0.3 * method.scale
        img = 0.4 + 0.1 * lat + weight * (subj - 0.4)
        if self.precision == "fp16":
            img = img + 0.004 * np.sin(np.arange(w, dtype=np.float32) / 3)[None, :, None]
        digest = hashlib.sha256(noise.latents.tobytes() + noise.step_noise.tobytes()).hexdigest()
        FakeGenerator.calls.append((hashlib.sha256(subject.tobytes()).hexdigest(), request.prompt, request.seed, method.name,
                                    self.precision, digest))
        mask = None
        if method.kind == "monkey":
            mask = ((lat[..., 0] + (self.precision == "fp16") * 0.05 * lat[..., 1]) > 0).astype(np.uint8) * 255
        return Generated(to_uint8(img), mask, None if mask is None else float((mask > 0).mean()), 0.01)

    def close(self) -> None:
        pass


def _job(subjects, out, judges, prompts, precisions="fp32,fp16", methods="monkey,ipadapter@0.5,ipadapter@1.0",
         seeds=(0, 1), batch=4) -> EvalJob:
    spec = EvalBackend.make("torch", None, "tiny/base", "tiny/ip-adapter", "ip-adapter_sd15")
    return EvalJob(subjects_dir=subjects, out=out, spec=spec, height=64, width=64, methods=parse_methods(methods),
                   precisions=parse_precisions(precisions), seeds=tuple(seeds), prompts=str(prompts), clip=str(judges[0]),
                   dino=str(judges[1]), judge_device="cpu", judge_batch=batch)


def _run(job, **kw):
    return run_eval(prepare(job), open_gen=FakeGenerator, **kw)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- prompts, subjects, options -----------------------------------------------------------------------
def test_paper_prompts_and_prompt_text(tmp_path):
    assert len(PAPER_PROMPTS) == 20 and len(set(PAPER_PROMPTS)) == 20
    assert "on the beach" in PAPER_PROMPTS and "with the Eiffel Tower in the background" in PAPER_PROMPTS
    assert load_prompts("paper") == PAPER_PROMPTS
    assert build_prompt("dog", "on the beach") == "a dog on the beach"
    assert build_prompt("apple", "in the snow") == "an apple in the snow"
    assert build_prompt("the teapot", "on a mirror") == "the teapot on a mirror"
    assert build_prompt("stuffed animal", "a photo of {subject} at night") == "a photo of a stuffed animal at night"
    f = tmp_path / "p.txt"
    f.write_text("# comment\non the beach\n\n  in the snow  \non the beach\n")
    assert load_prompts(str(f)) == ("on the beach", "in the snow")
    for text in ("# nothing\n\n", None):
        g = tmp_path / "empty.txt"
        if text is not None:
            g.write_text(text)
        with pytest.raises(MonkeyError):
            load_prompts(str(g if text is not None else tmp_path / "missing.txt"))


def test_subjects_from_files_folders_and_sidecars(subjects):
    found = discover_subjects(subjects)
    assert [(s.id, s.word) for s in found] == [("dog3", "dog"), ("red_box2.png", "red box")]
    assert found[0].path.name == "00.jpg" and found[0].image.mode == "RGB" and len(found[0].sha256) == 64
    (subjects / "subjects.csv").write_text("image,word\ndog3,corgi\nred_box2.png,=cmd box\n")
    assert [s.word for s in discover_subjects(subjects)] == ["corgi", "=cmd box"]
    (subjects / "subjects.csv").unlink()
    warnings = []
    (subjects / "subjects.json").write_text(json.dumps({"red_box2": "box", "gone.png": "x"}))
    assert [s.word for s in discover_subjects(subjects, warn=warnings.append)] == ["dog", "box"]
    assert len(warnings) == 2  # dog3 falls back to its name; gone.png has no image
    assert word_from_name("dog_01.jpg") == "dog" and word_from_name("00.png") == "00"


@pytest.mark.parametrize("case", ["empty", "unreadable", "bad sidecar"])
def test_subject_folder_errors(tmp_path, case):
    d = tmp_path / "s"
    d.mkdir()
    if case == "unreadable":
        (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    if case == "bad sidecar":
        _draw_subject(d / "a.png", (1, 2, 3))
        (d / "subjects.csv").write_text("just,columns\nx,y\n")
    with pytest.raises(MonkeyError) as e:
        discover_subjects(d)
    assert {"empty": "holds no images", "unreadable": "broken.png", "bad sidecar": "name the columns"}[case] in str(e.value)


def test_methods_precisions_and_seeds():
    assert [m.name for m in parse_methods("monkey, ipadapter@0.5,IPADAPTER,ipadapter@1,monkey")] == ["monkey", "ipadapter@0.5", "ipadapter@1.0"]
    assert parse_precisions("fp16,fp32,fp16") == ("fp32", "fp16")
    assert parse_seeds("0, 1,1,2") == (0, 1, 2)
    for bad in ("dreambooth", "ipadapter@x", "ipadapter@9", ""):
        with pytest.raises(MonkeyError, match="--methods"):
            parse_methods(bad)
    with pytest.raises(MonkeyError, match="--precision"):
        parse_precisions("fp32,bf17")
    with pytest.raises(MonkeyError, match="monkey-trt export --precision fp32,int8"):
        check_precisions(("fp32", "int8"), "torch")
    with pytest.raises(MonkeyError, match=r"no int8 graphs .* monkey-trt export --precision fp32,int8 --out eng"):
        check_precisions(("fp32", "int8"), "ort", ("fp32", "fp16"), "eng")
    check_precisions(("fp32", "fp16"), "ort", ("fp32", "fp16"), "eng")
    with pytest.raises(MonkeyError, match="--seeds"):
        parse_seeds("1,x")


# -- numbers ------------------------------------------------------------------------------------------
def test_metrics_against_hand_computation():
    a, b = np.array([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]]), np.array([[4.0, 3.0, 0.0], [-2.0, 0.0, 0.0]])
    assert cosines(a, b) == pytest.approx([24 / 25, -1.0])
    m1, m2 = np.zeros((4, 4)), np.zeros((4, 4))
    m1[:2], m2[1:3] = 1, 255
    assert mask_iou(m1, m2) == pytest.approx(4 / 12) and mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    x = np.full((4, 4, 3), 100, np.uint8)
    y = x.copy()
    y[0, 0, 0] = 110
    assert psnr_u8(x, y) == pytest.approx(10 * math.log10(255**2 / (100 / 48))) and psnr_u8(x, x) == math.inf
    s = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.1824 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(n)
    assert (s.n, s.mean, s.lo, s.hi, s.min) == pytest.approx((4, 2.5, 2.5 - half, 2.5 + half, 1.0))
    assert math.isnan(mean_ci([1.0]).lo) and mean_ci([]).n == 0
    assert t975(40) == pytest.approx(2.0211, abs=2e-4) and t975(120) == pytest.approx(1.9799, abs=2e-4)
    assert pareto_front([(0.8, 0.28), (0.74, 0.32), (0.7, 0.25), (math.nan, 1.0)]) == [1, 0]
    from monkey_trt.eval.metrics import Stat

    ok = {k: Stat(10, 0.0, -0.001, 0.001, 0.0) for k in ("clip_t", "clip_i", "dino")}
    assert verdict(ok) == "equivalent"
    assert verdict({**ok, "dino": Stat(10, 0.05, 0.03, 0.07, 0.0)}) == "differs"
    assert verdict({**ok, "clip_t": Stat(10, 0.004, -0.001, 0.009, 0.0)}) == "undecided"


def test_csv_cells_cannot_be_formulas():
    for text in ("=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "'quoted", "\tx", "plain", ""):
        cell = csv_text(text)
        assert not cell.startswith(("=", "+", "-", "@", "\t")) and csv_text_back(cell) == text


# -- judges ---------------------------------------------------------------------------------------------
def test_judges_give_hand_computed_cosines(judges, subjects):
    """CLIP-T from CLIPModel's own forward (logits / logit scale), CLIP-I and DINO from models loaded
    independently with their hub classes; DINO preprocessing by hand."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer, ViTModel

    from monkey_trt.eval.judges import (
        ClipJudge,
        DinoJudge,
        dino_preprocess,
        resolve_judge,
    )

    clip = ClipJudge.load(resolve_judge(str(judges[0]), "clip"))
    dino = DinoJudge.load(resolve_judge(str(judges[1]), "dino"))
    imgs = [Image.open(subjects / "red_box2.png").convert("RGB"), Image.open(subjects / "dog3" / "00.jpg").convert("RGB")]
    texts = ["a red box on the beach", "a dog in the snow"]
    model, tok = CLIPModel.from_pretrained(judges[0]), CLIPTokenizer.from_pretrained(judges[0])
    pixels = CLIPImageProcessor.from_pretrained(judges[0])(images=imgs, return_tensors="np")["pixel_values"]
    ours = np.concatenate([clip_preprocess(im) for im in imgs])
    assert np.abs(ours - pixels).max() < 2e-2  # the processor's own resize path (PIL or torchvision) may differ by a level
    with torch.no_grad():
        out = model(**tok(texts, padding=True, return_tensors="pt"), pixel_values=torch.from_numpy(ours))
        hand_t = (out.logits_per_image / model.logit_scale.exp()).diagonal().numpy()
    assert cosines(clip.text_embeds(texts), clip.image_embeds(imgs)) == pytest.approx(hand_t.tolist(), abs=1e-5)
    e = out.image_embeds.numpy()
    assert cosines(clip.image_embeds(imgs[:1] * 2), clip.image_embeds(imgs)) == pytest.approx([1.0, float(e[0] @ e[1])], abs=1e-5)
    # DINO: torchvision's Resize(256)+CenterCrop(224) by hand on a 96x80 image -> 307x256, crop at (8, 42)
    big = np.asarray(imgs[0].resize((307, 256), Image.Resampling.BICUBIC), np.float32)[16:240, 42:266] / 255
    hand = ((big - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None].astype(np.float32)
    assert np.abs(dino_preprocess(imgs[0]) - hand).max() < 1e-5
    vit = ViTModel.from_pretrained(judges[1], add_pooling_layer=False)
    with torch.no_grad():
        cls = vit(pixel_values=torch.from_numpy(np.concatenate([dino_preprocess(im) for im in imgs]))).last_hidden_state[:, 0].numpy()
    cos = float(cls[0] @ cls[1] / np.linalg.norm(cls[0]) / np.linalg.norm(cls[1]))
    assert cosines(dino.image_embeds(imgs[:1]), dino.image_embeds(imgs[1:])) == pytest.approx([cos], abs=1e-5)


def test_judge_hub_ids_come_from_the_cache_offline(judges, tmp_path, monkeypatch):
    """A hub id is read from huggingface_hub's cache when the hub cannot be used (HF_HUB_OFFLINE)."""
    import shutil

    from huggingface_hub import constants

    from monkey_trt.eval.judges import ClipJudge, resolve_judge

    commit = "0" * 40
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-clip" / "snapshots" / commit
    shutil.copytree(judges[0], snapshot)
    (tmp_path / "hub" / "models--tiny-org--tiny-clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny-org--tiny-clip" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    src = resolve_judge("tiny-org/tiny-clip", "clip")
    assert src.folder == snapshot.resolve() and src.digest == resolve_judge(str(judges[0]), "clip").digest
    assert ClipJudge.load(src).text_embeds(["a dog"]).shape == (1, 16)
    with pytest.raises(MonkeyError, match="not in the Hugging Face cache"):
        resolve_judge("tiny-org/not-cached", "dino")


def test_judge_folders_are_checked(judges, tmp_path):
    from monkey_trt.eval.judges import resolve_judge

    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "clip"}))
    cases = [(str(judges[1]), "clip", "model_type 'vit'"), (str(judges[0]), "dino", "model_type 'clip'"),
             (str(empty), "clip", "no config.json"), (str(no_weights), "clip", "no weights"),
             (str(tmp_path / "missing"), "dino", "does not exist")]
    for name, kind, message in cases:
        with pytest.raises(MonkeyError, match=message):
            resolve_judge(name, kind)


# -- the protocol ----------------------------------------------------------------------------------------
def test_protocol_end_to_end_noise_fixed_and_compared_with_fp32(subjects, prompts, judges, tmp_path):
    FakeGenerator.calls = []
    out = subjects / "out"  # inside the subject folder: never taken for a subject
    result = _run(_job(subjects, out, judges, prompts))
    n = 2 * 2 * 2 * 3 * 2  # subjects x prompts x seeds x methods x precisions
    assert (result.generated, result.reused, result.rescored, len(result.rows)) == (n, 0, 0, n)
    noise = {}
    for subj, prompt, seed, _method, _precision, digest in FakeGenerator.calls:
        noise.setdefault((subj, prompt, seed), set()).add(digest)
    assert all(len(v) == 1 for v in noise.values()) and len({next(iter(v)) for v in noise.values()}) == 2  # one per seed
    rows = _csv_rows(out / "rows.csv")
    assert tuple(rows[0]) == ROW_FIELDS and len(rows) == n
    assert {r["prompt"] for r in rows} == {"a dog on the beach", "a dog in the snow", "a red box on the beach", "a red box in the snow"}
    for r in rows:
        assert -1 <= float(r["clip_t"]) <= 1 and -1 <= float(r["clip_i"]) <= 1 and -1 <= float(r["dino"]) <= 1
        assert (out / r["image"]).is_file() and (r["mask"] != "") == (r["method"] == "monkey")
        fp16 = r["precision"] == "fp16"
        assert (r["psnr_vs_fp32"] != "") == fp16 and (r["mask_iou_vs_fp32"] != "") == (fp16 and r["method"] == "monkey")
        if fp16:
            assert 35 < float(r["psnr_vs_fp32"]) < 60 and 0.5 < float(r.get("mask_iou_vs_fp32") or 1) <= 1
    with Image.open(out / rows[0]["image"]) as im:
        assert im.size == (64, 64) and im.info["Software"] == store_mod.PNG_SOFTWARE
    summary = json.loads((out / "summary.json").read_text())
    by = {(r["method"], r["precision"]): r for r in summary["rows"]}
    assert set(by) == {(m, p) for m in ("monkey", "ipadapter@0.5", "ipadapter@1.0") for p in ("fp32", "fp16")}
    assert by[("monkey", "fp32")]["paper_table1"] == {"clip_t": 0.318, "dino": 0.529, "clip_i": 0.743}
    assert by[("ipadapter@1.0", "fp32")]["paper_table1"]["clip_i"] == 0.806 and by[("ipadapter@0.5", "fp32")]["paper_table1"] is None
    assert by[("monkey", "fp16")]["vs_fp32"]["verdict"] in ("equivalent", "undecided", "differs")
    assert by[("monkey", "fp32")]["metrics"]["clip_t"]["n"] == 8
    with open(out / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6
    with Image.open(out / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.info["Software"] == store_mod.PNG_SOFTWARE
    page = (out / "contact.html").read_text()
    assert page.count("<h2>") == 2 and "a red box in the snow" in page and "subjects/" in page
    assert not list(out.glob(".eval.monkey-staging-*"))  # the run's staging folder is gone
    again = _run(_job(subjects, out, judges, prompts))  # everything done: nothing generated, nothing loaded
    assert (again.generated, again.reused) == (0, n)


def test_resume_after_ctrl_c_scores_but_never_regenerates(subjects, prompts, judges, tmp_path):
    whole = _run(_job(subjects, tmp_path / "whole", judges, prompts, precisions="fp32", seeds=(0,)))
    out = tmp_path / "out"
    seen = []

    def interrupt(unit):
        seen.append(unit.key)
        if len(seen) == 6:  # 4 rows written (batch 4), images 5 and 6 on disk, not scored
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(_job(subjects, out, judges, prompts, precisions="fp32", seeds=(0,)), on_image=interrupt)
    assert len(read_rows_csv(out / "rows.csv")) == 4 and not list(out.glob(".eval.monkey-staging-*"))
    images = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    resumed = _run(_job(subjects, out, judges, prompts, precisions="fp32", seeds=(0,)))
    assert (resumed.generated, resumed.rescored, resumed.reused) == (12 - 6, 2, 4)
    assert all(p.stat().st_mtime_ns == t for p, t in images.items())  # nothing written twice
    for a, b in zip(whole.rows, resumed.rows):
        assert (a.key, a.clip_t, a.clip_i, a.dino) == (b.key, pytest.approx(b.clip_t, abs=2e-6), pytest.approx(b.clip_i, abs=2e-6),
                                                       pytest.approx(b.dino, abs=2e-6))


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_eval import FakeGenerator, _job, _run
n = []
def kill(unit):
    n.append(unit)
    if len(n) == 5:
        os.kill(os.getpid(), signal.SIGKILL)
_run(_job(Path({subjects!r}), Path({out!r}), ({clip!r}, {dino!r}), Path({prompts!r}), precisions="fp32", seeds=(0,), batch=2), on_image=kill)
"""


def test_resume_after_kill_9(subjects, prompts, judges, tmp_path):
    """A real SIGKILL mid-run: its staging folder is swept, its images scored, nothing generated twice."""
    out = tmp_path / "out"
    script = KILL_SCRIPT.format(root=str(ROOT), subjects=str(subjects), out=str(out), clip=str(judges[0]), dino=str(judges[1]),
                                prompts=str(prompts))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list(out.glob(".eval.monkey-staging-*"))) == 1  # what kill -9 leaves
    done = read_rows_csv(out / "rows.csv")
    assert len(done) == 4  # batch 2: rows of images 1-4; image 5 written, not scored
    resumed = _run(_job(subjects, out, judges, prompts, precisions="fp32", seeds=(0,), batch=2))
    assert (resumed.generated, resumed.rescored, resumed.reused) == (12 - 5, 1, 4)
    assert not list(out.glob(".eval.monkey-staging-*")) and len(read_rows_csv(out / "rows.csv")) == 12


def test_out_folder_rule(subjects, prompts, judges, tmp_path):
    """Never overwrite a file monkey-trt did not write; refuse a folder made with other settings."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "rows.csv").write_text("mine\n")
    with pytest.raises(MonkeyError, match="rows.csv, which monkey-trt did not write"):
        _run(_job(subjects, out, judges, prompts, precisions="fp32", seeds=(0,)))
    assert (out / "rows.csv").read_text() == "mine\n" and not (out / "eval.json").exists()
    (out / "rows.csv").unlink()
    job = _job(subjects, out, judges, prompts, precisions="fp32", seeds=(0,), methods="monkey")
    _run(job)
    first = read_rows_csv(out / "rows.csv")
    victim = out / next(iter(first.values())).image.replace("fp32", "fp16")
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"a user's file")  # where the fp16 image of the first case goes
    FakeGenerator.calls = []
    with pytest.raises(MonkeyError, match="is not this run's image"):
        _run(_job(subjects, out, judges, prompts, precisions="fp32,fp16", seeds=(0,), methods="monkey"))
    assert victim.read_bytes() == b"a user's file" and FakeGenerator.calls == []  # refused before any work
    victim.unlink()
    other = _job(subjects, out, judges, prompts, precisions="fp32", seeds=(0,), methods="monkey")
    with pytest.raises(MonkeyError, match="other settings .*height"):
        _run(EvalJob(**{**other.__dict__, "height": 72, "width": 72}))
    (subjects / "red_box2.png").write_bytes((subjects / "dog3" / "01.jpg").read_bytes())
    with pytest.raises(MonkeyError, match="subject red_box2.png changed"):
        _run(job)
    from monkey_trt.core.output_folders import folder_lock

    with folder_lock(out):
        with pytest.raises(MonkeyError, match="another process is writing"):
            _run(job)


# -- the command line --------------------------------------------------------------------------------------
def _cli_args(subjects, out, judges, *extra, prompts=None):
    return ["eval", "--subjects", str(subjects), "--out", str(out), "--clip", str(judges[0]), "--dino", str(judges[1]),
            "--height", "64", "--width", "64", *(["--prompts", str(prompts)] if prompts else []), *extra]


@pytest.mark.parametrize("case", ["empty folder", "unreadable image", "unknown method", "unknown precision", "int8 on torch",
                                  "not a CLIP folder", "not a DINO folder", "missing prompts file"])
def test_cli_bad_inputs_are_one_line_exit_2(case, subjects, judges, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    extra, subj, jdg, pr = [], subjects, judges, prompts
    if case == "empty folder":
        subj = tmp_path / "nothing"
        subj.mkdir()
    elif case == "unreadable image":
        (subjects / "zz.jpg").write_text("not an image")
    elif case == "unknown method":
        extra = ["--methods", "monkey,dreambooth"]
    elif case == "unknown precision":
        extra = ["--precision", "fp32,fp7"]
    elif case == "int8 on torch":
        extra = ["--precision", "fp32,int8"]
    elif case == "not a CLIP folder":
        jdg = (judges[1], judges[1])
    elif case == "not a DINO folder":
        jdg = (judges[0], judges[0])
    elif case == "missing prompts file":
        pr = tmp_path / "nope.txt"
    code = main(_cli_args(subj, out, jdg, *extra, prompts=pr))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    expect = {"empty folder": "holds no images", "unreadable image": "zz.jpg", "unknown method": "dreambooth",
              "unknown precision": "fp7", "int8 on torch": "monkey-trt export --precision fp32,int8",
              "not a CLIP folder": "is not a CLIP model", "not a DINO folder": "is not a DINO model",
              "missing prompts file": "--prompts"}[case]
    assert expect in err


def test_cli_end_to_end_on_the_tiny_model(tiny_model_dir, judges, tmp_path, capsys):
    """The real tiny diffusion model (torch backend): MONKEY and plain IP-Adapter, two prompts; a re-run
    does nothing but the report."""
    subj = tmp_path / "subjects"
    subj.mkdir()
    (subj / "toy.png").write_bytes((tiny_model_dir / "subject.png").read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("on the beach\nwith =a city in the background\n")
    out = tmp_path / "out"
    argv = _cli_args(subj, out, judges, "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
                     "--threads", "1", prompts=prompts)
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "4 rows: 4 generated" in stdout and "0.318/0.743/0.529" in stdout  # the paper's MONKEY row, in the run's order T/I/D
    rows = _csv_rows(out / "rows.csv")
    assert [(r["method"], r["prompt"]) for r in rows] == [
        ("monkey", "a toy on the beach"), ("ipadapter@1.0", "a toy on the beach"),
        ("monkey", "a toy with =a city in the background"), ("ipadapter@1.0", "a toy with =a city in the background")]
    for r in rows:
        with Image.open(out / r["image"]) as im:
            assert im.size == (64, 64)
        assert 0 < float(r["seconds"]) and -1 <= float(r["clip_t"]) <= 1
    monkey = np.asarray(Image.open(out / rows[0]["image"]))
    plain = np.asarray(Image.open(out / rows[1]["image"]))
    assert not np.array_equal(monkey, plain)  # the mask changed pass 2
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert main(argv) == 0
    assert "4 rows: 0 generated, 0 scored from images an interrupted run left, 4 already done" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


@pytest.mark.slow
def test_cli_ort_fp32_and_fp16_on_the_tiny_engine(engine_dir, tiny_model_dir, judges, tmp_path, capsys):
    """The lean runtime, both exported precisions: fp16 is compared with fp32 (PSNR, mask IoU, deltas)."""
    subj = tmp_path / "subjects"
    subj.mkdir()
    (subj / "toy.png").write_bytes((tiny_model_dir / "subject.png").read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("on the beach\nin the snow\n")
    out = tmp_path / "out"
    argv = _cli_args(subj, out, judges, "--engine-dir", str(engine_dir), "--precision", "fp16,fp32", "--methods", "monkey",
                     "--seeds", "0,1", "--threads", "1", prompts=prompts)
    assert main(argv) == 0, capsys.readouterr().err
    rows = [r for r in _csv_rows(out / "rows.csv") if r["precision"] == "fp16"]
    assert len(rows) == 4 and all(float(r["psnr_vs_fp32"]) > 30 and float(r["mask_iou_vs_fp32"]) >= 0.9 for r in rows)
    code = main(_cli_args(subj, tmp_path / "o2", judges, "--engine-dir", str(engine_dir), "--precision", "int8", prompts=prompts))
    assert code == 2 and f"monkey-trt export --precision fp32,int8 --out {engine_dir}" in capsys.readouterr().err


def test_summary_tables_fit_100_columns_with_the_papers_numbers_in_the_runs_order():
    """Before: one 11-column table printed 180 wide, the paper's numbers T/D/I beside the run's CLIP-T, CLIP-I, DINO."""
    from rich.console import Console

    from monkey_trt.eval.metrics import Stat
    from monkey_trt.eval.report import METRICS, TABLE_WIDTH, SummaryRow, summary_tables

    wide = Stat(n=1000, mean=-0.999, lo=-1.0, hi=-0.998, min=-1.0)
    rows = [SummaryRow("monkey-all-steps", "fp32", 10000, {k: wide for k in METRICS}),
            SummaryRow("monkey-all-steps", "int8", 10000, {k: wide for k in METRICS}, iou=wide, psnr=Stat(n=9, mean=35.25, lo=30.0, hi=40.0, min=12.5),
                       deltas={k: wide for k in METRICS}, verdict="equivalent"),
            SummaryRow("ipadapter@0.6", "fp16", 3, {k: wide for k in METRICS})]
    console = Console(width=300, record=True, file=open("/dev/null", "w"))  # wide: the tables must be narrow on their own
    for t in summary_tables(rows, "paper protocol, openvino 512x512: 100 subject(s) x 20 prompt(s) x 3 seed(s)"):
        console.print(t)
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= TABLE_WIDTH, text
    assert "paper T/I/D" in text and "0.318/0.743/0.529" in text  # MONKEY (all steps) in Table 1: T .318, I .743, D .529
    assert "35.2 (12.5)" in text and "equivalent" in text and "Δ CLIP-T/CLIP-I/DINO" in text


def test_prompt_file_format_is_in_the_help_and_the_docs(capsys):
    """Before: `--help` said "a text file, one per line"; neither it nor docs/eval.md said how a line becomes a prompt."""
    assert main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one prompt per line" in text and "{subject}" in text and "# lines skipped" in text
    doc = (ROOT / "docs" / "eval.md").read_text()
    assert "The prompt file (`--prompts FILE`)" in doc and "a photo of {subject} at night" in doc
    from monkey_trt.eval.prompts import build_prompt

    assert build_prompt("dog", "a photo of {subject} at night") == "a photo of a dog at night"  # as the docs say
    assert build_prompt("dog", "on the beach", "{word} {prompt}") == "dog on the beach"
