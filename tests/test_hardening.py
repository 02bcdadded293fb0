"""Fault injection, one class of failure per section (issue 6):

* data kept: monkey-trt never deletes or overwrites a file it did not write;
* interrupted writes: staging that its marker proves ours, of a dead process, is cleaned up, never
  mistaken for an output; a folder that only looks like staging is never touched;
* concurrent writers: all succeed, no raw OSError;
* umask respected;
* the engine directory is sealed: schema types, paths inside, every opened file digested;
* every failure is one line on stderr and exit code 2 (usage errors, OSError, bad text, missing
  extras, unreachable hub, corrupt model files), and checks that need no model run first.

Fast: synthetic outputs for the folder mechanism, the session's tiny model and engine export,
subprocesses only where the exit code, a kill or a second process is the point.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monkey_trt.cli import main
from monkey_trt.core.errors import EngineDirError
from monkey_trt.core.output_folders import STAGING_MARKER, OutputStage, clean_stale_staging, make_staging, record_files, staging_owner, staging_prefix
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import MANIFEST
from monkey_trt.runtime.mask import MaskResult
from monkey_trt.runtime.outputs import write_outputs
from monkey_trt.runtime.result import MonkeyOutput

REPO = Path(__file__).resolve().parents[1]


def fake_output(side: int = 16, baseline: bool = False) -> MonkeyOutput:
    rng = np.random.default_rng(0)
    mask = np.zeros((side, side), np.float32)
    mask[4:12, 4:12] = 1
    image = rng.random((side, side, 3), dtype=np.float32)
    return MonkeyOutput(image=image, mask=MaskResult(mask, (2, 2), ()), timings={"total": 0.1}, backend="fake",
                        baseline_image=image[::-1].copy() if baseline else None)


def one_error_line(err: str) -> str:
    err = err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


def run_main(argv, capsys, code=2) -> str:
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert got == code, err
    return one_error_line(err) if code == 2 else err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def no_staging_left(target: Path) -> bool:
    return not [p for p in target.parent.iterdir() if p.name.startswith(staging_prefix(target))]


# -- data kept -------------------------------------------------------------------------------
def test_rerun_replaces_only_recorded_files_and_keeps_users_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_weights.bin").write_bytes(b"\0" * 100)
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("keep")
    write_outputs(out, fake_output(baseline=True), Image.new("RGB", (32, 32)), {"prompt": "p"})
    first = json.loads((out / "result.json").read_text())
    assert {"ipadapter.png", "grid.png"} <= set(first["files"]) and first["written_by"] == "monkey-trt"
    write_outputs(out, fake_output(), None, {"prompt": "q"})  # no baseline this time
    names = {p.name for p in out.iterdir()}
    assert names == {"monkey.png", "mask.png", "overlay.png", "result.json", "model_weights.bin", "notes"}
    assert (out / "notes" / "todo.txt").read_text() == "keep" and (out / "model_weights.bin").stat().st_size == 100
    assert json.loads((out / "result.json").read_text())["prompt"] == "q"
    assert no_staging_left(out)


def test_an_output_of_the_previous_release_is_recognised(tmp_path):
    out = write_outputs(tmp_path / "out", fake_output(baseline=True), Image.new("RGB", (8, 8)), {})
    record = json.loads((out / "result.json").read_text())
    del record["written_by"]  # 0.1.0 wrote no mark, but its versions block
    (out / "result.json").write_text(json.dumps(record))
    write_outputs(out, fake_output(), None, {})
    assert not (out / "grid.png").exists()


def test_users_file_of_an_output_name_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({"files": ["precious.txt"]}))  # a user's JSON, not our record
    (out / "precious.txt").write_text("keep")
    with pytest.raises(Exception, match="result.json, which monkey-trt did not write"):
        write_outputs(out, fake_output(), None, {})
    assert (out / "precious.txt").read_text() == "keep" and json.loads((out / "result.json").read_text())
    assert no_staging_left(out)


def test_recorded_names_that_escape_or_are_not_regular_files_are_never_removed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    out = tmp_path / "out"
    write_outputs(out, fake_output(), None, {})
    record = json.loads((out / "result.json").read_text())
    record["files"] += ["../outside.txt", str(outside), "linked.png", "sub"]
    (out / "result.json").write_text(json.dumps(record))
    (out / "linked.png").symlink_to(outside)
    (out / "sub").mkdir()
    write_outputs(out, fake_output(), None, {})
    assert outside.read_text() == "keep" and (out / "linked.png").is_symlink() and (out / "sub").is_dir()


def test_export_force_keeps_a_web_apps_files(engine_dir, tmp_path):
    """--force replaces only the files the earlier manifest lists (driven through the commit step of export)."""
    from monkey_trt.enginedir.manifest import manifest_files
    from monkey_trt.export.onnx_export import check_export_out

    eng = tmp_path / "site"
    shutil.copytree(engine_dir, eng)
    (eng / "index.html").write_text("<html>")
    (eng / "src").mkdir()
    (eng / "src" / "app.js").write_text("js")
    with pytest.raises(Exception, match="pass --force"):
        check_export_out(eng, force=False)
    check_export_out(eng, force=True)
    listed = sorted(manifest_files(eng / MANIFEST))
    with OutputStage.open(eng, MANIFEST, manifest_files, names=listed) as stage:
        for n in listed:
            (stage.path / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(engine_dir / n, stage.path / n)
        stage.commit(listed)
    assert (eng / "index.html").read_text() == "<html>" and (eng / "src" / "app.js").read_text() == "js"
    load_manifest(eng)


def test_export_force_refuses_to_overwrite_a_users_file(tmp_path, tiny_model_dir, capsys):
    eng = tmp_path / "eng"
    eng.mkdir()
    (eng / "unet.onnx").write_text("mine")
    argv = ["export", "--base", tiny_model_dir / "base", "--ip-adapter", tiny_model_dir / "ip-adapter", "--out", eng, "--force",
            "--height", "64", "--width", "64"]
    assert "unet.onnx, which monkey-trt did not write" in run_main(argv, capsys)
    assert (eng / "unet.onnx").read_text() == "mine"


# -- interrupted writes ------------------------------------------------------------------------
def _marked_staging(target: Path, **fields) -> Path:
    """A staging folder made by this process, its marker's `fields` changed (another pid, host ...)."""
    payload = make_staging(target)
    (payload / "result.json").write_text("{}")
    if fields:
        marker = payload.parent / STAGING_MARKER
        marker.write_text(json.dumps({**json.loads(marker.read_text()), **fields}))
    return payload.parent


