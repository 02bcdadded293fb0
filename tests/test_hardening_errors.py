"""Issue 25, class 6 (part): errors found before any work, in one line with exit 2."""

from __future__ import annotations

import time

import pytest

from monkey_trt.cli import main


def test_serve_bad_log_level_is_refused_before_the_engine_loads(tmp_path, capsys):
    pytest.importorskip("fastapi")
    t0 = time.perf_counter()
    assert main(["serve", "--engine-dir", str(tmp_path / "nope"), "--log-level", "bogus"]) == 2  # the dir is not read
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --log-level must be one of critical, error, warning, info, debug, trace")
    assert len(err.splitlines()) == 1 and time.perf_counter() - t0 < 30


@pytest.mark.parametrize("out", ["/proc/x", "/proc/monkey/out"])
def test_out_that_cannot_be_created_is_refused_before_the_generation(out, engine_dir, tiny_model_dir, capsys, monkeypatch):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    def never(*a, **k):
        raise AssertionError("the generation ran before --out was checked")

    monkeypatch.setattr(MonkeyPipeline, "__call__", never)
    argv = ["generate", "--engine-dir", str(engine_dir), "--image", str(tiny_model_dir / "subject.png"), "--prompt", "x",
            "--out", out]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot create {out}") and "staging" not in err and len(err.splitlines()) == 1, err


def test_missing_precision_names_an_export_that_the_directory_accepts(engine_dir, tiny_model_dir, tmp_path, capsys):
    """The hint names the directory's own model and profile (the defaults would name the hub's model, refused
    without --force); run as given (fp16, which it has) it is accepted: `already has fp16`, nothing replaced."""
    import shlex

    from monkey_trt.core.errors import EngineDirError
    from monkey_trt.enginedir.load import read_manifest

    m = read_manifest(engine_dir)
    with pytest.raises(EngineDirError) as e:
        m.path(engine_dir, "unet", "int8")
    msg = str(e.value)
    assert "no int8 ONNX for unet" in msg and f"--base {tiny_model_dir / 'base'}" in msg and "--min 64x64 --max 128x128" in msg
    cmd = msg.split("run `", 1)[1].rstrip("`").replace("--precision int8", "--precision fp16")
    argv = shlex.split(cmd)[1:]
    capsys.readouterr()
    assert main(argv) == 0 and "already has fp16" in capsys.readouterr().out
