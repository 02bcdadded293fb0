"""Issue 13 defect 4: one BackendSpec, one open_backend, the same backend options with the same help on every face.

Nothing here loads a model or an engine: the spec refuses before any work, and the faces are checked up to the
spec they build (their runners are replaced by recorders)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monkey_trt.cli import app, main
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import BACKEND_OPTIONS, CLI_OPTIONS, BackendSpec, spec_from_options, specs_for

PKG = Path(__file__).resolve().parents[1] / "monkey_trt"


def test_one_backend_spec_class_in_the_codebase():
    found = [p.relative_to(PKG.parent) for p in PKG.rglob("*.py") if re.search(r"^class BackendSpec\b", p.read_text(), re.M)]
    assert [str(p) for p in found] == ["monkey_trt/runtime/backend.py"]


def one_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("fields, says", [
    ({"backend": "onnx"}, "--backend must be one of"),
    ({"backend": "ort", "device": "cuda"}, "--device applies to the published/torch backends only, not --backend ort"),
    ({"backend": "trt", "providers": ("cuda",)}, "--providers applies to --backend ort only, not --backend trt"),
    ({"backend": "torch", "providers": ("cpu",)}, "--providers applies to --backend ort only"),
    ({"backend": "torch", "verify": "size"}, "--verify applies to the ort/trt/openvino backends only"),
    ({"backend": "trt", "fp16": True}, "--fp16 applies to --backend ort only"),
    ({"backend": "published", "cuda_graph": True}, "--cuda-graph applies to"),
    ({"backend": "published", "batch_passes": True}, "--batch-passes applies to"),
    ({"backend": "ort", "ort_cache": "/tmp/x", "providers": ("cpu",)}, None),
    ({"backend": "trt", "ort_cache": "/tmp/x"}, "--ort-cache applies to --backend ort only"),
    ({"backend": "torch", "precision": "int8"}, "--dtype must be fp32 or fp16"),
    ({"backend": "torch", "device": "tpu"}, "--device must be cpu, cuda or cuda:N"),
    ({"backend": "torch", "cuda_graph": True}, "--cuda-graph with the torch backend needs --device cuda"),
    ({"backend": "torch", "device": "cuda:1", "cuda_graph": True, "precision": "fp16"}, None),
    ({"backend": "ort", "precision": "int4"}, "--precision must be one of fp32, fp16, int8, fp8"),
    ({"backend": "ort", "precision": "fp8"}, "--precision fp8 runs as TensorRT plans only"),
    ({"backend": "trt", "precision": "fp8"}, None),
    ({"backend": "ort", "providers": ("cuda", "rocm")}, "unknown execution provider 'rocm'"),
    ({"backend": "ort", "providers": ("cuda", "CUDA")}, "--providers names a provider twice"),
    ({"backend": "ort", "fp16": True, "providers": ("cuda",)}, "--fp16 applies to ORT's TensorRT EP only"),
    ({"backend": "ort", "fp16": True, "providers": ("tensorrt",)}, None),
    ({"backend": "ort", "cuda_graph": True, "providers": ("cpu",)}, "--cuda-graph needs a GPU provider first"),
    ({"backend": "ort", "cuda_graph": True, "providers": ("cuda", "cpu")}, None),
    ({"backend": "ort", "threads": -1}, "--threads must be >= 0"),
    ({"backend": "ort", "verify": "md5"}, "--verify must be one of sha256, rehash, size"),
    ({"backend": "ort", "batch_passes": "yes"}, "batch_passes must be true, false or None"),
    ({"backend": "ort", "cuda_graph": 1}, "cuda_graph must be true or false"),
    ({"backend": "ort", "mask_pass": "half"}, "mask_pass must be one of exact, same"),
    ({"backend": "torch", "mask_pass": "same"}, "mask_pass applies to the ort/trt/openvino backends only"),
])
def test_every_field_is_checked_in_one_line(fields, says):
    if says is None:
        spec = BackendSpec(**fields)
        assert spec.backend == fields["backend"]
        return
    with pytest.raises(MonkeyError) as e:
        BackendSpec(**fields)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_spec_is_frozen_and_normalised():
    spec = BackendSpec("ort", providers="CUDA, cpu", ort_cache="/tmp/c")
    assert spec.providers == ("cuda", "cpu") and spec.ort_cache == Path("/tmp/c")
    with pytest.raises(Exception):
        spec.backend = "trt"  # type: ignore[misc]


def test_options_map_onto_the_spec():
    assert spec_from_options("torch", {"dtype": "fp16", "precision": "fp32", "device": "cuda"}).precision == "fp16"
    assert spec_from_options("ort", {"dtype": "fp32", "precision": "int8", "providers": "cpu"}).precision == "int8"
    with pytest.raises(MonkeyError, match="the torch backend takes --dtype"):
        spec_from_options("torch", {"precision": "fp16"})
    with pytest.raises(MonkeyError, match="--dtype applies to the published/torch backends only, not --backend trt"):
        spec_from_options("trt", {"dtype": "fp16"})
    specs = specs_for(("published", "torch", "ort", "trt"), {"device": "cuda", "dtype": "fp16", "cuda_graph": True,
                                                            "precision": "fp16", "providers": "cuda", "threads": 2})
    assert specs["published"] == BackendSpec("published", device="cuda", precision="fp16", threads=2)
    assert specs["torch"] == BackendSpec("torch", device="cuda", precision="fp16", cuda_graph=True, threads=2)
    assert specs["ort"] == BackendSpec("ort", precision="fp16", providers=("cuda",), cuda_graph=True, threads=2)
    assert specs["trt"] == BackendSpec("trt", precision="fp16", cuda_graph=True, threads=2)
    with pytest.raises(MonkeyError, match="--providers applies to --backend ort only, not --backends torch,trt"):
        specs_for(("torch", "trt"), {"providers": "cuda"})


# -- the CLI faces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, says", [
    (["--backend", "ort", "--device", "cuda"], "--device applies to the published/torch backends only, not --backend ort"),
    (["--backend", "trt", "--dtype", "fp16"], "--dtype applies to the published/torch backends only, not --backend trt"),
    (["--backend", "trt", "--providers", "cuda"], "--providers applies to --backend ort only, not --backend trt"),
    (["--backend", "torch", "--providers", "cuda"], "--providers applies to --backend ort only, not --backend torch"),
    (["--backend", "torch", "--precision", "fp16"], "the torch backend takes --dtype"),
    (["--backend", "torch", "--verify", "size"], "--verify applies to the ort/trt/openvino backends only"),
    (["--backend", "torch", "--cuda-graph"], "--cuda-graph with the torch backend needs --device cuda"),
    (["--backend", "ort", "--providers", "cpu", "--cuda-graph"], "--cuda-graph needs a GPU provider first"),
    (["--backend", "ort", "--verify", "md5"], "--verify must be one of sha256, rehash, size"),
])
def test_generate_refuses_options_of_other_backends(capsys, tmp_path, extra, says):
    err = one_line(capsys, ["generate", "--image", str(tmp_path / "none.png"), "--prompt", "a dog", "--out", str(tmp_path / "o"),
                            "--height", "64", "--width", "64", *extra])
    assert says in err
    assert not (tmp_path / "o").exists()


def _commands():
    import typer.main

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", sorted(CLI_OPTIONS))
def test_backend_options_have_the_same_help_everywhere(name):
    o = BACKEND_OPTIONS[name]
    where = {}
    for cmd_name, cmd in _commands().items():
        for p in cmd.params:
            if o.flag in getattr(p, "opts", ()):
                where[cmd_name] = (p.help, p.default)
    # export and build configure engines, not a backend (build's hidden --fp16 is the old flag); eval's --precision
    # is a list of precisions to compare, doctor's the plans whose memory it reads
    shared = {c: v for c, v in where.items() if c not in ("export", "build", "doctor") and not (name == "precision" and c == "eval")}
    assert shared and all(v == (o.help_for(c), o.default) for c, v in shared.items()), shared
    expected = {"generate", "bench", "serve"} - ({"serve"} if name in ("device", "dtype") else set())
    assert expected <= set(shared)


@pytest.mark.parametrize("name", sorted(CLI_OPTIONS))
def test_backend_option_help_names_only_the_commands_backends(name):
    """Before: `serve --help` offered --cuda-graph/--tf32/--threads for torch, `generate`/`eval --help` --device
    for published: backends those commands do not have."""
    from monkey_trt.runtime.backend import BACKEND_TABLE, backend_names

    o = BACKEND_OPTIONS[name]
    for cmd_name, cmd in _commands().items():
        face = "eval" if cmd_name == "eval" else cmd_name
        if cmd_name in ("export", "build", "doctor", "tiny-model"):
            continue
        for p in cmd.params:
            if o.flag in getattr(p, "opts", ()):
                help_text = p.help.replace("ORT", "ort").replace("OpenVINO", "openvino")
                for b in BACKEND_TABLE:
                    named = re.search(rf"(^|[^\w-]){b}([^\w-]|$)", help_text.split(";")[0]) is not None
                    if named:
                        assert b in backend_names(face), (cmd_name, b, p.help)


def test_faces_expose_the_backend_options():
    cmds = _commands()
    flags = {c: {f for p in cmd.params for f in getattr(p, "opts", ())} for c, cmd in cmds.items()}
    for opt in ("--precision", "--verify", "--threads", "--providers", "--cuda-graph", "--fp16", "--batch-passes"):
        assert opt in flags["serve"], opt
        assert opt in flags["bench"], opt
        assert opt in flags["generate"], opt
    for opt in ("--device", "--providers", "--threads", "--verify"):
        assert opt in flags["eval"], opt


def test_serve_takes_precision_verify_threads(monkeypatch, capsys):
    """serve builds its BackendSpec from the same options (nothing is served: run_single is a recorder)."""
    import monkey_trt.enginedir.load as manifest
    import monkey_trt.serve.run as run

    seen = {}
    monkeypatch.setattr(manifest, "load_manifest", lambda root, verify="sha256": seen.setdefault("verify_load", verify))
    monkeypatch.setattr(run, "run_single", lambda config, host, port, log_level: seen.setdefault("config", config))
    assert main(["serve", "--engine-dir", "E", "--precision", "int8", "--verify", "size", "--threads", "1",
                 "--providers", "cpu", "--no-batch-passes"]) == 0
    spec = seen["config"].spec
    assert spec == BackendSpec("ort", precision="int8", verify="size", threads=1, providers=("cpu",), batch_passes=False)
    assert seen["verify_load"] == "size"
    assert "--device" in one_line(capsys, ["serve", "--engine-dir", "E", "--device", "cuda"])  # not a serve option
    assert "--providers applies to --backend ort only" in one_line(capsys, ["serve", "--engine-dir", "E", "--backend", "trt",
                                                                           "--providers", "cuda"])
    assert "--backend must be ort or trt" in one_line(capsys, ["serve", "--engine-dir", "E", "--backend", "torch"])


def test_serve_config_and_ray_args_build_the_spec():
    from monkey_trt.serve.service import ServeConfig

    c = ServeConfig.from_fields({"engine_dir": Path("E"), "backend": "ort", "providers": "cuda,cpu", "cuda_graph": True,
                                 "threads": 2, "precision": "fp16", "ort_cache": "C", "max_queue": 3})
    assert c.spec == BackendSpec("ort", providers=("cuda", "cpu"), cuda_graph=True, threads=2, precision="fp16", ort_cache=Path("C"))
    same = ServeConfig.from_fields({"engine_dir": Path("E"), "precision": "int8", "mask_pass": "same"})
    assert same.spec == BackendSpec("ort", precision="int8", mask_pass="same")  # mask_pass: the reduced precisions only
    assert c.max_queue == 3  # serve keeps every spec field (mask_pass and ort_cache included) and its own
    with pytest.raises(MonkeyError, match="--providers applies to --backend ort only"):
        ServeConfig.from_fields({"engine_dir": Path("E"), "backend": "trt", "providers": ["cuda"]})
    with pytest.raises(MonkeyError, match="--backend must be ort or trt"):
        ServeConfig(Path("E"), spec=BackendSpec("torch"))
    with pytest.raises(MonkeyError, match="unknown serve setting"):
        ServeConfig.from_fields({"engine_dir": Path("E"), "replicaz": 2})


def test_bench_defaults_give_every_backend_its_default_spec():
    from monkey_trt.bench.measure import BenchSettings

    s = BenchSettings.from_options(("published", "torch", "ort", "trt"), 64, 64, {})
    assert s.specs == tuple(BackendSpec(b) for b in ("published", "torch", "ort", "trt"))
    off = BenchSettings.from_options(("ort",), 64, 64, {}, ort_cache=False, workdir="W")  # --no-ort-cache: off, not the default
    assert off.spec("ort").ort_cache is False and off.to_json()["ort_cache"] is False
    assert s.backends == ("published", "torch", "ort", "trt") and s.spec("trt") == BackendSpec("trt")


def test_bench_passes_backend_options_through_to_each_spec(monkeypatch, capsys):
    """`bench --cuda-graph --providers` reached torch only before; now every backend's spec gets what applies to it."""
    import monkey_trt.bench.cli as bench_cli

    seen = {}
    monkeypatch.setattr(bench_cli, "run_bench", lambda *a, **k: seen.setdefault("settings", a[-1]))
    assert main(["bench", "--engine-dir", "E", "--backends", "torch,ort,trt", "--device", "cuda", "--cuda-graph",
                 "--providers", "tensorrt", "--fp16", "--precision", "fp16", "--verify", "size", "--threads", "1"]) == 0
    specs = {sp.backend: sp for sp in seen["settings"](64, 64).specs}
    assert specs["ort"].providers == ("tensorrt",) and specs["ort"].cuda_graph and specs["ort"].fp16
    assert specs["trt"].cuda_graph and specs["trt"].precision == "fp16" and specs["trt"].verify == "size"
    assert specs["torch"].cuda_graph and specs["torch"].device == "cuda" and specs["torch"].precision == "fp32"
    assert specs["ort"].ort_cache is not None and specs["trt"].ort_cache is None
    assert "--providers applies to --backend ort only, not --backends torch" in one_line(
        capsys, ["bench", "--backends", "torch", "--providers", "cuda"])


def test_python_api_goes_through_the_spec(tmp_path):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    with pytest.raises(MonkeyError, match="--device applies to the published/torch backends only"):
        MonkeyPipeline.from_engine_dir(tmp_path / "nowhere", backend="ort", device="cuda")
    with pytest.raises(MonkeyError, match="unknown option"):
        MonkeyPipeline.from_engine_dir(tmp_path / "nowhere", backend="ort", providrs=("cpu",))
    with pytest.raises(MonkeyError, match="runtime backend must be one of ort, trt"):
        MonkeyPipeline.from_engine_dir(tmp_path / "nowhere", backend="torch")


def test_open_backend_refuses_before_loading(tmp_path):
    from monkey_trt.commands.backends import open_backend

    with pytest.raises(MonkeyError, match="needs --engine-dir"):
        open_backend(BackendSpec("trt"))
    with pytest.raises(MonkeyError, match="the published backend runs in `monkey-trt bench` only"):
        open_backend(BackendSpec("published"))
    with pytest.raises(MonkeyError, match="needs a BackendSpec"):
        open_backend({"backend": "ort"})
