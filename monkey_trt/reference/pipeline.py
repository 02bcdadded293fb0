"""The PyTorch reference of MONKEY: every optimised backend is checked against this.

    pass 1: LCM, IP scale `scale_mask_pass` at every step, record the mask layer's IP map at
            `mask_steps`; stop after the last mask step (later steps cannot change the mask)
    mask:   runtime.mask.extract_mask (SPEC.md, shared with the lean runtime)
    pass 2: LCM from the same noise, IP on (scale_final, masked) at `masked_steps`, off elsewhere
    decode: VAE, (x / 2 + 0.5).clamp(0, 1)

Seeds behave like diffusers' LCM pipeline with `torch.Generator("cpu").manual_seed(seed)`:
initial latents first, then one randn per step but the last; each pass re-seeds.
"""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from monkey_trt.config import DEFAULT_BASE, DEFAULT_IP_ADAPTER, DEFAULT_IP_WEIGHT, MAX_TOKENS, Request
from monkey_trt.errors import MonkeyError
from monkey_trt.reference.attention import downsample_mask, level_grids
from monkey_trt.reference.loading import ModelSource, ReferenceModels, load_reference_models
from monkey_trt.runtime.images import clip_preprocess
from monkey_trt.runtime.method import run_monkey
from monkey_trt.runtime.noise import NoisePlan
from monkey_trt.runtime.result import MonkeyOutput


def lcm_step(scheduler, eps: torch.Tensor, step: int, timesteps: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None):
    """diffusers LCMScheduler.step (epsilon prediction) with the noise passed in. Returns (prev_sample, denoised)."""
    t = timesteps[step]
    prev_t = timesteps[step + 1] if step + 1 < len(timesteps) else t
    alpha_t = scheduler.alphas_cumprod[t]
    alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
    x0 = (sample - beta_t.sqrt() * eps) / alpha_t.sqrt()
    denoised = c_out * x0 + c_skip * sample
    if step == len(timesteps) - 1:
        return denoised, denoised
    return alpha_prev.sqrt() * denoised + beta_prev.sqrt() * noise.to(denoised), denoised


def torch_noise_plan(seed: int, latent_shape: tuple[int, ...], steps: int) -> NoisePlan:
    """The noise diffusers' LCM pipeline draws from `torch.Generator("cpu").manual_seed(seed)`."""
    from diffusers.utils.torch_utils import randn_tensor

    g = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor(latent_shape, generator=g, dtype=torch.float32)
    step_noise = [randn_tensor(latent_shape, generator=g, dtype=torch.float32) for _ in range(max(steps - 1, 0))]
    stacked = torch.stack(step_noise).numpy() if step_noise else np.zeros((0, *latent_shape), np.float32)
    return NoisePlan(latents=latents.numpy(), step_noise=stacked)


class ReferencePipeline:
    """MONKEY in PyTorch/diffusers: `pipe(request, subject) -> MonkeyOutput`."""

    backend = "torch"

    def __init__(self, models: ReferenceModels):
        self.m = models
        self.map_layer: int | None = None  # IP-layer index of the mask layer, set by prepare()

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

    def info(self) -> dict:
        """What ran: the loaded folders, weight digests, device and dtype."""
        return {**self.m.files, "device": str(self.m.device), "dtype": str(self.m.dtype)}

    # -- encoders -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, bool]:
        """-> (text embeddings [1, 77, D], truncated). Truncates like diffusers, with a warning."""
        tok = self.m.tokenizer
        ids = tok(prompt, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        truncated = len(tok(prompt, truncation=False).input_ids) > MAX_TOKENS
        embeds = self.m.text_encoder(ids.to(self.m.device))[0]  # [1, 77, D]
        return embeds, truncated

    @torch.no_grad()
    def encode_subject(self, subject: Image.Image) -> torch.Tensor:
        """Subject image -> IP tokens [1, 4, D] (CLIP vision embeds through the IP projection)."""
        pixels = torch.from_numpy(clip_preprocess(subject)).to(self.m.device, self.m.dtype)  # [1, 3, 224, 224]
        embeds = self.m.image_encoder(pixels).image_embeds  # [1, E]
        return self.m.image_proj(embeds)  # [1, 4, D]

    # -- one LCM pass ---------------------------------------------------------------------
    @torch.no_grad()
    def run_pass(
        self,
        text: torch.Tensor,
        ip_tokens: torch.Tensor,
        w_emb: torch.Tensor,
        noise: NoisePlan,
        steps: int,
        scales: list[float],
        mask: np.ndarray | None = None,
        map_steps: tuple[int, ...] = (),
        stop_after: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, np.ndarray]]:
        """Run `steps` LCM steps (or stop after step `stop_after`). Returns (last denoised latents, maps)."""
        m, dev = self.m, self.m.device
        sched = m.scheduler
        sched.set_timesteps(steps)
        timesteps = sched.timesteps  # int64 [steps]
        latents = torch.tensor(noise.latents).to(dev, m.dtype)  # [1, 4, h, w]

        masks = None
        if mask is not None:
            pix = torch.from_numpy(mask)[None, None].to(dev, m.dtype)  # [1, 1, H, W]
            grids = level_grids(latents.shape[2], latents.shape[3], len(m.unet.config.block_out_channels))
            masks = {level: downsample_mask(pix, grid) for level, grid in enumerate(grids)}

        maps: dict[int, np.ndarray] = {}
        last = steps - 1 if stop_after is None else stop_after
        denoised = latents
        for i in range(last + 1):
            m.ctx.ip_tokens, m.ctx.scales, m.ctx.masks = ip_tokens, [scales[i]] * len(m.ip_layers), masks
            m.ctx.map_layer = self.map_layer if i in map_steps else None
            eps = m.unet(latents, timesteps[i], encoder_hidden_states=text, timestep_cond=w_emb).sample
            if m.ctx.map_layer is not None:
                maps[i] = m.ctx.attn_map[0].float().cpu().numpy()  # [Q, 4], batch item 0
            step_noise = torch.tensor(noise.step_noise[i]) if i < steps - 1 else None
            latents, denoised = lcm_step(sched, eps.float(), i, timesteps, latents.float(), step_noise)
            latents = latents.to(m.dtype)
        m.ctx.ip_tokens, m.ctx.masks, m.ctx.map_layer, m.ctx.attn_map = None, None, None, None
        return denoised, maps

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents [1, 4, h, w] -> image [H, W, 3] float32 in [0, 1]."""
        vae = self.m.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample  # [1, 3, H, W] in [-1, 1]
        return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()

    # -- the method ------------------------------------------------------------------------
    def prepare(self, request: Request) -> None:
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
        return torch_noise_plan(request.seed, request.latent_shape, request.config.noise_steps)

    def __call__(self, request: Request, subject: Image.Image, **kwargs) -> MonkeyOutput:
        """MONKEY in PyTorch; kwargs: noise, baseline_scale, decode_mask_pass (see runtime.method.run_monkey)."""
        return run_monkey(self, request, subject, **kwargs)
