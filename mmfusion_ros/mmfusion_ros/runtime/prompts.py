"""Prompt texts -> (labels, embeddings), computed once per prompt list for the node and `mmfusion process`.

The bundle's prompts.json holds the default prompts with their embeddings (published under their class
label), so the defaults need no text encoder; any other prompt is embedded by the torch-free TextEncoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


class PromptError(ValueError):
    """Prompts that cannot be embedded (no precomputed embedding and no text encoder)."""


def load_bundle_prompts(model_dir: Path) -> Dict[str, Tuple[str, np.ndarray]]:
    """prompts.json -> {prompt text: (label, (D,) embedding)}; empty when the bundle has none."""
    path = Path(model_dir) / "prompts.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    out = {}
    for entry in doc.get("prompts", []):
        value = (str(entry.get("label", entry["text"])), np.asarray(entry["embedding"], np.float32))
        out[str(entry["text"])] = value
        # aliases: other phrasings of the same label embedded as `text` (a tower bundle phrases the package's
        # default prompts the way its text tower was trained: "a person walking nearby" -> "a photo of a person.")
        for alias in entry.get("aliases", []):
            out.setdefault(str(alias), value)
    return out


def open_text_encoder(model_dir: Optional[Path]):
    """The TextEncoder beside the bundle, else the one in the user cache; PromptError naming both places.

    A tower bundle's prompts must live in its own text tower's space: only its folder is tried, and a tower of
    another width than the bundle's space is an error."""
    from mmfusion_ros.runtime import TextEncoder
    from mmfusion_ros.runtime.manifest import ManifestError, load_manifest

    man = None
    if model_dir and (Path(model_dir) / "manifest.json").is_file():
        try:
            man = load_manifest(model_dir, check_files=False)
        except ManifestError as e:
            raise PromptError(str(e)) from e
    if man is not None and man.text_dir is not None:
        try:
            enc = TextEncoder(man.text_dir)
        except (FileNotFoundError, ValueError) as e:
            raise PromptError(f"model.prompts: the bundle's text tower cannot be opened: {e}") from e
        if enc.dim != man.embed_dim:
            raise PromptError(f"{man.text_dir}: text tower width {enc.dim} differs from the bundle's embed_dim "
                              f"{man.embed_dim}")
        return enc
    errors = []
    for where in ([model_dir] if model_dir else []) + [None]:
        try:
            return TextEncoder(where)
        except FileNotFoundError as e:
            errors.append(str(e))
    raise PromptError("model.prompts: prompts outside the bundle's prompts.json need the text encoder, "
                      "which was not found: " + "; ".join(errors))


def embed_prompts(prompts: Sequence[str], bundle_prompts: Dict[str, Tuple[str, np.ndarray]],
                  text_encoder: Callable[[], Any]) -> Tuple[List[str], np.ndarray]:
    """Prompts -> (labels, (P,D) embeddings): bundle entries where the text matches, the text encoder
    (asked for only when needed) for the others."""
    prompts = [p.strip() for p in prompts]
    labels, rows, missing = [], [None] * len(prompts), []
    for i, p in enumerate(prompts):
        if p in bundle_prompts:
            label, e = bundle_prompts[p]
            labels.append(label)
            rows[i] = e
        else:
            labels.append(p)
            missing.append(i)
    if missing:
        new = np.asarray(text_encoder().encode([prompts[i] for i in missing]), np.float32)  # (M, D)
        for k, i in enumerate(missing):
            rows[i] = new[k]
    return labels, np.stack(rows).astype(np.float32)  # (P, D)
