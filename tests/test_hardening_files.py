"""Never lose a user's file (issue 16): staging is removed only when its marker proves it is ours and its
process is gone, never by its name; a file a user put where monkey-trt wrote one is refused or kept,
never overwritten (records carry a sha256 per file); every file of an export follows the umask.

Fast: synthetic outputs, OutputStage driven directly, one tiny model write, no export.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monkey_trt.core import output_folders as files_mod
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.output_folders import STAGING_MARKER, OutputStage, clean_stale_staging, make_staging, read_staging_marker, record_files, recorded_digests, staging_owner, staging_prefix
from monkey_trt.enginedir.manifest import MANIFEST, manifest_files
from monkey_trt.runtime.mask import MaskResult
from monkey_trt.runtime.outputs import check_out_dir, write_outputs
from monkey_trt.runtime.result import MonkeyOutput


def fake_output(side: int = 16, baseline: bool = False, seed: int = 0) -> MonkeyOutput:
    rng = np.random.default_rng(seed)
    mask = np.zeros((side, side), np.float32)
    mask[4:12, 4:12] = 1
    image = rng.random((side, side, 3), dtype=np.float32)
    return MonkeyOutput(image=image, mask=MaskResult(mask, (2, 2), ()), timings={"total": 0.1}, backend="fake",
                        baseline_image=image[::-1].copy() if baseline else None)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_left(target: Path) -> list[Path]:
    return [p for p in target.parent.iterdir() if p.name.startswith(staging_prefix(target))]


# -- folders that only look like staging -------------------------------------------------------
GENERATION_NAMES = ("monkey.png", "mask.png", "overlay.png", "result.json")
ENGINE_NAMES = ("manifest.json", "unet.onnx", "text_encoder.onnx", "tokenizer/tokenizer.json")


def _users_folder(parent: Path, name: str, names) -> Path:
    d = parent / name
    for n in names:
        (d / n).parent.mkdir(parents=True, exist_ok=True)
        (d / n).write_bytes(b"the user's " + n.encode())
    return d


LOOK_ALIKES = {  # (folder name next to the target, target name, the files in it)
    "a backup .out.previous": (".out.previous", "out", GENERATION_NAMES),
    "a backup .out.original": (".out.original", "out", GENERATION_NAMES),
    "an engine backup .e_out.backup01": (".e_out.backup01", "e_out", ENGINE_NAMES),
    "0.1.0's mkdtemp shape .out.k2x_9qam": (".out.k2x_9qam", "out", ("monkey.png",)),
    "0.1.0's set-aside shape .out.old-<dead pid>": (".out.old-{dead}", "out", ("manifest.json", "tokenizer/tokenizer.json")),
    "today's staging name, no marker": (".out.monkey-staging-{owner}-abc", "out", GENERATION_NAMES),
    "today's staging name, empty": (".out.monkey-staging-{owner}-xyz", "out", ()),
}


@pytest.mark.parametrize("case", sorted(LOOK_ALIKES))
def test_a_users_folder_that_looks_like_staging_is_never_removed(case, tmp_path):
    name, target, names = LOOK_ALIKES[case]
    name = name.format(dead=dead_pid(), owner=staging_owner(dead_pid()))
    users = _users_folder(tmp_path, name, names)
    users.mkdir(exist_ok=True)
    before = snapshot(users)
    if target == "out":
        write_outputs(tmp_path / "out", fake_output(), None, {})
    else:
        with OutputStage.open(tmp_path / target, MANIFEST, manifest_files, names=[MANIFEST]) as stage:
            (stage.path / MANIFEST).write_text("{}")
            stage.commit([MANIFEST])
    assert users.is_dir() and snapshot(users) == before
    assert clean_stale_staging(tmp_path / target) == [] and users.is_dir()


# -- staging that monkey-trt proves it made -----------------------------------------------------
def _forge(stage_root: Path, **changes) -> None:
    """Rewrite a real marker's fields (a writer of another pid, boot, host ...)."""
    marker = stage_root / STAGING_MARKER
    rec = json.loads(marker.read_text())
    rec.update(changes)
    marker.write_text(json.dumps(rec))


