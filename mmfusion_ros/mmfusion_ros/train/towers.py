"""Tower bundles: a frozen pretrained image-text model (OpenCLIP) as a bundle's camera encoder and text side.

`import_towers` writes the bundle (`mmfusion towers import`): the two towers as ONNX (model/open_clip_towers.py),
the CLIP tokenizer as a tokenizers JSON (runtime/clip_tokenizer.py), the default prompts embedded by the
text tower, and a manifest whose `towers` entry names the source and which sensors are bound (none yet).
Such a bundle runs as a camera model on its own; `mmfusion train --towers` binds the other sensors to it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from mmfusion_ros.model.export import write_prompts
from mmfusion_ros.model.open_clip_towers import (CLIP_PROMPT_TEMPLATE, ONNX_OPSET, TowerImportError, clip_prompts,
                                                 export_towers, load_open_clip, tower_preprocess)
from mmfusion_ros.model.open_clip_import import import_open_clip
from mmfusion_ros.runtime.clip_tokenizer import save_clip_tokenizer
from mmfusion_ros.runtime.text_encoder import META_FILE, ONNX_FILE, TOKENIZER_FILE, TextEncoder

TEXT_DIR = "text_encoder"  # the bundle's text tower folder: text_encoder.onnx, tokenizer.json, text_encoder.json


def default_cache_dir() -> Path:
    """~/.cache/mmfusion_ros/tower_embeddings: image-tower embeddings of dataset splits (eval, calibrate), kept
    out of the bundle and the dataset so neither needs to be writable."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mmfusion_ros" / "tower_embeddings"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_towers(arch: str, pretrained: Optional[str], out_dir, name: Optional[str] = None,
                  config: Optional[Path] = None, prompt_template: str = CLIP_PROMPT_TEMPLATE,
                  force: bool = False) -> Dict:
    """Write a tower bundle to out_dir and return its manifest. Written to `<out>.partial` and renamed at
    the end, so a failed import leaves nothing behind; an existing non-empty folder needs `force`."""
    open_clip = import_open_clip()
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TowerImportError(f"--out {out}: exists and is not empty (pass --force to replace it)")
    model, pre_cfg = load_open_clip(arch, pretrained, config)
    pre = tower_preprocess(pre_cfg)
    ckpt = Path(pretrained).expanduser() if pretrained and Path(pretrained).expanduser().is_file() else None
    tag = ckpt.name if ckpt else (pretrained or "random")
    text_name = f"open_clip {arch} ({tag}) text tower"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "onnx").mkdir(parents=True)
        (tmp / TEXT_DIR).mkdir()
        s = pre.image_size
        dim, ctx = export_towers(model, arch, tmp / "onnx" / "camera_encoder.onnx", tmp / TEXT_DIR / ONNX_FILE, s)
        save_clip_tokenizer(open_clip.tokenizer.default_bpe(), tmp / TEXT_DIR / TOKENIZER_FILE, ctx)
        (tmp / TEXT_DIR / META_FILE).write_text(json.dumps(
            {"kind": "open_clip", "name": text_name, "embed_dim": dim, "context_length": ctx, "input": "tokens"},
            indent=1))
        prompts = clip_prompts(prompt_template)
        emb = TextEncoder(tmp / TEXT_DIR).encode([p["text"] for p in prompts])  # (P, D) through the ONNX tower
        note = f"embeddings from the {text_name}"
        write_prompts(tmp, prompts, emb, note)
        doc = json.loads((tmp / "prompts.json").read_text())
        doc["text_encoder"] = text_name
        (tmp / "prompts.json").write_text(json.dumps(doc, indent=1))
        source = {"library": "open_clip", "version": open_clip.__version__, "arch": arch, "pretrained": tag}
        if ckpt:
            source["checkpoint_sha256"] = _sha256(ckpt)
        man = {
            "format_version": 1,
            "name": name or f"openclip_{arch}".replace("-", "_").lower(),
            "embed_dim": dim,
            "modalities": ["camera"],
            "parts": {"camera_encoder": {
                "file": "onnx/camera_encoder.onnx",
                "inputs": {"camera": {"shape": ["B", 3, s, s], "dtype": "float32"}},
                "outputs": {"embedding": {"shape": ["B", dim], "dtype": "float32"}}}},
            "logit_scale": float(model.logit_scale.detach().exp()),
            "preprocess": pre.to_dict(),
            "onnx_opset": ONNX_OPSET,
            "text_encoder": text_name,
            "prompts_file": "prompts.json",
            "prompt_embeddings": note,
            "towers": {"source": source, "image": "camera_encoder", "text": TEXT_DIR, "context_length": ctx,
                       "bound": []},
        }
        (tmp / "manifest.json").write_text(json.dumps(man, indent=1))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return man


