"""The lean MONKEY runtime: an engine directory + runners -> images and mask. No torch, no diffusers.

    pipe = MonkeyPipeline.from_engine_dir("engine/", backend="ort")
    out = pipe(Request(prompt="a dog on the beach", height=512, width=512, seed=0), subject)
    out = pipe(Request(prompt="a dog and a cat on the beach"), [dog, cat], background=beach)  # several subjects

Sections: loading, encoders, the UNet (the hot loop), the method (runtime.method drives the passes).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.threads import locked
from monkey_trt.engine.runner import Runner
from monkey_trt.enginedir.load import load_manifest
from monkey_trt.enginedir.manifest import TOKENIZER_FILE, Manifest
from monkey_trt.enginedir.networks import MAP_NETWORK, MAP_OUTPUT, NETWORKS
from monkey_trt.runtime.backend import BackendSpec, backend_names, backend_row
from monkey_trt.runtime.images import clip_preprocess, decode_images, load_subject
from monkey_trt.runtime.method import check_run_options, run_monkey, subject_list
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.result import MonkeyOutput
from monkey_trt.runtime.scheduler import LCMSchedule, guidance_embedding
from monkey_trt.runtime.tokenizer import ClipTokenizer
from monkey_trt.runtime.unet_graphs import extra_unet_precisions, select, unet_roles

UNetObserver = Callable[[Mapping[str, np.ndarray]], None]  # sees every UNet call's full inputs (read-only)
WATCHED_NETWORKS = ("image_encoder", "vae_decoder")  # watch_network: the networks called once per image


def load_images(images, what: str = "subject") -> tuple[list[Image.Image], str | list[str | None] | None]:
    """One image or a list (file paths or PIL images) -> (the PIL images, what result.json records: the path of one
    image, a list for several, None for one PIL image). A file that cannot be read is one line naming which: with
    several, "subject 2 (cat.png): ..." (runtime.images.decode_images, as every face names them)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise MonkeyError(f"no {what} image given: MONKEY needs at least one {what} image")
    named = [(Path(i).name if isinstance(i, (str, Path)) else type(i).__name__, i) for i in items]
    one = lambda item: item if isinstance(item, Image.Image) else load_subject(item)  # noqa: E731
    if what == "subject":
        loaded, _ = decode_images(named, one)
    else:  # the background: one image (generate() refuses more), named as such
        loaded = [decode_images([], one, n)[1] for n in named]
    paths = [None if isinstance(i, Image.Image) else str(i) for i in items]
    return loaded, paths if len(items) > 1 else paths[0]


# -- loading ---------------------------------------------------------------------------------
def open_runners(root: Path, manifest: Manifest, spec: BackendSpec, networks: Sequence[str] = NETWORKS,
                 shared: dict | None = None) -> dict[str, Runner]:
    """One activated runner per network (of `networks`), from the opener of the spec's row of the backend table.
    `shared`: what one pipeline's runners share, kept by the backend under its own keys (TensorRT: one activation
    pool for every plan the pipeline opens). Nothing is written into `root` (a sealed engine directory): derived
    caches (ORT's TensorRT EP engines, ORT's optimised graphs) go to the user cache folder, keyed by the manifest's
    digests of the files they come from."""
    row = backend_row(spec.backend)
    if not row.needs_engine_dir:
        raise MonkeyError(f"runtime backend must be one of {', '.join(_engine_backends())}, got {spec.backend!r}")
    runners = row.open_function()(root, manifest, spec, networks, {} if shared is None else shared)
    try:
        for r in runners.values():
            r.activate()
    except BaseException:
        for r in runners.values():
            r.deactivate()
        raise
    return runners


def _engine_backends() -> tuple[str, ...]:
    return tuple(n for n in backend_names() if backend_row(n).needs_engine_dir)


def open_engine(spec: BackendSpec, engine_dir: Path | str) -> "MonkeyPipeline":
    """The lean runtime (an engine-directory backend of the table: ort, trt, openvino) of a BackendSpec. No torch."""
    return MonkeyPipeline.open(spec, engine_dir)


