"""ClipTokenizer vs transformers' CLIPTokenizer and vs a pure-Python CLIP BPE (openai/CLIP's
simple_tokenizer algorithm, no ftfy/html clean-up), on a CLIP-format vocab/merges folder."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from monkey_trt.core.errors import MonkeyError
from monkey_trt.embedded.bpe import (
    bytes_to_unicode,  # GPT-2/CLIP's byte table (the tiny model's tokenizer uses it)
)
from monkey_trt.runtime.tokenizer import BOS, EOS, ClipTokenizer

regex = pytest.importorskip("regex")

PROMPTS = [
    "a dog",
    "a dog on the beach",
    "A Photo of a DOG, on the Beach!!!",
    "  leading and   trailing   spaces  ",
    "tabs\tand\nnewlines\r\nhere",
    "3 cats and 42 dogs in 2024",
    "it's a dog's life, isn't it? we'll see, they'd say",
    "punctuation: ;;; ... !?! --- (brackets) [square] {curly} <angle>",
    "emoji 🐶 and accents: café naïve Ünïcödé",
    "UPPER lower MiXeD",
    "email@example.com #hashtag $100 50% a+b=c",
    "an <|endoftext|> inside and <|startoftext|> too",
    "",
    "dog " * 80,
    "a very long prompt about a small fluffy dog sitting on a sunny beach with waves and palm trees " * 3,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Every non-overlapping occurrence of `pair` in `word` merged, left to right (CLIP's `bpe`)."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def write_small_clip_vocab(folder, corpus: str, num_merges: int = 300) -> None:
    """A real-format CLIP vocab.json/merges.txt learned by greedy BPE on `corpus`."""
    b2u = bytes_to_unicode()
    words = Counter(tuple("".join(b2u[b] for b in w.encode()))[:-1] + ("".join(b2u[b] for b in w.encode())[-1] + "</w>",) for w in PAT.findall(corpus.lower()))
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new = Counter()
        for w, c in words.items():
            new[merge_pair(w, best)] += c
        words = new
    tokens = list(b2u.values()) + [v + "</w>" for v in b2u.values()] + ["".join(m) for m in merges] + [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def python_clip_bpe_ids(folder, prompt: str, max_length: int = 77) -> tuple[list[int], bool]:
    """openai/CLIP simple_tokenizer's BPE (whitespace collapse + lower, no ftfy), diffusers' framing."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    ranks = {tuple(line.split()): i for i, line in enumerate(lines) if line.strip()}
    b2u = bytes_to_unicode()

    def bpe(token: str) -> list[str]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            word = merge_pair(word, best)
        return list(word)

    text = regex.sub(r"\s+", " ", prompt).lower()
    body = []
    for tok in PAT.findall(text):
        if tok in (BOS, EOS):
            body.append(vocab[tok])
            continue
        body += [vocab[t] for t in bpe("".join(b2u[b] for b in tok.encode("utf-8")))]
    ids = [vocab[BOS], *body[: max_length - 2], vocab[EOS]]
    return ids + [vocab[EOS]] * (max_length - len(ids)), len(body) > max_length - 2


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip-tok")
    write_small_clip_vocab(d, " ".join(PROMPTS[:12]) * 3 + " the quick brown fox jumps over the lazy dog's back 0123456789")
    return d


def transformers_ids(folder, prompt):
    transformers = pytest.importorskip("transformers")
    tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
    out = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    full = tok(prompt, padding="longest", return_tensors="np").input_ids
    return out.input_ids.astype(np.int64), full.shape[-1] > 77


def check_folder(folder, prompts=PROMPTS):
    ours = ClipTokenizer.from_dir(folder)
    n_trunc = 0
    for prompt in prompts:
        ids, truncated = ours.encode(prompt)
        assert ids.shape == (1, 77) and ids.dtype == np.int64
        want, want_trunc = transformers_ids(folder, prompt)
        np.testing.assert_array_equal(ids, want, err_msg=repr(prompt))
        assert truncated == want_trunc, repr(prompt)
        n_trunc += truncated
    return ours, n_trunc


def test_small_vocab_matches_transformers_and_python_bpe(small_dir):
    ours, n_trunc = check_folder(small_dir)
    assert n_trunc == 2  # the two long prompts
    for prompt in PROMPTS:
        ids, truncated = ours.encode(prompt)
        want, want_trunc = python_clip_bpe_ids(small_dir, prompt)
        assert ids[0].tolist() == want and truncated == want_trunc, repr(prompt)


def test_save_and_reload_tokenizer_json(small_dir, tmp_path):
    ours = ClipTokenizer.from_dir(small_dir)
    ours.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    back = ClipTokenizer.from_dir(tmp_path)
    assert back.pad_id == ours.pad_id
    for prompt in PROMPTS:
        np.testing.assert_array_equal(back.encode(prompt)[0], ours.encode(prompt)[0])


def test_pad_token_from_config(small_dir, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((small_dir / name).read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "!"}))
    tok = ClipTokenizer.from_dir(tmp_path)
    ids, _ = tok.encode("a dog")
    assert ids[0, -1] == tok.tokenizer.token_to_id("!") and ids[0, 0] == tok.bos_id
    np.testing.assert_array_equal(ids, transformers_ids(tmp_path, "a dog")[0])


def test_bad_folders(tmp_path, small_dir):
    with pytest.raises(MonkeyError):
        ClipTokenizer.from_dir(tmp_path / "missing")
    with pytest.raises(MonkeyError, match="merges.txt"):
        (tmp_path / "vocab.json").write_text("{}")
        ClipTokenizer.from_dir(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    (tmp_path / "vocab.json").write_bytes((small_dir / "vocab.json").read_bytes())
    with pytest.raises(MonkeyError, match="merge pair"):
        ClipTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    with pytest.raises(MonkeyError, match="vocab.json"):
        ClipTokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(MonkeyError, match="tokenizer.json"):
        ClipTokenizer.from_dir(tmp_path)


def test_tiny_model_tokenizer_matches_transformers(tiny_model_dir):
    pytest.importorskip("monkey_trt.embedded.tiny")
    _, n_trunc = check_folder(tiny_model_dir / "base" / "tokenizer")
    assert n_trunc >= 1
