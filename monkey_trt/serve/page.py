"""`GET /`: a page to try the service in a browser (page.html, package data).

One self-contained file: its script builds the form from /openapi.json (the knob table, one source), posts
to /v1/generate/stream and shows the progress and the answer. Nothing is loaded from anywhere else; the
Content-Security-Policy allows only this page's own inline script and style (by hash) and requests to
this server, so a browser enforces that too. Framework-free: text in, text out.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


@lru_cache(maxsize=1)
def page() -> tuple[str, dict[str, str]]:
    """(the page's HTML, its response headers)."""
    html = resources.files("monkey_trt.serve").joinpath("page.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    csp = ("default-src 'none'; "
           f"script-src {' '.join(map(_hash, scripts))}; style-src {' '.join(map(_hash, styles))}; "
           "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
    return html, {"Content-Security-Policy": csp, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
