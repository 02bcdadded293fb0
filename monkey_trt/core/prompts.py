"""The paper's 20 background/location prompts: the tiny tokenizer's corpus, `eval`'s default prompts,
the default calibration prompts. One list for all of them; and the one reader of prompt files."""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import MonkeyError

# The paper's appendix A.1, in its order (two OCR slips of the published text fixed: "Eiffel Tower").
PAPER_PROMPTS: tuple[str, ...] = (
    "in the jungle",
    "in the snow",
    "on the beach",
    "on a cobblestone street",
    "on top of pink fabric",
    "on top of a wooden floor",
    "with a city in the background",
    "with a mountain in the background",
    "with a blue house in the background",
    "on top of a purple rug in a forest",
    "with a wheat field in the background",
    "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background",
    "floating on top of water",
    "floating in an ocean of milk",
    "on top of green grass with sunflowers around it",
    "on top of a mirror",
    "on top of the sidewalk in a crowded street",
    "on top of a dirt road",
    "on top of a white rug",
)


MAX_PROMPT_FILE_BYTES = 16 << 20  # 100k prompts of 160 characters; a bigger file is a mistake, refused before it is read
MAX_FILE_PROMPTS = 100_000  # distinct prompts in one file (eval allows fewer: eval/prompts.py)
MAX_PROMPT_LINE_CHARS = 4096  # as the HTTP API's prompt (far beyond 77 tokens)


def read_prompt_file(path: str | Path, flag: str) -> tuple[str, ...]:
    """A UTF-8 file of one prompt per line (blank lines and `#` comments skipped, duplicates once, order kept);
    one-line MonkeyError naming `flag` when it is missing, unreadable, not UTF-8, empty, or too big (over
    MAX_PROMPT_FILE_BYTES, MAX_FILE_PROMPTS prompts or a line of MAX_PROMPT_LINE_CHARS): memory and time are
    bounded by those, whatever the file holds."""
    p = Path(path)
    if not p.exists():
        raise MonkeyError(f"{flag} {p}: no such file")
    if not p.is_file():
        raise MonkeyError(f"{flag} {p} is not a file")
    cap = f"{flag} {p} is larger than {MAX_PROMPT_FILE_BYTES >> 20} MiB: a prompt file is one prompt per line (at most {MAX_FILE_PROMPTS})"
    try:
        if p.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise MonkeyError(cap)
        with open(p, "rb") as f:
            raw = f.read(MAX_PROMPT_FILE_BYTES + 1)  # bounded even if the file grows meanwhile
        if len(raw) > MAX_PROMPT_FILE_BYTES:
            raise MonkeyError(cap)
        text = raw.decode("utf-8")
    except PermissionError:
        raise MonkeyError(f"{flag} {p} cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise MonkeyError(f"{flag} {p} is not UTF-8 text") from None
    prompts: dict[str, None] = {}
    for i, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if len(s) > MAX_PROMPT_LINE_CHARS:
            raise MonkeyError(f"{flag} {p} line {i} is {len(s)} characters; a prompt is at most {MAX_PROMPT_LINE_CHARS}")
        prompts[s] = None
        if len(prompts) > MAX_FILE_PROMPTS:
            raise MonkeyError(f"{flag} {p} holds more than {MAX_FILE_PROMPTS} prompts")
    if not prompts:
        raise MonkeyError(f"{flag} {p} has no prompts (one per line; # starts a comment)")
    return tuple(prompts)
