"""Commands that run MONKEY: `generate`, `demo`, `bench`, `serve` and `eval`, each opening its backend from one
BackendSpec built from the backend options' table (runtime.backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from monkey_trt.cli.options import (OR_ENGINE_SIZE, REQUEST, backend_option, check_sides, config_from_options, console, knob_option,
                                    quiet_libraries, warn, with_config_options)
from monkey_trt.commands.progress import status
from monkey_trt.core.config import DEFAULT_BASE, DEFAULT_IP_ADAPTER, DEFAULT_IP_WEIGHT, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.runtime.backend import backend_choices, backend_names, backend_row, engine_dir_backends

DEMO_PROMPT = "a toy on the beach"



@with_config_options
def generate(
    image: list[Path] = typer.Option(..., "--image", metavar="<path>", help="Subject image (any PIL format); repeat it for several subjects, in "
                                     "order (at most the engine's max_subjects: 4 unless exported otherwise); --subject-scales "
                                     "gives each its IP scale"),
    background_image: Optional[Path] = typer.Option(None, "--background-image", help="Background image: one more IP image, "
                                                    "applied where no subject's mask is (--background-scale)"),
    prompt: str = knob_option(REQUEST["prompt"]),
    out: Path = typer.Option(..., "--out", help="Output folder (missing parents are created; a re-run replaces only the files it wrote)"),
    base: Optional[str] = typer.Option(None, help=f"Base LCM model: hub id or diffusers folder [default: the engine's source, else {DEFAULT_BASE}]"),
    ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help=f"IP-Adapter: hub id or folder (h94 layout) [default: the engine's source, else {DEFAULT_IP_ADAPTER}]"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight", help="Weight file under models/ (.safetensors or .bin)"),
    backend: Optional[str] = typer.Option(None, help=f"{backend_choices('generate', notes=True)} [default: ort with --engine-dir, else torch]"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help=f"Engine directory ({engine_dir_backends('generate')} backends); also the default size and models"),
    verify: str = backend_option("verify", "generate"),
    device: str = backend_option("device", "generate"),
    providers: str = backend_option("providers", "generate"),
    fp16: bool = backend_option("fp16", "generate"),
    tf32: bool = backend_option("tf32", "generate"),
    cuda_graph: bool = backend_option("cuda_graph", "generate"),
    precision: str = backend_option("precision", "generate"),
    threads: int = backend_option("threads", "generate"),
    dtype: str = backend_option("dtype", "generate"),
    batch_passes: Optional[bool] = backend_option("batch_passes", "generate"),
    ort_cache: Optional[bool] = backend_option("ort_cache", "generate"),
    seed: Optional[int] = knob_option(REQUEST["seed"], None, f" [default: {REQUEST['seed'].default}; not with --noise]"),
    height: Optional[int] = knob_option(REQUEST["height"], None, OR_ENGINE_SIZE.format(REQUEST["height"].default)),
    width: Optional[int] = knob_option(REQUEST["width"], None, OR_ENGINE_SIZE.format(REQUEST["width"].default)),
    noise: Optional[Path] = typer.Option(None, "--noise", help=".npz with latents [1,4,H/8,W/8] and step_noise [K,1,4,H/8,W/8] (K = longer pass's steps - 1); replaces --seed"),
    save_arrays: bool = typer.Option(False, "--save-arrays", help="Also write arrays.npz (float image and mask)"),
    baseline: bool = typer.Option(False, "--baseline", help="Also run plain IP-Adapter: ipadapter.png, grid.png"),
    baseline_scale: Optional[float] = typer.Option(None, "--baseline-scale", help="IP scale of the baseline (default: scale_final)"),
    knob_values: Optional[dict] = None,  # the MonkeyConfig options (appended by with_config_options)
):
    """Run MONKEY once: pass 1 -> subject mask(s) -> pass 2; write monkey.png, mask.png, overlay.png, result.json
    (several --image: also mask_N.png and overlay_N.png per subject)."""
    import time

    from monkey_trt.commands.generate import GenerateJob, default_backend, resolve_defaults, run_generate, summary
    from monkey_trt.runtime.backend import spec_from_options

    t0 = time.perf_counter()
    check_sides(height, width)
    if baseline_scale is not None and not baseline:
        raise MonkeyError("--baseline-scale applies to the plain IP-Adapter baseline: add --baseline (or drop --baseline-scale)")
    if seed is not None and noise is not None:
        raise MonkeyError("--seed and --noise both set the noise: --noise replaces the seed (drop one of them)")
    seed = REQUEST["seed"].default if seed is None else seed
    config = config_from_options(knob_values)
    backend = backend_row(default_backend(engine_dir, backend), "generate").name
    d = resolve_defaults(engine_dir, backend, height, width, base, ip_adapter)
    spec = spec_from_options(backend, dict(verify=verify, device=device, providers=providers, fp16=fp16, tf32=tf32, cuda_graph=cuda_graph,
                                           precision=precision, threads=threads, dtype=dtype, batch_passes=batch_passes,
                                           ort_cache=ort_cache))
    if d.dims is not None:  # the engine directory's model: its limits before any work
        config.check_model(d.dims)
    request = Request(prompt=prompt, height=d.height, width=d.width, seed=seed, config=config)
    job = GenerateJob(
        request=request, images=tuple(image), out=out, base=d.base, ip_adapter=d.ip_adapter, ip_weight=ip_weight,
        spec=spec, engine_dir=engine_dir, noise=noise, save_arrays=save_arrays,
        baseline_scale=(baseline_scale if baseline_scale is not None else config.scale_final) if baseline else None,
        dims=d.dims, background=background_image, max_subjects=d.max_subjects, background_slot=d.background_slot,
    )
    with quiet_libraries():
        done = run_generate(job, console)
    for w in done.output.warnings:
        warn(w)
    typer.echo(summary(done, time.perf_counter() - t0))


def default_workdir(given: Path | None) -> Path:
    """`--workdir`, else the user cache folder as it is now ($MONKEY_TRT_CACHE, XDG, the platform's; a default
    computed at import would ignore them, and bench's ORT graphs would then grow outside the cache's size bound)."""
    from monkey_trt.core.user_cache import cache_root

    return given if given is not None else cache_root()


def demo(
    out: Path = typer.Option(Path("monkey-demo"), "--out", help="Output folder (missing parents are created)"),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Where the tiny model and its engine are cached [default: the user cache folder, $MONKEY_TRT_CACHE]"),
    prompt: str = typer.Option(DEMO_PROMPT, "--prompt", help="Text prompt; it owns the background"),
    size: int = typer.Option(128, "--size", help="Image side (the tiny model is fast at 64..256)"),
    seed: int = typer.Option(0, "--seed", help="Seed (diffusers LCM semantics)"),
    backend: str = typer.Option("ort", help="ort (exported once, cached) | torch (the reference) | openvino (OpenVINO CPU, the same engine)"),
    threads: int = backend_option("threads", "demo"),
):
    """The main job end to end on the embedded tiny model, offline: export once (cached), run on ORT."""
    from monkey_trt.core.output_folders import check_target
    from monkey_trt.commands.generate import GenerateJob, run_generate
    from monkey_trt.embedded.workdir import DEMO_PROFILE, ensure_preset, preset_dirs
    from monkey_trt.runtime.backend import spec_from_options
    from monkey_trt.runtime.outputs import check_out_dir

    if backend not in backend_names("demo"):  # the embedded model runs where a GPU is not needed
        raise MonkeyError(f"demo --backend must be {' or '.join(sorted(backend_names('demo')))}, got {backend!r}")
    lo, hi = DEMO_PROFILE
    if not lo <= size <= hi or size % 8:
        raise MonkeyError(f"demo --size must be a multiple of 8 in {lo}..{hi}, got {size}")
    spec = spec_from_options(backend, {"threads": threads})
    workdir = default_workdir(workdir)
    request = Request(prompt=prompt, height=size, width=size, seed=seed)
    check_out_dir(out, baseline=True)  # before minutes of first-run work
    for d in (workdir, *preset_dirs("tiny", workdir, size, size)):
        check_target(d.absolute(), "-", lambda _p: set())
    with quiet_libraries():
        with status(console, "preparing the embedded tiny model") as update:
            model_dir, engine_dir = ensure_preset("tiny", workdir, size, size, engine=backend_row(backend).needs_engine_dir, status=update)
        job = GenerateJob(
            request=request, images=(model_dir / "subject.png",), out=out, base=str(model_dir / "base"),
            ip_adapter=str(model_dir / "ip-adapter"), spec=spec, baseline_scale=request.config.scale_final,
            engine_dir=engine_dir if backend_row(backend).needs_engine_dir else None,
        )
        done = run_generate(job, console)
    result = done.output
    for w in result.warnings:
        warn(w)
    total = sum(v for k, v in result.timings.items() if k not in ("baseline_pass", "decode_baseline", "decode_mask_pass"))
    typer.echo(f"demo on {result.backend}: MONKEY in {total:.2f}s, mask covers {100 * result.mask.coverage:.0f}% of the image")
    typer.echo(f"outputs in {done.out}: monkey.png, mask.png, overlay.png, ipadapter.png, grid.png, result.json")


def bench(
    preset: Optional[str] = typer.Option(None, "--preset", help="tiny | sd15: write the embedded model and export its engine (cached in --workdir)"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help=f"Engine directory ({engine_dir_backends('bench')}); model source and size default to its manifest"),
    backends: str = typer.Option("published,torch,ort", "--backends", help=f"Comma list of {backend_choices('bench', sep=', ')}"),
    base: Optional[str] = typer.Option(None, help="torch/published: base model (default: preset, manifest, else the hub model)"),
    ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help="torch/published: IP-Adapter (default like --base)"),
    image: Optional[list[Path]] = typer.Option(None, "--image", metavar="<path>", help="Subject (default: the preset's subject, else a grey square); "
                                               "repeat it to bench several subjects in one generation (S, recorded in --json)"),
    background_image: Optional[Path] = typer.Option(None, "--background-image", help="Also a background image in every generation"),
    height: Optional[int] = typer.Option(None, help="Default: the manifest's opt size, 128 (tiny), 256 (sd15), else 512"),
    width: Optional[int] = typer.Option(None),
    runs: int = typer.Option(3, help="Timed runs per backend (and as many plain IP-Adapter runs)"),
    warmup: int = typer.Option(1, help="Untimed runs after the first image"),
    soak: int = typer.Option(0, "--soak", help="N more generations per backend: host/GPU memory drift"),
    device: str = backend_option("device", "bench"),
    dtype: str = backend_option("dtype", "bench"),
    cuda_graph: bool = backend_option("cuda_graph", "bench"),
    ort_cache: Optional[bool] = backend_option("ort_cache", "bench"),
    cold: bool = typer.Option(True, "--cold/--no-cold", help="Also time open and first image apart in a fresh process per backend (after the runs)"),
    batch_passes: Optional[bool] = backend_option("batch_passes", "bench"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every figure as JSON (schema: monkey_trt/bench/schema.json)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart of per-stage time per backend"),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Cache of --preset models and engines [default: the user cache folder, $MONKEY_TRT_CACHE]"),
    precision: str = backend_option("precision", "bench"),
    threads: int = backend_option("threads", "bench"),
    providers: str = backend_option("providers", "bench"),
    fp16: bool = backend_option("fp16", "bench"),
    tf32: bool = backend_option("tf32", "bench"),
    verify: str = backend_option("verify", "bench"),
):
    """Per backend: per-stage and end-to-end times, cold start, memory, ratio to `published`, two-pass overhead."""
    from monkey_trt.bench.cli import check_output_path, run_bench
    from monkey_trt.bench.measure import BenchSettings
    from monkey_trt.runtime.backend import split_list

    check_sides(height, width)
    check_output_path(json_out, "--json", "json")
    check_output_path(plot, "--plot", "png")
    names = tuple(b.strip() for b in backends.split(",") if b.strip())
    workdir = default_workdir(workdir)  # its ort-optimized folder is then the user cache's own: bounded (cache_budget)
    if preset is not None and engine_dir is not None:
        raise MonkeyError("give --preset or --engine-dir, not both")

    def settings(h: int, w: int) -> BenchSettings:
        options = dict(device=device, dtype=dtype, cuda_graph=cuda_graph, batch_passes=batch_passes, precision=precision,
                       threads=threads, providers=split_list(providers), fp16=fp16, tf32=tf32, verify=verify)
        return BenchSettings.from_options(names, h, w, options, ort_cache=ort_cache is not False, runs=runs, warmup=warmup, soak=soak,
                                          workdir=str(workdir), cold_process=cold, subjects=max(1, len(image or ())),
                                          background=background_image is not None)

    settings(64, 64)  # every backend's spec checked before any work
    with quiet_libraries():
        run_bench(preset, engine_dir, names, base, ip_adapter, image, height, width, workdir, json_out, plot, console, settings,
                  warn=warn, background=background_image)


def serve(
    engine_dir: Path = typer.Option(..., "--engine-dir", help="Engine directory from `monkey-trt export`"),
    backend: str = typer.Option("ort", help=backend_choices("serve")),
    providers: str = backend_option("providers", "serve"),
    cuda_graph: bool = backend_option("cuda_graph", "serve"),
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8000, help="Port (0: any free port, printed at start)"),
    max_queue: int = typer.Option(8, "--max-queue", help="Requests waiting behind the running one; more get 429"),
    timeout: float = typer.Option(120.0, "--timeout", help="Per-request limit in seconds, queue wait included (504)"),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", help="Largest request body (413)"),
    subject_cache: int = typer.Option(64, "--subject-cache", help="Subjects whose IP tokens are cached (LRU; 0 = off)"),
    prompt_cache: int = typer.Option(256, "--prompt-cache", help="Prompts whose embeddings are cached (LRU; 0 = off)"),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One generation before /readyz says ready"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: critical, error, warning, info, debug or trace"),
    ray: bool = typer.Option(False, "--ray", help="Deploy on Ray Serve (one engine per replica)"),
    replicas: int = typer.Option(1, "--replicas", help="--ray: replicas"),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="--ray: GPUs per replica"),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", help="--ray: CPUs per replica"),
    min_replicas: Optional[int] = typer.Option(None, "--min-replicas", help="--ray: autoscale between --min-replicas and --max-replicas"),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="--ray: autoscaling upper bound"),
    address: Optional[str] = typer.Option(None, "--address", help="--ray: existing cluster (e.g. auto, ray://head:10001)"),
    precision: str = backend_option("precision", "serve"),
    verify: str = backend_option("verify", "serve"),
    threads: int = backend_option("threads", "serve"),
    fp16: bool = backend_option("fp16", "serve"),
    tf32: bool = backend_option("tf32", "serve"),
    batch_passes: Optional[bool] = backend_option("batch_passes", "serve"),
    ort_cache: Optional[bool] = backend_option("ort_cache", "serve"),
):
    """Serve MONKEY over HTTP: POST /v1/generate, /healthz, /readyz, /metrics, /docs."""
    from monkey_trt.core.extras import require_extra

    require_extra("serve", "serve")  # one line naming the extra, before anything imports fastapi or prometheus_client
    if ray:
        require_extra("ray", "serve --ray")
    from monkey_trt.runtime.backend import backend_names, spec_from_options
    from monkey_trt.serve.service import ServeConfig

    if not 0 <= port <= 65535:
        raise MonkeyError(f"--port must be in 0..65535, got {port}")
    levels = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
    if log_level.lower() not in levels:  # before the engine loads (uvicorn would refuse it after)
        raise MonkeyError(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    log_level = log_level.lower()
    if backend not in backend_names("serve"):
        raise MonkeyError(f"--backend must be {' or '.join(backend_names('serve'))}, got {backend!r}")
    spec = spec_from_options(backend, dict(providers=providers, cuda_graph=cuda_graph, precision=precision, verify=verify,
                                           threads=threads, fp16=fp16, tf32=tf32, batch_passes=batch_passes, ort_cache=ort_cache))
    config = ServeConfig(engine_dir=engine_dir, spec=spec, max_queue=max_queue, timeout_s=timeout, max_body_mb=max_body_mb,
                         subject_cache=subject_cache, prompt_cache=prompt_cache, warmup=warmup)
    from monkey_trt.enginedir.load import load_manifest

    load_manifest(engine_dir, verify=spec.verify)  # a wrong engine directory is one line, before any server starts
    if ray:
        from monkey_trt.serve.ray_app import RayOptions, run_ray

        run_ray(config, RayOptions(replicas, gpus_per_replica, cpus_per_replica, min_replicas, max_replicas), host, port, address)
    else:
        from monkey_trt.serve.run import run_single

        if address is not None or replicas != 1 or gpus_per_replica or min_replicas is not None or max_replicas is not None:
            raise MonkeyError("--replicas, --min/--max-replicas, --gpus-per-replica and --address need --ray")
        with quiet_libraries():
            run_single(config, host, port, log_level)


def eval_(
    subjects: Path = typer.Option(..., "--subjects", help="Folder of subject images (or of subfolders of them); words from subjects.csv/.json or the names. "
                                  "One subject per image, as in the paper's single-subject DreamBooth protocols: several subjects in one "
                                  "picture are not scored (CLIP-I/DINO would mix their identities; docs/eval.md)"),
    out: Path = typer.Option(..., "--out", help="Output folder; an interrupted run continues where it stopped"),
    prompts: str = typer.Option("paper", "--prompts", help="paper (the paper's 20 location prompts) or a UTF-8 text file: one prompt per line, "
                                "appended to the subject ('on the beach' -> 'a dog on the beach') or with {subject} where it goes; "
                                "blank and # lines skipped (docs/eval.md)"),
    protocol: str = typer.Option("paper", help="paper | authors (what the authors' code ran; docs/eval.md)"),
    prompt_template: Optional[str] = typer.Option(None, "--prompt-template", help="'{a_word} {prompt}' (paper) | '{word} {prompt}' (authors)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma list of monkey, monkey-all-steps, ipadapter@SCALE [default: the protocol's]"),
    engine_dir: Optional[Path] = typer.Option(None, "--engine-dir", help=f"Engine directory ({engine_dir_backends('eval')}); also the default size and models"),
    backend: Optional[str] = typer.Option(None, help=f"{backend_choices('eval')} [default: ort with --engine-dir, else torch]"),
    precision: Optional[str] = typer.Option(None, "--precision", help="Comma list: fp32, fp16, int8, fp8 (as exported); each is compared with fp32 [default: fp32; authors: fp16 on a GPU]"),
    base: Optional[str] = typer.Option(None, help=f"torch backend: base LCM model [default: {DEFAULT_BASE}]"),
    ip_adapter: Optional[str] = typer.Option(None, "--ip-adapter", help=f"torch backend: IP-Adapter [default: {DEFAULT_IP_ADAPTER}]"),
    ip_weight: str = typer.Option(DEFAULT_IP_WEIGHT, "--ip-weight", help="torch backend: weight file under models/"),
    clip: str = typer.Option("openai/clip-vit-base-patch32", "--clip", help="CLIP judge (CLIP-T, CLIP-I): hub id or folder"),
    dino: str = typer.Option("facebook/dino-vits16", "--dino", help="DINO judge: hub id or folder"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma list of seeds; one noise per (subject, prompt, seed) [default: 0; authors: 123]"),
    height: Optional[int] = typer.Option(None, help="Image height [default: the engine's opt size, else 512; authors: 256]"),
    width: Optional[int] = typer.Option(None, help="Image width [default: the engine's opt size, else 512; authors: 256]"),
    device: str = backend_option("device", "eval"),
    providers: str = backend_option("providers", "eval"),
    threads: int = backend_option("threads", "eval"),
    verify: str = backend_option("verify", "eval"),
    judge_device: str = typer.Option("auto", "--judge-device", help="Where the judges run: auto (cuda if present) | cpu | cuda"),
    judge_batch: int = typer.Option(32, "--judge-batch", help="Images scored per judge batch"),
):
    """The paper's evaluation: CLIP-T, CLIP-I, DINO per image (+ mask IoU and PSNR vs fp32); summary beside Table 1.
    One subject per image (the paper's DreamBooth protocols); several subjects in one picture: `generate --image ... --image ...`."""
    from monkey_trt.core.extras import require_extra

    check_sides(height, width)
    from monkey_trt.core.output_folders import check_target

    check_target(out.absolute(), "-", lambda _p: set())  # a file, or a folder nothing can be written in: before any judge loads
    require_extra("export", "eval (the CLIP and DINO judges)")
    from monkey_trt.commands.generate import default_backend
    from monkey_trt.eval.command import EvalOptions, result_lines, run_command
    from monkey_trt.runtime.backend import spec_from_options

    name = backend_row(default_backend(engine_dir, backend), "eval").name
    spec = spec_from_options(name, dict(device=device, providers=providers, threads=threads, verify=verify))
    opts = EvalOptions(subjects=subjects, out=out, spec=spec, prompts=prompts, methods=methods, engine_dir=engine_dir,
                       precisions=precision, base=base, ip_adapter=ip_adapter, ip_weight=ip_weight, clip=clip, dino=dino,
                       seeds=seeds, height=height, width=width, judge_device=judge_device, judge_batch=judge_batch,
                       protocol=protocol, prompt_template=prompt_template)
    with quiet_libraries():
        result = run_command(opts, console, warn)
    for line in result_lines(result):
        typer.echo(line)
