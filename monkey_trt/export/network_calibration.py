"""Calibration inputs of the 8-bit VAE decoder and image encoder: what they see when MONKEY runs, recorded on the fp32 engine.

    data, reused = load_or_collect_inputs(engine_dir, manifest, spec, ("vae_decoder",), progress=...)
    data.feeds("vae_decoder")   # one feed dict per call: {"latents": [1, 4, h, w]}, pass 2's final latents
    data.digest("vae_decoder")  # sha256 of its arrays: the manifest's calibration record

The same cases as the UNet's calibration (export/calibration.CalibrationSpec: prompt, subject, seed at the
engine's opt size), run through MONKEY on the fp32 engine (ONNX Runtime, CPU); the pipeline's public hook
`MonkeyPipeline.watch_network` records each decoder and image-encoder call's inputs. A case decodes only
pass 2's final latents (no pass-1 image, no baseline), so the decoder is calibrated on exactly what it
decodes at run time; the image encoder sees each case's preprocessed subject. One array per call is small
(the latents: 64 KiB at 512², the pixels: 600 KiB), so the inputs are kept, never summarised.

Cached like the UNet's recording (`calibration.cache_dir()`, a record per entry: engine/derived_record.py),
under its own kind and key, so adding fp8 after int8 records nothing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monkey_trt.core.config import Request

CACHE_KIND = "calibration-inputs"
INPUTS_VERSION = 1  # bump when what is recorded changes: old cache entries are then never read
INPUT_NAMES = {"vae_decoder": "latents", "image_encoder": "pixel_values"}  # the one input each network takes


@dataclass
class NetworkInputs:
    """network -> its recorded input, [calls, ...] (each call batch 1)."""

    arrays: dict[str, np.ndarray]

    def feeds(self, network: str) -> list[dict[str, np.ndarray]]:
        a = self.arrays[network]
        return [{INPUT_NAMES[network]: a[i : i + 1]} for i in range(len(a))]

    def calls(self, network: str) -> int:
        return len(self.arrays[network])

    def digest(self, network: str) -> str:
        a = np.ascontiguousarray(self.arrays[network])
        return hashlib.sha256(f"{network}|{a.dtype.str}|{a.shape}|".encode() + a.tobytes()).hexdigest()

    def all_digest(self) -> str:
        return hashlib.sha256("|".join(f"{n}:{self.digest(n)}" for n in sorted(self.arrays)).encode()).hexdigest()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.arrays)
        return buf.getvalue()

    @classmethod
    def load(cls, path: Path) -> NetworkInputs:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})


def input_recorder(network: str, rows: list):
    """A `MonkeyPipeline.watch_network` callback appending a copy of each call's input to `rows`."""
    key = INPUT_NAMES[network]
    return lambda feeds: rows.append(np.array(feeds[key], np.float32, copy=True))


def collect_inputs(engine_dir: Path, spec, networks: tuple[str, ...], progress=None, threads: int = 0) -> NetworkInputs:
    """Run MONKEY on the fp32 engine (ORT CPU) for every case of `spec` and record the inputs of `networks`
    (image_encoder, vae_decoder) through `MonkeyPipeline.watch_network`."""
    from monkey_trt.runtime.noise import NoisePlan
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    cases, c = spec.cases(), spec.config
    rows: dict[str, list[np.ndarray]] = {n: [] for n in networks}
    current = None  # (subject index, decoded image): one held at a time
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cpu",), precision="fp32", threads=threads,
                                        verify="size", cpu_arena=False, map_only=False) as pipe, contextlib.ExitStack() as watching:
        for n in networks:
            watching.enter_context(pipe.watch_network(n, input_recorder(n, rows[n])))
        for i, (prompt, s, seed) in enumerate(cases):
            if progress is not None:
                progress(f"calibration case {i + 1}/{len(cases)} ({', '.join(networks)})", i, len(cases))
            if current is None or current[0] != s:
                current = None
                current = (s, spec.subjects[s].load())
            req = Request(prompt=prompt, height=spec.height, width=spec.width, seed=seed, config=c)
            pipe(req, current[1], noise=NoisePlan.from_seed(seed, req.latent_shape(pipe.dims), c.noise_steps))
    return NetworkInputs({n: np.concatenate(rows[n]) for n in networks})


