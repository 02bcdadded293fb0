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


def read_prompt_file(path: str | Path, flag: str) -> tuple[str, ...]:
    """A UTF-8 file of one prompt per line (blank lines and `#` comments skipped, duplicates once, order kept);
    one-line MonkeyError naming `flag` when it is missing, unreadable, not UTF-8 or empty."""
    p = Path(path)
    if not p.exists():
        raise MonkeyError(f"{flag} {p}: no such file")
    if not p.is_file():
        raise MonkeyError(f"{flag} {p} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except PermissionError:
        raise MonkeyError(f"{flag} {p} cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise MonkeyError(f"{flag} {p} is not UTF-8 text") from None
    prompts = tuple(dict.fromkeys(s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith("#")))
    if not prompts:
        raise MonkeyError(f"{flag} {p} has no prompts (one per line; # starts a comment)")
    return prompts
