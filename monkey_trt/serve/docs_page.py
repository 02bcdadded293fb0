"""`GET /docs`: the API reference as one self-contained HTML page, rendered on the server from the
OpenAPI schema (/openapi.json). No script, no stylesheet, font or image from a CDN: it works offline,
behind a firewall and in an air-gapped cluster (FastAPI's default Swagger UI loads its JS/CSS from a CDN).

Framework-free: a dict in, text out.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;border-radius:4px}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem}th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.method{font-weight:700;text-transform:uppercase;padding:.1rem .4rem;border-radius:3px;background:#e8f0fe}
.muted{color:#666}
"""


def _type(schema: dict[str, Any]) -> str:
    """A schema's type as short text: `integer`, `string (binary)`, `array of integer | string`, `string | null`."""
    if "oneOf" in schema or "anyOf" in schema:
        return " | ".join(_type(s) for s in schema.get("oneOf", schema.get("anyOf", [])))
    t = schema.get("type", "any")
    if isinstance(t, list):
        return " | ".join(t)
    if t == "array":
        return f"array of {_type(schema.get('items', {}))}"
    fmt = schema.get("format")
    return f"{t} ({fmt})" if fmt else t


def _range(schema: dict[str, Any]) -> str:
    parts = []
    if "minimum" in schema:
        parts.append(f"&ge; {escape(str(schema['minimum']))}")
    if "maximum" in schema:
        parts.append(f"&le; {escape(str(schema['maximum']))}")
    if "exclusiveMaximum" in schema:
        parts.append(f"&lt; {escape(str(schema['exclusiveMaximum']))}")
    return ", ".join(parts)


def _fields_table(schema: dict[str, Any]) -> str:
    props = schema.get("properties") or {}
    if not props:
        return f"<p>{escape(_type(schema))}</p>"
    required = set(schema.get("required", []))
    rows = []
    for name, s in props.items():
        default = "" if "default" not in s else escape(json.dumps(s["default"]))
        rows.append(f"<tr><td><code>{escape(name)}</code>{' <b>*</b>' if name in required else ''}</td>"
                    f"<td>{escape(_type(s))}</td><td>{_range(s)}</td><td>{default}</td>"
                    f"<td>{escape(s.get('description', ''))}</td></tr>")
    return ("<table><tr><th>field</th><th>type</th><th>range</th><th>default</th><th>description</th></tr>"
            + "".join(rows) + "</table>")


def _content(content: dict[str, Any]) -> str:
    return "".join(f"<p class=muted>{escape(ctype)}</p>{_fields_table(c.get('schema', {}))}" for ctype, c in content.items())


def render_docs(openapi: dict[str, Any]) -> str:
    """The HTML page of `openapi` (an OpenAPI 3 document as a dict)."""
    info = openapi.get("info", {})
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(info.get('title', 'API'))} - API</title>"
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>{escape(info.get('title', 'API'))} <span class=muted>{escape(str(info.get('version', '')))}</span></h1>",
           f"<p>{escape(info.get('description', ''))}</p>",
           "<p>The machine-readable schema: <a href=\"openapi.json\"><code>/openapi.json</code></a>. "
           "Fields marked <b>*</b> are required.</p>"]
    toc = []
    body = []
    for path, ops in openapi.get("paths", {}).items():
        for method, op in ops.items():
            anchor = f"{method}-{path}".replace("/", "-").strip("-")
            toc.append(f"<li><a href=\"#{escape(anchor)}\"><span class=method>{escape(method)}</span> <code>{escape(path)}</code></a>"
                       f" {escape(op.get('summary', ''))}</li>")
            body.append(f"<h2 id=\"{escape(anchor)}\"><span class=method>{escape(method)}</span> <code>{escape(path)}</code></h2>")
            body.append(f"<p>{escape(op.get('summary', ''))}</p>")
            if op.get("description"):
                body.append(f"<p>{escape(op['description'])}</p>")
            if "requestBody" in op:
                body.append("<h3>Request body</h3>" + _content(op["requestBody"].get("content", {})))
            body.append("<h3>Responses</h3>")
            for status, resp in op.get("responses", {}).items():
                headers = ", ".join(f"<code>{escape(h)}</code>" for h in resp.get("headers", {}))
                body.append(f"<h4>{escape(str(status))} <span class=muted>{escape(resp.get('description', ''))}</span></h4>")
                if headers:
                    body.append(f"<p class=muted>headers: {headers}</p>")
                body.append(_content(resp.get("content", {})))
    out.append("<ul>" + "".join(toc) + "</ul>")
    out.extend(body)
    out.append("</body></html>")
    return "\n".join(out)
