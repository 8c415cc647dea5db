"""OpenCLIP's text tokenizer without torch: the same ids as ``open_clip.tokenizer.SimpleTokenizer``.

A bundle whose text side is an OpenCLIP text tower needs CLIP's token ids on the robot, where torch (and
so open_clip) is not installed. Rather than a hand-written BPE loop, the tokenizer is a HuggingFace
``tokenizers`` pipeline: its BPE merges by rank as CLIP's does, it is fast (Rust), and it is already a
dependency (the MiniLM text encoder's tokenizer.json). ``build_clip_tokenizer``
turns open_clip's gzip'd merges file into one, ``save_clip_tokenizer`` writes it as the bundle's
tokenizer.json, and ``ClipTokenizer`` loads that file with nothing but ``tokenizers`` and numpy.

Text cleaning follows open_clip's default ('lower'): ``ftfy.fix_text``, ``html.unescape`` twice, strip,
whitespace collapse, lower case. ftfy is not installed on the robot, so it is applied only where it
imports; without it the NFC step of the tokenizer's normaliser stands in for ftfy's own final NFC, and the
rest of ftfy's repairs (mojibake, curly quotes, full-width letters, ligatures, control characters) are
not made. Prompts that are plain, well-formed text give the same ids either way.

Known differences from open_clip, none of them in a plausible prompt: a special token's text glued to a
symbol before it ("<<start_of_text>") is still read as the special token (tokenizers finds added tokens
anywhere, open_clip only where its pattern starts a match), and characters newer than the Unicode
tables of Oniguruma (the `tokenizers` regex engine) may be split differently from Python's `regex`.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

try:  # a training / export machine has it (open_clip depends on it); the robot does not
    import ftfy
except ImportError:
    ftfy = None

PathLike = Union[str, Path]

SOT_TOKEN = "<start_of_text>"  # open_clip 3.x spelling; OpenAI's and HF's files say <|startoftext|>
EOT_TOKEN = "<end_of_text>"
_SPECIAL_NAMES = ((SOT_TOKEN, EOT_TOKEN), ("<|startoftext|>", "<|endoftext|>"))
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77
#: open_clip keeps lines 1 .. 49152-256-2 of the merges file (line 0 is a version header)
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + N_MERGES + 2
TOKENIZER_FILE = "tokenizer.json"

#: CLIP's word pattern: special tokens, English contractions, letter runs, single digits, symbol runs.
#: open_clip compiles it case-insensitively; that matters only for the literal alternatives (after lower
#: casing, "'\u017f" still matches 's), so only they carry (?i). Hand-written: U+0345 (combining
#: ypogegrammeni) is left out of the symbol class, because Python's `regex` under IGNORECASE matches it
#: with neither \p{L} nor the negated class, so open_clip drops it; Oniguruma's (?i) would keep it.
_WORD_PATTERN = (rf"(?i:{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d)"
                 r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+")
#: every character Python's str.split() splits on (str.isspace; this includes U+001C..U+001F, which
#: Rust's and Oniguruma's notions of whitespace do not), so the normaliser collapses what open_clip does
_PY_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_WHITESPACE_RUN = "[" + "".join(f"\\x{{{ord(c):X}}}" for c in _PY_WHITESPACE) + "]+"


def _byte_alphabet() -> List[str]:
    """The 256 byte characters of CLIP's (and GPT-2's) byte-level BPE, in vocabulary order.

    Hand-written: printable Latin-1 bytes stand for themselves; the 68 others (controls, space, NBSP,
    soft hyphen) are moved, in byte order, to U+0100 onwards. Vocabulary ids follow the characters'
    code point order, which is the printable bytes ascending followed by the moved ones.
    """
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, moved = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(0x100 + moved))
            moved += 1
    return sorted(chars, key=ord)


def _read_merges(bpe_path: Path) -> List[Tuple[str, str]]:
    """The merge pairs open_clip uses, in rank order."""
    try:
        with gzip.open(bpe_path) as f:
            lines = f.read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{bpe_path} is not CLIP's gzip'd BPE merges file: {e}") from e
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path} is not CLIP's BPE merges file (expected {N_MERGES} pairs after the header)")
    return merges  # type: ignore[return-value]


def build_clip_tokenizer(bpe_path: PathLike, context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` giving open_clip's SimpleTokenizer ids, built from its bpe_simple_vocab_16e6.txt.gz.

    Encoding a cleaned text (see ``clean_text``) gives SOT + BPE tokens + EOT, truncated to ``context_length``
    with EOT kept last and zero-padded to it, as open_clip does.
    """
    bpe_path = Path(bpe_path)
    if not bpe_path.is_file():
        raise FileNotFoundError(f"CLIP BPE merges file not found: {bpe_path}")
    merges = _read_merges(bpe_path)
    # vocabulary exactly as open_clip lists it: bytes, bytes + "</w>", one entry per merge, the two specials
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + END_OF_WORD for c in alphabet] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    vocab: Dict[str, int] = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_path}: {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(),
        normalizers.Replace(Regex(_WHITESPACE_RUN), " "),
        normalizers.Strip(),
        normalizers.Lowercase(),
    ])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # keep the pattern's matches, drop what lies between them (the spaces), like re.findall
        pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    # a special token typed in the text is matched after lower-casing, as open_clip's pattern does
    tok.add_special_tokens([AddedToken(t, normalized=True, special=True) for t in (SOT_TOKEN, EOT_TOKEN)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}", special_tokens=[(SOT_TOKEN, vocab[SOT_TOKEN]), (EOT_TOKEN, vocab[EOT_TOKEN])])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " ")])
    _set_length(tok, context_length)
    return tok


def save_clip_tokenizer(bpe_path: PathLike, out_path: PathLike, context_length: int = CONTEXT_LENGTH) -> Path:
    """Build the tokenizer and write it as tokenizer.json (``out_path`` is the file, or a folder to hold it)."""
    out = Path(out_path)
    if out.is_dir():
        out = out / TOKENIZER_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    build_clip_tokenizer(bpe_path, context_length).save(str(out))
    return out


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy.fix_text (only where ftfy imports), html.unescape twice, whitespace collapse, lower."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    # lower-cased here too: Python's lower() knows word-final sigma, the normaliser's does not
    return " ".join(text.split()).lower()


def _set_length(tok: Tokenizer, context_length: int) -> None:
    """Truncate to context_length (the post-processor's SOT/EOT counted) and zero-pad to it."""
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {context_length}")
    tok.enable_truncation(max_length=context_length)
    # open_clip pads with zeros; id 0 happens to be the token "!", named here only because padding needs a name
    tok.enable_padding(length=context_length, pad_id=0, pad_token=tok.id_to_token(0))


class ClipTokenizer:
    """open_clip's text tokenizer from a tokenizer.json (``save_clip_tokenizer``), with numpy and tokenizers only.

    ``encode`` cleans each text as open_clip does (``clean_text``; ftfy.fix_text is applied only if ftfy
    imports, which it does not on the robot), then gives SOT + tokens + EOT, truncated to context_length
    with EOT last, zero-padded: the same ids as ``open_clip.get_tokenizer("ViT-B-32")``.
    """

    def __init__(self, path: PathLike, context_length: int = CONTEXT_LENGTH) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"CLIP tokenizer file not found: {self.path}")
        try:
            tok = Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable or malformed JSON
            raise ValueError(f"{self.path} is not a tokenizers tokenizer.json file: {e}") from e
        names = next(((s, e) for s, e in _SPECIAL_NAMES
                      if tok.token_to_id(s) is not None and tok.token_to_id(e) is not None), None)
        if not isinstance(tok.model, BPE) or tok.model.end_of_word_suffix != END_OF_WORD or names is None:
            raise ValueError(f"{self.path} is not a CLIP tokenizer (needs a BPE model with '{END_OF_WORD}' "
                             f"word ends and {SOT_TOKEN}/{EOT_TOKEN} tokens)")
        self.sot_id: int = tok.token_to_id(names[0])
        self.eot_id: int = tok.token_to_id(names[1])
        self.vocab_size: int = tok.get_vocab_size(with_added_tokens=True)
        self.context_length = context_length
        _set_length(tok, context_length)
        probe = tok.encode("").ids
        if probe[:2] != [self.sot_id, self.eot_id]:
            raise ValueError(f"{self.path} is not a CLIP tokenizer: it does not wrap text in "
                             f"{names[0]}/{names[1]} (got {probe[:2]} for an empty text)")
        self._tok = tok

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, context_length) int64 token ids, one row per text (a single str counts as one text)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        encodings = self._tok.encode_batch([clean_text(t) for t in texts])
        return np.array([e.ids for e in encodings], dtype=np.int64)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of one row of ids: what lies between SOT and the first EOT (the padding after it dropped)."""
        row = [int(i) for i in ids]
        if self.eot_id in row:
            row = row[:row.index(self.eot_id)]
        return self._tok.decode(row, skip_special_tokens=True).strip()
