"""One row of benchmarks/gpu_check.sh: a backend opened from a BackendSpec, the check's work, a JSON row.

    python benchmarks/gpu_check_backend.py --spec '{"backend": "trt", "precision": "fp16", "cuda_graph": true}' \
        --engine-dir E --model M --size 512 --reference ref.npz --soak 20 --out row.json

Every backend goes through the same `commands.backends.open_backend(BackendSpec(...))` the CLI uses, on the same request
(seed, size, knobs) and the same subject. `--reference` compares the mask (identical? IoU) and the image (PSNR,
max |diff|) with the CPU fp32 reference's arrays; `--save` writes this row's arrays (the reference run uses it).
`--soak N` runs N more generations: p50 (end to end and per stage), CUDA graphs captured after the first generation and after the soak (captured
once: equal), host RSS and GPU memory at the start and end of the soak (flat: small drift).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def _rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _gpu_used_mib() -> float | None:
    """Device memory in use (all of it, not only torch's allocator): TensorRT and ORT allocate outside torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        import shutil

        if shutil.which("nvidia-smi") is None:  # no NVIDIA GPU: no device memory to read (and no torch import for it)
            return None
        try:
            import torch  # noqa: F401  (only to read the device's free memory)
        except Exception:
            return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:
        return None


def graphs_captured(pipe) -> int | None:
    """CUDA graphs captured so far by the pipeline's UNet (torch GraphedUNet, ORT runner, TensorRT engine)."""
    graphed = getattr(pipe, "graphed", None)
    if graphed is not None:
        return len(graphed.graphs)
    unet = getattr(pipe, "runners", {}).get("unet")
    if unet is None:
        return None
    n = getattr(unet, "graphs_captured", None)  # OrtRunner and TrtEngine: public
    return n if isinstance(n, int) else None


def _info(pipe) -> dict:
    """What ran (device, dtype / providers, the TF32 mode per network): the backend's own info(), JSON-safe."""
    try:
        return json.loads(json.dumps(pipe.info(), default=str))
    except Exception:  # noqa: BLE001 - a row still reports its numbers
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="BackendSpec fields as JSON")
    ap.add_argument("--engine-dir", type=Path)
    ap.add_argument("--model", type=Path, required=True, help="folder from `monkey-trt tiny-model` (base/, ip-adapter/, subject.png)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="a dog on the beach")
    ap.add_argument("--reference", type=Path, help="arrays.npz of the CPU fp32 reference")
    ap.add_argument("--save", type=Path, help="write this run's image and mask here (.npz)")
    ap.add_argument("--soak", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="the row (JSON)")
    a = ap.parse_args(argv)

    import numpy as np

    from monkey_trt.core.config import Request
    from monkey_trt.core.errors import MonkeyError
    from monkey_trt.engine.compare import mask_iou, psnr
    from monkey_trt.commands.backends import ModelSource, open_backend
    from monkey_trt.runtime.backend import BackendSpec
    from monkey_trt.runtime.images import load_subject

    row: dict = {"spec": json.loads(a.spec)}
    try:
        spec = BackendSpec(**row["spec"])
        row["spec"] = spec.to_dict()
        request = Request(a.prompt, a.size, a.size, seed=a.seed)
        subject = load_subject(a.model / "subject.png")
        t0 = time.perf_counter()
        pipe = open_backend(spec, a.engine_dir, ModelSource(str(a.model / "base"), str(a.model / "ip-adapter")))
        row["load_s"] = time.perf_counter() - t0
        try:
            t = time.perf_counter()
            out = pipe(request, subject, batch_passes=spec.batch_passes)
            row["first_s"] = time.perf_counter() - t
            row["batched_steps"] = out.batched_steps
            stage_runs = [dict(out.timings)]  # seconds per stage (text, image, unet, vae, ...) of each generation
            image, mask = np.asarray(out.image, np.float32), np.asarray(out.mask.mask, np.float32)
            if a.save is not None:
                np.savez(a.save, image=image, mask=mask)
            if a.reference is not None:
                ref = np.load(a.reference)
                row["mask_identical"] = bool(np.array_equal(mask > 0, ref["mask"] > 0))
                row["mask_iou"] = float(mask_iou(mask > 0, ref["mask"] > 0))
                row["psnr_db"] = float(psnr(image, ref["image"]))
                row["max_abs_diff"] = float(np.abs(image - ref["image"]).max())
            row["graphs_after_first"] = graphs_captured(pipe)
            times = []
            rss0, gpu0 = _rss_mib(), _gpu_used_mib()
            for i in range(a.soak):
                t = time.perf_counter()
                o = pipe(request, subject, batch_passes=spec.batch_passes)
                times.append(time.perf_counter() - t)
                stage_runs = ([] if i == 0 else stage_runs) + [dict(o.timings)]  # the soak's, once there is one
            row.update(soak=a.soak, p50_s=statistics.median(times) if times else row["first_s"],
                       graphs_after_soak=graphs_captured(pipe), rss_start_mib=rss0, rss_end_mib=_rss_mib(),
                       gpu_start_mib=gpu0, gpu_end_mib=_gpu_used_mib(),
                       stages_p50_s={k: statistics.median(r.get(k, 0.0) for r in stage_runs) for k in stage_runs[0]},
                       info=_info(pipe))
        finally:
            close = getattr(pipe, "close", None)
            if close is not None:
                close()
        row["status"] = "ok"
    except MonkeyError as e:
        row.update(status="FAILED", error=str(e))
    except Exception as e:  # the row says what went wrong; the check goes on with the next backend
        row.update(status="FAILED", error=f"{type(e).__name__}: {e}")
    a.out.write_text(json.dumps(row, indent=1))
    print(json.dumps({k: v for k, v in row.items() if k != "spec"}))
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
