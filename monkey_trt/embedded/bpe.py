"""The embedded model's tokenizer: a real-format CLIP byte-level BPE (vocab.json + merges.txt).

Its merges are learned deterministically from a small built-in English corpus (see
``build_clip_bpe``); ``write_clip_tokenizer`` writes the tokenizer folder as in SD1.5's repo.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from monkey_trt.core.prompts import PAPER_PROMPTS
from monkey_trt.enginedir.networks import TEXT_LEN
from monkey_trt.embedded.json_files import write_json

__all__ = [
    "SPECIAL_BOS",
    "SPECIAL_EOS",
    "ClipBpe",
    "build_clip_bpe",
    "bytes_to_unicode",
    "learn_bpe_merges",
    "tokenizer_corpus",
    "write_clip_tokenizer",
]

# DreamBooth subjects (and the words of their class names).
SUBJECT_WORDS: tuple[str, ...] = tuple(
    "dog cat toy backpack bear plushie berry bowl can candle clock colorful sneaker duck fancy boot "
    "grey sloth monster sunglasses poop emoji rc car red cartoon robot shiny teapot vase wolf puppy "
    "kitten teddy".split()
)

COMMON_WORDS: tuple[str, ...] = tuple(
    """a an the of and or to in on at by for with from into onto over under above below near
    behind beside between around through across up down out off about after before while
    is are was were be been being has have had do does did will would can could should may might
    i you he she it we they me him her us them my your his its our their this that these those
    what which who whom whose where when why how all any both each few more most other some such
    no nor not only own same so than too very just also well still even back again once here there
    one two three four five six seven eight nine ten first second last next new old good great
    little big small large long short high low young early late right left best better
    photo picture image painting drawing sketch render illustration portrait close view shot
    style art artist digital oil watercolor realistic detailed sharp focus light lighting dark
    bright soft warm cold sunny cloudy rainy night day morning evening sunset sunrise sky cloud
    sun moon star rain wind fire ice stone rock sand water sea lake river ocean wave beach island
    mountain hill valley field forest tree trees wood wooden leaf leaves flower flowers grass garden
    park road street sidewalk city town village house home room kitchen table chair bed window door
    wall floor roof bridge tower castle church building car bus train boat ship plane bike
    man woman person people boy girl child children baby friend family face eye eyes hair hand
    head body arm leg foot feet smile
    dog cat bird fish horse cow pig sheep lion tiger bear fox rabbit mouse duck owl
    white black gray green blue yellow orange purple pink brown gold silver colorful
    red dark light wet dry clean dirty soft hard hot warm cute happy sad funny beautiful pretty
    ugly strange modern ancient vintage classic simple plain wooden metal glass plastic paper
    cloth fabric wool cotton leather rug carpet mirror milk wheat sunflower sunflowers autumn
    winter summer spring snow jungle cobblestone crowded dirt floating background top
    sitting standing walking running jumping flying swimming sleeping playing eating looking
    wearing holding made make made take see look find give tell work call try ask need feel become
    leave put mean keep let begin seem help show hear play run move live believe bring happen
    write provide sit stand lose pay meet include continue set learn change lead understand watch
    follow stop create speak read allow add spend grow open walk win offer remember love consider
    appear buy wait serve die send expect build stay fall cut reach kill remain
    time year way thing world life hand part place case week company system program question
    government number point group problem fact
    """.split()
)

SPECIAL_BOS = "<|startoftext|>"
SPECIAL_EOS = "<|endoftext|>"
_END_OF_WORD = "</w>"
# CLIP's pre-tokenizer regex, restricted to the ASCII corpus (\p{L} -> [a-z], \p{N} -> [0-9]).
_CORPUS_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode char table (same insertion order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer_corpus() -> str:
    """The built-in English corpus the BPE merges are learned from."""
    prompts = [f"a {s} {b}" for s in ("dog", "cat", "toy", "backpack") for b in PAPER_PROMPTS]
    return "\n".join([*prompts, " ".join(SUBJECT_WORDS), " ".join(COMMON_WORDS), "0 1 2 3 4 5 6 7 8 9 , . ! ?"])


def _word_symbols(word: str) -> tuple[str, ...]:
    """A pre-token as CLIP's BPE sees it: byte-level chars, the last one with ``</w>``."""
    b2u = bytes_to_unicode()
    chars = [b2u[b] for b in word.encode("utf-8")]
    return (*chars[:-1], chars[-1] + _END_OF_WORD)


