"""The 8-bit VAE decoder (always, with the UNet) and image encoder (opt-in): which layers stay float, and their calibration.

    networks = networks_8bit(image_encoder=False)          # ("vae_decoder",): what int8/fp8 quantize besides the UNet
    entries = quantize_networks(root, manifest, dst_dir, precisions, spec, networks, entries, say)

The same quantizer as the UNet's (export/quantize.py: onnxruntime.quantization, QDQ, symmetric int8 or
float8 e4m3fn, per-channel weights, one Q/DQ pair per consumer), calibrated on what each network sees when
MONKEY runs on the fp32 engine (export/network_calibration.py): the VAE decoder on pass 2's final latents,
the image encoder on the cases' preprocessed subjects.

* **VAE decoder** (quantized with every 8-bit export): it only shapes the final image, never the mask.
  Kept in float by default (each a `KEEP` group; the per-group table is in docs/int8.md): `io`
  (post_quant_conv, conv_in, conv_out: 4- and 3-channel layers, ~0.1% of the MACs; conv_out writes the
  pixels: +3 dB on the tiny model) and, for int8, `attention` (the mid-block's activation x activation
  products, as in the UNet: softmax probabilities fall below int8's step; ~1.4% of the MACs). Not kept by
  default, measured: `upsample` (the upsamplers' 3x3 convs, +4.5 dB on the tiny model but ~28% of the
  decoder's MACs at full resolution), `mid_attention` (its projections: 0 dB), `skip` (+0.2 dB).
* **Image encoder** (opt-in: `export --quantize-image-encoder`): its tokens feed the IP attention that the
  mask is read from, so an 8-bit encoder moves the mask even when pass 1 runs fp32. Kept: `projection`
  (the visual projection and the IP-Adapter's token projection, whose outputs are the tokens) and, for
  int8, `attention`: the best mask IoU of the sets measured (docs/int8.md); `patch_embedding` (the patch
  conv on the pixels) is a group too, not kept (it did not help).
"""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import MonkeyError

VAE = "vae_decoder"
IMAGE_ENCODER = "image_encoder"
QUANTIZED_WITH_UNET = (VAE,)  # 8-bit whenever the UNet is (the image only)
OPT_IN = (IMAGE_ENCODER,)  # 8-bit only when asked (export --quantize-image-encoder): it feeds the mask
OPT_IN_FLAG = "--quantize-image-encoder"  # the one option that asks (cli/make_commands.py)
DEFAULT_KEEP = {  # measured on the tiny model (docs/int8.md); fp8 keeps small probabilities: attention quantized
    VAE: {"int8": ("io", "attention"), "fp8": ("io",)},
    IMAGE_ENCODER: {"int8": ("projection", "attention"), "fp8": ("projection",)},
}


def default_keep(network: str, precision: str) -> tuple[str, ...]:
    """The kept-precision groups of `network` at `precision` (the UNet's: quantize.DEFAULT_KEEP)."""
    from monkey_trt.export.quantize import DEFAULT_KEEP as UNET_KEEP

    if network == "unet":
        return UNET_KEEP[precision]
    if network not in DEFAULT_KEEP:
        raise MonkeyError(f"no 8-bit graph for {network!r} (8-bit networks: unet, {', '.join(DEFAULT_KEEP)})")
    return DEFAULT_KEEP[network][precision]


def networks_8bit(image_encoder: bool = False) -> tuple[str, ...]:
    """The networks an 8-bit export quantizes besides the UNet."""
    return QUANTIZED_WITH_UNET + (OPT_IN if image_encoder else ())


def all_8bit_networks() -> tuple[str, ...]:
    """Every network that may have an 8-bit graph (the staging's ownership list: quantize.quantized_file_names)."""
    return ("unet", *QUANTIZED_WITH_UNET, *OPT_IN)


def more_kept_nodes(graph, keep, weights: set[str]) -> dict[str, set[str]]:
    """The VAE decoder's and image encoder's groups (quantize.kept_nodes has the UNet's)."""
    keep, out = set(keep), {}
    weighted = lambda n: any(i in weights for i in n.input[1:2])  # noqa: E731
    if "upsample" in keep:
        out["upsample"] = {n.name for n in graph.node if n.op_type == "Conv" and "/upsamplers." in n.name}
    if "mid_attention" in keep:
        out["mid_attention"] = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and "/mid_block/attentions." in n.name
                                and weighted(n)}
    if "patch_embedding" in keep:
        out["patch_embedding"] = {n.name for n in graph.node if n.op_type == "Conv" and "/patch_embedding/" in n.name}
    if "projection" in keep:
        out["projection"] = {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                             and ("/visual_projection/" in n.name or n.name.startswith("/image_proj/"))}
    return out


def check_opt_in(precisions, image_encoder: bool) -> None:
    """`--quantize-image-encoder` needs an 8-bit precision to apply to."""
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS

    if image_encoder and not any(p in QUANTIZED_PRECISIONS for p in precisions):
        raise MonkeyError(f"{OPT_IN_FLAG} applies to --precision int8 or fp8 only")


def quantize_networks(root: Path, manifest, dst_dir: Path, precisions, spec, networks: tuple[str, ...], entries: dict,
                      say, settings: dict | None = None, cache: Path | None = None) -> dict:
    """Calibrate `networks` (VAE decoder, image encoder) on the fp32 engine `root` and write their 8-bit graphs
    of `precisions` into `dst_dir`; returns `entries` with them added. `settings`: (network, precision) ->
    QuantSettings (default: that network's)."""
    from monkey_trt.enginedir.manifest import NetworkEntry
    from monkey_trt.export.network_calibration import load_or_collect_inputs
    from monkey_trt.export.quantize import QuantSettings, write_quantized_network

    if not networks or not precisions:
        return entries
    say(f"calibrating: recording the {' and '.join(networks)} inputs on the fp32 engine", 0, 1)
    data, reused = load_or_collect_inputs(Path(root), manifest, spec, networks, progress=say, cache=cache)
    entries = dict(entries)
    for p in precisions:
        for name in networks:
            s = (settings or {}).get((name, p)) or QuantSettings(p, network=name)
            calib = {**spec.record(), "calls": data.calls(name), "data_sha256": data.digest(name), "reused_cache": reused,
                     "inputs": "pass 2's final latents" if name == VAE else "the cases' preprocessed subjects"}
            say(f"quantizing {name} to {p} ({data.calls(name)} calibration calls)", 0, 1)
            files, _report = write_quantized_network(manifest.path(root, name), dst_dir, name, data.feeds(name), s, calib)
            e = entries[name]
            entries[name] = NetworkEntry(e.desc, e.file, e.data_file, e.sha256, e.sizes, {**e.precisions, p: files})
    return entries
