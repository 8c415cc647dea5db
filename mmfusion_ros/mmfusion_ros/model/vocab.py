"""Word-level caption vocabulary built from the training captions."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, List, Sequence

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_WORD = re.compile(r"[a-z0-9_']+|[.,!?;]")


def tokenize(text: str) -> List[str]:
    """Lowercase words and punctuation marks (the unit of the vocabulary and of BLEU/CIDEr)."""
    return _WORD.findall(text.lower())


class Vocab:
    """Token <-> id; index 0 PAD, 1 BOS, 2 EOS, 3 UNK, then words by frequency."""

    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:4]) != SPECIALS:
            raise ValueError(f"vocab must start with {SPECIALS}, got {list(tokens[:4])}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocab":
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + words)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, max_len: int) -> List[int]:
        """BOS w1 .. wn EOS, truncated to max_len (EOS kept last), PAD-filled to max_len."""
        ids = [BOS] + [self.index.get(w, UNK) for w in tokenize(text)][: max_len - 2] + [EOS]
        return ids + [PAD] * (max_len - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            words.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK])
        text = " ".join(words)
        return re.sub(r" ([.,!?;])", r"\1", text)
