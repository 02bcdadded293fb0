"""Bad input: one line on stderr, exit code 2, no traceback, no (partial) output folder."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from monkey_trt.cli import main


@pytest.fixture()
def args(tiny_model_dir, tmp_path):
    def make(*extra, image=None, prompt="a toy on the beach"):
        return ["generate", "--image", str(image or tiny_model_dir / "subject.png"), "--prompt", prompt,
                "--out", str(tmp_path / "out"), "--base", str(tiny_model_dir / "base"),
                "--ip-adapter", str(tiny_model_dir / "ip-adapter"), "--height", "64", "--width", "64", *extra]
    return make


def run_cli(argv, capsys, out):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not out.exists(), "no partial output folder"
    return err


def _corrupt(tmp_path):
    p = tmp_path / "corrupt.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return p


def _truncated(tmp_path, tiny_model_dir):
    data = (tiny_model_dir / "subject.png").read_bytes()
    p = tmp_path / "truncated.png"
    p.write_bytes(data[: len(data) // 2])
    return p


def _text_file(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("not an image")
    return p


IMAGE_CASES = {
    "missing": lambda tmp, tiny: tmp / "nope.png",
    "corrupt": lambda tmp, tiny: _corrupt(tmp),
    "truncated": lambda tmp, tiny: _truncated(tmp, tiny),
    "not an image": lambda tmp, tiny: _text_file(tmp),
    "a folder": lambda tmp, tiny: tmp,
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_images(case, args, tmp_path, tiny_model_dir, capsys):
    path = IMAGE_CASES[case](tmp_path, tiny_model_dir)
    err = run_cli(args(image=path), capsys, tmp_path / "out")
    assert str(path.name) in err, "the message names the offending image"



@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--height", "60"), "multiple of 8"),
        (("--width", "100"), "multiple of 8"),
        (("--height", "8"), "height must be in"),
        (("--threshold", "1.5"), "threshold"),
        (("--mask-token", "4"), "mask_token"),
        (("--steps-final", "0"), "steps_final"),
        (("--mask-steps", "1,4"), "mask_steps"),
        (("--masked-steps", "2,9"), "masked_steps"),
        (("--mask-steps", "one"), "comma-separated"),
        (("--scale-final", "-1"), "scale_final"),
        (("--guidance-scale", "0.5"), "guidance_scale"),
        (("--backend", "cuda-magic"), "--backend"),
        (("--backend", "ort"), "--engine-dir"),
        (("--base", "./no/such/model"), "does not exist"),
        (("--ip-adapter", "/no/such/adapter"), "does not exist"),
        (("--seed", "-3"), "seed"),
    ],
)
def test_bad_options(extra, needle, args, tmp_path, capsys):
    err = run_cli(args(*extra), capsys, tmp_path / "out")
    assert needle in err


def test_empty_prompt(args, tmp_path, capsys):
    assert "prompt is empty" in run_cli(args(prompt="   "), capsys, tmp_path / "out")


def test_bad_noise_file(args, tmp_path, capsys):
    bad = tmp_path / "noise.npz"
    np.savez(bad, latents=np.zeros((1, 4, 4, 4), np.float32), step_noise=np.zeros((7, 1, 4, 4, 4), np.float32))
    assert "noise" in run_cli(args("--noise", str(bad)), capsys, tmp_path / "out").lower()


def test_out_is_a_file_or_holds_a_users_file_of_an_output_name(args, tmp_path, capsys):
    (tmp_path / "out").write_text("x")
    code = main(args())
    assert code == 2 and "not a folder" in capsys.readouterr().err
    (tmp_path / "out").unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mask.png").write_text("my own mask")
    assert main(args()) == 2 and "mask.png, which monkey-trt did not write" in capsys.readouterr().err
    assert (tmp_path / "out" / "mask.png").read_text() == "my own mask"


def test_long_prompt_is_truncated_with_a_warning(args, tmp_path, capsys):
    import json

    prompt = "a toy on the beach " + "with a very very long description " * 20
    assert main(args(prompt=prompt)) == 0
    assert "truncated" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "result.json").read_text())["prompt_truncated"] is True


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "I;16", "P", "CMYK"])
def test_odd_but_valid_images_are_normalised(mode, args, tmp_path, engine_dir):
    img = Image.new("RGB", (40, 30), (200, 120, 40)).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        img = Image.fromarray(np.full((30, 40), 40000, np.uint16))
    path = tmp_path / f"odd.{'tiff' if mode in ('CMYK', 'I;16') else 'png'}"
    img.save(path)
    assert main(args("--backend", "ort", "--engine-dir", str(engine_dir), image=path)) == 0  # ORT: fast
    assert (tmp_path / "out" / "monkey.png").is_file()


def test_console_script_exit_code_and_one_line(tmp_path):
    """The installed `monkey-trt` entry point in a fresh process: exit 2 and a single stderr line."""
    from pathlib import Path

    # this interpreter's own entry point (not whatever `monkey-trt` an activated venv or PATH offers)
    exe = Path(sys.executable).with_name("monkey-trt")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "monkey_trt.cli"]
    proc = subprocess.run(
        [*cmd, "generate", "--image", str(tmp_path / "missing.png"), "--prompt", "x", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_noise_file_with_too_few_step_noises(args, tmp_path, capsys):
    """An 8-step pass 2 needs 7 step noises: 6 is refused up front, not an IndexError mid-run."""
    bad = tmp_path / "short.npz"
    np.savez(bad, latents=np.zeros((1, 4, 8, 8), np.float32), step_noise=np.zeros((6, 1, 4, 8, 8), np.float32))
    assert "step_noise" in run_cli(args("--noise", str(bad)), capsys, tmp_path / "out")


@pytest.mark.parametrize("extra,needle", [(("--height", "0"), "positive multiples of 8"), (("--max", "0x0"), "--max"),
                                          (("--min", "abc"), "--min"), (("--opset", "3"), "--opset")])
def test_bad_export_options(extra, needle, tiny_model_dir, tmp_path, capsys):
    argv = ["export", "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--out", str(tmp_path / "eng"), "--height", "64", "--width", "64", *extra]
    assert needle in run_cli(argv, capsys, tmp_path / "eng")


def test_bad_device(args, tmp_path, capsys):
    assert "--device" in run_cli(args("--device", "tpu:3"), capsys, tmp_path / "out")


def test_demo_refuses_sizes_outside_its_profile_before_any_work(tmp_path, capsys):
    assert "demo --size" in run_cli(["demo", "--size", "512", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out")],
                                    capsys, tmp_path / "out")
    assert not (tmp_path / "w").exists()
