"""`GET /`, the service's own page, tried in a real browser: headless Chromium (the system's package, driven
over the DevTools protocol) against `monkey-trt serve` on the tiny engine.

MONKEY_UPDATE_SCREENSHOTS=1 also writes the screenshots to docs/serve-page.png, docs/serve-page-phone.png and
docs/serve-page-subjects.png (two subjects and a background; the README shows them); otherwise they go to the
test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import tests.test_serve as serve_tests
from tests.browser import Browser, find_chromium
from tests.test_serve import Server

subject_png = serve_tests.subject_png  # a fixture
DOCS = Path(__file__).resolve().parents[1] / "docs"
PHONE_WIDTH = 390


@pytest.fixture(scope="module")
def page_server(engine_dir):
    s = Server(engine_dir, "--max-body-mb", "1")
    yield s
    assert s.stop() == 0


def test_page_is_served_self_contained(page_server):
    r = page_server.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", html), "the page refers to another host"
    assert not re.search(r"""<(script|link)[^>]+(src|href)=["'](?!data:)""", html), "the page loads a script or stylesheet"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+'", csp)
    assert "/openapi.json" in html and "/v1/generate/stream" in html  # the form comes from the schema


def _console_errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            out.append(str(p.get("exceptionDetails", {}).get("exception", {}).get("description", p)))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


def _requests(events: list[dict]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]


@pytest.fixture()
def browser(tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); .ci/run installs it")
    pytest.importorskip("websockets", reason="the DevTools protocol client needs websockets (the dev extra)")
    b = Browser(binary, tmp_path / "profile")
    for domain in ("Runtime", "Log", "Network", "Page", "DOM"):
        b.send(f"{domain}.enable")
    yield b
    b.close()


