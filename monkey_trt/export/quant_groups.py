"""Which networks have 8-bit graphs besides the UNet, and which of their layers stay float (the groups quantize.kept_nodes adds).

    networks_8bit(image_encoder=False)      # ("vae_decoder",): what --precision int8|fp8 quantizes besides the UNet
    default_keep("vae_decoder", "int8")      # ("io", "attention")

What each group keeps and why: export/quantize_nets.py (the module that quantizes them); the measurements:
docs/int8.md. Lean (no onnx import): the graph is walked by node names.
"""

from __future__ import annotations

from monkey_trt.core.errors import MonkeyError

VAE = "vae_decoder"
IMAGE_ENCODER = "image_encoder"
QUANTIZED_WITH_UNET = (VAE,)  # 8-bit whenever the UNet is (it shapes the image only)
OPT_IN = (IMAGE_ENCODER,)  # 8-bit only when asked: it feeds the mask
OPT_IN_FLAG = "--quantize-image-encoder"  # the one option that asks (cli/make_commands.py)
# fp8's only calibration (onnxruntime's "distribution") keeps every calibrated tensor of every call until the end:
# a VAE decoder call at 512² is several GB of them, so fp8 calibrates these networks on their first calls only
FP8_CALIB_CALLS = 2
DEFAULT_KEEP = {  # measured on the tiny model (docs/int8.md); fp8 keeps small probabilities: attention quantized
    VAE: {"int8": ("io", "attention"), "fp8": ("io",)},
    IMAGE_ENCODER: {"int8": ("projection", "attention"), "fp8": ("projection",)},
}


def default_keep(network: str, precision: str) -> tuple[str, ...]:
    """The kept-precision groups of the VAE decoder or image encoder at `precision` (the UNet's: quantize.DEFAULT_KEEP)."""
    if network not in DEFAULT_KEEP:
        raise MonkeyError(f"no 8-bit graph for {network!r} (8-bit networks: {', '.join(all_8bit_networks())})")
    return DEFAULT_KEEP[network][precision]


def networks_8bit(image_encoder: bool = False) -> tuple[str, ...]:
    """The networks an 8-bit export quantizes besides the UNet."""
    return QUANTIZED_WITH_UNET + (OPT_IN if image_encoder else ())


def all_8bit_networks() -> tuple[str, ...]:
    """Every network that may have an 8-bit graph (the staging's ownership list: quantize.quantized_file_names)."""
    return ("unet", *QUANTIZED_WITH_UNET, *OPT_IN)


def more_kept_nodes(graph, keep, weights: set[str]) -> dict[str, set[str]]:
    """Group -> names of the nodes it keeps in float, for the VAE decoder's and image encoder's groups."""
    keep, out = set(keep), {}
    weighted = lambda n: any(i in weights for i in n.input[1:2])
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
