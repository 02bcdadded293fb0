"""The evaluation prompts: the paper's 20 location/background prompts, or a prompt file.

The paper appends each location to the subject word: "a dog" + " on the beach" -> "a dog on the beach".
A prompt file holds one prompt per line (blank lines and lines starting with `#` are skipped); a line
with `{subject}` has the subject phrase put there ("a photo of {subject} at night"), any other line is
appended to it like the paper's prompts.

The prompt template (`--prompt-template`) says how: `{a_word} {prompt}` (the default: "a dog on the
beach") or `{word} {prompt}` (the authors' code: the word as the data gives it, "dog on the beach");
`{prompt}` is the location line, `{word}` the subject word, `{a_word}` the word with "a"/"an". A
`{subject}` line gets the template's form of the subject (`{a_word}` or `{word}`).
"""

from __future__ import annotations

import re
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


DEFAULT_TEMPLATE = "{a_word} {prompt}"
_FIELDS = ("{prompt}", "{word}", "{a_word}")


def check_template(template: str) -> str:
    """A prompt template: `{prompt}` once and one of `{word}` / `{a_word}` once, no other `{...}`."""
    rest = template
    for f in _FIELDS:
        rest = rest.replace(f, "")
    ok = (template.count("{prompt}") == 1 and template.count("{word}") + template.count("{a_word}") == 1
          and "{" not in rest and "}" not in rest and "\n" not in template)
    if not ok:
        raise MonkeyError(f"--prompt-template must hold {{prompt}} once and one of {{word}} or {{a_word}} once "
                          f"(e.g. '{{word}} {{prompt}}'), got {template!r}")
    return template


def build_prompt(word: str, line: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The exact text generated from and scored against: the prompt line `line` for the subject `word`."""
    w = " ".join(word.split())
    subject = subject_phrase(w) if "{a_word}" in template else w
    if SLOT in line:
        return line.replace(SLOT, subject)
    return re.sub(r"\{(prompt|word|a_word)\}", lambda m: line if m.group(1) == "prompt" else subject, template)