def _staging(where: Path, **changes) -> Path:
    payload = make_staging(where)
    (payload / "result.json").write_text("{}")
    root = payload.parent
    if changes:
        _forge(root, **changes)
    return root


def test_marker_records_who_made_the_staging_folder(tmp_path):
    root = _staging(tmp_path / "out")
    rec = read_staging_marker(root, tmp_path / "out")
    assert rec is not None and rec["pid"] == os.getpid() and rec["target"] == "out"
    assert {"host", "boot_id", "pid_ns", "start", "token", "created_unix"} <= set(rec)
    assert root.name.endswith(rec["token"]) and root.name.startswith(staging_prefix(tmp_path / "out"))
    mode = os.stat(root).st_mode & 0o777
    assert mode == 0o777 & ~files_mod.current_umask()


def test_staging_of_a_dead_process_is_removed(tmp_path):
    out = tmp_path / "out"
    _staging(out, pid=dead_pid())
    write_outputs(out, fake_output(), None, {})
    assert staging_left(out) == []


def test_staging_of_a_live_process_is_kept(tmp_path):
    out = tmp_path / "out"
    root = _staging(out)  # this process: alive, same start time
    write_outputs(out, fake_output(), None, {})
    assert root.is_dir() and (root / STAGING_MARKER).is_file()


@pytest.mark.parametrize("change,removed", [
    ({"start": -5}, True),  # this process's pid, alive, but another start time: the pid was reused
    ({"boot_id": "00000000-0000-0000-0000-000000000000"}, True),  # made before a reboot
    ({"host": "elsewhere.example", "pid": "dead"}, False),  # another host or container on a shared volume: not ours to judge
    ({"pid_ns": "pid:[1]", "pid": "dead"}, False),  # a container on this kernel with the host's name (--net=host)
    ({"token": "0" * 16, "pid": "dead"}, False),  # a marker copied into a folder it does not name
    ({"target": "other", "pid": "dead"}, False),  # another target's staging
    ({"written_by": "someone", "pid": "dead"}, False),
    ({"pid": "12", "start": None}, False),  # not an int pid
])
def test_a_marker_must_prove_the_folder_is_ours_and_its_process_gone(change, removed, tmp_path):
    out = tmp_path / "out"
    change = {k: dead_pid() if v == "dead" else v for k, v in change.items()}
    root = _staging(out, **change)  # this process's staging, with fields changed
    assert (clean_stale_staging(out) == [root]) == removed
    assert root.exists() != removed


def test_a_marker_that_is_a_symlink_or_junk_proves_nothing(tmp_path):
    out = tmp_path / "out"
    dead = dead_pid()
    real = _staging(out, pid=dead, start=-5)
    good = json.loads((real / STAGING_MARKER).read_text())
    link = tmp_path / f"{staging_prefix(out)}{staging_owner(dead)}-{'1' * 16}"
    link.mkdir()
    (tmp_path / "elsewhere.json").write_text(json.dumps({**good, "token": "1" * 16}))
    (link / STAGING_MARKER).symlink_to(tmp_path / "elsewhere.json")
    junk = tmp_path / f"{staging_prefix(out)}{staging_owner(dead)}-{'2' * 16}"
    junk.mkdir()
    (junk / STAGING_MARKER).write_text("[" * 60000)  # deeper than json's recursion limit
    huge = tmp_path / f"{staging_prefix(out)}{staging_owner(dead)}-{'4' * 16}"
    huge.mkdir()
    (huge / STAGING_MARKER).write_text(json.dumps({**good, "token": "4" * 16, "pad": "x" * 200000}))
    dirlink = tmp_path / f"{staging_prefix(out)}{staging_owner(dead)}-{'3' * 16}"
    dirlink.symlink_to(real)
    assert clean_stale_staging(out) == [real]
    assert link.is_dir() and junk.is_dir() and huge.is_dir() and dirlink.is_symlink()


