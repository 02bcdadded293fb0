"""Writing an ONNX model to disk: inline, or with its weights in one `<file>.data` beside it."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from monkey_trt.core.atomic import current_umask


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> list[str]:
    """Save `model` at `path`; `external`: tensors over 1 KiB go to `<name>.data` (needed past protobuf's 2 GB).

    Returns the file names written, the graph first. Every file gets the user's umask: onnx writes the
    `.data` file 0600 whatever the umask, which would keep a service account from reading what an admin exported.
    """
    path = Path(path)
    if not external:
        onnx.save_model(model, str(path))
        written = [path.name]
    else:
        data = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024)
        written = [path.name, data]
    mode = 0o666 & ~current_umask()
    for name in written:
        os.chmod(path.parent / name, mode)
    return written
