"""Checkpoint I/O: weights together with everything needed to rebuild and use them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from mmfusion_ros.model.config import ModelConfig
from mmfusion_ros.model.mmfusion import MMFusionModel, build_model
from mmfusion_ros.model.vocab import Vocab

FORMAT_VERSION = 1


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    path,
    model: MMFusionModel,
    vocab: Vocab,
    metadata: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> str:
    """Write atomically (tmp + rename, so a killed run never leaves half a file); returns sha256.

    ``extra`` carries training state (optimizer, step, rng) for --resume; the shipped checkpoint
    omits it. A ``<path>.sha256`` sidecar lets load_checkpoint detect a corrupt or swapped file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = model.module if hasattr(model, "module") else model
    payload = {
        "format_version": FORMAT_VERSION,
        "config": m.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "vocab": list(vocab.tokens),
        "metadata": dict(metadata or {}),
    }
    if extra:
        payload["extra"] = extra
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    digest = sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(digest + "\n")
    return digest


def load_checkpoint(path, map_location: str = "cpu", verify: bool = True) -> Tuple[MMFusionModel, Vocab, Dict[str, Any]]:
    """-> (model in eval mode, vocab, payload without the state dict). Raises on a bad file."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    side = path.with_name(path.name + ".sha256")
    if verify and side.is_file():
        want = side.read_text().strip()
        got = sha256_file(path)
        if want != got:
            raise ValueError(f"checkpoint {path} sha256 {got} does not match {side} ({want}); file corrupt or replaced")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for truncated/garbage files
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an mmfusion checkpoint (format_version {FORMAT_VERSION})")
    cfg = ModelConfig.from_dict(payload["config"])
    model = build_model(cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:  # the full message lists every key; the first line is what helps
        missing = set(model.state_dict()) ^ set(payload["state_dict"])
        raise ValueError(f"{path}: weights do not fit the model built from its own config (made by other model "
                         f"code? {len(missing)} keys differ, e.g. {sorted(missing)[:3]}): "
                         f"{str(e).splitlines()[0]}") from None
    model.eval()
    vocab = Vocab(payload["vocab"])
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["sha256"] = sha256_file(path)
    return model, vocab, info
