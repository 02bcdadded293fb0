"""`eval --protocol authors` and `--prompt-template`: what the authors' code ran, on the tiny model; bad schedule
knobs are one line and exit 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monkey_trt.cli import main
from monkey_trt.core.config import MonkeyConfig
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.prompts import PAPER_PROMPTS
from monkey_trt.eval.options import ALL_STEPS, MONKEY, Method, parse_methods
from monkey_trt.eval.prompts import build_prompt, check_template


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> tuple[Path, Path]:
    from monkey_trt.eval.tiny_judges import write_tiny_judges

    return write_tiny_judges(tmp_path_factory.mktemp("judges"))


@pytest.fixture()
def three_subjects(tmp_path, tiny_model_dir) -> Path:
    d = tmp_path / "subjects"
    d.mkdir()
    for name in ("apple.png", "dog2.png", "red_cartoon.png"):  # words: apple, dog, red cartoon
        (d / name).write_bytes((tiny_model_dir / "subject.png").read_bytes())
    return d


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_prompt_templates():
    assert build_prompt("apple", "in the snow") == "an apple in the snow"  # the default: unchanged
    assert build_prompt("apple", "in the snow", "{word} {prompt}") == "apple in the snow"  # the authors' code
    assert build_prompt("dog", "a photo of {subject} at night", "{word} {prompt}") == "a photo of dog at night"
    assert build_prompt("dog", "a photo of {subject} at night") == "a photo of a dog at night"
    assert build_prompt("{prompt}", "on a mirror", "a photo of {word}, {prompt}") == "a photo of {prompt}, on a mirror"
    for bad in ("{word}", "{prompt} {prompt} {word}", "{word} {a_word} {prompt}", "{name} {prompt} {word}", "{word} {prompt}}"):
        with pytest.raises(MonkeyError, match="^--prompt-template must hold"):
            check_template(bad)


def test_all_steps_variant_is_the_authors_overwrite():
    (m,) = parse_methods("monkey-all-steps")
    assert m == Method(MONKEY, variant=ALL_STEPS) and m.name == "monkey-all-steps"
    cfg = m.config(MonkeyConfig(adapter_steps=(0, 1), scale_final=0.5))
    assert cfg.final_mask_use() == ["masked"] * 8 and cfg.final_scales() == [1.0] * 8
    assert parse_methods("monkey")[0].config(MonkeyConfig()) == MonkeyConfig()


def test_authors_defaults_and_overrides(tiny_model_dir, three_subjects, tmp_path):
    from monkey_trt.eval.command import EvalOptions, build_job, protocol_notes

    from monkey_trt.runtime.backend import BackendSpec

    models = dict(base=str(tiny_model_dir / "base"), ip_adapter=str(tiny_model_dir / "ip-adapter"), spec=BackendSpec("torch"))
    o = EvalOptions(three_subjects, tmp_path / "out", protocol="authors", **models)
    job = build_job(o)
    assert (job.seeds, job.height, job.width, job.prompt_template) == ((123,), 256, 256, "{word} {prompt}")
    assert [m.name for m in job.methods] == ["monkey", "monkey-all-steps", "ipadapter@1.0"]
    assert job.precisions == ("fp32",) and "fp16" in protocol_notes(o, job)[0]  # no GPU here: fp32, said so
    paper = build_job(EvalOptions(three_subjects, tmp_path / "out", **models))
    assert (paper.seeds, paper.height, paper.prompt_template, paper.protocol) == ((0,), 512, "{a_word} {prompt}", "paper")
    given = build_job(EvalOptions(three_subjects, tmp_path / "out", protocol="authors", seeds="5", height=64, width=64,
                                  precisions="fp32,fp16", prompt_template="a {word} {prompt}", **models))
    assert (given.seeds, given.height, given.precisions, given.prompt_template) == ((5,), 64, ("fp32", "fp16"), "a {word} {prompt}")


def test_cli_authors_protocol_on_the_tiny_model(tiny_model_dir, judges, three_subjects, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--protocol", "authors", "--subjects", str(three_subjects), "--out", str(out), "--clip", str(judges[0]),
            "--dino", str(judges[1]), "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--threads", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "authors protocol" in captured.out and "9 rows: 9 generated" in captured.out
    assert "the authors ran fp16 on a GPU" in captured.err
    rows = _rows(out / "rows.csv")
    # one prompt per subject (its index modulo 20), the word as given (no article), seed 123, both MONKEY variants
    words = ["apple", "dog", "red cartoon"]
    assert [(r["subject"], r["prompt"], r["method"]) for r in rows] == [
        (s, f"{w} {PAPER_PROMPTS[k]}", m) for k, (s, w) in enumerate(zip(["apple.png", "dog2.png", "red_cartoon.png"], words))
        for m in ("monkey", "monkey-all-steps", "ipadapter@1.0")]
    assert {r["seed"] for r in rows} == {"123"} and not any(r["prompt"].startswith(("a ", "an ")) for r in rows)
    paper_schedule, all_steps = (np.asarray(Image.open(out / rows[i]["image"])) for i in (0, 1))
    assert not np.array_equal(paper_schedule, all_steps)  # the variant ran its own schedule ...
    assert np.array_equal(np.asarray(Image.open(out / rows[0]["mask"])), np.asarray(Image.open(out / rows[1]["mask"])))  # ... same mask
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "authors" and summary["settings"]["protocol"] == "authors"
    assert [r["method"] for r in summary["rows"]] == ["monkey", "monkey-all-steps", "ipadapter@1.0"]
    assert summary["rows"][1]["paper_table1"]["clip_t"] == 0.318 and summary["counts"]["prompts_per_subject"] == 1
    assert "apple in the jungle" in (out / "contact.html").read_text()
    # the paper protocol on the same folder is another run: refused, one line
    assert main(argv[:1] + argv[3:]) == 2 and "protocol" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--adapter-steps", "2,3"], "are in both masked_steps and adapter_steps"),
    (["--adapter-steps", "0,8"], "adapter_steps [0, 8] must lie in 0..7"),
    (["--final-step-scales", "1,1,1"], "final_step_scales has 3 entries; steps_final is 8"),
    (["--final-step-scales", "0,0,1,1,x"], "--final-step-scales must be comma-separated numbers"),
    (["--final-step-scales", "0,0,1,1,1,1,1,0"], "gives steps [6] a scale, but they are in neither"),
    (["--step-rule", "quarters", "--steps-final", "3"], "step_rule quarters derives masked_steps from steps_final >= 4"),
    (["--step-rule", "thirds"], "step_rule must be one of fixed, quarters"),
])
def test_generate_bad_schedule_knobs_are_one_line_exit_2(tiny_model_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main(["generate", "--image", str(tiny_model_dir / "subject.png"), "--prompt", "a toy", "--out", str(out),
                 "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--protocol", "authorz"], "--protocol must be one of paper, authors"),
    (["--prompt-template", "{word} in the jungle"], "--prompt-template must hold {prompt} once"),
    (["--methods", "monkey-some-steps"], "unknown method 'monkey-some-steps'"),
])
def test_eval_bad_protocol_options_are_one_line_exit_2(judges, three_subjects, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code = main(["eval", "--subjects", str(three_subjects), "--out", str(out), "--clip", str(judges[0]), "--dino", str(judges[1]), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
