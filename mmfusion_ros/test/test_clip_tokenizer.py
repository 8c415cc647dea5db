"""runtime/clip_tokenizer.py gives open_clip's SimpleTokenizer ids, without torch.

The reference is open_clip itself (open_clip_torch, a training-machine dependency); the parity tests
skip where it is not installed. The tokenizer.json is built once per module from open_clip's own BPE file.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import List

import numpy as np
import pytest

from mmfusion_ros.model.prompts import default_prompts
from mmfusion_ros.runtime import clip_tokenizer as ct

PKG_ROOT = Path(__file__).resolve().parents[1]


def _texts() -> List[str]:
    texts = [p["text"] for p in default_prompts()]
    texts += [  # like the simulator's captions
        "A person walks across the path ahead on the left while voices and footsteps can be heard; the robot drives",
        "The robot drives slowly turning right over rough ground. in view: a dog runs toward the robot from the left."
        " sounds: a dog barking.",
        "It is quiet; a car is parked on the right, a traffic cone stands ahead, and the robot stands still",
        "you can hear an alarm beeping and a door slam; nothing stands out, and the robot drives quickly, "
        "about to hit a box",
    ]
    texts += [
        "!!!", "?!?!...", "--==>>", "a...b,,,c;;", "(hello) [world] {x}", "under_score-dash/slash\\back",
        "123", "3.14159", "1,000,000 and 42nd", "v2.0.1",
        "it's we'll they're I've I'm you'd don't", "IT'S WE'LL", "'s 't 're", "rock'n'roll",
        "UPPERCASE Words", "MiXeD CaSe",
        "café naïve", "cafe\u0301 nai\u0308ve",  # composed and decomposed accents
        "Zürich Straße", "ΟΔΟΣ ΣΑΣ", "İstanbul",
        "東京", "東京タワーの近く", "서울", "Москва", "مرحبا", "नमस्ते",
        "🐶 🚗💨", "👩‍👩‍👧", "thumbs up 👍🏽",
        "&amp;", "&amp;amp; &lt;b&gt; &quot;q&quot; &#39;s", "fish &amp; chips",
        "a\tb\nc   d", "  leading and trailing  ", "\n\t\r", "a\u00a0b\u3000c\u2009d", "x\x1cy\x1fz",
        "", " ",
        "<start_of_text> hi <END_OF_TEXT>",
        " ".join(f"word{i}" for i in range(200)),  # truncated
    ]
    # exactly at the boundary: "a" is one token, so n words give n + 2 with SOT and EOT
    texts += [" ".join(["a"] * n) for n in (74, 75, 76, 77)]
    return texts


TEXTS = _texts()


@pytest.fixture(scope="module")
def open_clip_tok():
    """open_clip's own tokenizer (the one ViT-B-32 uses): the reference."""
    try:
        from mmfusion_ros.model.open_clip_import import import_open_clip

        open_clip = import_open_clip()
    except ImportError as e:
        pytest.skip(f"open_clip not installed: {e}")
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def tokenizer_json(open_clip_tok, tmp_path_factory) -> Path:
    from open_clip.tokenizer import default_bpe

    return ct.save_clip_tokenizer(default_bpe(), tmp_path_factory.mktemp("clip_tok"))


@pytest.fixture(scope="module")
def tok(tokenizer_json) -> ct.ClipTokenizer:
    return ct.ClipTokenizer(tokenizer_json)


def _rows_differing(a: np.ndarray, b: np.ndarray, texts: List[str]) -> List[str]:
    return [f"{t!r}: {a[i][:10]} vs open_clip {b[i][:10]}" for i, t in enumerate(texts) if not np.array_equal(a[i], b[i])]


def test_ids_equal_open_clip(tok, open_clip_tok):
    ours = tok.encode(TEXTS)
    ref = open_clip_tok(TEXTS).numpy()
    assert ours.shape == ref.shape == (len(TEXTS), 77) and ours.dtype == np.int64
    bad = _rows_differing(ours, ref, TEXTS)
    assert not bad, "ids differ from open_clip:\n" + "\n".join(bad)
    assert (tok.sot_id, tok.eot_id, tok.vocab_size) == (open_clip_tok.sot_token_id, open_clip_tok.eot_token_id,
                                                       open_clip_tok.vocab_size)


def test_truncation_and_padding_at_the_boundary(tok):
    rows = tok.encode([" ".join(["a"] * n) for n in (74, 75, 76)] + [""])
    assert rows[0][-2] == tok.eot_id and rows[0][-1] == 0  # 76 tokens: one pad
    assert rows[1][-1] == tok.eot_id and 0 not in rows[1]  # 77: exactly full
    assert np.array_equal(rows[2], rows[1])  # 78: the last word goes, EOT stays last
    assert list(rows[3][:3]) == [tok.sot_id, tok.eot_id, 0] and not rows[3][2:].any()


def test_other_context_length_equals_open_clip(tokenizer_json, open_clip_tok):
    short = ct.ClipTokenizer(tokenizer_json, context_length=16)
    texts = TEXTS[:12] + TEXTS[-5:]
    assert np.array_equal(short.encode(texts), open_clip_tok(texts, context_length=16).numpy())


def test_without_ftfy_text_that_ftfy_leaves_alone_is_unchanged(tok, open_clip_tok, monkeypatch):
    """The robot has no ftfy: every text whose cleaning ftfy changes no more than NFC does keeps open_clip's ids."""
    import ftfy

    def rest_of_cleaning(t: str) -> str:
        return " ".join(html.unescape(html.unescape(t)).split()).lower()

    texts = [t for t in TEXTS if rest_of_cleaning(ftfy.fix_text(t)) == rest_of_cleaning(unicodedata.normalize("NFC", t))]
    assert len(texts) == len(TEXTS) - 1  # only "x\x1cy\x1fz": ftfy deletes the control characters
    monkeypatch.setattr(ct, "ftfy", None)
    bad = _rows_differing(tok.encode(texts), open_clip_tok(texts).numpy(), texts)
    assert not bad, "without ftfy, ids differ from open_clip:\n" + "\n".join(bad)


def test_encode_accepts_one_string_and_an_empty_list(tok):
    assert tok.encode("a dog").shape == (1, 77)
    assert tok.encode([]).shape == (0, 77)


def test_decode_gives_the_cleaned_text_back(tok):
    assert tok.decode(tok.encode(["A Dog  &amp; a CAR!"])[0]) == "a dog & a car !"


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nope"):
        ct.ClipTokenizer(missing)
    with pytest.raises(FileNotFoundError, match="merges.txt.gz"):
        ct.build_clip_tokenizer(tmp_path / "merges.txt.gz")


def test_a_file_that_is_not_a_clip_tokenizer_is_a_clear_error(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="garbage.json"):
        ct.ClipTokenizer(garbage)
    other = tmp_path / "wordlevel.json"
    Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(other))
    with pytest.raises(ValueError, match="wordlevel.json.*not a CLIP tokenizer"):
        ct.ClipTokenizer(other)
    with pytest.raises(ValueError, match="garbage.json.*merges"):
        ct.build_clip_tokenizer(garbage)


def test_importing_it_does_not_load_torch():
    code = ("import sys\nimport mmfusion_ros.runtime.clip_tokenizer\n"
            "bad = [m for m in ('torch', 'open_clip') if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=PKG_ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
