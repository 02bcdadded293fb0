"""Issue 16, "options that mean what they say": every refusal is one line `error: ...`, exit code 2,
no traceback, nothing written, and it comes before any model loads (no fixtures: nothing here may need one)."""

from __future__ import annotations

import os

import pytest

from monkey_trt.cli import main


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Any backend load is a test failure: every refusal here must come first."""
    import monkey_trt.commands.generate as generate

    def refuse(*_a, **_k):
        raise AssertionError("a model was loaded before the option was refused")

    monkeypatch.setattr(generate, "load_backend", refuse)
    monkeypatch.setattr(generate, "load_subject", refuse)


def refused(argv, capsys, *untouched):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:"), err
    for p in untouched:
        assert not p.exists(), f"{p} was written"
    return err


def _generate(tmp_path, *extra):
    return ["generate", "--image", str(tmp_path / "subject.png"), "--prompt", "a toy", "--out", str(tmp_path / "out"),
            "--base", str(tmp_path / "base"), "--ip-adapter", str(tmp_path / "ip"), *extra]


@pytest.mark.parametrize("extra,needle", [
    (("--height", "0"), "--height must be in 64..2048, got 0"),
    (("--width", "0"), "--width must be in 64..2048, got 0"),
    (("--height", "-64"), "--height must be in 64..2048, got -64"),
    (("--width", "-8"), "--width must be in 64..2048"),
    (("--height", "100"), "--height must be a multiple of 8, got 100"),
    (("--width", "4096"), "--width must be in 64..2048, got 4096"),
])
def test_generate_sizes_zero_negative_odd_are_errors_not_the_default(extra, needle, tmp_path, capsys):
    assert needle in refused(_generate(tmp_path, *extra), capsys, tmp_path / "out")


def test_generate_baseline_scale_without_baseline_is_refused(tmp_path, capsys):
    err = refused(_generate(tmp_path, "--baseline-scale", "0.5"), capsys, tmp_path / "out")
    assert "--baseline-scale" in err and "--baseline" in err


def test_generate_existing_read_only_out_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if os.fspath(p) == str(out) and mode & os.W_OK else real(p, mode, *a, **k))
    err = refused(_generate(tmp_path), capsys)
    assert f"cannot write in {out}" in err
    assert list(out.iterdir()) == []


def test_generate_read_only_file_system_fails_before_any_model_loads(tmp_path, capsys):
    """A real read-only place (root ignores chmod, not /proc's permissions)."""
    if os.access("/proc/sys", os.W_OK) or not os.path.isdir("/proc/sys"):
        pytest.skip("no read-only folder here")
    argv = _generate(tmp_path)
    argv[argv.index("--out") + 1] = "/proc/sys"
    assert "/proc/sys" in refused(argv, capsys)


def test_generate_out_that_is_an_existing_file(tmp_path, capsys):
    (tmp_path / "out").write_text("mine")
    assert "is not a folder" in refused(_generate(tmp_path), capsys)
    assert (tmp_path / "out").read_text() == "mine"


@pytest.mark.parametrize("extra,needle", [
    (("--height", "0"), "--height must be in 64..2048, got 0"),
    (("--width", "-128"), "--width must be in 64..2048"),
    (("--height", "100"), "--height must be a multiple of 8"),
    (("--runs", "0"), "--runs in 1..1000"),  # before the preset is written and exported (minutes)
    (("--warmup", "-1"), "--warmup in 0..100"),
    (("--threads", "-2"), "--threads must be >= 0"),
    (("--dtype", "fp64"), "--dtype"),  # ort: --dtype is a torch option (BackendSpec); torch: not fp32|fp16
])
def test_bench_sizes(extra, needle, tmp_path, capsys):
    argv = ["bench", "--preset", "tiny", "--workdir", str(tmp_path / "w"), "--backends", "ort", *extra]
    assert needle in refused(argv, capsys, tmp_path / "w")


@pytest.mark.parametrize("extra,needle", [
    (("--height", "0"), "--height must be in 64..2048, got 0"),
    (("--width", "12"), "--width must be a multiple of 8"),
])
def test_eval_sizes(extra, needle, tmp_path, capsys):
    (tmp_path / "subjects").mkdir()
    argv = ["eval", "--subjects", str(tmp_path / "subjects"), "--out", str(tmp_path / "out"), *extra]
    assert needle in refused(argv, capsys, tmp_path / "out")


def test_eval_out_that_is_a_file_is_refused_before_the_judges(tmp_path, capsys):
    (tmp_path / "subjects").mkdir()
    (tmp_path / "out").write_text("mine")
    argv = ["eval", "--subjects", str(tmp_path / "subjects"), "--out", str(tmp_path / "out"), "--clip", "no/such-judge"]
    assert "is not a folder" in refused(argv, capsys)
    assert (tmp_path / "out").read_text() == "mine"