class MonkeyPipeline:
    """Both LCM passes of MONKEY on a backend's runners."""

    def __init__(self, root: Path, manifest: Manifest, runners: dict[str, Runner], spec: BackendSpec, tokenizer: ClipTokenizer):
        self._lock = threading.RLock()  # every public method, one thread at a time (core/threads.py)
        self.root, self.manifest, self.runners, self.spec = Path(root), manifest, runners, spec
        self.backend = spec.backend
        self.tokenizer = tokenizer
        s = manifest.scheduler
        self.schedule = LCMSchedule(
            manifest.alphas_cumprod, original_inference_steps=s.original_inference_steps, timestep_scaling=s.timestep_scaling,
            sigma_data=s.sigma_data, final_alpha_cumprod=s.final_alpha_cumprod, num_train_timesteps=s.num_train_timesteps,
            coeffs=np.asarray(s.coeffs, np.float32).reshape(-1, 4) if s.coeffs else None,
        )
        self.guidance_freqs = np.asarray(s.guidance_freqs, np.float32) if s.guidance_freqs else None
        self.dims = manifest.dims  # the model's sizes: latents, text and IP token counts
        self.n_ip_layers = manifest.dims.n_ip_layers
        self._size = (manifest.profile.height.opt, manifest.profile.width.opt)  # set per request by prepare()
        # which UNet graph runs which pass (runtime/unet_graphs.py): select_unet puts it in runners["unet"]
        self.unet_roles = unet_roles(spec.precision, spec.mask_pass)
        self.unet_runners = {spec.precision: runners["unet"]} if "unet" in runners else {}
        # the map-only UNet (export/map_graph.py) of the mask pass's precision, when the directory has one: pass 1's last call
        self.map_runners: dict[str, Runner] = {}
        self._unet_observers: list[UNetObserver] = []
        self._observers: dict[str, list[UNetObserver]] = {n: [] for n in WATCHED_NETWORKS}  # watch_network
        self.shared: dict = {}  # what the backend's runners share (open_runners' `shared`)

    @classmethod
    def from_engine_dir(cls, root: Path | str, backend: str = "ort", **options) -> "MonkeyPipeline":
        """`options`: the fields of runtime.backend.BackendSpec (providers, cuda_graph, precision, threads, verify,
        batch_passes, fp16, tf32, ort_cache, mask_pass, map_only, cpu_arena), checked like the CLI's options."""
        unknown = sorted(set(options) - set(BackendSpec.__dataclass_fields__))
        if unknown:
            raise MonkeyError(f"from_engine_dir() got unknown option(s) {', '.join(unknown)}")
        return cls.open(BackendSpec(backend=backend, **options), root)

    @classmethod
    def open(cls, spec: BackendSpec, root: Path | str) -> "MonkeyPipeline":
        """An engine directory on the backend of `spec` (an engine-directory row of the backend table: ort, trt, openvino)."""
        if not isinstance(spec, BackendSpec) or not backend_row(spec.backend).needs_engine_dir:
            got = spec.backend if isinstance(spec, BackendSpec) else type(spec).__name__
            raise MonkeyError(f"runtime backend must be one of {', '.join(_engine_backends())}, got {got!r}")
        if not isinstance(root, (str, Path)) or str(root) == "":
            raise MonkeyError(f"the engine directory must be a folder path, got {root!r}")
        manifest = load_manifest(Path(root), verify=spec.verify)
        tokenizer = ClipTokenizer.from_file(Path(root) / TOKENIZER_FILE)  # before any session: nothing to leak
        shared: dict = {}
        pipe = cls(Path(root), manifest, open_runners(Path(root), manifest, spec, NETWORKS, shared), spec, tokenizer)
        pipe.shared = shared
        try:  # 8-bit engines: the other UNet graph(s) the passes need (runtime/unet_graphs.py)
            for p in extra_unet_precisions(spec.precision, spec.mask_pass):  # trt: the same activation pool (shared)
                extra = replace(spec, precision=p, mask_pass="exact")  # that graph runs its own passes whole
                pipe.unet_runners[p] = open_runners(Path(root), manifest, extra, ("unet",), pipe.shared)["unet"]
            if spec.map_only and MAP_NETWORK in manifest.networks:  # directories exported before it: the full UNet
                p = pipe.unet_roles["mask"]
                pipe.map_runners[p] = open_runners(Path(root), manifest, replace(spec, precision=p, mask_pass="exact"), (MAP_NETWORK,), pipe.shared)[MAP_NETWORK]
        except BaseException:
            pipe.close()
            raise
        return pipe

    @locked
    def info(self) -> dict:
        """What ran: the engine directory, its source models and each network's execution providers and device."""
        providers = {n: list(r.providers) for n, r in self.runners.items()}
        devices = {n: r.device for n, r in self.runners.items()}
        return {"engine_dir": str(self.root), "source": self.manifest.source, "providers": providers, "devices": devices,
                "options": {"precision": self.spec.precision, "fp16": self.spec.fp16, "cuda_graph": self.spec.cuda_graph,
                            "tf32": {n: getattr(r, "tf32_mode", "per plan (build --tf32)") for n, r in self.runners.items()}},
                "spec": self.spec.to_dict(),
                **({"unet_graphs": dict(self.unet_roles)} if len(self.unet_runners) > 1 else {}),
                "map_only_unet": sorted(self.map_runners)}

    @locked
    def close(self) -> None:
        for r in (*self.runners.values(), *self.unet_runners.values(), *self.map_runners.values()):
            r.deactivate()

    @contextlib.contextmanager
    def watch_unet(self, observer: UNetObserver) -> Iterator[None]:
        """Call `observer(inputs)` on every UNet call inside the block, with the call's full inputs (the session's
        bound ones and the per-call ones; read-only views: copy what you keep). Export's calibration records
        through it."""
        with self._lock:
            self._unet_observers.append(observer)
        try:
            yield
        finally:
            with self._lock:
                self._unet_observers.remove(observer)

    @contextlib.contextmanager
    def watch_network(self, network: str, observer: UNetObserver) -> Iterator[None]:
        """Call `observer(inputs)` on every call of `network` (image_encoder: `pixel_values` [1, 3, 224, 224];
        vae_decoder: `latents` [1, 4, h, w], pass 2's final latents, and pass 1's or the baseline's when they
        are decoded) inside the block; read-only views: copy what you keep. Export's calibration of the 8-bit
        VAE decoder and image encoder records through it (export/network_calibration.py)."""
        if network not in self._observers:
            raise MonkeyError(f"watch_network: network must be one of {', '.join(WATCHED_NETWORKS)}, got {network!r}")
        with self._lock:
            self._observers[network].append(observer)
        try:
            yield
        finally:
            with self._lock:
                self._observers[network].remove(observer)

    def _observe(self, network: str, feeds: dict) -> None:
        for observe in self._observers[network]:
            observe(feeds)

    @locked
    def select_unet(self, role: str) -> None:
        """runtime.method: the UNet graph of the coming pass (mask | final | baseline)."""
        select(self, role)

    def __enter__(self) -> "MonkeyPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- encoders --------------------------------------------------------------------------
    @locked
    def encode_prompt(self, prompt: str) -> tuple[np.ndarray, bool]:
        """-> (text embeddings [1, text_len, D] float32, truncated)."""
        ids, truncated = self.tokenizer.encode(prompt, max_length=self.dims.text_len)  # [1, text_len] int64
        return self.runners["text_encoder"].infer({"input_ids": ids}, outputs=("text_embeds",))["text_embeds"], truncated

    @locked
    def encode_subject(self, subject: Image.Image) -> np.ndarray:
        """Subject -> IP tokens [1, n_ip_tokens, D]."""
        p = self.manifest.preprocess
        if not isinstance(subject, Image.Image):
            raise MonkeyError(f"subject must be a PIL image (monkey_trt.load_subject reads a file), got {type(subject).__name__}")
        pixels = clip_preprocess(subject, size=p.size, mean=p.mean, std=p.std)  # [1, 3, 224, 224]
        self._observe("image_encoder", {"pixel_values": pixels})
        return self.runners["image_encoder"].infer({"pixel_values": pixels}, outputs=("ip_tokens",))["ip_tokens"]

    @locked
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents [1, 4, h, w] -> image [H, W, 3] float32 in [0, 1] (scaling and clamp are in the graph)."""
        self._observe("vae_decoder", {"latents": latents})
        images = self.runners["vae_decoder"].infer({"latents": latents}, outputs=("images",))["images"]  # [1, 3, H, W]
        return np.ascontiguousarray(images[0].transpose(1, 2, 0))

    # -- the UNet (the hot loop) ------------------------------------------------------------
    @property
    def max_subjects(self) -> int:
        """Subject images a request may have: the manifest's `max_subjects` (1 for an engine directory exported before
        several subjects: its UNet takes one IP image)."""
        return self.manifest.max_subjects

    @property
    def max_ip_images(self) -> int:
        """IP images one UNet call takes: the subjects + the background slot (1 on an old engine directory)."""
        return self.manifest.max_ip_images

    @property
    def max_unet_batch(self) -> int:
        """The UNet runner's limit (a TensorRT profile bounds it); 64 where the graph's batch is dynamic."""
        limit = self.runners["unet"].max_batch
        return 64 if limit is None else int(limit)

    @property
    def batch_passes_default(self) -> bool:
        """Batching pays off where the device has idle parallelism (GPUs), not on a busy CPU (measured)."""
        return self.runners["unet"].device != "cpu" and self.max_unet_batch >= 2

    def _planes(self, masks: Sequence[np.ndarray | None], images: int) -> np.ndarray:
        """masks[b]: sample b's planes [N, H, W] (one per IP image; [H, W] when N = 1), None = ones -> ip_mask [B, N, H, W]."""
        H, W = self._size
        planes = []
        for b, m in enumerate(masks):
            if m is None:
                planes.append(np.ones((images, H, W), np.float32))
                continue
            m = np.asarray(m, np.float32)
            m = m[None] if m.ndim == 2 else m
            if m.shape != (images, H, W):
                raise MonkeyError(f"unet_session: sample {b}'s planes have shape {list(m.shape)}; "
                                  f"{images} IP image(s) at {H}x{W} need [{images}, {H}, {W}]")
            planes.append(m)
        return np.ascontiguousarray(np.stack(planes))  # [B, N, H, W]

    @locked
    def unet_session(self, text: np.ndarray, ip_tokens: np.ndarray, w_emb: np.ndarray,
                     masks: Sequence[np.ndarray | None]) -> Callable:
        """Calls of one batch layout. ip_tokens [1, N*T, D]: N IP images' tokens, image n in rows n*T..n*T+T-1;
        masks[b]: sample b's planes [N, H, W] (one per image, its scale folded in; [H, W] when N = 1), None: ones.

        The session owns its fixed inputs (`bind_static`: on a GPU, its own device buffers), so sessions can be
        interleaved: each call runs with this session's text, IP tokens, guidance and masks."""
        unet, n = self.runners["unet"], len(masks)
        T = self.dims.n_ip_tokens
        if ip_tokens.ndim != 3 or ip_tokens.shape[1] % T or not 1 <= ip_tokens.shape[1] // T <= self.max_ip_images:
            raise MonkeyError(f"unet_session: ip_tokens has shape {list(ip_tokens.shape)}; this engine takes [1, N*{T}, D] "
                              f"with N in 1..{self.max_ip_images}")
        static_inputs = {
            "encoder_hidden_states": np.repeat(text, n, axis=0),  # [B, 77, D]
            "timestep_cond": np.repeat(w_emb, n, axis=0),  # [B, time_cond_dim]
            "ip_tokens": np.repeat(ip_tokens, n, axis=0),  # [B, N*T, D]
            "ip_mask": self._planes(masks, ip_tokens.shape[1] // T),  # [B, N, H, W]
        }
        fixed = unet.bind_static(static_inputs)
        ip_scale = np.zeros((self.n_ip_layers,), np.float32)  # [n_ip_layers], shared by the batch
        only_noise, with_map = ("noise_pred",), ("noise_pred", "ip_attn_map")

        observers, lock = self._unet_observers, self._lock

        def call(latents: np.ndarray, timesteps: np.ndarray, scale: float, want_map: bool):
            with lock:  # a session may be called from any thread: one UNet call at a time on these runners
                return _unet_call(latents, timesteps, scale, want_map)

        def _unet_call(latents: np.ndarray, timesteps: np.ndarray, scale: float, want_map: bool):
            ip_scale[:] = scale
            feeds = {"sample": np.ascontiguousarray(latents, np.float32), "timestep": np.asarray(timesteps, np.float32),
                     "ip_scale": ip_scale}
            for observe in observers:
                observe({**fixed.host, **feeds})
            out = unet.infer(feeds, static=fixed, outputs=with_map if want_map else only_noise)
            return out["noise_pred"], out["ip_attn_map"] if want_map else None  # [B,4,h,w], [B,Q,N*T]

        call.static = fixed  # the session's own inputs (released with the session)
        precision = next((p for p, r in self.unet_runners.items() if r is unet), None)  # of the graph select_unet put there
        map_runner = self.map_runners.get(precision)
        if map_runner is not None:  # the map-only UNet of the same precision: the same map bits, about half the work
            map_fixed: list = []  # bound on first use (on a GPU: its own device copies)

            def map_only(latents: np.ndarray, timesteps: np.ndarray, scale: float) -> np.ndarray:
                """latents [B,4,h,w], timesteps [B] -> the map [B,Q,N*T] alone (no noise_pred)."""
                with lock:
                    if not map_fixed:
                        map_fixed.append(map_runner.bind_static(static_inputs))
                    ip_scale[:] = scale
                    feeds = {"sample": np.ascontiguousarray(latents, np.float32),
                             "timestep": np.asarray(timesteps, np.float32), "ip_scale": ip_scale}
                    for observe in observers:  # the call's inputs are a UNet call's: calibration sees it as one
                        observe({**map_fixed[0].host, **feeds})
                    return map_runner.infer(feeds, static=map_fixed[0], outputs=(MAP_OUTPUT,))[MAP_OUTPUT]

            call.map_only = map_only
        return call

    @locked
    def warm_up(self) -> dict[str, float]:
        """Run every network once (each UNet graph the passes use, with the map, and its map-only cut) at the profile's
        opt size, batch 1,
        so that a generation at that size does not pay the backends' first-call work (allocations, kernel choices);
        returns seconds per network. Optional: a process that makes one image only moves that cost (its first image
        would pay it); a service or a notebook answers its first request sooner."""
        import time

        p, d = self.manifest.profile, self.dims
        H, W = p.height.opt, p.width.opt
        took: dict[str, float] = {}
        t = time.perf_counter()
        text, _ = self.encode_prompt("warm-up")  # [1, text_len, D]
        took["text_encoder"] = time.perf_counter() - t
        t = time.perf_counter()
        ip = self.encode_subject(Image.new("RGB", (d.image_size, d.image_size), (128, 128, 128)))  # [1, n_ip_tokens, D]
        took["image_encoder"] = time.perf_counter() - t
        latents = np.zeros((1, d.latent_channels, H // d.vae_factor, W // d.vae_factor), np.float32)  # [1, C, h, w]
        size, current = self._size, self.runners.get("unet")
        try:
            self._size = (H, W)
            for precision, unet in self.unet_runners.items():  # 8-bit engines: the fp32 mask pass's graph too
                self.runners["unet"] = unet
                t = time.perf_counter()
                call = self.unet_session(text, ip, self.guidance(8.0), [None])
                call(latents, np.array([999.0], np.float32), 1.0, True)
                took[f"unet ({precision})"] = time.perf_counter() - t
                if hasattr(call, "map_only"):  # the map-only UNet of that precision (pass 1's last call)
                    t = time.perf_counter()
                    call.map_only(latents, np.array([999.0], np.float32), 1.0)
                    took[f"unet_map ({precision})"] = time.perf_counter() - t
                call.static.release()
        finally:
            self._size = size
            if current is not None:
                self.runners["unet"] = current
        t = time.perf_counter()
        self.decode(latents)
        took["vae_decoder"] = time.perf_counter() - t
        return took

    def sync(self) -> None:
        """Runners return host arrays: their work is done when infer() returns."""

    # -- the method ------------------------------------------------------------------------
    @locked
    def prepare(self, request: Request) -> None:
        request.config.check_model(self.dims)
        self._size = (request.height, request.width)
        why = self.manifest.profile.check(1, request.height, request.width)
        if why:
            raise MonkeyError(f"engine directory {self.root}: {why}")
        if request.config.mask_layer != self.manifest.mask_layer:
            raise MonkeyError(
                f"this engine exports the attention map of {self.manifest.mask_layer}, not {request.config.mask_layer}: "
                "re-export with --mask-layer"
            )

    def guidance(self, guidance_scale: float) -> np.ndarray:
        """LCM's embedded guidance w = guidance_scale - 1 -> timestep_cond [1, time_cond_dim]."""
        w = np.array([guidance_scale - 1.0], np.float32)
        return guidance_embedding(w, self.manifest.dims.time_cond_dim, freqs=self.guidance_freqs)

    def noise_for(self, request: Request) -> NoisePlan:
        return NoisePlan.from_seed(request.seed, request.latent_shape(self.dims), request.config.noise_steps)

    @locked
    def generate(self, prompt: str, image, height: int | None = None, width: int | None = None,
                 seed: int = 0, background_image=None, **knobs) -> MonkeyOutput:
        """Convenience API: `pipe.generate("a dog on the beach", "dog.jpg", seed=1, threshold=0.4)`; several subjects:
        `pipe.generate("a dog and a cat", ["dog.jpg", "cat.jpg"], background_image="beach.jpg")` (paths or PIL images).

        The size defaults to the engine's optimal size (its profile's opt)."""
        unknown = sorted(set(knobs) - set(MonkeyConfig.__dataclass_fields__))
        if unknown:
            raise MonkeyError(f"generate() got unknown knob(s) {', '.join(unknown)} (the knobs: docs/method.md)")
        config = MonkeyConfig(**knobs)
        subjects, paths = load_images(image)
        background, background_path = (None, None) if background_image is None else load_images(background_image, "background")
        if background is not None and len(background) != 1:
            raise MonkeyError(f"background_image takes one image, got {len(background)}")
        height = self.manifest.profile.height.opt if height is None else height
        width = self.manifest.profile.width.opt if width is None else width
        out = self(Request(prompt, height, width, seed, config), subjects if len(subjects) > 1 else subjects[0],
                   background=None if background is None else background[0], decode_mask_pass=True)  # overlay like the CLI's
        if paths is not None and (not isinstance(paths, list) or any(p is not None for p in paths)):
            out.record["subject"] = paths
        if background_path is not None:
            out.record["background_image"] = background_path
        return out

    def __call__(self, request: Request, subject, background: Image.Image | None = None, **kwargs) -> MonkeyOutput:
        """MONKEY on this engine directory: `subject` one PIL image or a list (1..max_subjects), `background` an optional
        IP image for where no subject is; kwargs: noise, baseline_scale, decode_mask_pass, batch_passes (see run_monkey).

        Thread-safe, like every public method (core/threads.py): a pipeline shared by several threads runs their
        calls one at a time (one engine, one set of device buffers); for parallel generations open one pipeline
        per thread. After close() every call is a MonkeyError (the runners are not active)."""
        return self.run_with(self, request, subject, background=background, **kwargs)

    def run_with(self, networks, request: Request, subject, background: Image.Image | None = None, **kwargs) -> MonkeyOutput:
        """MONKEY on `networks`: this pipeline or a wrapper around it (serve.encoder_cache.CachedNetworks: cached encoders)."""
        if not isinstance(request, Request):
            raise MonkeyError(f"request must be a monkey_trt.Request, got {type(request).__name__}")
        subject_list(subject)  # one line for what is no subject (run_monkey checks again, with the engine's limits)
        kwargs["background"] = background
        check_run_options(kwargs)
        if kwargs.get("batch_passes") is None:
            kwargs["batch_passes"] = self.spec.batch_passes  # the spec's choice (None: the measured default)
        with self._lock:
            return run_monkey(networks, request, subject, **kwargs)
