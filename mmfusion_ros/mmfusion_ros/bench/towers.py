"""`mmfusion bench` section: what a tower bundle's OpenCLIP towers cost on this CPU with ONNX Runtime.

ViT-B-32 with random weights (random weights time exactly like trained ones: same graph, same shapes) is
exported once to a private temporary folder with model/open_clip_towers.py, the same export `mmfusion towers
import` ships, and each tower is timed at batch 1 (the image tower: one camera frame; the text tower: one
prompt) and the text tower also at the default prompt count (what a bundle embeds when its prompts change),
with 1 and 2 intra-op threads. Compute is counted on the exported ONNX graph (see ``onnx_macs``). The section
is skipped, with the reason, where open_clip (open_clip_torch, a training-machine dependency) is missing.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import BenchSkipped, fmt, machine, pct, section, time_calls

ARCH = "ViT-B-32"  # the open_clip architecture measured (random weights: no download)
THREADS = (1, 2)  # ONNX Runtime intra-op threads per row (this project's robots and build machines have 2 cores)
RUNS, QUICK_RUNS = 30, 10  # timed calls per row after WARMUP untimed ones (batch 9 text: ~1 s a call here)
WARMUP = 3


def onnx_macs(path: Path, feed: Dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of one call of the ONNX model at `path` on the inputs `feed`.

    Counted on the exported graph rather than with torch hooks: the graph is what ONNX Runtime times, and
    open_clip's attention runs inside nn.MultiheadAttention, whose in-projection and score matmuls a torch
    function mode or module hook does not see one by one (in inference mode they are one fused native op).
    In the graph every MatMul, Gemm and Conv is explicit. Their operand shapes come from one unoptimised
    ONNX Runtime run with those operands made graph outputs: ONNX's own shape inference leaves the attention
    matmuls unknown (their Reshape shapes are computed from the input's shape at run time). Elementwise
    ops, softmax and norms are not counted (fvcore, behind open_clip's published figures, skips them too)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    known = {t.name: list(t.dims) for t in model.graph.initializer}
    known.update({k: list(v.shape) for k, v in feed.items()})
    wanted = list(dict.fromkeys(x for n in nodes for x in (n.input[0], n.input[1], n.output[0]) if x not in known))
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(x) for x in wanted if x not in have)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node as exported
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del model
    names = [o.name for o in sess.get_outputs()]
    known.update((k, list(v.shape)) for k, v in zip(names, sess.run(None, feed)) if k in wanted)
    total = 0
    for node in nodes:
        a, w, out = (known[x] for x in (node.input[0], node.input[1], node.output[0]))
        if node.op_type == "MatMul":  # (..., M, K) @ (..., K, N) -> (..., M, N): K MACs per output
            total += math.prod(out) * a[-1]
        elif node.op_type == "Gemm":  # (M, K) x (K, N), either may be transposed: K MACs per output
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            total += math.prod(out) * (a[0] if trans_a else a[1])
        else:  # Conv, weight (C_out, C_in / groups, *kernel): C_in / groups * prod(kernel) MACs per output
            total += math.prod(out) * math.prod(w[1:])
    return int(total)


def _load() -> str:
    try:
        return "%.1f" % os.getloadavg()[0]
    except OSError:
        return "unknown"


def _size_mb(path: Path) -> float:
    """Size of an ONNX file and any external-data files beside it (towers over 2 GB keep weights outside)."""
    return sum(p.stat().st_size for p in Path(path).parent.iterdir() if p.is_file()) / 1e6


def _time_tower(path: Path, feed: Dict[str, np.ndarray], threads: int, runs: int) -> np.ndarray:
    """ms per call of one session with `threads` intra-op threads, the ONNX Runtime backend's own options.

    One session at a time (made, warmed up, timed, released): a session's idle intra-op threads spin-wait
    for work, so two live sessions would take cores from each other's calls."""
    import onnxruntime as ort

    from ..runtime.onnxruntime_backend import OrtOptions, session_options

    sess = ort.InferenceSession(str(path), session_options(OrtOptions(intra_op_threads=threads)),
                                providers=["CPUExecutionProvider"])
    try:
        return time_calls(lambda: sess.run(None, feed), runs, warmup=WARMUP)
    finally:
        del sess


