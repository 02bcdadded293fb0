"""The PyTorch reference of MONKEY: every optimised backend is checked against this.

    pass 1: LCM, IP scale `scale_mask_pass` at every step, record the mask layer's IP map at
            `mask_steps`; stop after the last mask step (later steps cannot change the mask)
    mask:   runtime.mask.extract_mask (docs/method.md "Pass 1: the mask", shared with the lean runtime)
    pass 2: LCM from the same noise, IP on (scale_final, masked) at `masked_steps`, off elsewhere
    decode: VAE, (x / 2 + 0.5).clamp(0, 1)

Seeds behave like diffusers' LCM pipeline with `torch.Generator("cpu").manual_seed(seed)`:
initial latents first, then one randn per step but the last; each pass re-seeds.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from monkey_trt.core.config import (
    DEFAULT_BASE,
    DEFAULT_IP_ADAPTER,
    DEFAULT_IP_WEIGHT,
    ModelSource,
    Request,
)
from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.threads import locked
from monkey_trt.enginedir.networks import MAX_SUBJECTS_DEFAULT, ModelDims
from monkey_trt.reference.attention import downsample_mask, level_grids
from monkey_trt.reference.loading import ReferenceModels, load_reference_models
from monkey_trt.runtime.images import clip_preprocess
from monkey_trt.runtime.method import check_run_options, run_monkey
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.result import MonkeyOutput
from monkey_trt.runtime.scheduler import LCMSchedule


def lcm_schedule(scheduler) -> LCMSchedule:
    """diffusers' LCMScheduler as a numpy LCMSchedule with torch's own coefficient table (bit-exact steps).

    The one place the table is built: the reference steps with it and the exporter writes it to the manifest."""
    cfg = scheduler.config
    ac = scheduler.alphas_cumprod.to(torch.float32)  # [T]
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(torch.arange(len(ac)))
    coeffs = torch.stack([ac.sqrt(), (1 - ac).sqrt(), c_skip.float(), c_out.float()], 1)  # [T, 4]
    return LCMSchedule(
        ac.numpy(), original_inference_steps=int(cfg.original_inference_steps), timestep_scaling=float(cfg.timestep_scaling),
        final_alpha_cumprod=float(np.float32(scheduler.final_alpha_cumprod)), num_train_timesteps=int(cfg.num_train_timesteps),
        coeffs=coeffs.numpy(),
    )


def torch_guidance_freqs(time_cond_dim: int) -> np.ndarray:
    """[time_cond_dim // 2] float32: the frequencies of diffusers' `get_guidance_scale_embedding`, in torch's
    own float32 arithmetic (MKL's exp; see runtime.scheduler.guidance_freqs for the correctly rounded ones)."""
    half = time_cond_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.float32) * -emb).numpy()


def torch_noise_plan(seed: int, latent_shape: tuple[int, ...], steps: int) -> NoisePlan:
    """The noise diffusers' LCM pipeline draws from `torch.Generator("cpu").manual_seed(seed)`."""
    from diffusers.utils.torch_utils import randn_tensor

    g = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor(latent_shape, generator=g, dtype=torch.float32)
    step_noise = [randn_tensor(latent_shape, generator=g, dtype=torch.float32) for _ in range(max(steps - 1, 0))]
    stacked = torch.stack(step_noise).numpy() if step_noise else np.zeros((0, *latent_shape), np.float32)
    return NoisePlan(latents=latents.numpy(), step_noise=stacked)


