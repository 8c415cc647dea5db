"""Model benchmarks: per-part latency of torch eager vs ONNX Runtime (and TensorRT when present), caption
time, parameters and GMACs per modality, and how much of this CPU's peak the fused tick uses.

All numbers of one section come from one run on one machine, so ratios compare like with like.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

from . import bench_model_dir, fmt, model_label, pct, section, time_calls

ENCODERS = ["camera", "lidar", "audio", "imu"]


# --- MAC counting ------------------------------------------------------------------------------
def count_macs(module, args) -> int:
    """Multiply-accumulates of one forward call.

    Hand-written because thop/fvcore are not dependencies: a TorchFunctionMode sees every linear,
    convolution and matmul (which covers the hand-written attention in fusion and the caption
    decoder), and a forward hook adds the GRU's gate matmuls, which run inside one fused op.
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    total = [0]

    class _Counter(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is F.linear:
                total[0] += out.numel() * args[1].shape[1]  # weight (out, in)
            elif func in (F.conv1d, F.conv2d, F.conv3d):
                w = args[1]  # (out, in/groups, *k)
                total[0] += out.numel() * w.shape[1] * math.prod(w.shape[2:])
            elif func in (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__):
                total[0] += out.numel() * args[0].shape[-1]
            elif func is F.scaled_dot_product_attention:
                q, k, v = args[:3]
                total[0] += q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
            return out

    def gru_hook(mod, inp, out):
        x = inp[0]  # (B, T, I) batch_first or (T, B, I)
        steps = x.shape[0] * x.shape[1]
        h = mod.hidden_size
        for layer in range(mod.num_layers):
            i = x.shape[-1] if layer == 0 else h * (2 if mod.bidirectional else 1)
            total[0] += steps * 3 * (i * h + h * h) * (2 if mod.bidirectional else 1)

    hooks = [m.register_forward_hook(gru_hook) for m in module.modules() if isinstance(m, torch.nn.GRU)]
    try:
        with torch.inference_mode(), _Counter():
            module(*args)
    finally:
        for hk in hooks:
            hk.remove()
    return int(total[0])


def peak_gflops(quick: bool, threads: int) -> Tuple[float, int]:
    """This CPU's float32 matmul throughput with ``threads`` threads: best of a few n^3 products in torch
    (numpy's BLAS is held to one thread in this package, see mmfusion_ros/__init__.py)."""
    import torch

    n = 1024 if quick else 2048
    reps = 10 if quick else 15  # best of many: on a shared machine some products run undisturbed
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm up the thread pool
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9, n


# --- inputs and timed calls ---------------------------------------------------------------------
def _inputs(manifest, seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for m in ENCODERS:
        part = f"{m}_encoder"
        shape = [1] + manifest.inputs(part)[m]["shape"][1:]
        out[part] = {m: rng.standard_normal(shape).astype(np.float32)}
    tok = rng.standard_normal((1, 4, manifest.embed_dim)).astype(np.float32)
    tok /= np.linalg.norm(tok, axis=-1, keepdims=True)
    out["fusion"] = {"tokens": tok, "present": np.ones((1, 4), np.float32)}
    hist = rng.standard_normal((1, int(manifest["event_history_len"]), manifest.embed_dim)).astype(np.float32)
    out["event_head"] = {"history": hist / np.linalg.norm(hist, axis=-1, keepdims=True)}
    return out


def time_interleaved(fns: Dict[str, Callable[[], object]], iters: int, warmup: int = 3) -> Dict[str, np.ndarray]:
    """ms per call of each engine, calls alternating engine by engine, so load from other processes
    on a shared machine lands on all engines alike and their ratio stays fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {k: np.empty(iters) for k in fns}
    for i in range(iters):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k][i] = (time.perf_counter() - t0) * 1e3
    return out


def _tick(backend, ins):
    """The fused model tick: the four encoders, fusion and the event head at batch 1 (no captions)."""
    def run():
        toks = np.stack([backend.run(f"{m}_encoder", ins[f"{m}_encoder"])["embedding"][0] for m in ENCODERS])[None]
        backend.fuse(toks, ins["fusion"]["present"])  # (1, 384), (1, 4)
        backend.events(ins["event_head"]["history"])  # (1, E, H)
    return run


def run(quick: bool) -> List[dict]:
    import torch

    from ..runtime import create_backend
    from ..runtime.factory import tensorrt_usable

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # --quick: one thread per engine (steady and fast: torch's multi-threaded eager mode is slow to time
    # on a shared machine); the full run uses every core and adds a 1-thread comparison
    threads = 1 if quick else cores
    torch.set_num_threads(threads)
    model_dir = bench_model_dir()
    from ..runtime.manifest import load_manifest

    if load_manifest(model_dir).towers:
        return _run_tower_bundle(model_dir, threads, quick)
    tb = create_backend(model_dir, "torch", threads=threads)
    ob = create_backend(model_dir, "onnxruntime", intra_op_threads=threads)
    engines = [("torch eager", tb), ("ONNX Runtime", ob)]
    trt_ok, trt_why = tensorrt_usable()
    if trt_ok:
        engines.append(("TensorRT fp16", create_backend(model_dir, "tensorrt", fallback=False, precision="fp16")))
    man = ob.manifest
    ins = _inputs(man)
    iters, cap_iters = (20, 3) if quick else (200, 30)

    parts = [f"{m}_encoder" for m in ENCODERS] + ["fusion", "event_head"]
    for _, be in engines:
        time_calls(_tick(be, ins), 1, warmup=10)  # first calls pay one-off allocator / kernel-selection costs
    emb = ins["fusion"]["tokens"][0, 0]
    results: Dict[str, Dict[str, np.ndarray]] = {}
    for part in parts:
        results[part] = time_interleaved({lb: (lambda p=part, b=be: b.run(p, ins[p])) for lb, be in engines}, iters)
    results["fused tick"] = time_interleaved({lb: _tick(be, ins) for lb, be in engines}, iters)
    # a cold decode each call: the backend caches decoded caption-memory entries, which would time a dict lookup
    results["caption (greedy)"] = time_interleaved(
        {lb: (lambda b=be: (b.__dict__.pop("_caption_cache", None), b.caption(emb))) for lb, be in engines},
        cap_iters, warmup=1)
    cap_text, _ = ob.caption(ins["fusion"]["tokens"][0, 0])

    cols = ["part (batch 1)"]
    for label, _ in engines:
        cols += [f"{label} p50 ms", f"{label} p99 ms"]
    cols += [f"{label} speed-up vs torch (p50)" for label, _ in engines[1:]]
    rows = []
    for part, per in results.items():
        row = [part]
        for label, _ in engines:
            row += [fmt(pct(per[label], 50)), fmt(pct(per[label], 99))]
        t50 = pct(per["torch eager"], 50)
        row += [f"{t50 / pct(per[label], 50):.2f}x" for label, _ in engines[1:]]
        rows.append(row)
    tick_ort = pct(results["fused tick"]["ONNX Runtime"], 50)
    cap_ort = pct(results["caption (greedy)"]["ONNX Runtime"], 50)
    lat_notes = (
        f"Model: {model_label(model_dir)}. {threads} threads for torch (set_num_threads) and ONNX Runtime "
        f"(intra-op, ORT_ENABLE_ALL); {iters} timed calls per row ({cap_iters} for captions) after warm-up, "
        f"alternating between engines call by call; "
        f"times include the Backend's input checks. With other processes on these cores torch's OpenMP "
        f"pool often waits for a core (its p99 and some p50s show it); the 1-thread section below compares "
        f"the engines without that effect. Fused tick = 4 encoders + fusion + event head, no "
        f"preprocessing or captions (the pipeline tick with preprocessing is in the pipeline section). "
        f"Caption = greedy decode to EOS or caption_max_len={man['caption_max_len']} "
        f"({len(cap_text.split())} words this time: {cap_text[:60]!r}). "
        f"Targets (2-core CPU, ORT): fused tick <= 25 ms p50 -> {fmt(tick_ort)} ms "
        f"({'met' if tick_ort <= 25 else 'MISSED'}); caption <= 30 ms -> {fmt(cap_ort)} ms "
        f"({'met' if cap_ort <= 30 else 'MISSED'}); ORT >= 1.5x torch on the fused tick -> "
        f"{pct(results['fused tick']['torch eager'], 50) / tick_ort:.2f}x. "
        + ("" if trt_ok else f"TensorRT not measured: {trt_why}.")
    )
    sections = [section("Model latency: torch eager vs ONNX Runtime" + (" vs TensorRT" if trt_ok else ""),
                        cols, rows, lat_notes)]

    # the same fused tick with one thread each: torch's OpenMP pool degrades badly when other processes
    # compete for the cores, so the single-thread ratio shows the engines without that effect
    if threads > 1:
        torch.set_num_threads(1)
        ob1 = create_backend(model_dir, "onnxruntime", intra_op_threads=1)
        one = time_interleaved({"torch eager": _tick(tb, ins), "ONNX Runtime": _tick(ob1, ins)}, iters)
        torch.set_num_threads(threads)
        ob1.close()
        t1, o1 = pct(one["torch eager"], 50), pct(one["ONNX Runtime"], 50)
        sections.append(section(
            "Fused tick with 1 thread per engine", ["engine", "p50 ms", "p99 ms", "speed-up vs torch (p50)"],
            [["torch eager", fmt(t1), fmt(pct(one["torch eager"], 99)), "1.00x"],
             ["ONNX Runtime", fmt(o1), fmt(pct(one["ONNX Runtime"], 99)), f"{t1 / o1:.2f}x"]],
            f"Same model, inputs and interleaving as above, torch.set_num_threads(1) and intra_op_threads=1 "
            f"({iters} calls each)."))

    # parameters and compute per part
    model = tb.model
    macs = {}
    size_rows = []
    for part in parts + ["caption_decoder"]:
        mod = tb.modules[part]
        if part == "caption_decoder":
            L = int(man["caption_max_len"])
            args = (torch.zeros(1, man.embed_dim), torch.ones(1, L, dtype=torch.long))
            note = f" (one step over {L} tokens)"
        else:
            args = tuple(torch.from_numpy(v) for v in ins[part].values())
            note = ""
        macs[part] = count_macs(mod, args)
        if part.endswith("_encoder"):  # the export wrapper holds the whole model: count this modality's modules
            k = part[: -len("_encoder")]
            owned = [model.modality_preprocessors[k], model.modality_trunks[k], model.modality_heads[k]]
        else:
            owned = [mod]
        n_params = sum(p.numel() for o in owned for p in o.parameters())
        size_rows.append([part + note, f"{n_params / 1e6:.3f}", f"{macs[part] / 1e9:.4f}"])
    tick_macs = sum(macs[p] for p in parts)
    size_rows.append(["fused tick (4 encoders + fusion + event head)", f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f} (whole model)",
                      f"{tick_macs / 1e9:.4f}"])
    sections.append(section("Model size and compute per part", ["part", "params (M)", "GMACs / call"], size_rows,
                            "MACs counted by a hand-written TorchFunctionMode counter (linear, conv, matmul, "
                            "attention) plus a GRU hook; 1 MAC = 2 FLOPs."))

    peak, n = peak_gflops(quick, threads)
    frac_rows = []
    for label, _ in engines:
        t = pct(results["fused tick"][label], 50) / 1e3
        achieved = 2.0 * tick_macs / t / 1e9
        frac_rows.append([label, fmt(t * 1e3), fmt(achieved, 1), fmt(peak, 1), f"{100 * achieved / peak:.1f}%"])
    sections.append(section("Fused tick vs this CPU's measured peak", ["engine", "tick p50 ms", "achieved GFLOP/s",
                                                                        "peak GFLOP/s", "fraction of peak"], frac_rows,
                            f"Peak = best of float32 {n}x{n} torch.mm products with {threads} threads. Small batch-1 "
                            f"convolutions (depthwise, 128x128 inputs) are memory- and overhead-bound, so a low "
                            f"fraction is expected; it says how much head-room batching or a GPU could win. Peak "
                            f"and tick are measured seconds apart on a machine other processes share, so the "
                            f"fraction is only as steady as that load (load average in the header)."))
    for _, be in engines:
        be.close()
    return sections


def _run_tower_bundle(model_dir, threads: int, quick: bool) -> List[dict]:
    """A tower bundle's parts with ONNX Runtime (and TensorRT when present): torch eager cannot run its frozen
    towers (they are ONNX only), so there is no torch column; the towers' own size and compute are the `towers`
    section."""
    from ..runtime import create_backend
    from ..runtime.factory import tensorrt_usable

    engines = [("ONNX Runtime", create_backend(model_dir, "onnxruntime", intra_op_threads=threads))]
    trt_ok, trt_why = tensorrt_usable()
    if trt_ok:
        engines.append(("TensorRT fp16", create_backend(model_dir, "tensorrt", fallback=False, precision="fp16")))
    man = engines[0][1].manifest
    ins = _inputs(man)
    iters = 20 if quick else 200
    parts = [p for p in [f"{m}_encoder" for m in ENCODERS] + ["fusion", "event_head"] if p in man["parts"]]
    results = {part: time_interleaved({lb: (lambda p=part, b=be: b.run(p, ins[p])) for lb, be in engines}, iters)
               for part in parts}
    cols = ["part (batch 1)"] + [f"{lb} {q} ms" for lb, _ in engines for q in ("p50", "p99")]
    rows = [[part] + [fmt(pct(per[lb], q)) for lb, _ in engines for q in (50, 99)] for part, per in results.items()]
    for _, be in engines:
        be.close()
    note = (f"Model: {model_label(model_dir)} (a tower bundle: {man.towers.get('source', {}).get('arch')} towers, bound "
            f"{man.towers.get('bound') or 'nothing yet'}). {threads} intra-op threads, {iters} calls per row. "
            + ("" if trt_ok else f"TensorRT not measured: {trt_why}."))
    return [section("Model latency of a tower bundle: ONNX Runtime" + (" vs TensorRT" if trt_ok else ""), cols, rows, note)]
