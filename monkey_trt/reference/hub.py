"""Hugging Face hub ids, checked before torch loads: a model that is neither a local folder nor in the
cache, while the hub cannot be reached, is one line naming the option and how to get the weights,
in a second instead of after seconds of importing torch and diffusers. No torch here (huggingface_hub only);
`loading.resolve_repo` does the downloading itself.
"""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.config import ModelSource
from monkey_trt.core.errors import MonkeyError


def looks_like_path(s: str) -> bool:
    """A folder path rather than a hub id `owner/repo`."""
    return s.startswith((".", "/", "~")) or "\\" in s or Path(s).exists() or s.count("/") != 1


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be used right now (offline mode, or no TCP connection to it within
    `timeout_s`), or None. A quick probe, so no network fails in seconds, not after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"cannot connect to {host}:{port}: {e.strerror or type(e).__name__}"
    return None


def download_command(name: str, field: str, ip_weight: str) -> str:
    """The `hf download` (huggingface_hub's CLI) that puts what monkey-trt reads of `name` into the cache."""
    if field == "ip_adapter":
        weight = ip_weight if "." in ip_weight else f"{ip_weight}.*"
        return f"hf download {name} --include 'models/image_encoder/*' --include 'models/{weight}'"
    return f"hf download {name}"


def check_models_available(source: ModelSource, face: str = "cli") -> None:
    """Every hub id of `source` is in the cache, or the hub can be reached; else one MonkeyError naming the
    option (`--base`, `--ip-adapter`; the API's `base=`, `ip_adapter=`) and the download command."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with the export extra
        raise MonkeyError("huggingface_hub is not installed: pip install 'monkey-trt[export]'") from None
    hub_ids = [(f, getattr(source, f)) for f in ("base", "ip_adapter") if not looks_like_path(getattr(source, f))]
    offline = hub_unreachable() if hub_ids else None
    if offline is None:
        return
    for field, name in hub_ids:
        try:
            snapshot_download(name, local_files_only=True)
        except Exception:
            flag = f"{field}=" if face == "api" else f"--{field.replace('_', '-')}"
            raise MonkeyError(f"{flag} {name} is not in the Hugging Face cache and the hub cannot be used ({offline}): pass a "
                              f"local folder with {flag}, or download it once where the hub can be reached: "
                              f"`{download_command(name, field, source.ip_weight)}`") from None