class ReferencePipeline:
    """MONKEY in PyTorch/diffusers: `pipe(request, subject_or_subjects, background=None) -> MonkeyOutput`."""

    backend = "torch"

    def __init__(self, models: ReferenceModels):
        self.m = models
        self._lock = threading.RLock()  # every public method, one thread at a time (the UNet's shared ctx; core/threads.py)
        self.map_layer: int | None = None  # IP-layer index of the mask layer, set by prepare()
        self.schedule = lcm_schedule(models.scheduler)
        self.graphed = None  # GraphedUNet when CUDA-graph replay is on (enable_cuda_graphs)
        self.vae_factor = 2 ** (len(models.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pretrained(
        cls,
        base: str = DEFAULT_BASE,
        ip_adapter: str = DEFAULT_IP_ADAPTER,
        ip_weight: str = DEFAULT_IP_WEIGHT,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "ReferencePipeline":
        return cls(load_reference_models(ModelSource(base, ip_adapter, ip_weight), device, dtype))

    @locked
    def info(self) -> dict:
        """What ran: the loaded folders, weight digests, device and dtype."""
        return {**self.m.files, "device": str(self.m.device), "dtype": str(self.m.dtype)}

    # -- encoders -------------------------------------------------------------------------
    @locked
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, bool]:
        """-> (text embeddings [1, text_len, D], truncated). Truncates like diffusers, with a warning."""
        tok, text_len = self.m.tokenizer, self.dims.text_len
        ids = tok(prompt, padding="max_length", max_length=text_len, truncation=True, return_tensors="pt").input_ids
        truncated = len(tok(prompt, truncation=False).input_ids) > text_len
        embeds = self.m.text_encoder(ids.to(self.m.device))[0]  # [1, 77, D]
        return embeds, truncated

    @locked
    @torch.no_grad()
    def encode_subject(self, subject: Image.Image) -> torch.Tensor:
        """Subject image -> IP tokens [1, T, D] (CLIP vision embeds through the IP projection; T = 4)."""
        if not isinstance(subject, Image.Image):
            raise MonkeyError(f"subject must be a PIL image, got {type(subject).__name__}")
        pixels = torch.from_numpy(clip_preprocess(subject)).to(self.m.device, self.m.dtype)  # [1, 3, 224, 224]
        embeds = self.m.image_encoder(pixels).image_embeds  # [1, E]
        return self.m.image_proj(embeds)  # [1, 4, D]

    # -- the UNet -------------------------------------------------------------------------
    max_unet_batch = 64

    @property
    def batch_passes_default(self) -> bool:
        """Batching fills a GPU's idle parallelism; on a 2-core CPU it measured no faster (README)."""
        return self.m.device.type == "cuda"

    @locked
    def unet_session(self, text: torch.Tensor, ip_tokens: torch.Tensor, w_emb: torch.Tensor,
                     masks: Sequence[np.ndarray | None]):
        """Calls of one batch layout. ip_tokens [1, N*T, D]: N IP images; masks[b]: sample b's per-image planes
        [N, H, W] (a single [H, W] plane is N = 1), None = unmasked (ones).

        An unmasked sample's level planes are exact ones (no resize), so a batched pass-1 sample
        computes exactly what the sequential, unmasked pass 1 does.
        """
        m, n = self.m, len(masks)
        texts, tokens, conds = (x.expand(n, *x.shape[1:]) for x in (text, ip_tokens, w_emb))  # [B, ...]
        n_img = ip_tokens.shape[1] // self.dims.n_ip_tokens
        planes = [None if mk is None else np.asarray(mk, np.float32).reshape(-1, *np.shape(mk)[-2:]) for mk in masks]  # [N, H, W]
        for p in planes:
            if p is not None and p.shape[0] != n_img:
                raise MonkeyError(f"{p.shape[0]} mask plane(s) for {n_img} IP image(s)")
        level_masks = None
        if any(p is not None for p in planes):
            h, w = next(p for p in planes if p is not None).shape[-2:]
            grids = level_grids(h // self.vae_factor, w // self.vae_factor, len(m.unet.config.block_out_channels))
            level_masks = {}
            for level, grid in enumerate(grids):
                per_sample = [
                    torch.ones(1, n_img, grid[0] * grid[1], 1, device=m.device, dtype=m.dtype) if p is None
                    else downsample_mask(torch.from_numpy(p)[None].to(m.device, m.dtype), grid)  # [1, N, Q_level, 1]
                    for p in planes
                ]
                level_masks[level] = torch.cat(per_sample)  # [B, N, Q_level, 1]

        @torch.no_grad()
        def call(latents: np.ndarray, timesteps: np.ndarray, scale: float, want_map: bool):
            with self._lock:  # m.ctx is the UNet's shared state: one call at a time
                return eager_call(latents, timesteps, scale, want_map)

        def eager_call(latents: np.ndarray, timesteps: np.ndarray, scale: float, want_map: bool):
            if self.graphed is not None:
                return graphed_call(latents, timesteps, scale, want_map)
            m.ctx.ip_tokens, m.ctx.scales, m.ctx.masks = tokens, [float(scale)] * len(m.ip_layers), level_masks
            m.ctx.map_layer = self.map_layer if want_map else None
            try:
                sample = torch.from_numpy(latents).to(m.device, m.dtype)  # [B, 4, h, w]
                t = torch.from_numpy(np.asarray(timesteps, np.int64)).to(m.device)  # [B]
                eps = m.unet(sample, t, encoder_hidden_states=texts, timestep_cond=conds).sample
                attn_map = m.ctx.attn_map.float().cpu().numpy() if want_map else None  # [B, Q, N*T]
            finally:
                m.ctx.ip_tokens, m.ctx.masks, m.ctx.map_layer, m.ctx.attn_map = None, None, None, None
            return eps.float().cpu().numpy(), attn_map

        def graphed_call(latents: np.ndarray, timesteps: np.ndarray, scale: float, want_map: bool):
            x = {"sample": torch.from_numpy(latents).to(m.device, m.dtype), "t": torch.from_numpy(np.asarray(timesteps, np.int64)).to(m.device),
                 "text": texts, "cond": conds, "tokens": tokens,
                 "scales": torch.full((len(m.ip_layers),), float(scale), device=m.device, dtype=m.dtype)}
            eps, attn_map = self.graphed(x, level_masks, self.map_layer if want_map else None)
            return eps.float().cpu().numpy(), None if attn_map is None else attn_map.float().cpu().numpy()

        return call

    @locked
    def enable_cuda_graphs(self) -> None:
        """Replay UNet calls as CUDA graphs (CUDA only; one capture per batch layout, then replays)."""
        if self.m.device.type != "cuda":
            raise MonkeyError("--cuda-graph with the torch backend needs --device cuda")
        from monkey_trt.reference.cuda_graphs import GraphedUNet

        self.graphed = GraphedUNet(self.m)

    def sync(self) -> None:
        if self.m.device.type == "cuda":
            torch.cuda.synchronize(self.m.device)

    @locked
    @torch.no_grad()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents [1, 4, h, w] -> image [H, W, 3] float32 in [0, 1]."""
        vae = self.m.vae
        latents = torch.from_numpy(np.asarray(latents, np.float32)).to(self.m.device, vae.dtype)
        image = vae.decode(latents / vae.config.scaling_factor).sample  # [1, 3, H, W] in [-1, 1]
        return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()

    # -- the method ------------------------------------------------------------------------
    @property
    def max_subjects(self) -> int:
        """Subject images per request (the reference has no engine limit: the export default)."""
        return MAX_SUBJECTS_DEFAULT

    @property
    def dims(self) -> ModelDims:
        """The loaded models' sizes (latents, text and IP token counts)."""
        return self.m.dims

    @locked
    def prepare(self, request: Request) -> None:
        request.config.check_model(self.dims)
        if request.config.mask_layer not in self.m.ip_layers:
            raise MonkeyError(f"mask_layer {request.config.mask_layer!r} is not an IP-Adapter layer of this UNet")
        self.map_layer = self.m.ip_layers.index(request.config.mask_layer)

    def guidance(self, guidance_scale: float) -> torch.Tensor:
        """LCM's embedded guidance, as diffusers' pipeline computes it: timestep_cond [1, time_cond_dim]."""
        from diffusers import LatentConsistencyModelPipeline

        w = torch.tensor([guidance_scale - 1.0])
        w_emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, self.m.unet.config.time_cond_proj_dim)
        return w_emb.to(self.m.device, self.m.dtype)

    def noise_for(self, request: Request) -> NoisePlan:
        return torch_noise_plan(request.seed, request.latent_shape(self.dims), request.config.noise_steps)

    @locked
    def __call__(self, request: Request, subject_or_subjects: Image.Image | Sequence[Image.Image],
                 background: Image.Image | None = None, **kwargs) -> MonkeyOutput:
        """MONKEY in PyTorch on one subject or several (+ a background image); kwargs: noise, baseline_scale,
        decode_mask_pass, batch_passes (see runtime.method.run_monkey)."""
        check_run_options(kwargs)
        if background is not None:
            kwargs["background"] = background
        return run_monkey(self, request, subject_or_subjects, **kwargs)


def open_reference(spec, models: ModelSource) -> ReferencePipeline:
    """The backend table's opener (runtime.backend: "torch"): the PyTorch reference of a BackendSpec on `models`."""
    from monkey_trt.reference.device import check_torch_device, set_torch_threads, torch_dtype, torch_tf32

    check_torch_device(spec.device)
    set_torch_threads(spec.threads)
    torch_tf32(spec.device, spec.tf32)  # fp32 is fp32 on CUDA unless asked (torch's cuDNN default allows TF32)
    pipe = ReferencePipeline.from_pretrained(models.base, models.ip_adapter, models.ip_weight, device=spec.device,
                                             dtype=torch_dtype(spec.dtype))
    if spec.cuda_graph:
        pipe.enable_cuda_graphs()
    return pipe
