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


def test_paths_the_docs_name_exist():
    """A path into the repository named in the README or docs/ (`engine/trt/api_names.py`, `tests/x.py`) is there:
    before, the README named `engine/trt.py` and `engine/trt_api.py`, gone since the split into engine/trt/."""
    packages = {p.name for p in (ROOT / "monkey_trt").iterdir() if p.is_dir() and not p.name.startswith("_")}
    top = {"monkey_trt", "tests", "docs", "benchmarks", "examples", ".ci"}
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path in re.findall(r"`([\w.-]+/[\w./-]*\.(?:py|md|json|sh|html))`", doc.read_text()):
            head = path.split("/", 1)[0]
            if head in top and not (ROOT / path).exists() or head in packages and not (ROOT / "monkey_trt" / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert missing == [], missing


def test_quickstart_lines_run_as_pasted():
    """No placeholder a shell reads as a redirection: `git clone <this repository>` ran `git clone` with its
    input from a file named `this` (bash: No such file or directory)."""
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    for line in block.strip().splitlines():
        command = line.split("  #", 1)[0]
        assert not re.search(r"(^|\s)[<>]", command), line


def test_no_paragraph_is_said_twice():
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", README) if len(p.strip()) > 80 and not p.strip().startswith("```")]
    twice = sorted({p[:80] for p in paragraphs if paragraphs.count(p) > 1})
    assert twice == [], twice


def test_first_paragraph_says_what_has_run_where():
    """Before: only "Measured numbers", far below, admitted that TensorRT had never run on a GPU."""
    first = README.split("\n\n")[1]  # the paragraph after the title
    assert first.startswith("**MONKEY") and "**What has run where:**" in first
    assert "tested on fakes" in first and "never yet run on a GPU" in first and "TensorRT" in first


def test_no_merge_conflict_markers_in_the_docs_or_code():
    """A merge left `<<<<<<<`/`=======`/`>>>>>>>` in docs/openvino.md once: no tracked text file carries them."""
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    files = [p for pattern in ("*.md", "docs/*.md", "monkey_trt/**/*.py", "tests/**/*.py", "benchmarks/*")
             for p in ROOT.glob(pattern) if p.is_file()]
    assert files
    assert [str(p.relative_to(ROOT)) for p in files if marker.search(p.read_text(errors="replace"))] == []
