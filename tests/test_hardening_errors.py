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
