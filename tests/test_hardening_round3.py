"""Issue 25, what round three left: class 6 (a full disk, a non-UTF-8 calibration file name, a cut-short
judge, TensorRT hints that work), class 10 (Ctrl-C on `serve`, `bench`, `eval`), with real disks and signals.

The full disk is a real one: a small tmpfs mounted in a user + mount namespace (`unshare -rm`, no root
needed where user namespaces are allowed; the test skips, saying so, where they are not).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from monkey_trt.cli import main

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
                           capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and tmpfs mounts (user namespaces)")


def _export_int8_on_small_disk(engine_dir: Path, tiny_model_dir: Path, tmp_path: Path, room: float, patch: str = "") -> dict:
    """Copy `engine_dir` onto a tmpfs with `room` x its fp32 UNet free, add int8 there; what came out and what is left."""
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    unet = sum(manifest["networks"]["unet"]["sizes"].values())
    used = sum(p.stat().st_size for p in engine_dir.rglob("*") if p.is_file())
    size_kib = (used + int(room * unet)) // 1024 + 64 * len(list(engine_dir.rglob("*")))  # tmpfs: a page per small file
    mnt = tmp_path / "disk"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        import json, sys
        {patch}
        from monkey_trt.cli import main
        t = {str(tiny_model_dir)!r}
        code = main(["export", "--out", {str(mnt / "engine")!r}, "--base", t + "/base", "--ip-adapter", t + "/ip-adapter",
                     "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2",
                     "--precision", "int8", "--calib-size", "1"])
        import os
        left = sorted(os.listdir({str(mnt)!r}))
        files = sorted(os.listdir({str(mnt / "engine")!r}))
        print(json.dumps({{"code": code, "left": left, "files": files}}))
    """)
    cmd = (f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(mnt))} && cp -r {shlex.quote(str(engine_dir))} "
           f"{shlex.quote(str(mnt / 'engine'))} && exec {shlex.quote(sys.executable)} -c {shlex.quote(script)}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MONKEY_TRT_CALIB_CACHE": str(tmp_path / "calib")}
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, env=env, timeout=600)
    assert r.stdout.strip(), r.stderr
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "err": r.stderr.strip(), "before": sorted(p.name for p in engine_dir.iterdir())}


# -- class 6: a full disk while quantizing ---------------------------------------------------------------
@needs_tmpfs
def test_too_little_room_for_quantization_is_one_line_before_calibration(engine_dir, tiny_model_dir, tmp_path):
    """Before: calibration ran, then the quantizer parsed a model ONNX had cut short: exit 1 'Wire format was corrupt'."""
    r = _export_int8_on_small_disk(engine_dir, tiny_model_dir, tmp_path, room=1.5)
    assert r["code"] == 2, r
    assert r["err"].splitlines()[-1].startswith(f"error: not enough room on the disk holding {tmp_path / 'disk' / 'engine'}: "
                                                "quantizing the UNet needs at least"), r["err"]
    assert "calibrating" not in r["err"] + json.dumps(r)  # refused before any work
    assert r["left"] == ["engine"] and r["files"] == r["before"]  # no staging folder, the directory as it was


@needs_tmpfs
def test_a_disk_filling_up_during_quantization_is_one_line(engine_dir, tiny_model_dir, tmp_path):
    """The room check passed (here: made to pass), then the disk filled up under the quantizer."""
    r = _export_int8_on_small_disk(engine_dir, tiny_model_dir, tmp_path, room=1.5,
                                   patch="import monkey_trt.export.quantize as q; q.QUANT_ROOM = 0")
    assert r["code"] == 2, r
    last = r["err"].splitlines()[-1]
    assert last.startswith(f"error: the disk holding {tmp_path / 'disk' / 'engine'} filled up while quantizing the UNet to int8"), r["err"]
    assert "Wire format" not in r["err"] and "internal error" not in r["err"]
    assert r["left"] == ["engine"] and r["files"] == r["before"]


def test_room_check_and_full_disk_errors_in_process(tmp_path):
    import errno

    from monkey_trt.core.disk import check_room, free_bytes, full_disk_is_an_error
    from monkey_trt.core.errors import MonkeyError

    check_room(tmp_path, 1, "x")
    with pytest.raises(MonkeyError, match=r"not enough room on the disk holding /user/path: x needs at least"):
        check_room(tmp_path, free_bytes(tmp_path) + (1 << 40), "x", shown="/user/path")
    with pytest.raises(MonkeyError, match="filled up while writing"):
        with full_disk_is_an_error(tmp_path, "writing"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ValueError):  # a disk with room: the error is not taken for a full disk
        with full_disk_is_an_error(tmp_path, "writing"):
            raise ValueError("something else")


