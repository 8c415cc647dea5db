"""Import a pretrained OpenCLIP image-text model as the frozen towers of a bundle (ImageBind's recipe).

The image tower becomes the bundle's `camera_encoder` and the text tower its text encoder (prompts, caption
targets): the bundle's shared space is the OpenCLIP space, with that model's dimension and logit scale. Both
towers are exported to ONNX here so the robot runs them with ONNX Runtime or TensorRT; the image
preprocessing is the numpy one of core/preprocess.py (the model's size, mean and std), and the tokenizer
is runtime/clip_tokenizer.py, so nothing on the robot needs torch or open_clip. train/towers.py writes
the bundle around these files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from mmfusion_ros.core.preprocess import PreprocessConfig
from mmfusion_ros.core.types import OBJECT_CLASSES
from mmfusion_ros.model.open_clip_import import import_open_clip

ONNX_OPSET = 17
#: how the default prompts read for a CLIP text tower (CLIP was trained on alt-text: "a photo of ...")
CLIP_PROMPT_TEMPLATE = "a photo of {}."


class TowerImportError(ValueError):
    """The architecture, checkpoint or output folder cannot make a tower bundle (the message names which)."""


class _Tower(nn.Module):
    """One tower as an ONNX-exportable module: camera (B,3,S,S) or tokens (B,L) int64 -> embedding (B,D) L2-normalised."""

    def __init__(self, clip: nn.Module, side: str):
        super().__init__()
        self.clip = clip
        self.encode = clip.encode_image if side == "image" else clip.encode_text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x, normalize=True)  # (B, D)


def load_open_clip(arch: str, pretrained: Optional[str], config: Optional[Path] = None) -> Tuple[nn.Module, dict]:
    """(eval-mode CLIP model, its preprocess config) for `arch` with weights `pretrained`.

    pretrained: an open_clip tag (open_clip fetches it: needs internet), a local checkpoint file, or None
    for random weights (tests, benchmarks). config: an open_clip model-config JSON for an architecture that
    open_clip does not ship (registered under its file stem, which must be `arch`)."""
    open_clip = import_open_clip()
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise TowerImportError(f"--config {config}: no such file")
        if config.stem != arch:
            raise TowerImportError(f"--config {config}: open_clip registers a config under its file name; "
                                   f"name it {arch}.json or pass --open-clip {config.stem}")
        open_clip.add_model_config(config)
    if arch not in open_clip.list_models():
        near = [m for m in open_clip.list_models() if arch.lower().split("-")[0] in m.lower()][:8]
        raise TowerImportError(f"--open-clip {arch!r}: not an open_clip architecture (similar: {near or 'none'}; "
                               f"`python -c 'import open_clip; print(open_clip.list_models())'` lists them)")
    path = Path(pretrained).expanduser() if pretrained else None
    if path is not None and (path.is_file() or path.suffix in (".pt", ".pth", ".bin", ".safetensors")):
        if not path.is_file():
            raise TowerImportError(f"--pretrained {path}: no such file")
        model = open_clip.create_model(arch, pretrained=None)
        try:
            open_clip.load_checkpoint(model, str(path), strict=True)
        except (RuntimeError, KeyError, ValueError, OSError, EOFError) as e:
            first = str(e).strip().splitlines()
            raise TowerImportError(f"--pretrained {path}: not a checkpoint of {arch} "
                                   f"({' '.join(first[:3])[:400]})") from e
        except Exception as e:  # noqa: BLE001 - unpickling a wrong file raises anything
            raise TowerImportError(f"--pretrained {path}: cannot read as a torch checkpoint: {e}") from e
    elif pretrained:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise TowerImportError(f"--pretrained {pretrained!r}: neither a file nor a tag of {arch} "
                                   f"(tags: {tags or 'none'})")
        try:
            model = open_clip.create_model(arch, pretrained=pretrained)  # open_clip fetches the named weights
        except Exception as e:  # noqa: BLE001 - hub/network errors have many types
            raise TowerImportError(f"open_clip could not fetch {arch} {pretrained!r} ({type(e).__name__}: {e}); "
                                   f"without internet, download the checkpoint elsewhere and pass its file") from e
    else:
        model = open_clip.create_model(arch, pretrained=None)
    pre = dict(open_clip.get_model_preprocess_cfg(model))
    return model.eval(), pre


def tower_preprocess(pre: dict) -> PreprocessConfig:
    """open_clip's image preprocess config -> the bundle's PreprocessConfig (other fields at defaults)."""
    size = pre.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mode = str(pre.get("resize_mode", "shortest"))
    if mode not in ("shortest", "squash"):
        raise TowerImportError(f"image resize mode {mode!r} of this model is not supported (shortest, squash)")
    return PreprocessConfig(image_size=size, image_resize=mode, image_mean=tuple(float(v) for v in pre["mean"]),
                            image_std=tuple(float(v) for v in pre["std"])).validate()


def _export(module: nn.Module, example: torch.Tensor, path: Path, in_name: str) -> None:
    import onnx

    # with autograd on, nn.MultiheadAttention skips its fused inference kernel, which has no ONNX export
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python ints in shapes are expected
        torch.onnx.export(module, (example,), str(path), input_names=[in_name], output_names=["embedding"],
                          dynamic_axes={in_name: {0: "B"}, "embedding": {0: "B"}}, opset_version=ONNX_OPSET,
                          do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(str(path))  # path form: towers over 2 GB keep their weights in external data


def clip_prompts(template: str = CLIP_PROMPT_TEMPLATE) -> list:
    """[{"label", "text", "aliases"}] for OBJECT_CLASSES, phrased for a CLIP text tower ("a photo of a dog."); the
    alias is the package's default phrasing (model/prompts.py), so the default `model.prompts` find them."""
    from mmfusion_ros.model.prompts import default_prompts

    default = {p["label"]: p["text"] for p in default_prompts()}
    out = []
    for c in OBJECT_CLASSES:
        noun = c.replace("_", " ")
        article = "an" if noun[0] in "aeiou" else "a"
        text = template.format(f"{article} {noun}")
        out.append({"label": c, "text": text, "aliases": [default[c]] if default.get(c, text) != text else []})
    return out


def export_towers(model: nn.Module, arch: str, image_path: Path, text_path: Path, image_size: int) -> Tuple[int, int]:
    """Write the image tower (input `camera` (B,3,S,S)) and text tower (input `tokens` (B,ctx)) ONNX files;
    return (embedding width, context length)."""
    open_clip = import_open_clip()
    image = _Tower(model, "image").eval()
    text = _Tower(model, "text").eval()
    x = torch.zeros(2, 3, image_size, image_size)  # (2, 3, S, S)
    ids = open_clip.get_tokenizer(arch)(["a photo of a dog.", "a car"])  # (2, ctx) int64
    with torch.no_grad():
        dim, tdim = int(image(x).shape[1]), int(text(ids).shape[1])
    if tdim != dim:
        raise TowerImportError(f"{arch}: text tower width {tdim} != image tower width {dim}")
    _export(image, x, image_path, "camera")
    _export(text, ids, text_path, "tokens")
    return dim, int(ids.shape[1])
