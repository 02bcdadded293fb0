"""Issue 16, the newcomer's path: the README is a product page first, links only inside the repository,
installs on any machine, and its service example waits for /readyz."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
CPU_INDEX = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def _headings() -> list[str]:
    return [line[3:].strip() for line in README.splitlines() if line.startswith("## ")]


def test_usage_comes_before_internals():
    h = _headings()
    assert h[:2] == ["Contents", "Quickstart"], h
    for usage in ("CLI", "Python API", "Serving over HTTP", "Real weights on an NVIDIA GPU", "8-bit engines (int8, fp8)"):
        for internals in ("Trust model: the engine directory", "Architecture", "Measured numbers"):
            assert h.index(usage) < h.index(internals), (usage, internals)
    assert README.index("![") < README.index("## Quickstart"), "one picture before the quickstart"


def test_quickstart_is_five_lines_with_the_cpu_wheel_index_and_a_light_install():
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [x for x in block.strip().splitlines() if x.strip()]
    assert len(lines) == 5, lines
    assert lines[0].startswith("git clone") and lines[-1].startswith("monkey-trt demo")
    assert any(x.startswith(CPU_INDEX) for x in lines)
    install = next(x for x in lines if x.startswith("pip install -e"))
    assert '".[export]"' in install and not re.search(r"dev|serve|ray", install), install
    assert "PyTorch's CPU wheel index" in README


def test_no_link_leaves_the_repository():
    urls = re.findall(r"https?://[^\s)`'\"]+", README)
    allowed = {"https://download.pytorch.org/whl/cpu"}
    outside = [u for u in urls if u not in allowed and not re.match(r"https?://(127\.0\.0\.1|localhost|HEAD)[:/]", u)]
    assert outside == [], outside
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):  # relative links point at files that exist
        assert (ROOT / target).exists(), target
    assert (ROOT / "docs" / "method.md").exists()


def test_contents_anchors_exist():
    anchors = set()
    for h in re.findall(r"^#{2,3} (.+)$", README, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-"))
    for a in re.findall(r"\]\(#([^)]+)\)", README):
        assert a in anchors, a


def test_service_example_waits_for_readyz_before_calling():
    serving = README.split("## Serving over HTTP", 1)[1]
    wait = serving.index("until curl -sf http://127.0.0.1:8000/readyz")
    assert wait < serving.index("/v1/generate \\") and wait < serving.index("-o monkey.png")
