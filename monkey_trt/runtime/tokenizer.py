"""CLIP text tokenizer on HF `tokenizers` (no transformers): ids exactly as diffusers' pipelines get them
from `CLIPTokenizer(prompt, padding="max_length", max_length=77, truncation=True)`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

from monkey_trt.core.errors import MonkeyError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer pattern (what transformers' CLIPTokenizer uses).
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """CLIP's BPE pipeline: NFC + whitespace collapse + lowercase; regex split + byte level;
    BPE with `</w>` word ends; `<|startoftext|> $A <|endoftext|>` template."""
    for tok in (BOS, EOS):
        if tok not in vocab:
            raise MonkeyError(f"tokenizer vocab lacks the special token {tok}")
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False, unk_token=EOS))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, normalized=True), AddedToken(EOS, normalized=True)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return tok


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MonkeyError(f"cannot read {str(path)!r}: {type(e).__name__}: {' '.join(str(e).split())}") from None


def _configured_pad_token(folder: Path) -> str | None:
    """pad_token from tokenizer_config.json or special_tokens_map.json (str or AddedToken dict)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            pad = _read_json(folder / name).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return None


class ClipTokenizer:
    """Prompt -> [1, max_length] int64 ids: bos, up to max_length-2 tokens, eos, then pad tokens."""

    def __init__(self, tokenizer: Tokenizer, pad_token: str = EOS) -> None:
        self.tokenizer = tokenizer
        ids = {t: tokenizer.token_to_id(t) for t in (BOS, EOS, pad_token)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise MonkeyError(f"tokenizer has no id for {missing}")
        self.bos_id, self.eos_id, self.pad_id, self.pad_token = ids[BOS], ids[EOS], ids[pad_token], pad_token
        tokenizer.no_truncation()  # encode() truncates and pads itself
        tokenizer.no_padding()

    @classmethod
    def from_file(cls, path) -> "ClipTokenizer":
        """Load one `tokenizer.json` as `save` writes it (pad token recorded in its padding)."""
        p = Path(path)
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise MonkeyError(f"cannot load {str(p)!r}: {' '.join(str(e).split())[:200]}") from None
        return cls(tok, (tok.padding or {}).get("pad_token") or EOS)

    @classmethod
    def from_dir(cls, folder) -> "ClipTokenizer":
        """Load `tokenizer.json` if present, else build CLIP's BPE from `vocab.json` + `merges.txt`."""
        d = Path(folder)
        if not d.is_dir():
            raise MonkeyError(f"tokenizer folder {str(d)!r} does not exist")
        pad = _configured_pad_token(d)
        if (d / "tokenizer.json").is_file():
            try:
                tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as e:  # tokenizers raises plain Exception on bad JSON
                raise MonkeyError(f"cannot load {str(d / 'tokenizer.json')!r}: {' '.join(str(e).split())[:200]}") from None
            if pad is None and tok.padding:
                pad = tok.padding.get("pad_token")
            return cls(tok, pad or EOS)
        for name in ("vocab.json", "merges.txt"):
            if not (d / name).is_file():
                raise MonkeyError(f"tokenizer folder {str(d)!r} has neither tokenizer.json nor {name}")
        vocab = _read_json(d / "vocab.json")
        if not isinstance(vocab, dict):
            raise MonkeyError(f"{str(d / 'vocab.json')!r} must map tokens to ids")
        merges = []
        for n, line in enumerate((d / "merges.txt").read_text(encoding="utf-8").splitlines()):
            if (n == 0 and line.startswith("#version")) or not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise MonkeyError(f"{str(d / 'merges.txt')!r} line {n + 1} is not a merge pair: {line[:60]!r}")
            merges.append((parts[0], parts[1]))
        return cls(build_clip_tokenizer(vocab, merges), pad or EOS)

    def save(self, folder) -> Path:
        """Write `tokenizer.json` (with 77-token truncation and padding recorded) into `folder`."""
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        tok = Tokenizer.from_str(self.tokenizer.to_str())
        tok.enable_truncation(max_length=77)
        tok.enable_padding(length=77, pad_id=self.pad_id, pad_token=self.pad_token)
        tmp = d / "tokenizer.json.tmp"
        tmp.write_text(tok.to_str(pretty=True), encoding="utf-8")
        tmp.replace(d / "tokenizer.json")
        return d / "tokenizer.json"

    def encode(self, prompt: str, max_length: int = 77) -> tuple[np.ndarray, bool]:
        """(ids [1, max_length] int64, truncated): diffusers' `padding="max_length", truncation=True`."""
        if not isinstance(prompt, str):
            raise MonkeyError(f"prompt must be a string, got {type(prompt).__name__}")
        body = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        room = max_length - 2
        ids = [self.bos_id, *body[:room], self.eos_id]
        ids += [self.pad_id] * (max_length - len(ids))
        return np.asarray([ids], dtype=np.int64), len(body) > room
