"""Writing an ONNX model to disk: inline, or with its weights in one `<file>.data` beside it."""

from __future__ import annotations

from pathlib import Path

import onnx


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> list[str]:
    """Save `model` at `path`; `external`: tensors over 1 KiB go to `<name>.data` (needed past protobuf's 2 GB).

    Returns the file names written, the graph first.
    """
    path = Path(path)
    if not external:
        onnx.save_model(model, str(path))
        return [path.name]
    data = path.name + ".data"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024)
    return [path.name, data]