def test_a_killed_writer_leaves_staging_that_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from monkey_trt.core.output_folders import make_staging;"
            "from pathlib import Path; p = make_staging(Path(sys.argv[1])); (p / 'monkey.png').write_bytes(b'x'); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(out), str(Path(__file__).resolve().parents[1])], check=False, timeout=60)
    assert len(staging_left(out)) == 1
    write_outputs(out, fake_output(), None, {})
    assert staging_left(out) == []


def test_committed_outputs_carry_no_marker(tmp_path):
    out = write_outputs(tmp_path / "out", fake_output(), None, {})
    assert STAGING_MARKER not in {p.name for p in out.rglob("*")} and staging_left(out) == []
    write_outputs(out, fake_output(seed=1), None, {})  # the merge path
    assert STAGING_MARKER not in {p.name for p in out.rglob("*")} and staging_left(out) == []


# -- a user's file where monkey-trt wrote one ---------------------------------------------------
def test_records_carry_a_sha256_per_file(tmp_path):
    out = write_outputs(tmp_path / "out", fake_output(baseline=True), Image.new("RGB", (8, 8)), {})
    record = json.loads((out / "result.json").read_text())
    digests = recorded_digests(record_files(), out / "result.json")
    assert set(record["files"]) - {"result.json"} == set(digests) == set(record["digests"])
    import hashlib

    assert all(hashlib.sha256((out / n).read_bytes()).hexdigest() == d for n, d in digests.items())


def test_a_changed_output_file_is_refused_before_anything_changes(tmp_path, capsys):
    out = write_outputs(tmp_path / "out", fake_output(), None, {})
    (out / "monkey.png").write_bytes(b"the user's own picture")
    before = snapshot(out)
    with pytest.raises(MonkeyError, match="monkey.png, which monkey-trt wrote but has been changed since") as e:
        check_out_dir(out)
    assert "\n" not in str(e.value)
    with pytest.raises(MonkeyError, match="changed since"):
        write_outputs(out, fake_output(seed=1), None, {})
    assert snapshot(out) == before and staging_left(out) == []


def test_a_recorded_file_that_cannot_be_read_is_refused_not_replaced(tmp_path, monkeypatch):
    """Root reads everything: the denial is injected where the file is hashed."""
    import errno

    out = write_outputs(tmp_path / "out", fake_output(), None, {})
    real = files_mod.sha256_file

    def denied(path, *a, **k):
        if Path(path).name == "overlay.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(files_mod, "sha256_file", denied)
    before = snapshot(out)
    with pytest.raises(MonkeyError, match=r"overlay.png, which monkey-trt wrote but cannot read to check it is unchanged \(Permission denied\)") as e:
        write_outputs(out, fake_output(seed=1), None, {})
    assert "\n" not in str(e.value) and snapshot(out) == before and staging_left(out) == []


def test_a_changed_file_the_new_output_would_remove_is_kept(tmp_path):
    out = write_outputs(tmp_path / "out", fake_output(baseline=True), Image.new("RGB", (8, 8)), {})
    (out / "grid.png").write_bytes(b"the user's own grid")
    write_outputs(out, fake_output(), None, {})  # no baseline: grid.png is no longer written
    assert (out / "grid.png").read_bytes() == b"the user's own grid" and not (out / "ipadapter.png").exists()
    assert "grid.png" not in json.loads((out / "result.json").read_text())["files"]


def test_a_changed_file_is_refused_at_commit_too(tmp_path):
    """Changed after the early check (during the work): refused under the lock, before any change."""
    out = write_outputs(tmp_path / "out", fake_output(), None, {})
    names = ["monkey.png", "mask.png", "overlay.png", "result.json"]
    with OutputStage.open(out, "result.json", names=names) as stage:
        for n in names:
            shutil.copy(out / n, stage.path / n)
        (out / "mask.png").write_bytes(b"mine now")
        before = snapshot(out)
        with pytest.raises(MonkeyError, match="mask.png, which monkey-trt wrote but has been changed since"):
            stage.commit(names)
    assert snapshot(out) == before and staging_left(out) == []


