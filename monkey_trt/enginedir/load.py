"""Read an engine directory and check it against its manifest before anything runs (the README's "Trust model").

    manifest = load_manifest(root, verify="sha256")   # or read_manifest(root): the manifest alone

* the manifest (at most MANIFEST_MAX_BYTES, not a symlink leaving the directory) is validated against
  MANIFEST_SCHEMA (types, not only keys, and a range for every number; floats finite), then the numbers
  that must agree with each other (check_ranges) and the declared inputs/outputs against networks.py;
* every path in it is a plain relative name that stays inside the directory (no absolute path,
  no `..`, no symlink leaving it) and no two entries (nor the manifest) reach one file, by name,
  symlink or hard link;
* every file the runtime opens (each network's `.onnx` and `.onnx.data`, `tokenizer/tokenizer.json`)
  has a digest and a size, and is checked before anything runs: `verify="sha256"` hashes all of
  them, `verify="size"` checks the sizes of the networks and hashes the small files;
* every graph is read (onnx_scan.py, no weights, no onnx) before any session opens: external data only in
  the data file its entry lists, inputs and outputs as declared.
Every fault is an EngineDirError with one line naming the directory and what is wrong. Lean: stdlib + jsonschema.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from monkey_trt.core.errors import EngineDirError
from monkey_trt.core.output_folders import inside, safe_relpath
from monkey_trt.enginedir.digests import verify_files
from monkey_trt.enginedir.remembered import passed, remember_pass
from monkey_trt.enginedir.manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, Manifest
from monkey_trt.enginedir.manifest_schema import (
    MANIFEST_MAX_BYTES,
    MANIFEST_SCHEMA,
    MAX_DICT,
    MAX_LIST,
    MAX_VALUES,
    SYMBOLS,
)
from monkey_trt.enginedir.networks import network_descs


def read_manifest(root: Path, remember: bool = True) -> Manifest:
    """Read ENGINE_DIR/manifest.json and check its schema, ranges and paths (no file contents but the manifest's).
    `remember`: a schema validation of these very bytes is remembered (enginedir/remembered.py; not for `--verify rehash`).

    Every fault is an EngineDirError with one line naming the directory and what is wrong.
    """
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise EngineDirError(f"engine directory {root} does not exist (run `monkey-trt export --out {root}` first)")
    if not mpath.is_file():
        raise EngineDirError(f"{root} is not an engine directory: {MANIFEST} is missing")
    if not inside(root, MANIFEST):
        raise EngineDirError(f"{root}: {MANIFEST} is a symlink leaving the engine directory")
    raw, digest = _read_json(mpath)
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise EngineDirError(f"{mpath} is not a monkey-trt manifest")
    version = raw.get("schema_version")
    if type(version) is int and version != SCHEMA_VERSION:
        raise EngineDirError(f"{mpath} has schema version {version}, this monkey-trt reads {SCHEMA_VERSION}: re-export the engine directory")
    if not (remember and passed("manifest-schema", {"sha256": digest})):  # these very bytes validated before
        _check_list_lengths(raw, mpath)
        _validate_schema(raw, mpath)
        if remember:
            remember_pass("manifest-schema", {"sha256": digest})
    try:
        manifest = Manifest.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:  # the schema should have caught it; keep it one line anyway
        raise EngineDirError(f"{mpath} is malformed: {type(e).__name__}: {e}") from None
    check_ranges(manifest, mpath)
    check_signatures(manifest, mpath)
    check_paths(root, manifest)
    return manifest


def _read_json(mpath: Path):
    """(The manifest's JSON, the sha256 of its bytes): refused when larger than MANIFEST_MAX_BYTES (unread), nested too deep, with
    NaN/Infinity, a float that overflows or an integer too long to convert."""
    def finite(text: str) -> float:
        x = float(text)
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError(f"number {text[:40]} is out of range")
        return x

    def no_constant(name: str):
        raise ValueError(f"{name} is not a number")

    try:
        with open(mpath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MANIFEST_MAX_BYTES:
                raise EngineDirError(f"{mpath} is too large ({size} bytes; a manifest is at most {MANIFEST_MAX_BYTES})")
            data = f.read(MANIFEST_MAX_BYTES + 1)
        if len(data) > MANIFEST_MAX_BYTES:
            raise EngineDirError(f"{mpath} is too large (more than {MANIFEST_MAX_BYTES} bytes)")
        return json.loads(data.decode("utf-8"), parse_float=finite, parse_constant=no_constant), hashlib.sha256(data).hexdigest()
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError and int-conversion limits included
        why = "an integer has too many digits" if "integer string conversion" in str(e) else " ".join(str(e).split())[:200]
        raise EngineDirError(f"{mpath} is corrupt: {why}") from None
    except RecursionError:
        raise EngineDirError(f"{mpath} is corrupt: nested too deep") from None


def _check_list_lengths(raw: dict, mpath: Path) -> None:
    """Bounded sizes (lists, objects, values in all; the free-form `source`/`exporter` aside), refused before
    the schema validates item by item, which would take minutes for the millions of values 16 MiB hold."""
    todo = [(v, k) for k, v in raw.items() if k not in ("source", "exporter")]
    total = 0
    while todo:
        node, where = todo.pop()
        size = len(node) if isinstance(node, (list, dict)) else 0
        total += size
        limit = MAX_LIST if isinstance(node, list) else MAX_DICT
        if size > limit or total > MAX_VALUES:
            where = " ".join(where.split())[:120]
            what = f"has {size} {'items' if isinstance(node, list) else 'entries'}, at most {limit} allowed" if size > limit \
                else f"the manifest holds more than {MAX_VALUES} values"
            raise EngineDirError(f"{mpath} is malformed at {where}: {what}")
        if isinstance(node, list):
            todo += [(v, f"{where}/{i}") for i, v in enumerate(node) if isinstance(v, (list, dict))]
        elif isinstance(node, dict):
            todo += [(v, f"{where}/{str(k)[:80]}") for k, v in node.items() if isinstance(v, (list, dict))]


def _validate_schema(raw: dict, mpath: Path) -> None:
    import jsonschema

    try:
        e = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(raw))
    except RecursionError:
        raise EngineDirError(f"{mpath} is malformed: nested too deep") from None
    if e is not None:
        where = " ".join("/".join(str(p)[:80] for p in e.absolute_path).split()) or "top level"
        raise EngineDirError(f"{mpath} is malformed at {where}: {_schema_message(e)}")


def _schema_message(e) -> str:
    """jsonschema's message, without a huge instance in it (a 300000-item list is "has 300000 items")."""
    inst = e.instance
    if e.validator in ("maxItems", "minItems") and isinstance(inst, list):
        return f"has {len(inst)} items, {'at most' if e.validator == 'maxItems' else 'at least'} {e.validator_value} allowed"
    if e.validator in ("maxProperties", "minProperties") and isinstance(inst, dict):
        return f"has {len(inst)} entries, {'at most' if e.validator == 'maxProperties' else 'at least'} {e.validator_value} allowed"
    if e.validator == "anyOf" and list(e.absolute_path)[-2:-1] == ["shape"]:
        return f"{' '.join(repr(inst)[:60].split())} is not a dimension (an integer or one of {', '.join(SYMBOLS)})"
    return " ".join(e.message.split())[:200]


def check_ranges(manifest: Manifest, mpath: Path) -> None:
    """What the schema cannot say: the numbers that must agree with each other (table lengths, counts, sizes)."""
    m, sch, dims = manifest, manifest.scheduler, manifest.dims
    T = sch.num_train_timesteps
    faults = [
        (len(sch.alphas_cumprod) != T, f"scheduler has {len(sch.alphas_cumprod)} alphas_cumprod values for num_train_timesteps {T}"),
        (len(sch.coeffs) not in (0, 4 * T), f"scheduler coeffs must be 4 x {T} values (or none), got {len(sch.coeffs)}"),
        (len(sch.guidance_freqs) not in (0, dims.time_cond_dim // 2),
         f"scheduler guidance_freqs must be {dims.time_cond_dim // 2} values (or none), got {len(sch.guidance_freqs)}"),
        (sch.original_inference_steps > T, f"scheduler original_inference_steps {sch.original_inference_steps} exceeds num_train_timesteps {T}"),
        (len(m.ip_layers) != dims.n_ip_layers, f"{len(m.ip_layers)} ip_layers for dims n_ip_layers {dims.n_ip_layers}"),
        (len(set(m.ip_layers)) != len(m.ip_layers), "ip_layers repeats a layer"),
        (m.mask_layer not in m.ip_layers, f"mask_layer {m.mask_layer[:80]!r} is not one of ip_layers"),
        (m.preprocess.size != dims.image_size, f"preprocess size {m.preprocess.size} is not the image encoder's {dims.image_size}"),
        (m.max_ip_images < m.max_subjects,
         f"max_subjects {m.max_subjects} but the UNet takes {m.max_ip_images} IP image(s) per call"),
    ]
    for side in ("height", "width"):
        rng = getattr(m.profile, side)
        faults.append((any(v % dims.vae_factor for v in rng.as_list()),
                       f"profile {side} {rng.as_list()} is not a multiple of vae_factor {dims.vae_factor}"))
    for bad, why in faults:
        if bad:
            raise EngineDirError(f"{mpath} is malformed: {why}")


def check_signatures(manifest: Manifest, mpath: Path) -> None:
    """Each network's declared inputs and outputs are the ones the runtime feeds and reads (networks.py):
    names in order, dtypes and ranks."""
    expected = network_descs(manifest.dims)
    for name, entry in manifest.networks.items():
        want = expected.get(name)
        if want is None:
            continue  # not a network the runtime opens
        for kind in ("inputs", "outputs"):
            got_ts, want_ts = getattr(entry.desc, kind), getattr(want, kind)
            got = [(t.name, t.dtype, len(t.shape)) for t in got_ts]
            need = [(t.name, t.dtype, len(t.shape)) for t in want_ts]
            if got != need:
                show = lambda ts: ", ".join(f"{n[:40]!r} {d} rank {r}" for n, d, r in ts[:10])  # noqa: E731
                raise EngineDirError(f"{mpath}: network {name} declares {kind} [{show(got)}]; the runtime uses [{show(need)}]")


def check_paths(root: Path, manifest: Manifest) -> None:
    """Every listed file: a plain relative name inside `root`, owned by one entry, with a digest and a size;
    no two entries reach one file by any route (symlinks, hard links), nor the manifest itself."""
    owner: dict[str, str] = {}
    seen: dict[tuple[int, int], str] = {}

    def identity(fname: str) -> tuple[int, int] | None:
        try:
            st = os.stat(Path(root) / fname)  # follows symlinks: where a runtime's open() lands
        except OSError:
            return None  # missing: verify_files says so
        return st.st_dev, st.st_ino

    def claim(fname: str, who: str) -> None:
        if safe_relpath(fname) != fname or not inside(root, fname):
            raise EngineDirError(f"{root}: {who} names {fname!r}, which is not a plain relative path inside the engine directory")
        if fname in owner or fname == MANIFEST:
            raise EngineDirError(f"{root}: {who} and {owner.get(fname, 'the manifest')} share the file {fname!r}")
        key = identity(fname)
        if key is not None and key in seen:
            other = seen[key]
            raise EngineDirError(f"{root}: {fname!r} ({who}) and {other!r} ({owner.get(other, 'the manifest')}) are the same file "
                                 "(a symlink or hard link): every entry needs its own")
        owner[fname] = who
        if key is not None:
            seen[key] = fname

    manifest_key = identity(MANIFEST)
    if manifest_key is not None:
        seen[manifest_key] = MANIFEST
    for name, entry in manifest.networks.items():
        for precision in ("fp32", *entry.precisions):
            file, digests, sizes = entry.files(precision)
            data_file = entry.data_file if precision == "fp32" else entry.precisions[precision].data_file
            wanted = {file} | ({data_file} if data_file else set())
            who = f"network {name}" + ("" if precision == "fp32" else f" ({precision})")
            if set(digests) != wanted or set(sizes) != wanted:
                raise EngineDirError(f"{root}: {who} must list a sha256 and a size for exactly {sorted(wanted)}, "
                                     f"got digests for {sorted(digests)} and sizes for {sorted(sizes)}")
            for fname in sorted(wanted):
                claim(fname, who)
    for fname in manifest.files:
        claim(fname, "files")


def check_graphs(root: Path, manifest: Manifest, proven: bool = False) -> None:
    """Every graph of every precision: its external data only in the data file its entry lists (within that
    file), its inputs and outputs the declared ones (see graphs.check_graph). Reads the graphs, not the weights.
    `proven`: the graph files were just checked against the manifest's sha256 (verify sha256/rehash), so a graph
    that passed before with these bytes, this data file size and these declarations is not read again."""
    from monkey_trt.enginedir.onnx_scan import check_graph

    for name, entry in manifest.networks.items():
        for precision in ("fp32", *entry.precisions):
            file, digests, _ = entry.files(precision)
            data_file = entry.data_file if precision == "fp32" else entry.precisions[precision].data_file
            who = f"network {name}" + ("" if precision == "fp32" else f" ({precision})")
            material = None
            if proven:
                try:
                    data_size = os.stat(Path(root) / data_file).st_size if data_file else None
                except OSError:
                    data_size = None
                material = {"graph": digests[file], "file": file, "who": who, "data_file": data_file, "data_size": data_size,
                            "inputs": [repr(t) for t in entry.desc.inputs], "outputs": [repr(t) for t in entry.desc.outputs]}
                if passed("graph", material):
                    continue
            check_graph(Path(root), file, who, data_file, entry.desc.inputs, entry.desc.outputs)
            if material is not None:
                remember_pass("graph", material)


def load_manifest(root: Path, verify: str = "sha256") -> Manifest:
    """Read and validate ENGINE_DIR/manifest.json, check every file it lists (`verify`: sha256 | size), then
    every graph's external-data locations and signature: nothing a session would open is left unchecked."""
    manifest = read_manifest(root, remember=verify != "rehash")
    verify_files(Path(root), manifest, verify)
    check_graphs(Path(root), manifest, proven=verify == "sha256")
    return manifest
