"""The evaluation prompts: the paper's 20 location/background prompts, or a prompt file.

The paper appends each location to the subject word: "a dog" + " on the beach" -> "a dog on the beach".
A prompt file holds one prompt per line (blank lines and lines starting with `#` are skipped); a line
with `{subject}` has the subject phrase put there ("a photo of {subject} at night"), any other line is
appended to it like the paper's prompts.
"""

from __future__ import annotations

from pathlib import Path

from monkey_trt.core.errors import MonkeyError
from monkey_trt.core.prompts import PAPER_PROMPTS, read_prompt_file

SLOT = "{subject}"
MAX_PROMPTS = 10_000


def load_prompts(spec: str) -> tuple[str, ...]:
    """`paper` -> PAPER_PROMPTS; otherwise a UTF-8 text file of prompt templates (see the module doc)."""
    if spec == "paper":
        return PAPER_PROMPTS
    if not Path(spec).exists():
        raise MonkeyError(f"--prompts must be 'paper' or a text file, got {spec!r} (no such file)")
    prompts = read_prompt_file(spec, "--prompts")
    if len(prompts) > MAX_PROMPTS:
        raise MonkeyError(f"--prompts {spec}: {len(prompts)} prompts, at most {MAX_PROMPTS}")
    for p in prompts:
        if p.count(SLOT) > 1:
            raise MonkeyError(f"--prompts {spec}: {p!r} names {SLOT} more than once")
    return prompts


def subject_phrase(word: str) -> str:
    """The subject word as a noun phrase: "dog" -> "a dog", "apple" -> "an apple"; a word that
    already starts with an article ("a", "an", "the") or a number is kept as it is."""
    w = " ".join(word.split())
    first = w.split(" ", 1)[0].lower()
    if first in ("a", "an", "the") or first[:1].isdigit():
        return w
    return f"{'an' if first[:1] and first[0] in 'aeiou' else 'a'} {w}"


def build_prompt(word: str, template: str) -> str:
    """The exact text generated from and scored against."""
    phrase = subject_phrase(word)
    return template.replace(SLOT, phrase) if SLOT in template else f"{phrase} {template}"