def tower_section(arch: str = ARCH, runs: int = RUNS, threads: Sequence[int] = THREADS,
                  text_batches: Optional[Sequence[int]] = None, config: Optional[Path] = None,
                  seed: int = 0) -> dict:
    """The section: `arch` (random weights, seeded; `config` an open_clip model-config JSON for an architecture
    open_clip does not ship) exported to a temporary folder, each tower timed `runs` times per thread count.

    text_batches: prompt batches of the text tower (default: 1 and the default prompt count)."""
    import torch

    from ..model.open_clip_towers import clip_prompts, export_towers, load_open_clip, tower_preprocess
    from ..model.open_clip_import import import_open_clip

    open_clip = import_open_clip()
    prompts = [p["text"] for p in clip_prompts()]  # the default prompts as a tower bundle phrases them
    text_batches = list(text_batches or (1, len(prompts)))
    torch.manual_seed(seed)
    model, pre = load_open_clip(arch, None, config)
    size = tower_preprocess(pre).image_size
    n_image = sum(p.numel() for p in model.visual.parameters())
    n_text = sum(p.numel() for n, p in model.named_parameters()
                 if not n.startswith("visual.") and not n.startswith("logit_"))  # logit scale/bias: neither tower
    load_start = _load()
    tmp = Path(tempfile.mkdtemp(prefix="mmfusion_bench_towers_"))  # private (mode 700), removed below
    try:
        image_path, text_path = tmp / "image" / "camera_encoder.onnx", tmp / "text" / "text_encoder.onnx"
        image_path.parent.mkdir()
        text_path.parent.mkdir()
        t0 = time.perf_counter()
        dim, ctx = export_towers(model, arch, image_path, text_path, size)
        export_s = time.perf_counter() - t0
        del model  # the ONNX files hold the weights from here on
        rng = np.random.default_rng(seed)
        tok = open_clip.get_tokenizer(arch)
        cases = [("image", 1, image_path,
                  {"camera": rng.standard_normal((1, 3, size, size)).astype(np.float32)})]  # (1, 3, S, S)
        for b in text_batches:  # (b, ctx) int64: the prompts repeated when b exceeds their count
            ids = tok([prompts[i % len(prompts)] for i in range(b)]).numpy().astype(np.int64)
            cases.append(("text", b, text_path, {"tokens": ids}))
        # per item: counted at batch 1 (one image, one prompt); a batch of b costs b times as much
        macs = {"image": onnx_macs(image_path, cases[0][3]),
                "text": onnx_macs(text_path, {"tokens": tok(prompts[:1]).numpy().astype(np.int64)})}  # (1, ctx)
        params = {"image": n_image, "text": n_text}
        mb = {"image": _size_mb(image_path), "text": _size_mb(text_path)}
        label = {"image": f"image (3x{size}x{size})", "text": f"text ({ctx} tokens)"}
        rows, slower = [], []
        for tower, b, path, feed in cases:
            p50s = {}
            for t in threads:
                ms = _time_tower(path, feed, t, runs)
                p50s[t] = pct(ms, 50)
                if t > min(threads) and p50s[t] > p50s[min(threads)]:
                    slower.append(f"{tower} batch {b}")
                rows.append([label[tower], b, t, runs,
                             fmt(pct(ms, 50)), fmt(pct(ms, 90)), fmt(pct(ms, 99)), fmt(pct(ms, 50) / b),
                             f"{macs[tower] / 1e9:.4g}", f"{params[tower] / 1e6:.2f}", f"{mb[tower]:.1f}"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = machine()
    notes = (f"open_clip {open_clip.__version__} {arch}, random weights (seed {seed}; timing does not depend on "
             f"them), embedding width {dim}, image {size} px, text context {ctx} tokens; both towers exported "
             f"once (model/open_clip_towers.py, opset 17, {export_s:.0f} s) to a temporary folder, deleted after. "
             f"ONNX Runtime CPU with the backend's session options (ORT_ENABLE_ALL, sequential, spin-wait), "
             f"one session at a time; {runs} timed calls per row after {WARMUP} warm-up calls; text inputs are "
             f"the default prompts as a tower bundle phrases them ({prompts[0]!r}, ...), whose cost does not "
             f"depend on their length (the tower always runs all {ctx} positions). GMACs per image / per text "
             f"counted on the exported ONNX graph (MatMul, Gemm, Conv; 1 MAC = 2 FLOPs; bench/towers.py "
             f"onnx_macs); open_clip's published profile (fvcore, which counts a multiply-add as one flop) "
             f"gives ~4.4 for the ViT-B-32 image tower. Params: the torch model's image tower (visual.*) and "
             f"text tower (the rest but the logit scale); ONNX MB: the file on disk (float32 weights). "
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')}, {m.get('ram', '?')} RAM, no GPU used; "
             f"load average {load_start} at the start, {_load()} at the end (other processes share these "
             f"cores; p99s include them)."
             + (f" More threads were slower for {', '.join(slower)}: with spin-waiting intra-op threads, a call "
                f"waits for every thread, and another process holding a core delays it (OrtOptions.spin_wait)."
                if slower else ""))
    return section(f"OpenCLIP {arch} towers on ONNX Runtime, CPU (ms)",
                   ["tower (input per item)", "batch", "intra-op threads", "runs", "p50", "p90", "p99",
                    "p50 per item", "GMACs per item", "params (M)", "ONNX MB"], rows, notes)


def run(quick: bool = False) -> List[dict]:
    try:
        from ..model.open_clip_import import import_open_clip

        import_open_clip()
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or e.name or "open_clip"
        raise BenchSkipped(f"open_clip is not installed (no module {missing}; "
                           f"pip install open_clip_torch==3.3.0)") from e
    return [tower_section(ARCH, QUICK_RUNS if quick else RUNS)]