def test_stale_staging_of_a_dead_process_is_removed_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    pid = dead_pid()
    stale = _marked_staging(out, pid=pid)
    live = _marked_staging(out)  # this process: alive
    other_host = _marked_staging(out, pid=pid, host="elsewhere.example")  # a container sharing the volume
    other = _marked_staging(tmp_path / "other", pid=pid)  # another target's: not ours to judge
    unmarked = tmp_path / f"{staging_prefix(out)}{staging_owner(pid)}-abc"  # our name, no marker: a user's folder
    unmarked.mkdir()
    write_outputs(out, fake_output(), None, {})
    assert not stale.exists() and live.is_dir() and other.is_dir() and other_host.is_dir() and unmarked.is_dir()
    assert {p.name for p in out.iterdir()} == {"monkey.png", "mask.png", "overlay.png", "result.json"}


def test_what_monkey_trt_0_1_left_is_left_alone(tmp_path):
    """0.1.0 wrote no marker: its leftovers cannot be told from a user's `.out.previous` backup, so none is removed."""
    out = tmp_path / "out"
    partial = tmp_path / ".out.k2x_9qam"  # 0.1.0's mkdtemp staging, killed mid-write
    partial.mkdir()
    (partial / "monkey.png").write_bytes(b"partial")
    set_aside = tmp_path / f".out.old-{dead_pid()}"  # 0.1.0 set the old output aside, then was killed
    (set_aside / "tokenizer").mkdir(parents=True)
    (set_aside / "manifest.json").write_text("{}")
    backup = tmp_path / ".out.previous"  # the same shape: a user's backup of an earlier output
    backup.mkdir()
    (backup / "monkey.png").write_bytes(b"mine")
    write_outputs(out, fake_output(), None, {})
    assert (partial / "monkey.png").is_file() and (set_aside / "manifest.json").is_file() and (backup / "monkey.png").read_bytes() == b"mine"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def full_disk(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError):
        write_outputs(out, fake_output(), None, {})
    assert not out.exists() and no_staging_left(out)


