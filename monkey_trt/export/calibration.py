"""Calibration data for the 8-bit UNet: the inputs of every UNet call MONKEY makes, recorded from the fp32 engine.

    spec = CalibrationSpec.build(prompts_file=None, images_dir=None, size=8, height=256, width=256)
    data = load_or_collect(engine_dir, manifest, spec, progress=...)   # cached by content
    data.feeds()        # one feed dict per UNet call (batch 1), what onnxruntime.quantization reads
    data.digest         # sha256 of the arrays: the manifest records it

What the quantizer sees is what the UNet sees at run time: MONKEY's two passes on the exported fp32 engine
(ONNX Runtime, CPU), pass batching off, so each call is one batch-1 UNet call: pass 1 unmasked at IP scale
`scale_mask_pass` (1) up to its last mask step, pass 2's unmasked steps (IP scale 0) and its masked steps
(the real mask from pass 1), at the real LCM timesteps of both schedules. Cases are (prompt, subject,
seed) triples spread over prompts x subjects; the defaults (the MONKEY paper's 20 location prompts with the
embedded subject) need nothing from the network. Each case is one subject (N = 1 IP image per call). With several
subjects (docs/method.md) the 8-bit UNet runs pass 2 (pass 1 runs the fp32 UNet), whose masked steps add exactly one
image's IP output at each pixel (the final masks never overlap, the background takes the rest): the one-subject
ranges. Unmasked IP steps with several images (`adapter_steps`, the plain baseline) add every image's output there.

The recorded arrays are cached under `cache_dir()` keyed by everything that decides them (the engine's
fp32 network digests, prompts, subject image digests, size, image size, the method's defaults): an
unchanged export reuses them, a changed input records afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError

CALIB_VERSION = 1  # bump when what is recorded (or how) changes: old cache entries are then never read
DEFAULT_SIZE = 8  # (prompt, subject, seed) cases: 8 x 11 UNet calls with the default schedule
MAX_SIZE = 4096
EMBEDDED_SUBJECT = "embedded"  # the name the embedded subject is recorded under
DEFAULT_SUBJECT_PHRASE = "a toy"  # what the embedded subject (a teddy bear) is called in the default prompts
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
Progress = Callable[[str, int, int], None]


# -- what to calibrate on -------------------------------------------------------------------------
def default_prompts() -> tuple[str, ...]:
    """The MONKEY paper's 20 location prompts (appendix A.1) after the embedded subject's phrase."""
    from monkey_trt.core.prompts import PAPER_PROMPTS

    return tuple(f"{DEFAULT_SUBJECT_PHRASE} {p}" for p in PAPER_PROMPTS)


def read_prompts(path: Path) -> tuple[str, ...]:
    """`--calib-prompts FILE`: one prompt per line (UTF-8; blank lines and `#` comments skipped)."""
    from monkey_trt.core.prompts import read_prompt_file

    return read_prompt_file(path, "--calib-prompts")


@dataclass(frozen=True)
class CalibSubject:
    name: str  # file name, or EMBEDDED_SUBJECT
    sha256: str  # of the file's bytes (the embedded subject: of its PNG encoding)
    path: str | None = None

    def load(self):
        if self.path is None:
            return embedded_subject()
        from monkey_trt.runtime.images import load_subject

        return load_subject(self.path)


def embedded_subject():
    from monkey_trt.core.embedded_subject import draw_subject

    return draw_subject().convert("RGB")


def _embedded_entry() -> CalibSubject:
    buf = io.BytesIO()
    embedded_subject().save(buf, format="PNG")
    return CalibSubject(EMBEDDED_SUBJECT, hashlib.sha256(buf.getvalue()).hexdigest())


def read_images(folder: Path) -> tuple[CalibSubject, ...]:
    """`--calib-images DIR`: a folder holding only subject images (hidden files ignored); each one decodes.

    Refused with one line: a missing or unreadable folder, an empty one, and a mixed one (subfolders or
    files that are not images next to the images: calibrating on what the user did not mean is worse than
    stopping)."""
    from monkey_trt.runtime.images import load_subject

    d = Path(folder)
    if not d.exists():
        raise MonkeyError(f"--calib-images {d}: no such folder")
    if not d.is_dir():
        raise MonkeyError(f"--calib-images {d} is not a folder")
    try:
        entries = sorted((e for e in d.iterdir() if not e.name.startswith(".")), key=lambda e: e.name)
    except PermissionError:
        raise MonkeyError(f"--calib-images {d} cannot be read (permission denied)") from None
    images, others = [], []  # one pass (40k entries: a list membership test per entry was quadratic)
    for e in entries:
        _check_name(d, e.name)  # recorded in manifest.json: refused now, not after minutes of calibration
        if e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES:
            images.append(e)
        else:
            others.append(e.name + ("/" if e.is_dir() else ""))
    if not entries:
        raise MonkeyError(f"--calib-images {d} is empty: put the subject images to calibrate on there")
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise MonkeyError(f"--calib-images {d} mixes images with other entries ({shown}): give a folder of images only "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for e in images:
        load_subject(e)  # decodes fully (then let go): a damaged image is one line naming it
        h = hashlib.sha256()
        with open(e, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        out.append(CalibSubject(e.name, h.hexdigest(), str(e.absolute())))
    return tuple(out)


def _check_name(folder: Path, name: str) -> None:
    """A file name that is not valid UTF-8 (os.listdir gives it with surrogate escapes) cannot be recorded."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise MonkeyError(f"--calib-images {folder}: the file name '{shown}' is not valid UTF-8: rename it") from None