class TowerTextEmbedder:
    """The trainer's text embedder (model/text.TextEmbedder's interface) backed by a tower bundle's ONNX text
    tower, with an in-memory cache: caption corpora repeat their phrasings."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self._cache: Dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = [str(t) for t in texts]
        todo = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for t, e in zip(chunk, self.encoder.encode(chunk)):
                self._cache[t] = e
        if not texts:
            return np.zeros((0, self.encoder.dim), np.float32)
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)  # (N, D)

    def save(self) -> None:
        """Nothing to persist (TextEmbedder keeps a disk cache; the tower is fast enough to recompute)."""


class TowerSide:
    """A tower bundle's frozen parts as training uses them: image-tower embeddings of frames, the text tower."""

    def __init__(self, bundle, threads: int = 2):
        from mmfusion_ros.core.pipeline import preprocess_config_from_manifest
        from mmfusion_ros.runtime.manifest import load_manifest

        self.manifest = load_manifest(bundle)
        if not self.manifest.towers:
            raise TowerImportError(f"{self.manifest.model_dir}: not a tower bundle (its manifest.json has no "
                                   f"'towers'); make one with `mmfusion towers import`")
        self.dir = self.manifest.model_dir
        self.dim = self.manifest.embed_dim
        self.logit_scale = float(self.manifest["logit_scale"])
        self.pre = preprocess_config_from_manifest(self.manifest)
        self.text = TextEncoder(self.manifest.text_dir, threads=threads)
        if self.text.dim != self.dim:
            raise TowerImportError(f"{self.manifest.text_dir / META_FILE}: text tower width {self.text.dim} differs "
                                   f"from the bundle's embed_dim {self.dim}")
        self._backend = None  # ONNX Runtime on the bundle, opened on the first image
        self._threads = threads
        self.image_file = self.manifest.part_path("camera_encoder")
        self.image_sha256 = _sha256(self.image_file)

    def describe(self) -> dict:
        """What a bound checkpoint records of its towers (export and eval find them again from this)."""
        return {"bundle": str(self.dir), "embed_dim": self.dim, "logit_scale": self.logit_scale,
                "camera_encoder_sha256": self.image_sha256, "source": self.manifest.towers.get("source", {})}

    def image_embeddings(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        """(N,H,W,3) uint8 RGB -> (N,D) image-tower embeddings (the bundle's own preprocessing, ONNX Runtime)."""
        from mmfusion_ros.core.preprocess import preprocess_image
        from mmfusion_ros.runtime.factory import create_backend

        if self._backend is None:
            self._backend = create_backend(self.dir, "onnxruntime", intra_op_threads=self._threads)
        out = []
        for s in range(0, len(images), batch):
            x = np.stack([preprocess_image(np.asarray(im, np.uint8), self.pre) for im in images[s:s + batch]])
            out.append(np.asarray(self._backend.encode("camera", x), np.float32))  # (b, D)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def split_embeddings(self, split, cache_dir, log=print) -> np.ndarray:
        """(N,D) embeddings of a dataset split's camera frames, cached under cache_dir (keyed by a sample of the
        frames themselves and the tower file) because a ViT tower takes minutes over a dataset on a CPU."""
        cam = split.arrays["camera"]
        h = hashlib.sha1(f"{split.name}|{len(split)}|{self.image_sha256}".encode())
        h.update(np.ascontiguousarray(cam[:: max(1, len(cam) // 64)]).tobytes())
        key = h.hexdigest()[:16]
        path = Path(cache_dir) / f"tower_{split.name}_{key}.npy"
        if path.is_file():
            e = np.load(path)
            if e.shape == (len(split), self.dim):
                return e
        t0 = time.time()
        e = self.image_embeddings(split.arrays["camera"])
        log(f"[towers] embedded {len(split)} {split.name} frames with the image tower in {time.time() - t0:.0f} s")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, e)
        return e

    def text_embedder(self) -> TowerTextEmbedder:
        return TowerTextEmbedder(self.text)