def test_kill_9_while_writing_the_tiny_model_leaves_no_output_and_is_cleaned_up(tmp_path):
    out = tmp_path / "model"
    code = f"from monkey_trt.embedded.tiny import write_tiny_model; write_tiny_model({str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((tmp_path.glob(f"{staging_prefix(out)}*/*/base"))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(f"{staging_prefix(out)}*")), "killed mid-write"
    assert not out.exists(), "no half-written model where readers look"
    assert clean_stale_staging(out) and no_staging_left(out)


# -- concurrent writers --------------------------------------------------------------------------
def test_concurrent_writers_to_one_out_all_succeed(tmp_path):
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.test_hardening import fake_output
        from monkey_trt.runtime.outputs import write_outputs
        for i in range(3):
            write_outputs({str(out)!r}, fake_output(baseline=i % 2 == 0), None, {{"writer": sys.argv[1]}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stderr=subprocess.PIPE, text=True) for i in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    record = json.loads((out / "result.json").read_text())
    assert {p.name for p in out.iterdir()} == set(record["files"])
    assert no_staging_left(out)


# -- umask -----------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o027, 0o750)])
def test_folders_and_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = write_outputs(tmp_path / "a" / "b" / "out", fake_output(), None, {})  # missing parents are created
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == mode
    assert ((out / "monkey.png").stat().st_mode & 0o777) == mode & 0o666


# -- the sealed engine directory ----------------------------------------------------------------
def _tampered(engine_dir, tmp_path, edit) -> Path:
    eng = tmp_path / "engine"
    shutil.copytree(engine_dir, eng)
    raw = json.loads((eng / MANIFEST).read_text())
    edit(raw, eng)
    (eng / MANIFEST).write_text(json.dumps(raw))
    return eng


def _point(net, name, raw, eng, digest_of=None):
    e = raw["networks"][net]
    old = e["file"]
    e["file"] = name
    e["sha256"] = {name: e["sha256"].pop(old) if digest_of is None else raw["networks"][digest_of]["sha256"][name]}
    e["sizes"] = {name: e["sizes"].pop(old) if digest_of is None else raw["networks"][digest_of]["sizes"][name]}


def _symlink_out(raw, eng):
    target = eng.parent / "outside.onnx"
    shutil.copy(eng / "vae_decoder.onnx", target)
    (eng / "vae_decoder.onnx").unlink()
    (eng / "vae_decoder.onnx").symlink_to(target)


def _symlinked_tokenizer(raw, eng):
    shutil.move(eng / "tokenizer", eng.parent / "tok")
    (eng / "tokenizer").symlink_to(eng.parent / "tok")


MANIFEST_FAULTS = {
    "absolute path": (lambda raw, eng: _point("vae_decoder", "/etc/passwd", raw, eng), "plain relative path"),
    "dot-dot": (lambda raw, eng: _point("vae_decoder", "../vae_decoder.onnx", raw, eng), "plain relative path"),
    "symlink leaving the folder": (_symlink_out, "plain relative path"),
    "symlinked tokenizer folder": (_symlinked_tokenizer, "plain relative path"),
    "two networks share a file": (lambda raw, eng: _point("vae_decoder", "unet.onnx", raw, eng, digest_of="unet"), "share the file"),
    "empty digests": (lambda raw, eng: raw["networks"]["unet"].update(sha256={}), "networks/unet/sha256"),
    "partial digests": (lambda raw, eng: raw["networks"]["unet"]["sha256"].update({"x.onnx": "0" * 64}), "exactly"),
    "no tokenizer digest": (lambda raw, eng: raw.update(files={}), "files"),
    "networks is a list": (lambda raw, eng: raw.update(networks=[]), "networks"),
    "schema_version a string": (lambda raw, eng: raw.update(schema_version="1"), "schema_version"),
    "dims with a string": (lambda raw, eng: raw["dims"].update(text_len="77"), "dims/text_len"),
    "bad digest text": (lambda raw, eng: raw["files"].update({"tokenizer/tokenizer.json": "abc"}), "does not match"),
    "a network missing": (lambda raw, eng: raw["networks"].pop("vae_decoder"), "vae_decoder"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_FAULTS))
def test_manifest_faults_are_one_line_engine_dir_errors(case, engine_dir, tmp_path):
    edit, needle = MANIFEST_FAULTS[case]
    eng = _tampered(engine_dir, tmp_path, edit)
    with pytest.raises(EngineDirError) as e:
        load_manifest(eng, verify="size")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg
    if case == "schema_version a string":
        assert "schema version 1," not in msg, "no self-contradicting message"


def test_bit_flip_in_the_unet(engine_dir, tmp_path, capsys, subject):
    eng = tmp_path / "engine"
    shutil.copytree(engine_dir, eng)
    data = bytearray((eng / "unet.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (eng / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineDirError, match="unet.onnx of network unet fails its sha256"):
        load_manifest(eng)
    load_manifest(eng, verify="size")  # documented: size mode trusts same-sized network files
    argv = ["generate", "--engine-dir", eng, "--image", tmp_path / "s.png", "--prompt", "a toy", "--out", tmp_path / "o"]
    subject.save(tmp_path / "s.png")
    assert "sha256" in run_main(argv, capsys)
    assert "--verify" in run_main([*argv, "--verify", "none"], capsys)


def test_tensorrt_plans_are_covered_by_digests(tmp_path):
    """What `build` records in build.json is checked before a plan is deserialised (no TensorRT needed)."""
    import hashlib

    from monkey_trt.enginedir.networks import NETWORKS
    from monkey_trt.enginedir.plans import BUILD_JSON, verify_plans

    folder = tmp_path / "trt" / "key"
    folder.mkdir(parents=True)
    nets = {}
    for n in NETWORKS:
        (folder / f"{n}.plan").write_bytes(n.encode() * 10)
        nets[n] = {"plan": f"{n}.plan", "bytes": len(n) * 10, "sha256": hashlib.sha256(n.encode() * 10).hexdigest()}
    (folder / BUILD_JSON).write_text(json.dumps({"networks": nets}))
    verify_plans(tmp_path, folder)
    (folder / "unet.plan").write_bytes(b"UNET" * 10)  # same size, other bytes
    verify_plans(tmp_path, folder, verify="size")
    with pytest.raises(EngineDirError, match="unet.plan fails its sha256"):
        verify_plans(tmp_path, folder)
    (folder / "unet.plan").unlink()
    (folder / "unet.plan").symlink_to(tmp_path / "elsewhere.plan")
    with pytest.raises(EngineDirError, match="not a plain file inside"):
        verify_plans(tmp_path, folder)
    (folder / "unet.plan").unlink()
    (folder / "unet.plan").write_bytes(b"unet" * 10)
    nets["unet"].pop("sha256")
    (folder / BUILD_JSON).write_text(json.dumps({"networks": nets}))
    with pytest.raises(EngineDirError, match="no digest recorded for"):
        verify_plans(tmp_path, folder)


# -- one line, exit 2 ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["generat"], "Did you mean 'generate'"),
    (["generate", "--image", "x.png", "--prompt", "p", "--out", "o", "--height", "abc"], "--height"),
    (["generate", "--image", "x.png", "--out", "o"], "Missing option '--prompt'"),
    (["generate", "--heigth", "64"], "--height"),
    (["tiny-model"], "Missing argument"),
    (["demo", "--threads", "-1", "--workdir", "/nonexistent/w"], "--threads"),
])
def test_usage_errors(argv, needle, capsys):
    assert needle in run_main(argv, capsys)


def test_console_script_usage_errors_version_and_bad_text(tmp_path):
    """In fresh processes: bare command -> help + exit 2; --version; a non-UTF-8 prompt; markup kept literally."""
    exe = [sys.executable, "-m", "monkey_trt.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bare = subprocess.run(exe, capture_output=True, text=True, env=env, timeout=60)
    assert bare.returncode == 2 and "Usage" in bare.stdout + bare.stderr and "Traceback" not in bare.stderr
    version = subprocess.run([*exe, "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("monkey-trt ")
    bad = subprocess.run([*exe, "generate", "--image", "x.png", "--prompt", b"caf\xe9", "--out", str(tmp_path / "o")],
                         capture_output=True, env=env, timeout=60)
    assert bad.returncode == 2 and one_error_line(bad.stderr.decode()) == "error: prompt is not valid UTF-8 text"
    typo = subprocess.run([*exe, "generate", "--image", "[red]x[/red].png", "--prompt", "p", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert typo.returncode == 2 and "[red]x[/red].png" in one_error_line(typo.stderr)


def _ort_args(engine_dir, tiny_model_dir, out, *extra):
    return ["generate", "--engine-dir", engine_dir, "--image", tiny_model_dir / "subject.png", "--prompt", "a toy", "--out", out, *extra]


@pytest.mark.parametrize("out", ["/proc/monkey/out", "/proc/self/status/out"])
def test_out_where_nothing_can_be_written(out, engine_dir, tiny_model_dir, capsys):
    run_main(_ort_args(engine_dir, tiny_model_dir, out), capsys)


def test_full_disk_is_one_line_and_leaves_nothing(engine_dir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    def full_disk(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    assert "No space left on device" in run_main(_ort_args(engine_dir, tiny_model_dir, tmp_path / "o"), capsys)
    assert not (tmp_path / "o").exists() and no_staging_left(tmp_path / "o")


def test_unreadable_files_and_folders(engine_dir, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """Root reads everything, so permission faults are injected where the files are opened."""
    assert "noise" in run_main(_ort_args(engine_dir, tiny_model_dir, tmp_path / "o", "--noise", tmp_path), capsys).lower()
    real_open = Image.open

    def denied(fp, *a, **k):
        if str(fp).endswith("subject.png"):
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", denied)
    assert "subject.png" in run_main(_ort_args(engine_dir, tiny_model_dir, tmp_path / "o"), capsys)
    monkeypatch.undo()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == tmp_path else real_access(p, mode, **k))
    assert "permission denied" in run_main(_ort_args(engine_dir, tiny_model_dir, tmp_path / "new" / "o"), capsys)


def test_generate_takes_size_and_backend_from_the_manifest(engine_dir, tiny_model_dir, tmp_path, capsys):
    assert main([str(a) for a in _ort_args(engine_dir, tiny_model_dir, tmp_path / "o", "--threads", "1", "--verify", "size")]) == 0
    said = capsys.readouterr().out
    assert "ort 64x64: mask covers" in said and str(tmp_path / "o") in said
    assert Image.open(tmp_path / "o" / "monkey.png").size == (64, 64)


def test_checks_that_need_no_model_run_first(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    t0 = time.perf_counter()
    assert "not a folder" in run_main(["tiny-model", afile], capsys)
    assert "not a folder" in run_main(["demo", "--out", afile, "--workdir", tmp_path / "w"], capsys)
    assert "not a folder" in run_main(["demo", "--workdir", afile, "--out", tmp_path / "d"], capsys)
    assert "not a folder" in run_main(["export", "--out", afile, "--force", "--height", "64", "--width", "64"], capsys)
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "w").exists() and not (tmp_path / "d").exists()


def test_missing_export_extra_names_it_literally(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    for argv in (["export", "--out", tmp_path / "e"], ["tiny-model", tmp_path / "m"],
                 ["demo", "--workdir", tmp_path / "w", "--out", tmp_path / "d"]):
        assert "pip install 'monkey-trt[export]'" in run_main(argv, capsys)


def test_unreachable_hub_fails_fast(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    assert "HF_HUB_OFFLINE" in run_main(["export", "--base", "someone/no-such-model", "--out", tmp_path / "e"], capsys)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    assert "cannot connect to 127.0.0.1:9" in run_main(["export", "--base", "someone/no-such-model", "--out", tmp_path / "e"], capsys)
    assert time.perf_counter() - t0 < 30


def test_truncated_image_encoder_weights(tiny_model_dir, tmp_path, capsys):
    ip = tmp_path / "ip-adapter"
    shutil.copytree(tiny_model_dir / "ip-adapter", ip)
    weights = next((ip / "models" / "image_encoder").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    argv = ["generate", "--image", tiny_model_dir / "subject.png", "--prompt", "a toy", "--out", tmp_path / "o",
            "--base", tiny_model_dir / "base", "--ip-adapter", ip, "--height", "64", "--width", "64"]
    assert "cannot load the models" in run_main(argv, capsys)


def test_export_error_comes_alone(tiny_model_dir, tmp_path, capsys):
    argv = ["export", "--base", tiny_model_dir / "base", "--ip-adapter", tmp_path / "no-adapter", "--out", tmp_path / "e",
            "--height", "64", "--width", "64"]
    assert "does not exist" in run_main(argv, capsys)
    assert not (tmp_path / "e").exists() and no_staging_left(tmp_path / "e")


# -- the Python API ----------------------------------------------------------------------------
def test_top_level_api(engine_dir, subject, tmp_path):
    import monkey_trt
    from monkey_trt import MonkeyConfig, MonkeyOutput, MonkeyPipeline, Request  # noqa: F401

    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", threads=1) as pipe:
        assert all(r.intra_op_threads == 1 for r in pipe.runners.values())
        out = pipe.generate("a toy on the beach", subject, seed=1)  # the engine's opt size
    assert isinstance(out, monkey_trt.MonkeyOutput) and out.image_pil().size == (64, 64)
    assert out.mask_pil().mode == "L" and set(np.unique(np.asarray(out.mask_pil()))) <= {0, 255}
    saved = out.save(tmp_path / "saved")
    assert {"monkey.png", "mask.png", "overlay.png", "result.json"} <= {p.name for p in saved.iterdir()}
    assert record_files()(saved / "result.json") == {"monkey.png", "mask.png", "overlay.png", "result.json"}
