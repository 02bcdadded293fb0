"""What `monkey-trt eval` costs besides generation: the judges at their real sizes and the harness itself.

    python benchmarks/eval_harness.py [--size 512] [--images 64] [--batch 32] [--device cpu]

1. judges: CLIP ViT-B/32 and DINO ViT-S/16 with the real architectures (random weights, nothing is
   downloaded), seconds per image for one batch of `--batch` images through the judges' own code;
2. harness: a whole eval run (2 subjects x N prompts x monkey + ipadapter@1.0) with a stand-in
   generator that costs nothing and the tiny judges, so what is left is PNG writing, rows.csv,
   resume bookkeeping and the report: seconds per image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from monkey_trt.eval.generation import BackendSpec, Generated
from monkey_trt.eval.options import parse_methods
from monkey_trt.eval.protocol import EvalJob, prepare, run_eval


def real_size_judges(folder: Path, device: str):
    """ClipJudge/DinoJudge over random-weight ViT-B/32 CLIP and ViT-S/16 DINO written in hub layout."""
    from transformers import CLIPConfig, CLIPModel, ViTConfig, ViTModel

    from monkey_trt.eval.judges import ClipJudge, DinoJudge, resolve_judge
    from monkey_trt.eval.tiny_judges import write_tiny_clip

    clip_dir = write_tiny_clip(folder / "clip")  # tokenizer + preprocessor files; the model is replaced below
    vocab = CLIPModel.from_pretrained(clip_dir).config.text_config.vocab_size
    text = {"vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1}
    CLIPModel(CLIPConfig(text_config=text, projection_dim=512)).save_pretrained(clip_dir)
    dino_dir = folder / "dino"
    ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16),
             add_pooling_layer=False).save_pretrained(dino_dir)
    return (ClipJudge.load(resolve_judge(str(clip_dir), "clip"), device),
            DinoJudge.load(resolve_judge(str(dino_dir), "dino"), device))


class FreeGenerator:
    def __init__(self, spec, precision, request):
        pass

    def __call__(self, method, request, subject, noise) -> Generated:
        lat = np.kron(noise.latents[0, :3], np.ones((8, 8), np.float32)).transpose(1, 2, 0)
        image = (np.clip(0.5 + 0.2 * lat, 0, 1) * 255).astype(np.uint8)
        mask = (lat[..., 0] > 0).astype(np.uint8) * 255 if method.kind == "monkey" else None
        return Generated(image, mask, None if mask is None else float((mask > 0).mean()), 0.0)

    def close(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=64, help="harness run: about this many images")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, dino = real_size_judges(tmp / "real", a.device)
        images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (a.size, a.size, 3), np.uint8)) for i in range(a.batch)]
        clip.image_embeds(images[:2]), dino.image_embeds(images[:2])  # warm-up
        t0 = time.perf_counter()
        clip.image_embeds(images)
        t1 = time.perf_counter()
        dino.image_embeds(images)
        t2 = time.perf_counter()
        clip.text_embeds([f"a dog on the beach {i}" for i in range(a.batch)])
        t3 = time.perf_counter()
        print(f"judges at real sizes, batch {a.batch} of {a.size}x{a.size} on {a.device}: CLIP image {(t1 - t0) / a.batch * 1e3:.1f} ms, "
              f"DINO {(t2 - t1) / a.batch * 1e3:.1f} ms, CLIP text {(t3 - t2) / a.batch * 1e3:.1f} ms per item")

        from monkey_trt.eval.tiny_judges import write_tiny_judges

        tiny = write_tiny_judges(tmp / "tiny")
        subjects = tmp / "subjects"
        subjects.mkdir()
        for name, colour in (("dog.png", (120, 80, 40)), ("red_box.png", (220, 30, 30))):
            Image.new("RGB", (a.size, a.size), colour).save(subjects / name)
        prompts = tmp / "prompts.txt"
        prompts.write_text("\n".join(f"in place number {i}" for i in range(max(a.images // 4, 1))) + "\n")
        job = EvalJob(subjects_dir=subjects, out=tmp / "out", spec=BackendSpec("torch", None, "b", "i", "w"), height=a.size,
                      width=a.size, methods=parse_methods("monkey,ipadapter@1.0"), precisions=("fp32",), prompts=str(prompts),
                      clip=str(tiny[0]), dino=str(tiny[1]), judge_device=a.device, judge_batch=a.batch)
        t0 = time.perf_counter()
        result = run_eval(prepare(job), open_gen=FreeGenerator)
        total = time.perf_counter() - t0
        n = len(result.rows)
        print(f"harness (tiny judges, free generator): {n} images of {a.size}x{a.size} in {total:.2f} s = {total / n * 1e3:.1f} ms per image")
        t0 = time.perf_counter()
        again = run_eval(prepare(job), open_gen=FreeGenerator)
        print(f"re-run with everything done: {time.perf_counter() - t0:.2f} s ({again.reused} rows reused)")


if __name__ == "__main__":
    main()
