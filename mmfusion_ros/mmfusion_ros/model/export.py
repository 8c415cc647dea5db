"""ONNX export: one file per model part with the contract's names (docs/architecture.md), plus the
manifest the torch-free runtime reads and the default prompts with their text embeddings."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn

from mmfusion_ros.core.preprocess import DEFAULT, PreprocessConfig
from mmfusion_ros.model.mmfusion import SENSOR_KEYS, MMFusionModel
from mmfusion_ros.model.text import TEXT_ENCODER_NAME
from mmfusion_ros.model.vocab import Vocab

ONNX_OPSET = 17
MANIFEST_FORMAT_VERSION = 1


class _Encoder(nn.Module):
    def __init__(self, model: MMFusionModel, key: str):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(self.key, x)  # (B, 384)


class _Fusion(nn.Module):
    def __init__(self, model: MMFusionModel):
        super().__init__()
        self.fusion = model.fusion

    def forward(self, tokens: torch.Tensor, present: torch.Tensor):
        return self.fusion(tokens, present)  # (B, 384), (B, 4)


class _Caption(nn.Module):
    def __init__(self, model: MMFusionModel):
        super().__init__()
        self.dec = model.caption_decoder

    def forward(self, embedding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.dec(embedding, tokens)  # (B, L, V)


def part_specs(model: MMFusionModel, pre: PreprocessConfig = DEFAULT) -> Dict[str, dict]:
    """part -> {"module", "inputs": {name: (shape with "B"/"L", dtype)}, "outputs": {...}}."""
    shapes = pre.input_shapes()
    d = model.cfg.embed_dim
    ev = model.cfg.events
    v = model.cfg.caption.vocab_size
    specs = {}
    for k in SENSOR_KEYS:
        if k in model.tower_modalities:  # a frozen pretrained tower: its ONNX comes from the tower bundle
            continue
        specs[f"{k}_encoder"] = {
            "module": _Encoder(model, k),
            "inputs": {k: (["B", *shapes[k]], "float32")},
            "outputs": {"embedding": (["B", d], "float32")},
        }
    specs["fusion"] = {
        "module": _Fusion(model),
        "inputs": {"tokens": (["B", len(SENSOR_KEYS), d], "float32"), "present": (["B", len(SENSOR_KEYS)], "float32")},
        "outputs": {"fused": (["B", d], "float32"), "weights": (["B", len(SENSOR_KEYS)], "float32")},
    }
    specs["event_head"] = {
        "module": model.event_head,
        "inputs": {"history": (["B", ev.history_len, d], "float32")},
        "outputs": {"probs": (["B", len(ev.event_types), len(ev.horizons)], "float32")},
    }
    specs["caption_decoder"] = {
        "module": _Caption(model),
        "inputs": {"embedding": (["B", d], "float32"), "tokens": (["B", "L"], "int64")},
        "outputs": {"logits": (["B", "L", v], "float32")},
    }
    return specs


def example_inputs(spec: dict, batch: int = 2, length: int = 5, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random inputs matching a part's spec (tokens: valid ids starting with BOS; present: 0/1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (shape, dtype) in spec["inputs"].items():
        dims = [batch if s == "B" else length if s == "L" else int(s) for s in shape]
        if dtype == "int64":
            x = rng.integers(4, 8, size=dims).astype(np.int64)
            x[:, 0] = 1
        elif name == "present":
            x = (rng.random(dims) > 0.4).astype(np.float32)
        else:
            x = rng.standard_normal(dims).astype(np.float32)
            if name in ("tokens", "history", "embedding"):
                x /= np.linalg.norm(x, axis=-1, keepdims=True)
        out[name] = x
    return out


def export_onnx(model: MMFusionModel, out_dir, pre: PreprocessConfig = DEFAULT) -> Dict[str, dict]:
    """Write out_dir/onnx/<part>.onnx for every part, each checked with onnx.checker."""
    import onnx

    onnx_dir = Path(out_dir) / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    specs = part_specs(model, pre)
    parts = {}
    for part, spec in specs.items():
        ins = example_inputs(spec)
        args = tuple(torch.from_numpy(x) for x in ins.values())
        dyn = {}
        for group in ("inputs", "outputs"):
            for name, (shape, _) in spec[group].items():
                dyn[name] = {i: s for i, s in enumerate(shape) if isinstance(s, str)}
        path = onnx_dir / f"{part}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python ints in shapes are expected
            torch.onnx.export(
                spec["module"], args, str(path), input_names=list(spec["inputs"]), output_names=list(spec["outputs"]),
                dynamic_axes=dyn, opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
            )
        onnx.checker.check_model(onnx.load(str(path)))
        parts[part] = {
            "file": f"onnx/{part}.onnx",
            "inputs": {n: {"shape": s, "dtype": t} for n, (s, t) in spec["inputs"].items()},
            "outputs": {n: {"shape": s, "dtype": t} for n, (s, t) in spec["outputs"].items()},
        }
    return parts


def build_manifest(
    model: MMFusionModel,
    vocab: Vocab,
    parts: Mapping[str, dict],
    checkpoint_sha256: str,
    pre: PreprocessConfig = DEFAULT,
    event_thresholds: Optional[Mapping[str, float]] = None,
    extra: Optional[Mapping] = None,
) -> dict:
    ev = model.cfg.events
    thr = {t: 0.5 for t in ev.event_types}
    thr.update({k: float(v) for k, v in (event_thresholds or {}).items() if k in thr})
    man = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "name": model.cfg.name,
        "embed_dim": model.cfg.embed_dim,
        "modalities": list(SENSOR_KEYS),
        "parts": dict(parts),
        "logit_scale": float(model.logit_scale("camera").detach()),
        "event_types": list(ev.event_types),
        "horizons": [float(h) for h in ev.horizons],
        "event_history_len": ev.history_len,
        "event_history_step": ev.history_step,
        "event_thresholds": thr,
        "vocab": list(vocab.tokens),
        "caption_max_len": model.cfg.caption.max_len,
        "preprocess": pre.to_dict(),
        "checkpoint_sha256": checkpoint_sha256,
        "onnx_opset": ONNX_OPSET,
        "text_encoder": TEXT_ENCODER_NAME,
    }
    man.update(extra or {})
    return man


def write_prompts(out_dir, prompts, embeddings: np.ndarray, note: str = "") -> Path:
    """prompts.json: [{"label", "text", "embedding": [384 floats]}] + what made the embeddings."""
    embeddings = np.asarray(embeddings, np.float32)
    if len(prompts) != len(embeddings):
        raise ValueError("one embedding per prompt expected")
    doc = {
        "text_encoder": TEXT_ENCODER_NAME,
        "note": note,
        "prompts": [{"label": p["label"], "text": p["text"], **({"aliases": list(p["aliases"])} if p.get("aliases") else {}),
                     "embedding": [round(float(v), 7) for v in e]} for p, e in zip(prompts, embeddings)],
    }
    path = Path(out_dir) / "prompts.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def _tower_manifest(towers: Mapping) -> dict:
    """The manifest of the tower bundle a checkpoint was bound to, checked against what training recorded."""
    path = Path(towers["bundle"]) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the tower bundle this checkpoint was bound to is gone (metadata towers.bundle)")
    man = json.loads(path.read_text())
    if int(man.get("embed_dim", -1)) != int(towers["embed_dim"]):
        raise ValueError(f"{path}: embed_dim {man.get('embed_dim')} differs from the {towers['embed_dim']} the "
                         f"checkpoint's encoders were bound to")
    return man


def _copy_towers(tower_man: dict, src: Path, out: Path) -> Dict[str, dict]:
    """Copy the frozen towers (image ONNX, text folder) from the tower bundle; return their manifest parts."""
    import shutil

    parts = {}
    for part, spec in tower_man["parts"].items():
        dst = out / spec["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / spec["file"], dst)
        parts[part] = spec
    text = tower_man["towers"]["text"]
    if (out / text).resolve() != (src / text).resolve():
        shutil.rmtree(out / text, ignore_errors=True)
        shutil.copytree(src / text, out / text)
    return parts


def label_orthogonal_checkpoint(checkpoint, out_dir, prompt_embeddings: Optional[np.ndarray] = None,
                                text_cache_dir=None) -> Path:
    """checkpoint -> OUT/checkpoint.pt with fusion.label_orthogonal set to the default prompts' count and the
    fusion's label basis spanning their embeddings (weights unchanged). The caption memory and familiarity
    files its metadata names are copied beside it, so export_bundle finds them. Returns the new path."""
    import dataclasses
    import shutil

    import torch

    from mmfusion_ros.model.checkpoint import load_checkpoint, save_checkpoint
    from mmfusion_ros.model.mmfusion import build_model
    from mmfusion_ros.model.prompts import default_prompts
    from mmfusion_ros.model.text import encode_texts

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "checkpoint.pt"
    model, vocab, info = load_checkpoint(checkpoint)
    prompts = default_prompts()
    if prompt_embeddings is None:
        prompt_embeddings = encode_texts([p["text"] for p in prompts], text_cache_dir)
    pe = torch.from_numpy(np.asarray(prompt_embeddings, np.float32))  # (C, D)
    cfg = dataclasses.replace(model.cfg, fusion=dataclasses.replace(model.cfg.fusion, label_orthogonal=int(pe.shape[0])))
    new = build_model(cfg)
    state = model.state_dict()
    state.pop("fusion.label_basis", None)
    missing, unexpected = new.load_state_dict(state, strict=False)
    if set(missing) != {"fusion.label_basis"} or unexpected:
        raise ValueError(f"{checkpoint}: cannot carry the weights over (missing {missing}, unexpected {unexpected})")
    new.fusion.set_label_basis(pe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(info.get("metadata", {}))
    names = [meta.get("caption_memory_file")] + [(meta.get("familiarity") or {}).get("file")]
    for name in [n for n in names if n]:
        if (checkpoint.parent / name).is_file() and (out / name).resolve() != (checkpoint.parent / name).resolve():
            shutil.copyfile(checkpoint.parent / name, out / name)
    meta["label_orthogonal"] = {"from_checkpoint_sha256": info.get("sha256"), "prompts": [p["label"] for p in prompts]}
    dst = out / "checkpoint.pt"
    save_checkpoint(dst, new, vocab, meta)
    return dst


def export_bundle(
    checkpoint,
    out_dir,
    prompt_embeddings: Optional[np.ndarray] = None,
    prompts_note: str = "",
    event_thresholds: Optional[Mapping[str, float]] = None,
    text_cache_dir=None,
) -> dict:
    """checkpoint.pt -> complete bundle folder (checkpoint copy, onnx/, manifest.json, prompts.json).

    Prompt embeddings come from the frozen text encoder unless given (the random test bundle passes
    random unit vectors to stay fast). Returns the manifest.
    """
    import shutil

    from mmfusion_ros.model.checkpoint import load_checkpoint, sha256_file
    from mmfusion_ros.model.prompts import default_prompts
    from mmfusion_ros.model.text import encode_texts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "checkpoint.pt"
    model, vocab, info = load_checkpoint(checkpoint)
    dst = out / "checkpoint.pt"
    if dst.resolve() != checkpoint.resolve():
        shutil.copyfile(checkpoint, dst)
    digest = sha256_file(dst)
    (out / "checkpoint.pt.sha256").write_text(digest + "\n")
    towers = info.get("metadata", {}).get("towers")
    tower_man = _tower_manifest(towers) if towers else None
    pre = DEFAULT
    if tower_man is not None:  # the bound sensors keep the simulator geometry; the image follows the tower
        pre = replace(DEFAULT, **{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in tower_man["preprocess"].items() if k.startswith("image_")})
    parts = export_onnx(model, out, pre)
    thresholds = dict(info.get("metadata", {}).get("event_thresholds", {}))
    thresholds.update(event_thresholds or {})
    prompts = default_prompts()
    if tower_man is not None:
        parts.update(_copy_towers(tower_man, Path(towers["bundle"]), out))
        prompt_embeddings = np.asarray([r["embedding"] for r in json.loads(
            (Path(towers["bundle"]) / tower_man.get("prompts_file", "prompts.json")).read_text())["prompts"]], np.float32)
        prompts = [{"label": r["label"], "text": r["text"], "aliases": r.get("aliases", [])} for r in json.loads(
            (Path(towers["bundle"]) / tower_man.get("prompts_file", "prompts.json")).read_text())["prompts"]]
        prompts_note = f"embeddings from the {tower_man['text_encoder']}"
    if prompt_embeddings is None:
        prompt_embeddings = encode_texts([p["text"] for p in prompts], text_cache_dir)
        prompts_note = prompts_note or f"embeddings from {TEXT_ENCODER_NAME}"
    write_prompts(out, prompts, prompt_embeddings, prompts_note)
    extra = {"prompts_file": "prompts.json", "prompt_embeddings": prompts_note}
    mem = info.get("metadata", {}).get("caption_memory_file")
    if mem and (checkpoint.parent / mem).is_file() and (out / mem).resolve() != (checkpoint.parent / mem).resolve():
        shutil.copyfile(checkpoint.parent / mem, out / mem)
    if mem and (out / mem).is_file():
        extra["caption_memory"] = mem
    fam = info.get("metadata", {}).get("familiarity")  # statistics fitted by training (train/familiarity.py)
    if fam and (checkpoint.parent / fam["file"]).is_file():
        if (out / fam["file"]).resolve() != (checkpoint.parent / fam["file"]).resolve():
            shutil.copyfile(checkpoint.parent / fam["file"], out / fam["file"])
        extra["familiarity"] = fam
    cal = info.get("metadata", {}).get("calibration")  # maps fitted by `train --calibrate-only` (train/calibrate.py)
    if cal:
        extra["calibration"] = cal
    if tower_man is not None:
        bound = [k for k in SENSOR_KEYS if k not in model.tower_modalities]
        extra.update(text_encoder=tower_man["text_encoder"], logit_scale=float(tower_man["logit_scale"]),
                     towers={**tower_man["towers"], "bound": bound})
    man = build_manifest(model, vocab, parts, digest, pre=pre, event_thresholds=thresholds, extra=extra)
    if tower_man is not None:
        doc = json.loads((out / "prompts.json").read_text())
        doc["text_encoder"] = tower_man["text_encoder"]
        (out / "prompts.json").write_text(json.dumps(doc, indent=1))
    (out / "manifest.json").write_text(json.dumps(man, indent=1))
    (out / "vocab.txt").write_text("\n".join(vocab.tokens) + "\n")
    return man
