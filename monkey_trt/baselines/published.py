"""The `published` baseline: MONKEY run the way the paper's code runs it, for honest speed ratios.

    diffusers' LatentConsistencyModelPipeline + load_ip_adapter; every IP layer's processor keeps
    its IP attention weights, softmax(Q K_ip^T) [B, heads, Q, 4], for every step (as the published
    code does, to read the map afterwards); two full passes through the pipeline:
    pass 1: 4 steps + VAE decode -> the mask from the kept weights of the mask layer
    pass 2: 8 steps + VAE decode, `IPAdapterMaskProcessor` mask; IP scale and mask (on at masked steps, off at
            unmasked adapter steps) switched per step by a callback

The math is diffusers' `IPAdapterAttnProcessor2_0` (SDPA), so the mask and image equal our torch
backend's (tests/test_published.py); only the way of running differs. CPU or CUDA, fp32 or fp16.
Per-stage timings come from forward hooks on the pipeline's modules (synchronised on CUDA).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from monkey_trt.core.config import DEFAULT_IP_WEIGHT, ModelSource, Request
from monkey_trt.core.errors import MonkeyError
from monkey_trt.reference.loading import (
    ip_weight_file,
    quiet_progress_bars,
    resolve_base,
    resolve_ip_adapter,
)
from monkey_trt.runtime.images import clip_preprocess
from monkey_trt.runtime.mask import MaskResult, extract_mask
from monkey_trt.runtime.result import MonkeyOutput, UNetCallTiming


def _keep_weights_processor_class():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    class KeepWeightsIPAttnProcessor(IPAdapterAttnProcessor2_0):
        """diffusers' IPAdapterAttnProcessor2_0 for one SD1.5 attn2 layer (one adapter, one image) that
        also keeps softmax(Q K_ip^T) of every call in `store` (the published code's attention store).
        A subclass, so `set_ip_adapter_scale` reaches it."""

        def __init__(self, base, name: str, store: list):
            torch.nn.Module.__init__(self)
            self.hidden_size, self.cross_attention_dim = base.hidden_size, base.cross_attention_dim
            self.num_tokens, self.scale = base.num_tokens, base.scale
            self.to_k_ip, self.to_v_ip = base.to_k_ip, base.to_v_ip  # ModuleList of one Linear each
            self.name, self.store = name, store

        __call__ = _keep_weights_call

    return KeepWeightsIPAttnProcessor


def _keep_weights_call(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                       scale: float = 1.0, ip_adapter_masks=None):
    """IPAdapterAttnProcessor2_0's math (SD1.5 attn2: no norms, 3-D input) + the kept IP attention weights."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    residual = hidden_states
    text, ip_states = encoder_hidden_states  # [B, 77, D], [[B, 1, 4, D]]
    b = hidden_states.shape[0]  # hidden_states [B, Q, C]
    query = attn.to_q(hidden_states)
    key, value = attn.to_k(text), attn.to_v(text)
    d = key.shape[-1] // attn.heads
    q = query.view(b, -1, attn.heads, d).transpose(1, 2)  # [B, h, Q, d]
    k = key.view(b, -1, attn.heads, d).transpose(1, 2)
    v = value.view(b, -1, attn.heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, attn.heads * d)  # [B, Q, C]

    ip = ip_states[0][:, 0]  # [B, 4, D]
    ip_k = self.to_k_ip[0](ip).view(b, -1, attn.heads, d).transpose(1, 2)  # [B, h, 4, d]
    self.store.append((self.name, torch.softmax(q @ ip_k.transpose(-1, -2), dim=-1)))  # [B, h, Q, 4], no 1/sqrt(d)
    s = self.scale[0]
    if s != 0:
        ip_v = self.to_v_ip[0](ip).view(b, -1, attn.heads, d).transpose(1, 2)
        ip_out = F.scaled_dot_product_attention(q, ip_k, ip_v).transpose(1, 2).reshape(b, -1, attn.heads * d)
        if ip_adapter_masks is not None:
            mask = ip_adapter_masks[0][:, 0]  # [1, H, W]
            small = IPAdapterMaskProcessor.downsample(mask, b, ip_out.shape[1], ip_out.shape[2])
            ip_out = ip_out * small.to(ip_out.dtype)
        out = out + s * ip_out
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class _StageTimer:
    """Forward hooks: seconds per call of each timed module (device-synchronised)."""

    def __init__(self, device: torch.device):
        self.device, self.events, self._t0 = device, [], {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def attach(self, module: torch.nn.Module, stage: str) -> None:
        def pre(*_):
            self._sync()
            self._t0[stage] = time.perf_counter()

        def post(*_):
            self._sync()
            self.events.append((stage, time.perf_counter() - self._t0.pop(stage)))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


class PublishedPipeline:
    """MONKEY the published way: `pipe(request, subject) -> MonkeyOutput` (seeded noise only)."""

    backend = "published"

    def __init__(self, pipe, image_encoder, device: torch.device, dtype: torch.dtype):
        self.pipe, self.image_encoder, self.device, self.dtype = pipe, image_encoder, device, dtype
        self.store: list = []
        keep = _keep_weights_processor_class()
        procs = {}
        for name, proc in pipe.unet.attn_processors.items():
            procs[name] = keep(proc, name[: -len(".processor")], self.store) if hasattr(proc, "to_k_ip") else proc
        pipe.unet.set_attn_processor(procs)
        self.timer = _StageTimer(device)
        self.timer.attach(pipe.text_encoder, "encode_prompt")
        self.timer.attach(image_encoder, "encode_subject")
        self.timer.attach(pipe.unet, "unet")
        self.timer.attach(pipe.vae.decoder, "decode")

    @classmethod
    def from_pretrained(cls, base: str, ip_adapter: str, ip_weight: str = DEFAULT_IP_WEIGHT, device: str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "PublishedPipeline":
        from diffusers import LatentConsistencyModelPipeline
        from transformers import CLIPVisionModelWithProjection

        quiet_progress_bars()  # diffusers' "Loading pipeline components" and transformers' "Loading weights" bars
        base_dir = resolve_base(base)
        ip_dir = resolve_ip_adapter(ip_adapter, ip_weight)
        weight = ip_weight_file(ip_dir, ip_weight).name
        pipe = LatentConsistencyModelPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
        pipe.load_ip_adapter(str(ip_dir), subfolder="models", weight_name=weight, image_encoder_folder=None)
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(Path(ip_dir) / "models" / "image_encoder"))
        pipe.set_progress_bar_config(disable=True)
        dev = torch.device(device)
        pipe.to(dev, dtype)
        return cls(pipe, encoder.to(dev, dtype).eval(), dev, dtype)

    def info(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype), "way": "diffusers LCM pipeline, two full passes"}

    def _begin(self, subject: Image.Image) -> tuple[float, torch.Tensor]:
        """A fresh run: timer and attention store emptied, the clock started, then the subject's CLIP image
        embeds as the pipeline's `ip_adapter_image_embeds` entry: (start time, embeds [1, 1, E])."""
        self.timer.events.clear()
        self.store.clear()
        t0 = time.perf_counter()
        pixels = torch.from_numpy(clip_preprocess(subject)).to(self.device, self.dtype)  # [1, 3, 224, 224]
        return t0, self.image_encoder(pixels).image_embeds[:, None]

    def _maps(self, steps: tuple[int, ...], layer: str, n_layers: int) -> dict[int, np.ndarray]:
        """The kept weights of `layer` at `steps` -> step -> head-mean [Q, 4] (batch item 0)."""
        per_step = [self.store[i : i + n_layers] for i in range(0, len(self.store), n_layers)]
        return {s: dict(per_step[s])[layer][0].float().mean(0).cpu().numpy() for s in steps}

    @torch.no_grad()
    def __call__(self, request: Request, subject: Image.Image, noise=None, **_) -> MonkeyOutput:
        if noise is not None:
            raise MonkeyError("the published baseline draws its noise from the seed; it takes no noise plan")
        from diffusers.image_processor import IPAdapterMaskProcessor

        c, pipe = request.config, self.pipe
        t0, embeds = self._begin(subject)
        common = dict(ip_adapter_image_embeds=[embeds], guidance_scale=c.guidance_scale, height=request.height,
                      width=request.width, output_type="np")

        n_layers = sum(1 for p in pipe.unet.attn_processors.values() if hasattr(p, "store"))
        pipe.set_ip_adapter_scale(c.scale_mask_pass)
        pipe(request.prompt, num_inference_steps=c.steps_mask_pass, generator=torch.Generator("cpu").manual_seed(request.seed), **common)
        t_mask = time.perf_counter()
        mask = extract_mask(self._maps(c.mask_steps, c.mask_layer, n_layers), request.height, request.width, c.mask_token, c.threshold)
        t_mask = time.perf_counter() - t_mask

        scales, uses = c.final_scales(), c.final_mask_use()
        ip_mask = IPAdapterMaskProcessor().preprocess(Image.fromarray((mask.mask * 255).astype(np.uint8)),
                                                      height=request.height, width=request.width).to(self.device, self.dtype)
        attn_kwargs: dict = {}  # the pipeline passes this very dict to the UNet at every step

        def set_step(i: int) -> None:
            """Step i's IP scale, and the mask on (masked) or off (unmasked IP; the published `mask_step_list`)."""
            pipe.set_ip_adapter_scale(scales[i])
            if uses[i] == "open":
                attn_kwargs.pop("ip_adapter_masks", None)
            else:
                attn_kwargs["ip_adapter_masks"] = [ip_mask]

        def switch_step(p, i, t, kwargs):
            if i + 1 < len(scales):
                set_step(i + 1)
            return kwargs

        set_step(0)
        image = pipe(request.prompt, num_inference_steps=c.steps_final, generator=torch.Generator("cpu").manual_seed(request.seed),
                     cross_attention_kwargs=attn_kwargs, callback_on_step_end=switch_step, **common).images[0]
        total = time.perf_counter() - t0
        self.store.clear()
        return MonkeyOutput(image=image.astype(np.float32), mask=mask, backend=self.backend,
                            **self._timings(total, t_mask, c.steps_mask_pass))

    @torch.no_grad()
    def ip_adapter(self, request: Request, subject: Image.Image, scale: float) -> MonkeyOutput:
        """Plain IP-Adapter the same way (one full pass: `steps_final` steps + decode): the two-pass overhead's denominator."""
        c = request.config
        t0, embeds = self._begin(subject)
        self.pipe.set_ip_adapter_scale(scale)
        image = self.pipe(request.prompt, ip_adapter_image_embeds=[embeds], guidance_scale=c.guidance_scale, height=request.height,
                          width=request.width, output_type="np", num_inference_steps=c.steps_final,
                          generator=torch.Generator("cpu").manual_seed(request.seed)).images[0]
        self.store.clear()
        return MonkeyOutput(image=image.astype(np.float32), mask=MaskResult.full(request.height, request.width), backend=self.backend,
                            **self._timings(time.perf_counter() - t0, 0.0, 0))

    def _timings(self, total: float, t_mask: float, steps1: int) -> dict:
        timings: dict[str, float] = {"mask": t_mask}
        calls, unet_index = [], 0
        for stage, sec in self.timer.events:
            if stage == "unet":
                pas, step = ("p1", unet_index) if unet_index < steps1 else ("p2", unet_index - steps1)
                calls.append(UNetCallTiming(pas, step, 1, sec))
                key = "mask_pass" if pas == "p1" else "final_pass"
                timings[key] = timings.get(key, 0.0) + sec
                unet_index += 1
            else:
                key = "decode_mask_pass" if stage == "decode" and "decode" not in timings and unet_index <= steps1 else stage
                timings[key] = timings.get(key, 0.0) + sec
        timings["other"] = max(total - sum(timings.values()), 0.0)  # scheduler, pipeline and attention-store overhead
        return {"timings": timings, "unet_calls": tuple(calls)}


def open_published(spec, models: ModelSource) -> "PublishedPipeline":
    """The backend table's opener (runtime.backend: "published"): the authors' published code of a BackendSpec."""
    from monkey_trt.reference.device import check_torch_device, set_torch_threads, torch_dtype

    check_torch_device(spec.device)
    set_torch_threads(spec.threads)
    return PublishedPipeline.from_pretrained(models.base, models.ip_adapter, models.ip_weight, device=spec.device,
                                             dtype=torch_dtype(spec.dtype))