# -- class 6: a calibration file name that is not UTF-8 --------------------------------------------------
def test_non_utf8_calibration_file_name_is_refused_before_any_work(engine_dir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Before: found when manifest.json was written, after the calibration (exit 2 'surrogates not allowed')."""
    import monkey_trt.export.calibration as calibration

    monkeypatch.setattr(calibration, "collect", lambda *a, **k: pytest.fail("calibration ran"))
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tiny_model_dir / "subject.png", images / "ok.png")
    shutil.copy(tiny_model_dir / "subject.png", os.fsdecode(bytes(images) + b"/\xffbad.png"))
    d = tmp_path / "engine"
    shutil.copytree(engine_dir, d)
    argv = ["export", "--out", str(d), "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"),
            "--height", "64", "--width", "64", "--min", "64x64", "--max", "128x128", "--batch", "2", "--precision", "int8",
            "--calib-images", str(images)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --calib-images {images}: the file name '\\xffbad.png' is not valid UTF-8: rename it"
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in engine_dir.iterdir())


# -- class 6: a judge cut short ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> tuple[Path, Path]:
    from monkey_trt.eval.tiny_judges import write_tiny_judges

    return write_tiny_judges(tmp_path_factory.mktemp("judges"))


@pytest.mark.parametrize("which", ["clip", "dino"])
def test_truncated_judge_is_refused_before_generating(which, judges, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Before: the images were generated, then loading the judge failed, leaving a partial --out."""
    import monkey_trt.eval.protocol as protocol

    monkeypatch.setattr(protocol, "open_generator", lambda *a, **k: pytest.fail("generated before the judges were checked"))
    cut = {"clip": Path(judges[0]), "dino": Path(judges[1])}
    copy = tmp_path / which
    shutil.copytree(cut[which], copy)
    weights = copy / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    cut[which] = copy
    subjects = tmp_path / "subjects"
    subjects.mkdir()
    shutil.copy(tiny_model_dir / "subject.png", subjects / "toy.png")
    out = tmp_path / "out"
    argv = ["eval", "--subjects", str(subjects), "--out", str(out), "--clip", str(cut["clip"]), "--dino", str(cut["dino"]),
            "--base", str(tiny_model_dir / "base"), "--ip-adapter", str(tiny_model_dir / "ip-adapter"), "--height", "64", "--width", "64"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --{which} {copy}: {weights} is truncated (") and err.endswith("download it again"), err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_weight_file_checks(tmp_path):
    import zipfile

    from monkey_trt.core.weight_files import damage

    good = tmp_path / "w.safetensors"
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    good.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    assert damage(good) is None
    os.truncate(good, good.stat().st_size - 1)
    assert damage(good).startswith("truncated")
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 8)
    assert "not safetensors" in damage(tmp_path / "x.safetensors")
    z = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("archive/data.pkl", b"x" * 1000)
    assert damage(z) is None
    os.truncate(z, z.stat().st_size - 30)
    assert damage(z).startswith("truncated")


# -- class 6: TensorRT hints name commands the CLI accepts for this directory -------------------------------
def _parses(command: str) -> None:
    """`command` (a monkey-trt command line) parses: every option exists and every value is accepted."""
    import typer

    from monkey_trt.cli import app

    argv = shlex.split(command)
    assert argv[0] == "monkey-trt", command
    group = typer.main.get_command(app)
    ctx = group.make_context("monkey-trt", argv[1:])
    sub = group.get_command(ctx, argv[1])
    sub.make_context(argv[1], argv[2:], parent=ctx)  # raises click's UsageError on an unknown option or a bad value


def test_trt_hints_name_commands_that_work_here(engine_dir, tiny_model_dir, tmp_path):
    from monkey_trt.core.errors import EngineDirError
    from monkey_trt.enginedir import plans
    from monkey_trt.enginedir.load import read_manifest

    d = tmp_path / "my engines"  # a space: the commands quote it
    shutil.copytree(engine_dir, d)
    m = read_manifest(d)
    with pytest.raises(EngineDirError) as e:  # before: `export --out DIR --precision int8`, which names the hub's model
        plans.find_plan_dir(d, m, "int8", "10.9", "GPU", "8.9")
    export, build = (c.split("`")[0] for c in str(e.value).split("run `", 1)[1].split(" then `"))
    assert export == m.export_command(d, "int8") and f"--base {tiny_model_dir / 'base'}" in export
    assert build == f"monkey-trt build --engine-dir '{d}' --precision int8"
    with pytest.raises(EngineDirError, match="no fp16 TensorRT plans") as e:
        plans.find_plan_dir(d, m, "fp16", "10.9", "GPU", "8.9")
    for cmd in (export, build, str(e.value).split("`")[1]):
        _parses(cmd)
    # a damaged plan: rebuild it as it was built (before: `monkey-trt build --force`, which lacks --engine-dir)
    cfg = plans.BuildConfig(m.profile, precision="fp16", static_shapes=True, builder_optimization_level=5)
    folder = plans.plan_folder(d, m, cfg, "10.9", "GPU", "8.9")
    folder.mkdir(parents=True)
    (folder / plans.BUILD_JSON).write_text(json.dumps(plans.build_record(m, cfg, "10.9", "GPU", "8.9", {}, None)))
    hint = plans.rebuild_command(folder)
    assert hint == f"monkey-trt build --engine-dir '{d}' --precision fp16 --static --opt-level 5 --force"
    _parses(hint)
    with pytest.raises(EngineDirError, match=re.escape(f"no digest recorded for text_encoder.plan: run `{hint}`")):
        plans.verify_plans(d, folder)


# -- class 10: Ctrl-C on the commands that run long -----------------------------------------------------------
def _cli(*args: str, ignore_sigint: bool = False) -> subprocess.Popen:
    def pre() -> None:  # ignored: what a shell does to a job started with `&` in a script; else what a terminal gives a
        # foreground command, whatever the test runner itself inherited
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "monkey_trt.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=pre)


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint-default", "sigint-inherited-ignored"])
def test_ctrl_c_stops_serve_with_exit_130(engine_dir, ignore_sigint):
    """Before: serve shut down gracefully and exited 0 (where SIGINT was inherited ignored, uvicorn's re-raise did nothing)."""
    pytest.importorskip("uvicorn")
    p = _cli("serve", "--engine-dir", str(engine_dir), "--port", "0", "--no-warmup", ignore_sigint=ignore_sigint)
    for line in p.stdout:
        if line.startswith("monkey-trt serve: http://"):
            url = line.split()[2]
            _wait_ready(url)
            with urllib.request.urlopen(url + "/healthz", timeout=30) as r:
                assert r.status == 200
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)"
    # the newcomer's path: a ready line and one access line per request at the default log level (before: neither)
    assert "monkey_trt.serve: ready: no warm-up (--no-warmup) (/readyz answers 200)" in err
    assert '"GET /healthz HTTP/1.1" 200' in out, out


def _wait_ready(url: str, limit_s: float = 300) -> None:
    """Until GET /readyz answers 200 (a generous bound: only a server that never gets ready fails)."""
    import time
    import urllib.error

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=30) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:  # 503 until warm
            assert e.code == 503
        time.sleep(0.05)
    raise AssertionError("never ready")