def _merge_word(symbols: Sequence[str], pair: tuple[str, str]) -> list[str]:
    """Merge every non-overlapping occurrence of ``pair``, left to right (as CLIP's ``bpe``)."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_bpe_merges(word_counts: Mapping[str, int]) -> list[tuple[str, str]]:
    """Greedy pair-count BPE until every word is one symbol.

    Each round merges the most frequent adjacent pair (counts weighted by word frequency); ties
    go to the lexicographically smallest pair. Incremental counts + a lazy heap keep it fast.
    """
    keys = sorted(word_counts)
    words = [list(_word_symbols(w)) for w in keys]
    weight = [word_counts[w] for w in keys]
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, syms in enumerate(words):
        for p in zip(syms, syms[1:]):
            pair_counts[p] += weight[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale heap entry
        merges.append(pair)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair, ())):
            old = words[i]
            new = _merge_word(old, pair)
            if len(new) == len(old):
                continue
            for p in zip(old, old[1:]):
                pair_counts[p] -= weight[i]
                touched.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += weight[i]
                where[p].add(i)
                touched.add(p)
            words[i] = new
        for p in sorted(touched):
            c = pair_counts[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_counts.pop(p, None)
    return merges


@dataclass(frozen=True)
class ClipBpe:
    """A CLIP BPE vocabulary: ``tokens`` in id order, ``merges`` in rank order."""

    tokens: tuple[str, ...]
    merges: tuple[tuple[str, str], ...]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def bos_id(self) -> int:
        return self.tokens.index(SPECIAL_BOS)

    @property
    def eos_id(self) -> int:
        return self.tokens.index(SPECIAL_EOS)

    def vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


@lru_cache(maxsize=1)
def build_clip_bpe() -> ClipBpe:
    """CLIP's vocab order: 256 byte chars, the same with ``</w>``, one token per merge, specials.

    A merge whose result is already a token (two merge paths to one string) adds no new id.
    """
    corpus = tokenizer_corpus().lower()
    if not corpus.isascii():
        raise AssertionError("the tokenizer corpus must be ASCII")
    counts = Counter(_CORPUS_WORD_RE.findall(corpus))
    merges = learn_bpe_merges(counts)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + _END_OF_WORD for c in base]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [SPECIAL_BOS, SPECIAL_EOS]
    return ClipBpe(tokens=tuple(tokens), merges=tuple(merges))


def _added_token(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_clip_tokenizer(folder: Path, bpe: ClipBpe) -> None:
    """vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json as in SD1.5's repo."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", bpe.vocab(), indent=None, sort_keys=False)  # id order, one line
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in bpe.merges)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    write_json(
        folder / "special_tokens_map.json",
        {
            "bos_token": _added_token(SPECIAL_BOS),
            "eos_token": _added_token(SPECIAL_EOS),
            "pad_token": SPECIAL_EOS,
            "unk_token": _added_token(SPECIAL_EOS),
        },
    )
    write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": {"__type": "AddedToken", **_added_token(SPECIAL_BOS)},
            "do_lower_case": True,
            "eos_token": {"__type": "AddedToken", **_added_token(SPECIAL_EOS)},
            "errors": "replace",
            "model_max_length": TEXT_LEN,
            "pad_token": SPECIAL_EOS,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": {"__type": "AddedToken", **_added_token(SPECIAL_EOS)},
        },
    )