def test_page_in_a_real_browser(page_server, browser, subject_png, tmp_path):
    b, url = browser, page_server.url
    b.navigate(url + "/")
    b.wait_for("!document.getElementById('run').disabled")  # the form is built from /openapi.json

    # the form: one control per field of the schema, with the schema's ranges, every control labelled
    schema = page_server.client.get("/openapi.json").json()
    props = schema["paths"]["/v1/generate/stream"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    for name, s in props.items():
        if name in ("image", "background_image"):  # the file pickers
            continue
        attrs = b.eval(f"(() => {{ const e = document.getElementById('f-{name}'); return e && "
                       "{type: e.type, min: e.getAttribute('min'), max: e.getAttribute('max'), value: e.value, checked: e.checked}; })()")
        assert attrs is not None, f"no control for {name}"
        if s["type"] in ("integer", "number"):
            assert attrs["type"] == "number"
            if "minimum" in s:
                assert float(attrs["min"]) == float(s["minimum"]), name
            top = s.get("maximum", s.get("exclusiveMaximum"))
            if top is not None:
                assert float(attrs["max"]) == float(top), name  # JS numbers are doubles: 2**63 - 1 reads as 2**63
        if "default" in s and s["type"] in ("integer", "number"):
            assert float(attrs["value"]) == float(s["default"]), name
        elif "default" in s and s["type"] == "string":
            assert attrs["value"] == s["default"], name
        elif "default" in s:
            assert attrs["checked"] == s["default"], name
    assert b.eval("[...document.querySelectorAll('input, textarea')].every(e => e.labels.length > 0)")

    # fill it as a user would: a file, a prompt, the baseline checkbox and the button by keyboard
    subject_file = tmp_path / "subject.png"
    subject_file.write_bytes(subject_png)
    b.set_files("#image", [subject_file])
    b.wait_for("document.getElementById('subject-preview-1') && document.getElementById('subject-preview-1').naturalWidth > 0")
    b.eval("(() => { const p = document.getElementById('f-prompt'); p.value = 'a toy on the beach'; "
           "document.getElementById('f-seed').value = '3'; return true; })()")
    b.eval("document.getElementById('f-baseline').focus()")
    b.press(" ", "Space", 32, " ")
    assert b.eval("document.getElementById('f-baseline').checked")
    b.eval("window.__seen = []; new MutationObserver(() => window.__seen.push([document.getElementById('bar').value, "
           "document.getElementById('status').textContent])).observe(document.getElementById('form'), "
           "{attributes: true, childList: true, subtree: true, characterData: true}); true")
    b.eval("document.getElementById('run').focus()")
    b.press("Enter", "Enter", 13, "\r")
    b.wait_for("!document.getElementById('results').hidden && /^Done/.test(document.getElementById('status').textContent)", 120)

    seen = b.eval("window.__seen")
    assert any(0 < v < 1 for v, _ in seen), seen  # progress arrived before the answer
    assert any(re.search(r"\(step \d+/\d+\)", text) for _, text in seen), seen
    assert b.eval("document.getElementById('error').textContent") == ""

    # what it shows: subject, overlay, MONKEY, baseline; timings; downloads; the same PNG /v1/generate answers
    sizes = b.eval("['out-subject', 'out-monkey', 'out-baseline'].map(id => document.getElementById(id).naturalWidth)"
                   ".concat([document.getElementById('out-overlay').width])")
    assert sizes[1:] == [64, 64, 64] and sizes[0] > 0, sizes
    stages = b.eval("[...document.querySelectorAll('#timings tbody td:first-child')].map(td => td.textContent)")
    assert {"final_pass", "baseline_pass", "queue", "total"} <= set(stages), stages
    links = b.eval("Object.fromEntries([...document.querySelectorAll('#downloads a')].map(a => [a.download, a.href]))")
    assert set(links) == {"monkey.png", "mask.png", "overlay.png", "ipadapter.png", "result.json"}
    direct = page_server.client.post("/v1/generate", files={"image": ("s.png", subject_png, "image/png")},
                                     data={"prompt": "a toy on the beach", "seed": "3", "baseline": "true"}).json()
    for name, key in [("monkey.png", "image_png"), ("mask.png", "mask_png"), ("ipadapter.png", "baseline_png")]:
        assert links[name] == "data:image/png;base64," + direct[key], name

    # screenshots: desktop and phone width (nothing wider than the phone)
    shots = {"serve-page.png": (1280, False), "serve-page-phone.png": (PHONE_WIDTH, True)}
    for name, (width, mobile) in shots.items():
        b.eval(f"document.getElementById('knobs').open = {'false' if mobile else 'true'}")  # the knob table, on the desktop
        b.screenshot(tmp_path / name, width, mobile)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if mobile:
            assert b.eval("document.documentElement.scrollWidth") <= PHONE_WIDTH
        if os.environ.get("MONKEY_UPDATE_SCREENSHOTS") == "1":
            shutil.copyfile(tmp_path / name, DOCS / name)
    b.send("Emulation.clearDeviceMetricsOverride")

    # a request warning: a prompt past the text encoder's tokens
    b.eval("document.getElementById('f-prompt').value = 'a toy on the beach '.repeat(40); document.getElementById('run').click(); true")
    b.wait_for("document.getElementById('warnings').children.length > 0 && /^Done/.test(document.getElementById('status').textContent)", 120)
    assert "truncated" in b.eval("document.getElementById('warnings').textContent")

    # a bad upload: the service's one-line error, as /v1/generate words it
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is not an image\n")
    expected = page_server.client.post("/v1/generate", files={"image": ("x.png", bad.read_bytes(), "image/png")},
                                       data={"prompt": "x"}).json()["error"]
    b.set_files("#image", [bad])
    b.eval("document.getElementById('run').click()")
    shown = b.wait_for("document.getElementById('error').textContent", 60)
    assert shown == f"error: {expected}" and "\n" not in shown

    b.send("Runtime.evaluate", expression="1")  # collect the events so far
    assert _console_errors(b.events) == []

    # a refusal before the stream starts (a knob out of range) shows its JSON error too; Chromium logs the
    # failed request itself ("Failed to load resource ... 400"), the page logs nothing
    seen_events = len(b.events)
    b.set_files("#image", [subject_file])
    b.eval("document.getElementById('f-threshold').value = '7'; document.getElementById('form').noValidate = true; "
           "document.getElementById('error').textContent = ''; document.getElementById('run').click(); true")
    shown = b.wait_for("document.getElementById('error').textContent", 60)
    assert shown.startswith("error: ") and "threshold" in shown, shown

    b.send("Runtime.evaluate", expression="1")
    assert all("status of 400" in e for e in _console_errors(b.events[seen_events:])), _console_errors(b.events)
    requests = _requests(b.events)
    assert requests and all(u.startswith(url + "/") or u.split(":")[0] in ("data", "blob") for u in requests), requests
    assert {url + "/", url + "/openapi.json", url + "/v1/generate/stream"} <= set(requests)


def test_page_with_two_subjects_and_a_background(page_server, browser, subject_png, tmp_path):
    """Several subject files (in order) and a background: every subject's mask shown in its colour, its own mask
    figure and download, the background's mask; the PNGs are /v1/generate's."""
    from tests.test_serve import _second_png

    b, url = browser, page_server.url
    files = {"toy.png": subject_png, "robot.png": _second_png(subject_png), "beach.png": _png_bytes()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    b.navigate(url + "/")
    b.wait_for("!document.getElementById('run').disabled")
    assert b.eval("document.getElementById('image').multiple") and not b.eval("document.getElementById('bg-drop').hidden")
    assert b.eval("!!document.getElementById('f-subject_scales') && !!document.getElementById('f-background_scale')")
    b.set_files("#image", [tmp_path / "toy.png", tmp_path / "robot.png"])
    b.set_files("#background", [tmp_path / "beach.png"])
    b.wait_for("document.querySelectorAll('#subject-previews img').length === 2 && !!document.getElementById('background-thumb')")
    b.eval("document.getElementById('f-prompt').value = 'a toy and a robot'; document.getElementById('f-seed').value = '4'; "
           "document.getElementById('f-subject_scales').value = '1,0.8'; document.getElementById('run').click(); true")
    b.wait_for("!document.getElementById('results').hidden && /^Done/.test(document.getElementById('status').textContent)", 120)
    assert b.eval("document.getElementById('error').textContent") == ""
    shown = b.eval("['out-subject', 'out-subject-2', 'out-background', 'out-background-mask', 'out-monkey']"
                   ".map(id => !!document.getElementById(id)).concat(['out-overlay', 'out-mask-1', 'out-mask-2']"
                   ".map(id => document.getElementById(id).width))")
    assert shown == [True] * 5 + [64, 64, 64], shown
    captions = b.eval("[...document.querySelectorAll('#images figcaption')].map(f => f.textContent)")
    assert any(c.startswith("masks (1: ") and "overlap" in c for c in captions), captions
    links = b.eval("Object.fromEntries([...document.querySelectorAll('#downloads a')].map(a => [a.download, a.href]))")
    assert {"mask_1.png", "mask_2.png", "overlay_1.png", "overlay_2.png", "background_mask.png", "mask.png"} <= set(links)
    parts = [("image", ("toy.png", files["toy.png"], "image/png")), ("image", ("robot.png", files["robot.png"], "image/png")),
             ("background_image", ("beach.png", files["beach.png"], "image/png"))]
    direct = page_server.client.post("/v1/generate", files=parts, data={"prompt": "a toy and a robot", "seed": "4",
                                                                         "subject_scales": "1,0.8"}).json()
    for s in direct["subjects"]:
        assert links[f"mask_{s['index']}.png"] == "data:image/png;base64," + s["mask_png"]
    assert links["background_mask.png"] == "data:image/png;base64," + direct["background"]["mask_png"]
    # subject 2's figure tints exactly its mask's pixels toward its colour (blue), as overlay_2.png does
    changed = b.eval("(() => { const m = document.getElementById('out-monkey'), c = document.getElementById('out-mask-2');"
                     " const k = document.createElement('canvas'); k.width = c.width; k.height = c.height;"
                     " const g = k.getContext('2d'); g.drawImage(m, 0, 0); const a = g.getImageData(0, 0, k.width, k.height).data;"
                     " const t = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const out = [];"
                     " for (let i = 0; i < a.length; i += 4) out.push(t[i] !== a[i] || t[i + 1] !== a[i + 1] || t[i + 2] !== a[i + 2] ?"
                     " Math.hypot(a[i] - 40, a[i + 1] - 110, a[i + 2] - 255) - Math.hypot(t[i] - 40, t[i + 1] - 110, t[i + 2] - 255) : null);"
                     " return out; })()")  # closer to subject 2's colour (runtime/outputs.SUBJECT_COLOURS[1]) by how much
    import base64
    import io

    import numpy as np
    from PIL import Image

    m2 = (np.asarray(Image.open(io.BytesIO(base64.b64decode(direct["subjects"][1]["mask_png"])))) > 0).ravel()
    diff = np.array([np.nan if v is None else v for v in changed], float)
    assert not np.isfinite(diff[~m2]).any()  # nothing outside subject 2's mask changes
    assert (np.nan_to_num(diff[m2], nan=1.0) > 0).all()  # inside it, every changed pixel moves toward subject 2's blue
    shot = tmp_path / "serve-page-subjects.png"
    b.eval("document.getElementById('knobs').open = false")
    b.screenshot(shot, 1280)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MONKEY_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS / shot.name)
    b.send("Emulation.clearDeviceMetricsOverride")
    b.send("Runtime.evaluate", expression="1")
    assert _console_errors(b.events) == []


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 48), (90, 160, 220)).save(buf, format="png")
    return buf.getvalue()