def test_records_without_digests_are_still_read(tmp_path):
    """A record of an earlier release (a `files` list only): its files are replaced as before."""
    out = write_outputs(tmp_path / "out", fake_output(), None, {})
    record = json.loads((out / "result.json").read_text())
    del record["digests"]
    (out / "result.json").write_text(json.dumps(record))
    (out / "monkey.png").write_bytes(b"x")
    write_outputs(out, fake_output(seed=1), None, {})
    assert (out / "monkey.png").read_bytes()[:4] == b"\x89PNG"


def _engine_like(root: Path) -> Path:
    """A folder with a manifest (digests of what it lists), written through OutputStage like an export."""
    from monkey_trt.enginedir.digests import sha256_file

    with OutputStage.open(root, MANIFEST, manifest_files, names=["tokenizer/tokenizer.json", "unet.onnx", MANIFEST]) as stage:
        (stage.path / "tokenizer").mkdir()
        (stage.path / "tokenizer" / "tokenizer.json").write_text("{}")
        (stage.path / "unet.onnx").write_bytes(b"graph")
        raw = {"schema": "monkey-trt/engine-dir", "files": {"tokenizer/tokenizer.json": sha256_file(stage.path / "tokenizer" / "tokenizer.json")},
               "networks": {"unet": {"sha256": {"unet.onnx": sha256_file(stage.path / "unet.onnx")}}}}
        (stage.path / MANIFEST).write_text(json.dumps(raw))
        return stage.commit(["tokenizer/tokenizer.json", "unet.onnx", MANIFEST])


@pytest.mark.parametrize("name", ["unet.onnx", "tokenizer/tokenizer.json"])
def test_export_force_refuses_a_changed_engine_file(name, tmp_path):
    from monkey_trt.export.onnx_export import check_export_out

    eng = _engine_like(tmp_path / "eng")
    (eng / name).write_bytes(b"the user's own")
    before = snapshot(eng)
    with pytest.raises(MonkeyError, match=f"{name}, which monkey-trt wrote but has been changed since"):
        check_export_out(eng, force=True)
    with pytest.raises(MonkeyError, match="changed since"):
        _engine_like(eng)
    assert snapshot(eng) == before


def test_tiny_model_refuses_a_changed_file(tmp_path):
    from monkey_trt.embedded.tiny import TINY_MODEL_RECORD, write_tiny_model

    out = tmp_path / "model"
    write_tiny_model(out, preset="tiny")
    record = json.loads((out / TINY_MODEL_RECORD).read_text())
    assert set(record["digests"]) == set(record["files"]) - {TINY_MODEL_RECORD}
    Image.new("RGB", (4, 4), "red").save(out / "subject.png")
    before = snapshot(out)
    with pytest.raises(MonkeyError, match="subject.png, which monkey-trt wrote but has been changed since"):
        write_tiny_model(out, preset="tiny")
    assert snapshot(out) == before and staging_left(out) == []


# -- umask ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_onnx_files_follow_the_umask(umask, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from monkey_trt.export.onnx_files import save_onnx

    w = numpy_helper.from_array(np.ones((32, 32), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32])], [w])
    old = os.umask(umask)
    try:
        written = save_onnx(helper.make_model(graph), tmp_path / "m.onnx", external=True) + \
            save_onnx(helper.make_model(graph), tmp_path / "inline.onnx", external=False)
    finally:
        os.umask(old)
    assert written == ["m.onnx", "m.onnx.data", "inline.onnx"]
    for n in written:
        assert (os.stat(tmp_path / n).st_mode & 0o777) == 0o666 & ~umask, n
    assert onnx.load(str(tmp_path / "m.onnx")).graph.initializer[0].dims == [32, 32]
