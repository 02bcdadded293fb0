"""Issue 16: `out.save()` (the Python API) writes exactly what `generate --out` writes: the same files, the
same result.json fields and values (timings aside), the same overlay of pass 1's prediction."""

from __future__ import annotations

import json

from monkey_trt.cli import main


def test_save_writes_what_generate_out_writes(runtime, engine_dir, tiny_model_dir, tmp_path, capsys):
    subject = str(tiny_model_dir / "subject.png")
    assert main(["generate", "--engine-dir", str(engine_dir), "--image", subject, "--prompt", "a toy on the beach",
                 "--out", str(tmp_path / "cli"), "--seed", "3"]) == 0
    capsys.readouterr()
    out = runtime.generate("a toy on the beach", subject, seed=3)
    out.save(tmp_path / "api")

    cli, api = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("cli", "api"))
    assert list(api) == list(cli), "same result.json fields, in the same order"
    for k in cli:
        if k not in ("timings_s", "digests"):
            assert api[k] == cli[k], f"result.json {k}: {api[k]!r} != {cli[k]!r}"
    assert set(api["timings_s"]) == set(cli["timings_s"])
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    for name in ("monkey.png", "mask.png", "overlay.png"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert api["digests"] == cli["digests"]


def test_call_records_the_request_too(runtime, subject, tmp_path):
    """`pipe(request, subject)` (the lower-level call) fills result.json's request fields as well."""
    from monkey_trt import Request

    out = runtime(Request(prompt="a toy", height=64, width=64, seed=5), subject)
    rec = json.loads(out.save(tmp_path / "o").joinpath("result.json").read_text())
    assert rec["prompt"] == "a toy" and rec["seed"] == 5 and rec["height"] == 64 and rec["config"]["steps_final"] == 8
    assert rec["models"]["engine_dir"]