@dataclass(frozen=True)
class CalibrationSpec:
    """What to record: `size` cases (prompt, subject, seed) spread over prompts x subjects, at one image size."""

    prompts: tuple[str, ...]
    subjects: tuple[CalibSubject, ...]
    size: int = DEFAULT_SIZE
    height: int = 512
    width: int = 512
    config: MonkeyConfig = field(default_factory=MonkeyConfig)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_SIZE:
            raise MonkeyError(f"--calib-size must be in 1..{MAX_SIZE}, got {self.size!r}")
        if not self.prompts:
            raise MonkeyError("calibration needs at least one prompt")
        if not self.subjects:
            raise MonkeyError("calibration needs at least one subject image")

    @classmethod
    def build(cls, prompts_file: Path | None = None, images_dir: Path | None = None, size: int = DEFAULT_SIZE,
              height: int = 512, width: int = 512) -> "CalibrationSpec":
        """The export command's `--calib-prompts FILE --calib-images DIR --calib-size N` (defaults built in)."""
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
            raise MonkeyError(f"--calib-size must be in 1..{MAX_SIZE}, got {size!r}")
        prompts = read_prompts(prompts_file) if prompts_file is not None else default_prompts()
        subjects = read_images(images_dir) if images_dir is not None else (_embedded_entry(),)
        return cls(prompts, subjects, size, height, width)

    def cases(self) -> list[tuple[str, int, int]]:
        """(prompt, subject index, seed) per case, deterministic; the seed is the case index. Fewer cases than
        prompts x subjects: subjects in turn, prompts evenly spread; more: the whole grid again with new seeds."""
        P, S = len(self.prompts), len(self.subjects)
        if self.size >= P * S:
            return [(self.prompts[(i // S) % P], i % S, i) for i in range(self.size)]
        return [(self.prompts[(i * P) // self.size], i % S, i) for i in range(self.size)]

    def record(self) -> dict:
        """The manifest's calibration settings (prompts by digest: a user's prompt file may be private)."""
        return {"size": self.size, "height": self.height, "width": self.width, "cases": len(self.cases()),
                "prompts": len(self.prompts), "prompts_sha256": _digest_json(list(self.prompts)),
                "default_prompts": self.prompts == default_prompts(),
                "subjects": [{"name": s.name, "sha256": s.sha256} for s in self.subjects],
                "config": self.config.to_dict(), "version": CALIB_VERSION}

    def key(self, network_digests: dict) -> str:
        """Cache key: everything that decides the recorded arrays."""
        material = {"spec": self.record(), "prompts": list(self.prompts), "networks": network_digests}
        return _digest_json(material)[:32]


def _digest_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# -- the recorded arrays --------------------------------------------------------------------------
@dataclass
class CalibrationData:
    """One row per UNet call: `arrays[name]` is [calls, ...] (each call batch 1); `calls` says which call it was."""

    arrays: dict[str, np.ndarray]
    calls: list[dict]  # {"case", "pass", "step", "timestep", "ip_scale", "masked"}

    def __len__(self) -> int:
        return len(self.calls)

    def feeds(self, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        n = len(self) if limit is None else min(limit, len(self))
        return [{k: v[i] if k == "ip_scale" else v[i : i + 1] for k, v in self.arrays.items()} for i in range(n)]

    @property
    def digest(self) -> str:
        """sha256 over names, dtypes, shapes and bytes (order-independent of dict order)."""
        h = hashlib.sha256()
        for k in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[k])
            h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
        h.update(json.dumps(self.calls, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: Path, tmp_dir: Path | None = None) -> None:
        """Atomically; the temp file in `tmp_dir` (a staging folder) where given."""
        from monkey_trt.core.atomic import write_bytes_atomic

        buf = io.BytesIO()
        np.savez(buf, **self.arrays, __calls__=np.frombuffer(json.dumps(self.calls).encode(), np.uint8))
        write_bytes_atomic(Path(path), buf.getvalue(), tmp_dir=tmp_dir)

    @classmethod
    def load(cls, path: Path) -> "CalibrationData":
        with np.load(Path(path), allow_pickle=False) as z:
            calls = json.loads(bytes(z["__calls__"]).decode())
            return cls({k: z[k] for k in z.files if k != "__calls__"}, calls)


def collect(engine_dir: Path, spec: CalibrationSpec, progress: Progress | None = None, threads: int = 0,
            watchers: tuple = ()) -> CalibrationData:
    """Run MONKEY's two passes on the fp32 engine (ORT CPU) for every case and record each UNet call
    (through the pipeline's public hook, `MonkeyPipeline.watch_unet`). `watchers`: (network, observer) pairs
    attached to the same runs with `MonkeyPipeline.watch_network` (network_calibration records the VAE decoder's
    and image encoder's inputs this way: one fp32 generation per case for both recordings)."""
    from monkey_trt.runtime.noise import NoisePlan
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    cases = spec.cases()
    c = spec.config
    rows: list[dict] = []
    calls: list[dict] = []
    current: tuple[int, object] | None = None  # the one decoded subject held (cases cycle subjects: decoded per case)
    held: dict[str, np.ndarray] = {}  # the last array kept per input (_kept_row)
    # no arena (it grew ~1 GiB a case at 512²); every call on the full UNet, the map-only UNet not opened (adding int8
    # to a directory that has one: 2.5 GiB of weights more at sd15), as in one export where it is cut afterwards
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", providers=("cpu",), precision="fp32",
                                        threads=threads, verify="size", cpu_arena=False, map_only=False) as pipe, \
            contextlib.ExitStack() as watching:
        for network, observer in watchers:
            watching.enter_context(pipe.watch_network(network, observer))
        for i, (prompt, s, seed) in enumerate(cases):
            if progress is not None:
                progress(f"calibration case {i + 1}/{len(cases)}", i, len(cases))
            if current is None or current[0] != s:
                current = None  # let the previous one go before decoding the next
                current = (s, spec.subjects[s].load())
            sink: list = []
            req = Request(prompt=prompt, height=spec.height, width=spec.width, seed=seed, config=c)
            with pipe.watch_unet(lambda feeds: sink.append(_kept_row(feeds, held))):
                out = pipe(req, current[1], noise=NoisePlan.from_seed(seed, req.latent_shape(pipe.dims), c.noise_steps), batch_passes=False)
            labels = [(u.passes, u.step) for u in out.unet_calls]
            if len(labels) != len(sink):
                raise MonkeyError(f"calibration: recorded {len(sink)} UNet calls but the run reports {len(labels)}")
            for (passes, step), feeds in zip(labels, sink):
                scale = float(feeds["ip_scale"][0])
                calls.append({"case": i, "pass": passes, "step": int(step), "timestep": float(feeds["timestep"][0]),
                              "ip_scale": scale, "masked": bool(passes == "p2" and scale > 0)})
                rows.append(feeds)
    arrays = {k: np.stack([r[k] for r in rows]) if k == "ip_scale" else np.concatenate([r[k] for r in rows])
              for k in rows[0]}
    return CalibrationData(arrays, calls)


def _kept_row(feeds: dict, held: dict) -> dict:
    """One call's inputs, copied, except those bit-identical to the previous call's: that array is shared. A case's
    text, IP tokens, guidance and mask repeat over its calls (the pixel mask alone is 1 MiB a call at 512²), so the
    recording holds about one latent per call while the fp32 engine runs."""
    row = {}
    for k, v in feeds.items():
        v = np.asarray(v)
        last = held.get(k)
        same = (last is not None and last.shape == v.shape and last.dtype == v.dtype
                and np.array_equal(last.reshape(-1).view(np.uint8), np.ascontiguousarray(v).reshape(-1).view(np.uint8)))
        if not same:
            held[k] = np.array(v, copy=True)
        row[k] = held[k]
    return row


def cache_dir() -> Path:
    """$MONKEY_TRT_CALIB_CACHE, else <the user cache folder>/calibration ($MONKEY_TRT_CACHE, else
    $XDG_CACHE_HOME/monkey-trt or ~/.cache/monkey-trt: engine/derived_cache.cache_root)."""
    from monkey_trt.engine.derived_cache import cache_root

    env = os.environ.get("MONKEY_TRT_CALIB_CACHE")
    if env:
        return Path(env)
    return cache_root() / "calibration"


CACHE_KIND = "calibration"


def load_or_collect(engine_dir: Path, manifest, spec: CalibrationSpec, progress: Progress | None = None,
                    cache: Path | None = None, threads: int = 0, watchers: tuple = ()) -> tuple[CalibrationData, bool]:
    """(data, reused): the cached recording when every input is unchanged, else a fresh one (then cached).

    An entry is used only when its record (`calib-v2-<key>.json`, engine/derived_record.py) is ours and the
    current user's, for this key, with the file's sha256 and the arrays' digest matching; an entry of ours that
    is damaged or altered is replaced; anything else there (another user's, no record) is neither used nor
    overwritten. `watchers`: attached to a fresh recording's runs (collect), not called on a cache hit."""
    from monkey_trt.engine.derived_record import check_record, owned_by_me, remove_recorded

    digests = {n: dict(sorted(e.sha256.items())) for n, e in sorted(manifest.networks.items())}
    folder = Path(cache) if cache is not None else cache_dir()
    key = spec.key(digests)
    path, record = folder / f"calib-v2-{key}.npz", folder / f"calib-v2-{key}.json"
    state = check_record(record, CACHE_KIND, key, present=path)
    if state == "ok":
        try:
            data = CalibrationData.load(path)
            if data.digest == record_field(record, "data_sha256"):
                return data, True
        except Exception:  # noqa: BLE001 - a damaged entry of ours (zip, npy, json: numpy raises many kinds) is replaced
            pass
        state = "wrong"
    if state == "wrong":
        remove_recorded(record, CACHE_KIND)
    data = collect(engine_dir, spec, progress, threads, watchers)
    free = not os.path.lexists(path) and not os.path.lexists(record)  # never over a file we did not write
    if free and (not folder.exists() or owned_by_me(folder)):  # nor into another user's folder
        _save_entry(data, path, record, key)
    return data, False


def _save_entry(data: CalibrationData, path: Path, record: Path, key: str) -> None:
    save_cache_entry(path, record, CACHE_KIND, key, lambda stage: data.save(path, tmp_dir=stage), data.digest)


def save_cache_entry(path: Path, record: Path, kind: str, key: str, write: Callable[[Path], None], data_sha256: str) -> None:
    """A recording cache entry: `write(staging folder)` writes `path`, then its record; temp files in a staging folder
    whose marker lets the next run remove what a killed write left (core/output_folders.py), never by a name pattern."""
    from monkey_trt.core.output_folders import clean_stale_staging, make_staging, remove_staging
    from monkey_trt.engine.derived_record import write_record

    stage = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(path)
        stage = make_staging(path)
        write(stage)
        write_record(record, kind, key, {path.name: path}, extra={"data_sha256": data_sha256}, tmp_dir=stage)
    except OSError:
        pass  # a read-only cache costs time next run, never the export
    finally:
        if stage is not None:
            remove_staging(stage)


def record_field(record: Path, name: str):
    try:
        return json.loads(Path(record).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None


CALIB_MULTIPLE = 8  # SD1.5's VAE factor: calibration sizes are latent-aligned like every request


def calibration_from_options(precisions, profile, prompts_file: Path | None, images_dir: Path | None,
                             size: int | None, height: int | None = None, width: int | None = None) -> CalibrationSpec | None:
    """`export --calib-*`: the spec for the 8-bit precisions, every input checked now (before minutes of export);
    None when no 8-bit precision is asked (then --calib-* are refused).

    The calibration runs at the profile's opt size unless `--calib-height/--calib-width` ask for another size
    inside the profile (smaller: cheaper calibration; the manifest records the size used)."""
    from monkey_trt.enginedir.manifest import QUANTIZED_PRECISIONS

    if not any(p in QUANTIZED_PRECISIONS for p in precisions):
        given = [f for f, v in (("--calib-prompts", prompts_file), ("--calib-images", images_dir), ("--calib-size", size),
                                ("--calib-height", height), ("--calib-width", width)) if v is not None]
        if given:
            raise MonkeyError(f"{', '.join(given)} apply to --precision int8 or fp8 only")
        return None
    h = check_calib_side("--calib-height", height, profile.height)
    w = check_calib_side("--calib-width", width, profile.width)
    return CalibrationSpec.build(prompts_file, images_dir, DEFAULT_SIZE if size is None else size, height=h, width=w)


def check_calib_side(flag: str, value: int | None, rng) -> int:
    """A calibration side: the profile's opt when not given, else inside the profile's range, a multiple of 8."""
    if value is None:
        return rng.opt
    if isinstance(value, bool) or not isinstance(value, int) or value % CALIB_MULTIPLE:
        raise MonkeyError(f"{flag} must be a multiple of {CALIB_MULTIPLE}, got {value!r}")
    if not rng.contains(value):
        raise MonkeyError(f"{flag} {value} is outside the engine profile {rng.min}..{rng.max} "
                          "(calibrate at a size the engine serves, or re-export with --min/--max)")
    return value
