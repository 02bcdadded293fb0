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