# -- the newcomer's path: real weights offline ------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["base", "ip_adapter"])
def test_weights_not_in_the_cache_are_one_line_before_torch_loads(missing, tiny_model_dir, tmp_path):
    """Before: 7 s of importing torch and diffusers, then a line naming neither the option nor how to download."""
    base = "SimianLuo/LCM_Dreamshaper_v7" if missing == "base" else str(tiny_model_dir / "base")
    script = textwrap.dedent(f"""
        import sys
        from monkey_trt.cli import main
        code = main(["generate", "--image", {str(tiny_model_dir / 'subject.png')!r}, "--prompt", "x", "--out", {str(tmp_path / 'out')!r},
                     "--base", {base!r}, "--ip-adapter", "h94/IP-Adapter"])
        print(code, "torch" in sys.modules)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.stdout.split()[-2:] == ["2", "False"], (r.stdout, r.stderr)  # exit 2, torch never imported
    err = r.stderr.strip().splitlines()[-1]
    flag, name = ("--base", "SimianLuo/LCM_Dreamshaper_v7") if missing == "base" else ("--ip-adapter", "h94/IP-Adapter")
    assert err.startswith(f"error: {flag} {name} is not in the Hugging Face cache and the hub cannot be used (HF_HUB_OFFLINE is set)")
    assert f"pass a local folder with {flag}" in err and f"`hf download {name}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_ctrl_c_stops_eval_and_bench_with_exit_130(command, engine_dir, tiny_model_dir, judges, tmp_path):
    """A real SIGINT once the command says it is working (export and generate: tests/test_writers_and_signals.py)."""
    if command == "eval":
        subjects = tmp_path / "subjects"
        subjects.mkdir()
        shutil.copy(tiny_model_dir / "subject.png", subjects / "toy.png")
        args = ["eval", "--subjects", str(subjects), "--out", str(tmp_path / "out"), "--clip", str(judges[0]),
                "--dino", str(judges[1]), "--engine-dir", str(engine_dir)]
        marker = "images ("  # `eval: 1/40 images (...)`: generating
    else:
        args = ["bench", "--engine-dir", str(engine_dir), "--backends", "ort", "--runs", "50", "--json", str(tmp_path / "b.json")]
        marker = "bench: ort fp32: run 1/50"
    p = _cli(*args)
    for line in p.stdout:
        if marker in line:
            p.send_signal(signal.SIGINT)
            break
    _out, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)"
    assert not (tmp_path / "b.json").exists()