def _key(spec, networks: tuple[str, ...], manifest) -> str:
    digests = {n: dict(sorted(e.sha256.items())) for n, e in sorted(manifest.networks.items())}
    material = {"spec": spec.record(), "prompts": list(spec.prompts), "networks": digests,
                "recorded": sorted(networks), "version": INPUTS_VERSION}
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class InputsEntry:
    """Where the recording of `networks` for one (spec, engine) is cached: `inputs-v1-<key>.npz` + its record."""

    folder: Path
    networks: tuple[str, ...]
    key: str

    @property
    def path(self) -> Path:
        return self.folder / f"inputs-v1-{self.key}.npz"

    @property
    def record(self) -> Path:
        return self.folder / f"inputs-v1-{self.key}.json"

    def state(self) -> str:
        from monkey_trt.engine.derived_record import check_record

        return check_record(self.record, CACHE_KIND, self.key, present=self.path)


def inputs_entry(manifest, spec, networks: tuple[str, ...], cache: Path | None = None) -> InputsEntry:
    from monkey_trt.export.calibration import cache_dir

    networks = tuple(sorted(networks))
    return InputsEntry(Path(cache) if cache is not None else cache_dir(), networks, _key(spec, networks, manifest))


def store_inputs(data: NetworkInputs, entry: InputsEntry) -> None:
    """Cache `data` at `entry`, never over a file we did not write nor into another user's folder."""
    from monkey_trt.engine.derived_record import owned_by_me

    free = not os.path.lexists(entry.path) and not os.path.lexists(entry.record)
    if free and (not entry.folder.exists() or owned_by_me(entry.folder)):
        _save(data, entry.path, entry.record, entry.key)


def load_or_collect_with_unet(engine_dir: Path, manifest, spec, networks: tuple[str, ...], progress=None,
                              cache: Path | None = None, threads: int = 0):
    """The UNet's recording (calibration.load_or_collect: (data, reused)) and, in the same fp32 generations when
    it has to run, the inputs of `networks`, cached under load_or_collect_inputs' key when they have no entry yet:
    an export then runs MONKEY once per calibration case for both recordings, not twice."""
    from monkey_trt.export.calibration import load_or_collect

    entry = inputs_entry(manifest, spec, networks, cache) if networks else None
    rows: dict[str, list] = {n: [] for n in entry.networks} if entry is not None and entry.state() == "missing" else {}
    data, reused = load_or_collect(engine_dir, manifest, spec, progress, cache, threads,
                                   watchers=tuple((n, input_recorder(n, r)) for n, r in rows.items()))
    if rows and not reused:
        store_inputs(NetworkInputs({n: np.concatenate(r) for n, r in rows.items()}), entry)
    return data, reused


def load_or_collect_inputs(engine_dir: Path, manifest, spec, networks: tuple[str, ...], progress=None,
                           cache: Path | None = None, threads: int = 0) -> tuple[NetworkInputs, bool]:
    """(inputs, reused): the cached recording when every input is unchanged, else a fresh one (then cached).
    An entry is used only when its record is ours, for this key, with the file's sha256 and the arrays'
    digest matching; one of ours that is damaged is replaced; anything else there is never touched.
    (An export records these inputs in the UNet's recording run when it can: load_or_collect_with_unet.)"""
    from monkey_trt.engine.derived_record import remove_recorded
    from monkey_trt.export.calibration import record_field

    entry = inputs_entry(manifest, spec, networks, cache)
    state = entry.state()
    if state == "ok":
        try:
            data = NetworkInputs.load(entry.path)
            if data.all_digest() == record_field(entry.record, "data_sha256") and set(data.arrays) == set(entry.networks):
                return data, True
        except Exception:  # noqa: BLE001 - a damaged entry of ours (zip, npy: numpy raises many kinds) is replaced
            pass
        state = "wrong"
    if state == "wrong":
        remove_recorded(entry.record, CACHE_KIND)
    data = collect_inputs(engine_dir, spec, entry.networks, progress, threads)
    store_inputs(data, entry)
    return data, False


def _save(data: NetworkInputs, path: Path, record: Path, key: str) -> None:
    """The arrays, then their record (export/calibration.save_cache_entry)."""
    from monkey_trt.core.atomic import write_bytes_atomic
    from monkey_trt.export.calibration import save_cache_entry

    save_cache_entry(path, record, CACHE_KIND, key, lambda stage: write_bytes_atomic(path, data.to_bytes(), tmp_dir=stage),
                     data.all_digest())
