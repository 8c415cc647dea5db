"""A complete random-weight model bundle for tests that must not depend on a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmfusion_ros.core.types import OBJECT_CLASSES
from mmfusion_ros.model.checkpoint import save_checkpoint
from mmfusion_ros.model.config import tiny_config
from mmfusion_ros.model.export import export_bundle
from mmfusion_ros.model.mmfusion import build_model
from mmfusion_ros.model.prompts import default_prompts
from mmfusion_ros.model.vocab import Vocab


def write_random_bundle(out_dir, seed: int = 0) -> Path:
    """Tiny randomly initialised model -> out_dir/{checkpoint.pt, onnx/, manifest.json, prompts.json}.

    Prompt embeddings are seeded random unit vectors (running the text encoder would take seconds
    and is not what these tests check); manifest["prompt_embeddings"] says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    words = [c.replace("_", " ") for c in OBJECT_CLASSES] + ["a", "is", "near", "the", "robot", "ahead", "barking", "sound"]
    vocab = Vocab.build(words)
    cfg = tiny_config(vocab_size=len(vocab))
    cfg.name = "mmfusion_random"
    model = build_model(cfg).eval()
    save_checkpoint(out / "checkpoint.pt", model, vocab, {"random_init": True, "seed": seed})
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((len(default_prompts()), cfg.embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    export_bundle(out / "checkpoint.pt", out, prompt_embeddings=emb, prompts_note="random unit vectors (random test bundle, not text embeddings)")
    return out
