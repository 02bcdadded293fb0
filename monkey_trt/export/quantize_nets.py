"""The 8-bit VAE decoder (always, with the UNet) and image encoder (opt-in): which layers stay float, and their calibration.

    manifest = add_8bit(root, manifest, dst_dir, ("int8",), spec, progress=say, image_encoder=False)

The same quantizer as the UNet's (export/quantize.py: onnxruntime.quantization, QDQ, symmetric int8 or
float8 e4m3fn, per-channel weights, one Q/DQ pair per consumer), calibrated on what each network sees when
MONKEY runs on the fp32 engine (export/network_calibration.py): the VAE decoder on pass 2's final latents,
the image encoder on the cases' preprocessed subjects.

* **VAE decoder** (quantized with every 8-bit export): it only shapes the final image, never the mask.
  Kept in float by default (each a `KEEP` group, quant_groups.py; the per-group table is in docs/int8.md): `io`
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

fp8 calibrates them on their first FP8_CALIB_CALLS recorded calls (quant_groups.py: onnxruntime's float8
calibration holds every calibrated tensor of every call in memory; recorded in the manifest's settings).
"""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import MonkeyError
from monkey_trt.export.quant_groups import (
    FP8_CALIB_CALLS,
    OPT_IN_FLAG,
    VAE,
    networks_8bit,
)
from monkey_trt.export.quantize import (
    QuantSettings,
    add_quantized,
    write_quantized_network,
)


def check_opt_in(precisions, image_encoder: bool) -> None:
    """`--quantize-image-encoder` needs an 8-bit precision to apply to."""
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS

    if image_encoder and not any(p in QUANTIZED_PRECISIONS for p in precisions):
        raise MonkeyError(f"{OPT_IN_FLAG} applies to --precision int8 or fp8 only")


def add_8bit(root: Path, manifest, dst_dir: Path, precisions, spec, progress=None, image_encoder: bool = False,
             cache: Path | None = None):
    """The 8-bit graphs of `precisions`: the UNet (quantize.add_quantized), the VAE decoder and, when asked, the
    image encoder, each calibrated on the fp32 engine `root`, written into `dst_dir`; returns the manifest."""
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS, Manifest

    todo = [p for p in precisions if p in QUANTIZED_PRECISIONS]
    networks = networks_8bit(image_encoder)
    updated = add_quantized(root, manifest, dst_dir, todo, spec, progress=progress, cache=cache, record_also=networks)
    say = progress or (lambda msg, done, total: None)
    entries = quantize_networks(root, manifest, dst_dir, todo, spec, networks, updated.networks, say, cache=cache)
    return Manifest(**{**updated.__dict__, "networks": entries})


def quantize_networks(root: Path, manifest, dst_dir: Path, precisions, spec, networks: tuple[str, ...], entries: dict,
                      say, settings: dict | None = None, cache: Path | None = None) -> dict:
    """Calibrate `networks` (VAE decoder, image encoder) on the fp32 engine `root` and write their 8-bit graphs
    of `precisions` into `dst_dir`; returns `entries` with them added. `settings`: (network, precision) ->
    QuantSettings (default: that network's)."""
    from monkey_trt.enginedir.manifest import NetworkEntry
    from monkey_trt.export.network_calibration import load_or_collect_inputs

    if not networks or not precisions:
        return entries
    say(f"calibrating: recording the {' and '.join(networks)} inputs on the fp32 engine", 0, 1)
    data, reused = load_or_collect_inputs(Path(root), manifest, spec, networks, progress=say, cache=cache)
    entries = dict(entries)
    for p in precisions:
        for name in networks:
            s = (settings or {}).get((name, p)) or QuantSettings(p, network=name, calib_calls=FP8_CALIB_CALLS if p == "fp8" else None)
            calib = {**spec.record(), "calls": data.calls(name), "data_sha256": data.digest(name), "reused_cache": reused,
                     "inputs": "pass 2's final latents" if name == VAE else "the cases' preprocessed subjects"}
            say(f"quantizing {name} to {p} ({data.calls(name)} calibration calls)", 0, 1)
            files, _report = write_quantized_network(manifest.path(root, name), dst_dir, name, data.feeds(name), s, calib)
            e = entries[name]
            entries[name] = NetworkEntry(e.desc, e.file, e.data_file, e.sha256, e.sizes, {**e.precisions, p: files})
    return entries
