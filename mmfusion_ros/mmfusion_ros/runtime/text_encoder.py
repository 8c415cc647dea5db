"""Embed text into the shared space without torch: an ONNX text model + the tokenizers library.

Lets the robot take new label prompts at run time (SetPrompts) on a machine with no torch. Two kinds, told
apart by text_encoder.json: all-MiniLM-L6-v2 (the default; `mmfusion export --text-encoder`, pooling and
normalisation in the graph) and an OpenCLIP text tower of a tower bundle (`mmfusion towers import`:
kind "open_clip", CLIP token ids in, normalised embedding out).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

ONNX_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "text_encoder.json"


def default_text_encoder_dir() -> Path:
    """~/.cache/mmfusion_ros/text_encoder (same rule as model/text_export.py, which writes it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mmfusion_ros" / "text_encoder"


def find_text_encoder_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """The folder holding text_encoder.onnx: ``path`` itself, ``path/text_encoder`` (a model bundle), or the cache."""
    candidates = []
    if path:
        p = Path(path).expanduser()
        candidates += [p, p / "text_encoder"]
    else:
        candidates.append(default_text_encoder_dir())
    for c in candidates:
        if (c / ONNX_FILE).is_file() and (c / TOKENIZER_FILE).is_file():
            return c
    raise FileNotFoundError(
        f"no {ONNX_FILE} + {TOKENIZER_FILE} in {', '.join(str(c) for c in candidates)}; "
        f"create it once with `mmfusion export --text-encoder` (writes {default_text_encoder_dir()})")


class TextEncoder:
    """texts -> (N, D) float32 L2-normalised embeddings: MiniLM's 384 (as sentence-transformers gives) or an
    OpenCLIP text tower's width."""

    def __init__(self, path: Optional[Union[str, Path]] = None, threads: int = 1, batch_size: int = 32):
        from tokenizers import Tokenizer

        self.dir = find_text_encoder_dir(path)
        meta_path = self.dir / META_FILE
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{meta_path}: cannot read the text encoder description: {e}") from e
        self.kind = str(meta.get("kind", "minilm"))  # "minilm" or "open_clip"
        self.name = str(meta.get("name", "all-MiniLM-L6-v2"))
        self.batch_size = int(batch_size)
        if self.kind == "open_clip":
            from .clip_tokenizer import ClipTokenizer

            self.clip_tokenizer = ClipTokenizer(self.dir / TOKENIZER_FILE, int(meta.get("context_length", 77)))
        elif self.kind == "minilm":
            self.max_len = int(meta.get("max_seq_length", 256))  # sentence-transformers truncates at 256
            self.tokenizer = Tokenizer.from_file(str(self.dir / TOKENIZER_FILE))
            self.tokenizer.enable_truncation(max_length=self.max_len)
            # tokenizer.json pads to a fixed 128; pad per batch to its longest text instead (faster, same result)
            self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        else:
            raise ValueError(f"{meta_path}: unknown text encoder kind {self.kind!r} (minilm, open_clip)")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.dir / ONNX_FILE), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        self.dim = int(meta.get("embed_dim", 384))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(texts), self.batch_size):
            if self.kind == "open_clip":
                ids = self.clip_tokenizer.encode(texts[i:i + self.batch_size])  # (n, ctx) int64
                (emb,) = self.session.run(["embedding"], {"tokens": ids})
                out.append(emb.astype(np.float32))  # (n, D)
                continue
            enc = self.tokenizer.encode_batch(texts[i:i + self.batch_size])
            ids = np.asarray([e.ids for e in enc], np.int64)  # (n, S)
            mask = np.asarray([e.attention_mask for e in enc], np.int64)  # (n, S)
            (emb,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
            out.append(emb.astype(np.float32))  # (n, 384)
        return np.concatenate(out)
